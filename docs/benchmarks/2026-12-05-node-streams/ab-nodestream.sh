#!/usr/bin/env bash
# Same binary; the gateway's node calls on streams (new) or unary (old), alternated.
set -u
cd /tmp/clb
export TALLY_BIN=/work/bin-new/tally LOADTEST=/work/bin-cur/tally-loadtest
for round in 1 2 3; do
  for side in unary stream; do
    if [[ $side == unary ]]; then export TALLY_NODE_CALLS_ON_STREAMS=false; else export TALLY_NODE_CALLS_ON_STREAMS=true; fi
    ./run-cluster.sh ns2-$side-c64-$round 8 64 > /dev/null 2>&1
    echo "$side c64 round $round: $(grep measured out-ns2-$side-c64-$round.txt | sed 's/.*operations, //') | $(grep -c 'PROOF PASSED' out-ns2-$side-c64-$round.txt) proof | $(paste ns2-$side-c64-$round.cpu0 ns2-$side-c64-$round.cpu1 | awk '{printf "%d%% ", ($2-$1)/8}')"
  done
done
for round in 1 2 3; do
  for side in unary stream; do
    if [[ $side == unary ]]; then export TALLY_NODE_CALLS_ON_STREAMS=false; else export TALLY_NODE_CALLS_ON_STREAMS=true; fi
    ./run-cluster.sh ns2-$side-batch-$round 8 8 --batch 1000 > /dev/null 2>&1
    echo "$side batch round $round: $(grep measured out-ns2-$side-batch-$round.txt | sed 's/.*operations, //') | $(grep -c 'PROOF PASSED' out-ns2-$side-batch-$round.txt) proof"
  done
done
