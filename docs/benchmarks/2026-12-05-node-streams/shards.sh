#!/usr/bin/env bash
# Same binary, 64 callers, shard counts alternated.
set -u
cd /tmp/clb
for round in 1 2; do
  for shards in 1 3 8; do
    ./run-cluster.sh s$shards-c64-$round $shards 64 > /dev/null 2>&1
    echo "shards $shards round $round: $(grep measured out-s$shards-c64-$round.txt | sed 's/.*operations, //') | $(grep -c 'PROOF PASSED' out-s$shards-c64-$round.txt) proof | $(paste s$shards-c64-$round.cpu0 s$shards-c64-$round.cpu1 | awk '{printf "%d%% ", ($2-$1)/8}')"
  done
done
