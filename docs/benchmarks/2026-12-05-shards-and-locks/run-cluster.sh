#!/usr/bin/env bash
# usage: run-cluster.sh LABEL SHARDS CALLERS [extra loadtest args...]
set -euo pipefail
LABEL=$1; SHARDS=$2; CALLERS=$3; shift 3
cd /tmp/clb
export TALLY_BIN=${TALLY_BIN:-/work/bin-cur/tally}
LOADTEST=${LOADTEST:-/work/bin-cur/tally-loadtest}
sed -i "s/^shard_count = .*/shard_count = $SHARDS/" cluster/local/node*.toml
for f in cluster/local/node*.toml; do
  sed -i '/^\[node.raft\]/,$d' "$f"
  if [[ -n "${UNARY:-}" ]]; then printf '[node.raft]\nappend_entries_on_streams = false\n' >> "$f"; fi
done
cluster/local.sh wipe >/dev/null 2>&1 || true
cluster/local.sh start >/dev/null
sleep 2
pids="$(cat tally-cluster/pids/node1.pid) $(cat tally-cluster/pids/node2.pid) $(cat tally-cluster/pids/node3.pid) $(cat tally-cluster/pids/gateway.pid)"
$LOADTEST --target http://127.0.0.1:50051 --profile gifting --members 10000 --initial-points 1000000 --cross-shard-share ${CROSS:-0} --concurrency $CALLERS --duration-secs 12 "$@" > out-$LABEL.txt 2>&1 &
lg=$!
sleep 6
for p in $pids $lg; do awk '{print $14+$15}' /proc/$p/stat; done > $LABEL.cpu0
if [[ -n "${PERF_NODE:-}" ]]; then
  perf record -F 499 ${PERF_OPTS:--g} -o perf-$LABEL.data -p $(cat tally-cluster/pids/$PERF_NODE.pid) -- sleep 6 >/dev/null 2>&1
  sleep 2
else
  sleep 8
fi
for p in $pids $lg; do awk '{print $14+$15}' /proc/$p/stat; done > $LABEL.cpu1
wait $lg || true
paste $LABEL.cpu0 $LABEL.cpu1 | awk 'BEGIN{n[1]="node1";n[2]="node2";n[3]="node3";n[4]="gateway";n[5]="loadgen"} {printf "%s %d%% ", n[NR], ($2-$1)/8}' ; echo
grep -E "ops/s|proof" out-$LABEL.txt | tail -4
cluster/local.sh wipe >/dev/null 2>&1
