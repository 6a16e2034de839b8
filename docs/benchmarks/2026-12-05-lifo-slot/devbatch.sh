#!/usr/bin/env bash
# devbatch.sh LABEL BIN [perf]: fresh tally dev, SubmitBatch 1000 x 8 in flight, 12 s; over 6 s
# of it: the CPU of node and generator, and optionally a perf profile (third argument "perf"),
# per-thread CPU (THREADS=1), bytes the node wrote (IO=1), the data folder's sizes (DU=1).
set -uo pipefail
LABEL=$1; BIN=$2; PERF=${3:-}
LOADTEST=${LOADTEST:-/work/bin-base/tally-loadtest}
HERE="$(cd "$(dirname "$0")" && pwd)"
cd /tmp/devb
DATA=/tmp/devb/data-$LABEL; rm -rf $DATA
"$BIN" dev ${DEVARGS:-} --data-dir $DATA --listen 127.0.0.1:50061 --metrics-listen 127.0.0.1:9300 > dev-$LABEL.log 2>&1 &
PID=$!
for _ in $(seq 1 300); do grep -q ready dev-$LABEL.log && break; sleep 0.1; done
$LOADTEST --target http://127.0.0.1:50061 --profile gifting --members 10000 --initial-points 1000000 --cross-shard-share 0 --duration-secs 12 --batch ${BATCH:-1000} --concurrency ${CONC:-8} ${EXTRA:-} > out-$LABEL.txt 2>&1 &
lg=$!
sleep 5; curl -s 127.0.0.1:9300/metrics > m-$LABEL.0
written() { grep wchar /proc/$PID/io | cut -d' ' -f2; }
w0=$(written); c0=$(awk '{print $14+$15}' /proc/$PID/stat); g0=$(awk '{print $14+$15}' /proc/$lg/stat)
if [[ -n "$PERF" ]]; then perf record -F 499 --call-graph dwarf,16384 -o perf-$LABEL.data -p $PID -- sleep 6 >/dev/null 2>&1
elif [[ -n "${THREADS:-}" ]]; then bash "$HERE/threads.sh" $PID 6
else sleep 6; fi
curl -s 127.0.0.1:9300/metrics > m-$LABEL.1; w1=$(written); c1=$(awk '{print $14+$15}' /proc/$PID/stat); g1=$(awk '{print $14+$15}' /proc/$lg/stat)
wait $lg
[[ -n "${DU:-}" ]] && du -sh $DATA/db/* 2>/dev/null | sort -h
kill $PID; wait $PID
[[ -n "${IO:-}" ]] && echo "wchar/s $(( (w1-w0)/6 ))"
echo "$LABEL tally $(( (c1-c0)/6 ))% loadgen $(( (g1-g0)/6 ))% $(grep measured out-$LABEL.txt)"
grep proof out-$LABEL.txt | head -1
rm -rf $DATA
