#!/usr/bin/env bash
# per-thread CPU of PID over 5 s
PID=$1
declare -A a
for t in /proc/$PID/task/*; do id=${t##*/}; a[$id]=$(awk '{print $14+$15}' $t/stat 2>/dev/null); done
sleep 5
for t in /proc/$PID/task/*; do id=${t##*/}; n=$(cat $t/comm); b=$(awk '{print $14+$15}' $t/stat 2>/dev/null); d=$(( (b-${a[$id]:-0})/5 )); [[ $d -gt 0 ]] && echo "$n $id $d%"; done | sort -k3 -t' ' -rn
