import json, sys, re, datetime
rep = json.load(open(sys.argv[1]))
tl = rep['timeline']; start = tl['start_unix_ms']; b = tl['bucket_ms']
oks = [x['ok'] for x in tl['buckets']]
cps = []
for line in open(sys.argv[2]):
    if 'checkpoint written' in line and 'group=1' in line:
        ts = line.split()[0]
        t = datetime.datetime.strptime(ts[:26], '%Y-%m-%dT%H:%M:%S.%f').replace(tzinfo=datetime.timezone.utc).timestamp()*1000
        m = re.search(r'write_count=(\d+)', line)
        cps.append((t - start, int(m.group(1))))
# windows of 100ms: print min bucket and sum
print("checkpoints (ms since start, writes):", [(int(a), w) for a, w in cps if 0 <= a <= len(oks)*b][:40])
# stalls: runs of buckets with ok < 30
i = 0; stalls = []
while i < len(oks):
    if oks[i] < 30:
        j = i
        while j < len(oks) and oks[j] < 30: j += 1
        if j - i >= 2: stalls.append((i*b, (j-i)*b))
        i = j
    else: i += 1
print("stalls >= 20ms (start ms, length ms):", stalls[:60])
