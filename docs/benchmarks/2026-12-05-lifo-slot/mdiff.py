import sys,re
def load(f):
    d={}
    for l in open(f):
        if l.startswith('#') or not l.strip(): continue
        k,v=l.rsplit(' ',1)
        try: d[k]=float(v)
        except: pass
    return d
a=load(sys.argv[1]); b=load(sys.argv[2]); secs=float(sys.argv[3]) if len(sys.argv)>3 else 6
pat=re.compile(sys.argv[4]) if len(sys.argv)>4 else None
for k in sorted(b):
    if not (k.endswith('_sum') or k.endswith('_count') or k.endswith('_total') or '_total{' in k or '_sum{' in k or '_count{' in k): continue
    if pat and not pat.search(k): continue
    dv=b[k]-a.get(k,0)
    if dv: print(f"{k} {dv:.4f} ({dv/secs:.4f}/s)")
