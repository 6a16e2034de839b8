#!/usr/bin/env bash
# single-calls.sh LABEL BIN CALLERS [SECONDS]: a fresh `tally dev` (one shard), gifting single
# calls from CALLERS callers for SECONDS (default 8); prints ops/s, p50, p99 and whether the
# generator's proof passed (1). LOADTEST names the generator's binary; port 50061.
set -uo pipefail
LABEL=$1; BIN=$2; CALLERS=$3; SECONDS_RUN=${4:-8}
LOADTEST=${LOADTEST:-tally-loadtest}
WORK=${WORK:-/tmp/single-calls}; mkdir -p "$WORK"; cd "$WORK"
rm -rf "data-$LABEL"
"$BIN" dev --data-dir "data-$LABEL" --listen 127.0.0.1:50061 --no-metrics > "dev-$LABEL.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do grep -q ready "dev-$LABEL.log" && break; sleep 0.1; done
"$LOADTEST" --target http://127.0.0.1:50061 --profile gifting --members 10000 --initial-points 1000000 \
    --cross-shard-share 0 --duration-secs "$SECONDS_RUN" --concurrency "$CALLERS" > "out-$LABEL.txt" 2>&1
kill "$PID"; wait "$PID"
echo "$LABEL c$CALLERS $(grep -o '[0-9]* ops/s' "out-$LABEL.txt" | tail -1)" \
    "$(grep '^transfer ' "out-$LABEL.txt" | awk '{print "p50", $6, "p99", $8}')" \
    "proof $(grep -c 'PROOF PASSED' "out-$LABEL.txt")"
rm -rf "data-$LABEL"
