import re, collections, sys
ev=[]; cur=None; hdr=None
for line in open(sys.argv[1], errors='replace'):
    line=line.rstrip('\n')
    if not line.strip():
        if cur is not None: ev.append((hdr,cur))
        cur=None; continue
    if not line.startswith(('\t',' ')):
        hdr=line; cur=[]; continue
    p=line.strip().split(None,1)
    if len(p)==2 and cur is not None:
        s=re.sub(r'\+0x[0-9a-f]+','',p[1]).replace(' (inlined)','')
        s=re.sub(r' \(/[^)]*\)$','',s); cur.append(s)
# header: comm tid [cpu] time: sched:sched_switch: prev_comm=.. prev_pid=N ... ==> next_comm=.. next_pid=M
out={}  # tid -> (time, key)
w=collections.Counter(); tot=collections.Counter()
pat=re.compile(r'^\s*(\S+)\s+(\d+)\s+\[\d+\]\s+([\d.]+):.*prev_pid=(\d+).*next_pid=(\d+)')
for h,st in ev:
    m=pat.match(h)
    if not m: continue
    comm,tid,t,prev,nxt=m.group(1),int(m.group(2)),float(m.group(3)),int(m.group(4)),int(m.group(5))
    ours=[f for f in st if re.match(r'<?(tally|openraft|sled|raft_engine|tokio::runtime::scheduler|tokio::runtime::blocking|hyper|h2|tonic)',f)]
    key=' < '.join(x[:70] for x in ours[:3]) or st[0][:70]
    out[prev]=(t,key,comm)
    # switch-in of next: we only see events of our process; a thread switching back in appears as next_pid in some other's event (may be other process, not recorded)
# can't weight reliably without switch-in events of other processes; count instead
c=collections.Counter()
for h,st in ev:
    m=pat.match(h)
    if not m: continue
    ours=[f for f in st if re.match(r'<?(tally|openraft|sled|raft_engine)',f)]
    first=next((f for f in st if not f.startswith(('[','__','entry_','do_syscall','syscall')) and 'kernel' not in f),'?')
    c[(m.group(1), first[:60], ' < '.join(x[:60] for x in ours[:2]))]+=1
for k,v in c.most_common(25): print(v,k)
