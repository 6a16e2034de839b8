#!/usr/bin/env bash
# shapes.sh ROUND : alternate 3 and 8 shards over four shapes
R=$1
export TALLY_BIN=/work/bin-exp/tally-nolock LOADTEST=/work/bin-base/tally-loadtest
for S in 8 3; do
  ./run-cluster.sh s$S-c64-$R $S 64 2>&1 | grep -E "node1|measured"
  CROSS=0.5 ./run-cluster.sh s$S-cross-$R $S 64 2>&1 | grep -E "measured"
  ./run-cluster.sh s$S-batch-$R $S 8 --batch 1000 2>&1 | grep -E "measured"
  if [[ $S == 8 ]]; then RATE=2000; else RATE=2900; fi
  ./run-cluster.sh s$S-open-$R $S 1024 --rate $RATE 2>&1 | grep -E "measured"
  grep -E "^transfer" out-s$S-open-$R.txt | tail -1
done
