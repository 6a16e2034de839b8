#!/usr/bin/env bash
# usage: metrics-run.sh LABEL SHARDS CALLERS [loadtest args]: scrape node metrics at 6 s and 14 s
set -euo pipefail
LABEL=$1; SHARDS=$2; CALLERS=$3; shift 3
cd /tmp/clb
export TALLY_BIN=${TALLY_BIN:-/work/bin-new2/tally}
sed -i "s/^shard_count = .*/shard_count = $SHARDS/" cluster/local/node*.toml
cluster/local.sh wipe >/dev/null 2>&1 || true
cluster/local.sh start >/dev/null
sleep 2
/work/bin-cur/tally-loadtest --target http://127.0.0.1:50051 --profile gifting --members 10000 --initial-points 1000000 --cross-shard-share 0 --concurrency $CALLERS --duration-secs 12 "$@" > out-$LABEL.txt 2>&1 &
lg=$!
sleep 6
for n in 1 2 3; do curl -s 127.0.0.1:910$n/metrics > m0-$LABEL-$n.txt; done; curl -s 127.0.0.1:9200/metrics > m0-$LABEL-gw.txt
sleep 8
for n in 1 2 3; do curl -s 127.0.0.1:910$n/metrics > m1-$LABEL-$n.txt; done; curl -s 127.0.0.1:9200/metrics > m1-$LABEL-gw.txt
wait $lg || true
grep measured out-$LABEL.txt
cluster/local.sh wipe >/dev/null 2>&1
for f in 1 2 3 gw; do
  echo "== $f"
  join <(grep -v "^#" m0-$LABEL-$f.txt | grep -E "_sum|_count|_total" | sort) <(grep -v "^#" m1-$LABEL-$f.txt | grep -E "_sum|_count|_total" | sort) | awk '{d=$3-$2; if (d>0) print $1, d}' | grep -E "proposal|apply|checkpoint|coalesced|batch|node_call|flush|append|raft" | head -30
done
