#!/usr/bin/env bash
set -u
cd /tmp/clb
for round in 1 2; do
  for side in claims noclaims; do
    if [[ $side == noclaims ]]; then export EXPERIMENT_KEYS_ON_MEMBER_SHARD=8 LOADTEST=/work/bin-cur/tally-loadtest-samekeys; else unset EXPERIMENT_KEYS_ON_MEMBER_SHARD; export LOADTEST=/work/bin-cur/tally-loadtest-samekeys; fi
    ./run-cluster.sh $side-$round 8 64 > /dev/null 2>&1
    echo "$side round $round: $(grep measured out-$side-$round.txt | sed 's/.*operations, //') | $(grep -c 'PROOF PASSED' out-$side-$round.txt) proof | $(paste $side-$round.cpu0 $side-$round.cpu1 | awk '{printf "%d%% ", ($2-$1)/8}')"
  done
done
