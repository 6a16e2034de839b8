import sys, re, collections
# fold perf script output: stacks separated by blank lines; header line has comm
stacks=[]; cur=None; comm=None
for line in open(sys.argv[1], errors='replace'):
    line=line.rstrip('\n')
    if not line.strip():
        if cur is not None: stacks.append((comm,cur))
        cur=None; continue
    if not line.startswith('\t') and not line.startswith(' '):
        comm=line.split()[0]; cur=[]; continue
    parts=line.strip().split(None,1)
    if len(parts)<2: continue
    sym=parts[1]
    sym=re.sub(r'\+0x[0-9a-f]+ \(.*\)$','',sym); sym=re.sub(r' \(.*\)$','',sym)
    cur.append(sym)
if cur is not None: stacks.append((comm,cur))
n=len(stacks)
print("samples",n)
by_comm=collections.Counter(c for c,_ in stacks)
for c,v in by_comm.most_common(10): print(f"  comm {c}: {100*v/n:.1f}%")
incl=collections.Counter(); selfc=collections.Counter()
for c,s in stacks:
    seen=set()
    for f in s:
        g=re.sub(r'<.*?>','',f)
        g=re.sub(r'::h[0-9a-f]{16}$','',g)
        if g not in seen: incl[g]+=1; seen.add(g)
    if s:
        g=re.sub(r'::h[0-9a-f]{16}$','',s[0]); selfc[g]+=1
pat=sys.argv[2] if len(sys.argv)>2 else None
print("--- inclusive")
for f,v in incl.most_common(int(sys.argv[3]) if len(sys.argv)>3 else 60):
    if pat and not re.search(pat,f): continue
    print(f"{100*v/n:5.1f}% {f[:150]}")
print("--- self")
for f,v in selfc.most_common(30): print(f"{100*v/n:5.1f}% {f[:150]}")
