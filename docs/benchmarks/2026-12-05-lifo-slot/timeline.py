# timeline.py LOG: apply duty, log flush latency and gaps between applies from a diagnostic
# build's "DIAG <event> <ms>" lines (propose, append_start, append_encoded, flushed,
# apply_start, apply_end, proposed_done), between 5 s and 11 s of the process's life.
import sys
ev = []
for line in open(sys.argv[1]):
    if line.startswith('DIAG'):
        parts = line.split()
        ev.append((parts[1], float(parts[2]), parts[3:]))
ev = [e for e in ev if 5000 < e[1] < 11000]
busy = 0; last_end = None; gaps = []; start = None
for kind, t, rest in ev:
    if kind == 'apply_start':
        start = t
    if kind == 'apply_end' and start is not None:
        busy += t - start
        if last_end is not None:
            gaps.append(start - last_end)
        last_end = t
print("apply busy fraction", round(busy / (ev[-1][1] - ev[0][1]), 3))
encoded = {}; flushes = []
for kind, t, rest in ev:
    if kind == 'append_encoded':
        encoded[rest[1]] = t
    if kind == 'flushed' and rest[1] in encoded:
        flushes.append(t - encoded[rest[1]])
flushes.sort(); gaps.sort()
print("flush ms p50 %.1f p90 %.1f max %.1f" % (flushes[len(flushes) // 2], flushes[int(len(flushes) * .9)], flushes[-1]))
print("gaps between applies ms p50 %.1f p90 %.1f" % (gaps[len(gaps) // 2], gaps[int(len(gaps) * .9)]))
