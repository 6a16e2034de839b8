#!/usr/bin/env bash
# offcpu.sh LABEL BIN : batch run with sched_switch recording for 3 s
LABEL=$1; BIN=$2
DATA=/tmp/devb/data-off; rm -rf $DATA
$BIN dev --data-dir $DATA --listen 127.0.0.1:50061 --metrics-listen 127.0.0.1:9300 > dev-off.log 2>&1 &
PID=$!
sleep 1.5
/work/bin-base/tally-loadtest --target http://127.0.0.1:50061 --profile gifting --members 10000 --initial-points 1000000 --cross-shard-share 0 --duration-secs 12 ${LOADARGS:---batch 1000 --concurrency 8} > out-off-$LABEL.txt 2>&1 &
lg=$!
sleep 5; perf record -e sched:sched_switch --call-graph dwarf,16384 -o off-$LABEL.data -p $PID -- sleep 3 > /dev/null 2>&1; wait $lg; kill $PID; wait $PID; grep "setup 0" out-off-$LABEL.txt; perf script -i off-$LABEL.data 2>/dev/null > off-$LABEL.script
