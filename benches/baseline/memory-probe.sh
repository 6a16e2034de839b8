#!/usr/bin/env bash
# Resident memory of `tally dev` as retained keys accumulate: starts a dev cluster on a fresh
# folder, runs ROUNDS earn-heavy load runs of OPERATIONS each (64 callers, proof on), and prints
# the node's VmRSS after each with the run's throughput.
#
#   benches/baseline/memory-probe.sh TALLY_BIN LOADTEST_BIN LABEL [ROUNDS] [OPERATIONS]
#   benches/baseline/memory-probe.sh target/release/tally target/release/tally-loadtest head 3 200000
set -euo pipefail
tally_bin=$1 loadtest_bin=$2 label=$3 rounds=${4:-3} operations=${5:-200000}
work=$(mktemp -d "/tmp/tally-memory-probe-$label.XXXX")
"$tally_bin" dev --data-dir "$work/data" --listen 127.0.0.1:50071 --metrics-listen 127.0.0.1:9171 \
    >"$work/node.log" 2>&1 &
node_pid=$!
trap 'kill "$node_pid" 2>/dev/null || true' EXIT
sleep 4
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$node_pid/status"; }
echo "$label: before load, resident $(rss_kb) kB"
for round in $(seq 1 "$rounds"); do
    "$loadtest_bin" --target http://127.0.0.1:50071 --profile earn-heavy --concurrency 64 \
        --operations "$operations" --members 10000 >"$work/load-$round.log" 2>&1
    rate=$(grep -o '[0-9]* ops/s;' "$work/load-$round.log" | tail -1)
    proof=$(grep -c 'PROOF PASSED' "$work/load-$round.log" || true)
    echo "$label: after round $round, resident $(rss_kb) kB; $rate proof passed: $proof"
done
echo "logs in $work"
