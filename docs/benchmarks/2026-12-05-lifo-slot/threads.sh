# threads.sh PID SECS: per-thread CPU% over SECS
PID=$1; S=$2
declare -A a
for t in /proc/$PID/task/*; do id=${t##*/}; a[$id]=$(awk '{print $14+$15}' $t/stat 2>/dev/null); done
sleep $S
for t in /proc/$PID/task/*; do id=${t##*/}; n=$(cat $t/comm); v=$(awk '{print $14+$15}' $t/stat 2>/dev/null); d=$(( v - ${a[$id]:-0} )); [ $d -gt 2 ] && echo "$(( d / S ))% $n $id"; done | sort -rn | head -15
