import json, sys
for f in sys.argv[1:]:  # loadtest JSON reports recorded with --timeline --timeline-bucket-ms 10
    rep = json.load(open(f))
    oks = [x['ok'] for x in rep['timeline']['buckets']][:2000]
    low = sum(1 for o in oks if o < 30)
    t = rep['totals'] if 'totals' in rep else {}
    lat = rep.get('operations', rep.get('latency', {}))
    print(f, "buckets<30:", low)
