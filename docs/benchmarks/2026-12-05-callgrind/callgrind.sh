#!/usr/bin/env bash
# callgrind.sh LABEL BIN [OPS]: a fresh `tally dev` under callgrind, OPS gifting transfers
# (default 50,000) in SubmitBatch of 1,000 with 8 in flight, then the instructions counted.
# Counting is on only inside the write path's functions (the partner call's execution, apply,
# collecting, writing and releasing a checkpoint), so that start-up, the generator's setup
# reads and its end-of-run proof do not dilute the difference between two builds. Instruction
# counts do not move with the machine's speed the way throughput does (which swung 53-80k
# transfers/s on the same binary within this session); they do not weigh cache misses.
# Needs valgrind; LOADTEST names the generator's binary; port 50071.
set -uo pipefail
LABEL=$1; BIN=$2; OPS=${3:-50000}
LOADTEST=${LOADTEST:-tally-loadtest}
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK=${WORK:-/tmp/callgrind}; mkdir -p "$WORK"; cd "$WORK"
rm -rf "data-$LABEL" "cg-$LABEL.out"
valgrind --tool=callgrind --fair-sched=yes \
    --toggle-collect='*LedgerService*execute*' --toggle-collect='*apply_entries*' \
    --toggle-collect='*collect_checkpoint*' --toggle-collect='*write_batch_of_new_keys*' \
    --toggle-collect='*release_written*' --callgrind-out-file="cg-$LABEL.out" \
    "$BIN" dev --data-dir "data-$LABEL" --listen 127.0.0.1:50071 --no-metrics > "dev-$LABEL.log" 2>&1 &
VALGRIND=$!
for _ in $(seq 1 120); do grep -q ready "dev-$LABEL.log" && break; sleep 1; done
"$LOADTEST" --target http://127.0.0.1:50071 --profile gifting --members 10000 --initial-points 1000000 \
    --cross-shard-share 0 --operations "$OPS" --batch 1000 --concurrency 8 --request-timeout-ms 120000 \
    --seed 7 --quiet > "loadtest-$LABEL.txt" 2>&1
grep -q "PROOF PASSED" "loadtest-$LABEL.txt" || echo "$LABEL: the generator's proof did not pass"
kill -INT "$VALGRIND"; wait "$VALGRIND"
python3 "$HERE/instructions.py" "cg-$LABEL.out"
