import sys, re, collections
stacks=[]; cur=None
for line in open(sys.argv[1], errors='replace'):
    line=line.rstrip('\n')
    if not line.strip():
        if cur is not None: stacks.append(cur)
        cur=None; continue
    if not line.startswith('\t') and not line.startswith(' '):
        cur=[]; continue
    parts=line.strip().split(None,1)
    if len(parts)<2: continue
    sym=parts[1]; sym=re.sub(r'\+0x[0-9a-f]+ \(.*\)$','',sym); sym=re.sub(r' \(.*\)$','',sym)
    sym=re.sub(r'::h[0-9a-f]{16}$','',sym)
    cur.append(sym)
if cur is not None: stacks.append(cur)
n=len(stacks); pat=re.compile(sys.argv[2]); depth=int(sys.argv[3]) if len(sys.argv)>3 else 1
mode=sys.argv[4] if len(sys.argv)>4 else 'callers'
c=collections.Counter(); tot=0
for s in stacks:
    for i,f in enumerate(s):
        if pat.search(f):
            tot+=1
            if mode=='callers': ctx=s[i+1:i+1+depth]
            else: ctx=s[max(0,i-depth):i][::-1]
            c[' <- '.join(x[:90] for x in ctx)]+=1
            break
print(f"{sys.argv[2]}: {100*tot/n:.1f}%")
for k,v in c.most_common(25): print(f"{100*v/n:5.1f}% {k}")
