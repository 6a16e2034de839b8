# cpu.sh: samples CPU of tally dev and loadtest over 8 s in the middle of an exp run
sleep 8
p1=$(pgrep -f "tally.* dev --data-dir" | head -1); p2=$(pgrep -f "tally-loadtest.*run-id o1" | head -1)
a1=$(awk '{print $14+$15}' /proc/$p1/stat); a2=$(awk '{print $14+$15}' /proc/$p2/stat); t0=$(awk '{print $1+$2+$3+$4+$5+$6+$7+$8}' /proc/stat | head -1)
sleep 8
b1=$(awk '{print $14+$15}' /proc/$p1/stat); b2=$(awk '{print $14+$15}' /proc/$p2/stat)
echo "tally $(( (b1-a1)/8 ))% loadgen $(( (b2-a2)/8 ))%"
head -1 /proc/stat
