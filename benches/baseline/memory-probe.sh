#!/usr/bin/env bash
# Resident memory of `tally dev` as retained keys accumulate, toward the target "20 million
# earns at full rate: resident under 2 GiB, a restart ready in under 10 s". Starts a dev cluster
# (one shard, the retained-key budget raised to 24 M so that 20 M fit) on a fresh folder, runs
# ROUNDS earn-heavy SubmitBatch runs of OPERATIONS each (batch BATCH, 8 in flight, a new run id
# and 10,000 new members per round, proof on), and samples the node's VmRSS every second. After
# each round it prints the round's time and rate, the resident memory, the high-water mark
# (VmHWM) and the data folder's size; then it stops the node cleanly and times a restart to
# "ready" (the node answers `tally status`).
#
#   benches/baseline/memory-probe.sh TALLY_BIN LOADTEST_BIN LABEL [ROUNDS] [OPERATIONS] [BATCH]
#   benches/baseline/memory-probe.sh target/release/tally target/release/tally-loadtest head 10 2000000 4000
#
# Everything goes to a fresh /tmp/tally-memory-probe-LABEL.XXXX folder (summary.txt, rss.txt,
# the load logs); the folder is kept. Uses 127.0.0.1:50071 and :9171. More `[node]` settings
# for the dev cluster's config file can come in MEMORY_PROBE_NODE_SETTINGS (TOML lines, for
# example "sled_cache_bytes = 33554432"); the node's environment reaches mimalloc
# (MIMALLOC_PURGE_DELAY=0, see docs/operations.md "Allocator").
set -euo pipefail
tally_bin=$(realpath "$1") loadtest_bin=$(realpath "$2") label=$3
rounds=${4:-10} operations=${5:-2000000} batch=${6:-4000}
work=$(mktemp -d "/tmp/tally-memory-probe-$label.XXXX")
cat >"$work/dev.toml" <<EOF
[node]
retained_keys_per_shard_max = 24000000
${MEMORY_PROBE_NODE_SETTINGS:-}
EOF
summary="$work/summary.txt"
node_pid=""
sampler_pid=""
cleanup() {
    [[ -n "$sampler_pid" ]] && kill "$sampler_pid" 2>/dev/null || true
    if [[ -n "$node_pid" ]]; then
        kill "$node_pid" 2>/dev/null || true
        wait "$node_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

start_node() {
    "$tally_bin" dev --config "$work/dev.toml" --data-dir "$work/data" --listen 127.0.0.1:50071 \
        --metrics-listen 127.0.0.1:9171 >>"$work/node.log" 2>&1 &
    node_pid=$!
}
wait_ready() {
    until "$tally_bin" --addr http://127.0.0.1:50071 status >/dev/null 2>&1; do
        kill -0 "$node_pid" 2>/dev/null || { echo "the node exited; see $work/node.log" >&2; exit 1; }
        sleep 0.1
    done
}
status_mb() { awk -v field="$1:" '$1 == field { printf "%d", $2 / 1024 }' "/proc/$node_pid/status"; }

start_node
wait_ready
(while kill -0 "$node_pid" 2>/dev/null; do
    echo "$(date +%T) $(status_mb VmRSS)"
    sleep 1
done) >"$work/rss.txt" 2>/dev/null &
sampler_pid=$!
echo "$label: $rounds rounds of $operations earns (batch $batch) into $work" | tee "$summary"
printf '%-6s %8s %10s %12s %10s %10s  %s\n' round secs ops/s resident_mb hwm_mb disk_mb proof | tee -a "$summary"
for round in $(seq 1 "$rounds"); do
    started=$(date +%s.%N)
    "$loadtest_bin" --target http://127.0.0.1:50071 --profile earn-heavy --batch "$batch" \
        --concurrency 8 --operations "$operations" --members 10000 >"$work/load-$round.log" 2>&1 || true
    secs=$(echo "$(date +%s.%N) - $started" | bc)
    rate=$(grep -o '[0-9]* ops/s;' "$work/load-$round.log" | tail -1 | grep -o '[0-9]*' || echo '?')
    proof=$(grep -q 'PROOF PASSED' "$work/load-$round.log" && echo passed || echo FAILED)
    printf '%-6s %8.1f %10s %12s %10s %10s  %s\n' "$round" "$secs" "$rate" "$(status_mb VmRSS)" \
        "$(status_mb VmHWM)" "$(du -sm "$work/data" | cut -f1)" "$proof" | tee -a "$summary"
done
kill "$sampler_pid" 2>/dev/null || true
sampler_pid=""
kill -TERM "$node_pid"
wait "$node_pid" || true
started=$(date +%s.%N)
start_node
wait_ready
ready_secs=$(echo "$(date +%s.%N) - $started" | bc)
printf 'restart: ready in %.1f s, resident %s MB, high-water mark %s MB\n' "$ready_secs" \
    "$(status_mb VmRSS)" "$(status_mb VmHWM)" | tee -a "$summary"
echo "logs in $work"
