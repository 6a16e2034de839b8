#!/usr/bin/env bash
set -euo pipefail
LABEL=$1; SHARDS=$2; CALLERS=$3; shift 3
cd /tmp/clb
sed -i "s/^shard_count = .*/shard_count = $SHARDS/" cluster/local/node*.toml
cluster/local.sh wipe >/dev/null 2>&1 || true
cluster/local.sh start >/dev/null
sleep 2
$LOADTEST --target http://127.0.0.1:50051 --profile gifting --members 10000 --initial-points 1000000 --cross-shard-share 0 --concurrency $CALLERS --duration-secs 12 "$@" > out-$LABEL.txt 2>&1 &
lg=$!
sleep 6
curl -s 127.0.0.1:9101/metrics > m-$LABEL.0
perf stat -e context-switches,cpu-migrations,task-clock,syscalls:sys_enter_fdatasync,syscalls:sys_enter_futex,syscalls:sys_enter_sendmsg,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom -p $(cat tally-cluster/pids/node1.pid) -- sleep 6 2> stat-$LABEL.txt
curl -s 127.0.0.1:9101/metrics > m-$LABEL.1
wait $lg || true
grep -E "measured" out-$LABEL.txt
cluster/local.sh wipe >/dev/null 2>&1
python3 - m-$LABEL <<'PY'
import sys
def load(p):
    d={}
    for l in open(p):
        if l.startswith('#') or not l.strip(): continue
        k,v=l.rsplit(' ',1)
        try: d[k]=float(v)
        except: pass
    return d
a=load(sys.argv[1]+'.0'); b=load(sys.argv[1]+'.1')
print("entries applied node1 over window:", b['tally_apply_duration_seconds_count']-a['tally_apply_duration_seconds_count'])
PY
grep -E "switches|migrations|task-clock|sys_enter|elapsed" stat-$LABEL.txt
