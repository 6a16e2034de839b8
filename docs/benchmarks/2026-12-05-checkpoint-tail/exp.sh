#!/usr/bin/env bash
# usage: exp.sh LABEL TALLY_BIN [RATE] [GROW_SECS] [OPEN_SECS]
set -uo pipefail
LABEL=$1; BIN=$2; RATE=${3:-9000}; GROW=${4:-10}; OPEN=${5:-30}
LOADTEST=${LOADTEST:-/work/target-dev/release/tally-loadtest}
cd /tmp/tail
DATA=${DATA_ROOT:-/tmp/tail}/data-$LABEL; rm -rf $DATA
source /work/main/scripts/lib/tally-dev.sh
"$BIN" dev --data-dir $DATA --listen 127.0.0.1:50061 --metrics-listen 127.0.0.1:9300 > dev-$LABEL.log 2>&1 &
TALLY_DEV_PID=$!
for _ in $(seq 1 300); do grep -q ready dev-$LABEL.log && break; sleep 0.1; done
common=(--target http://127.0.0.1:50061 --profile gifting --members 10000 --initial-points 1000000 --cross-shard-share 0)
if [[ "$GROW" -gt 0 ]]; then
  $LOADTEST "${common[@]}" --duration-secs $GROW --run-id g1 --concurrency 64 > grow1-$LABEL.txt 2>&1
  $LOADTEST "${common[@]}" --duration-secs $GROW --run-id g2 --batch 1000 --concurrency 8 > grow2-$LABEL.txt 2>&1
fi
( while kill -0 $TALLY_DEV_PID 2>/dev/null; do echo "$(date +%s.%N) $(curl -s 127.0.0.1:9300/metrics | grep -E '^tally_checkpoints_total' | tr '\n' ' ')"; sleep 0.2; done ) > metrics-$LABEL.txt &
poller=$!
$LOADTEST "${common[@]}" --duration-secs $OPEN --run-id o1 --rate $RATE --concurrency 1024 --report open-$LABEL.json ${OPEN_ARGS:-} > open-$LABEL.txt 2>&1
kill $poller
stop_tally_dev
grep -E "ops/s|transfer" open-$LABEL.txt
