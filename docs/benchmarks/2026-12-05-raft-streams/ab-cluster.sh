#!/usr/bin/env bash
# Alternates the HEAD and new binaries on fresh clusters; prints one line per run.
set -u
cd /tmp/clb
for round in 1 2 3; do
  for side in head new; do
    TALLY_BIN=/work/bin-$side/tally ./run-cluster.sh $side-c64-$round 8 64 > /dev/null 2>&1
    echo "$side c64 round $round: $(grep measured out-$side-c64-$round.txt | sed 's/.*operations, //') | $(grep -c 'PROOF PASSED' out-$side-c64-$round.txt) proof | $(paste $side-c64-$round.cpu0 $side-c64-$round.cpu1 | awk '{printf "%d%% ", ($2-$1)/8}')"
  done
done
for round in 1 2; do
  for side in head new; do
    TALLY_BIN=/work/bin-$side/tally ./run-cluster.sh $side-batch-$round 8 8 --batch 1000 > /dev/null 2>&1
    echo "$side batch round $round: $(grep measured out-$side-batch-$round.txt | sed 's/.*operations, //') | $(grep -c 'PROOF PASSED' out-$side-batch-$round.txt) proof"
  done
done
for round in 1 2; do
  for side in head new; do
    TALLY_BIN=/work/bin-$side/tally ./run-cluster.sh $side-open-$round 8 1024 --rate 1300 > /dev/null 2>&1
    echo "$side open1300 round $round: $(grep -A1 'operation  ' out-$side-open-$round.txt | tail -1 | tr -s ' ') | $(grep -c 'PROOF PASSED' out-$side-open-$round.txt) proof"
  done
done
