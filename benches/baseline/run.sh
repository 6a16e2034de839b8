#!/usr/bin/env bash
# The baseline side by side, in one run on this machine:
#   1. PostgreSQL (Debian's package, installed if missing; a private server in a temporary
#      folder, synchronous_commit on, fsync on) doing durable transfers with an idempotency key
#      through pgbench, at 16 and 64 clients;
#   2. optionally (--etcd) a 3-member etcd (Debian's etcd-server) doing puts through wrk;
#   3. tally-loadtest's gifting profile (member-to-member transfers, each with its own
#      idempotency key, end-of-run correctness proof) against `tally dev` and against a
#      3-node cluster (cluster/local.sh, with --cluster-shards shards: 3 by default, one per
#      node), single calls at 1-256 callers, SubmitBatch of 1,000, and an open-loop run at half
#      of the 64-caller rate;
# then tally-bench-report writes summary.md (tables, ratios, targets) and two SVG plots.
#
# Usage: benches/baseline/run.sh [--duration-secs N] [--out DIR] [--concurrency "1 4 16 64 256"]
#                                [--cross-shard-share F] [--cluster-shards N] [--etcd]
#                                [--skip-postgres] [--skip-cluster]
#                                [--no-build]   (use the release binaries already built)
# Default output: benches/results/<UTC date-time>/. Needs ports 50051, 7101-7103, 9101-9103,
# 9200 (the local cluster's), 50061 (tally dev) and 55432 (PostgreSQL) free.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
source "$ROOT/scripts/lib/tally-dev.sh"

DURATION_SECS=15
OUT=""
CONCURRENCY_SWEEP="1 4 16 64 256"
CROSS_SHARD_SHARE=0
# One shard per node: on a machine whose cores every node shares, each further Raft group costs
# a fixed CPU per entry on every replica and spreads the callers over more, smaller entries
# (docs/benchmarks.md: 8 shards did 0.62-0.69x of 3 at 64 callers, alternated).
CLUSTER_SHARDS=3
WITH_ETCD=0
WITH_POSTGRES=1
WITH_CLUSTER=1
BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration-secs) DURATION_SECS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --concurrency) CONCURRENCY_SWEEP="$2"; shift 2 ;;
        --cross-shard-share) CROSS_SHARD_SHARE="$2"; shift 2 ;;
        --cluster-shards) CLUSTER_SHARDS="$2"; shift 2 ;;
        --etcd) WITH_ETCD=1; shift ;;
        --skip-postgres) WITH_POSTGRES=0; shift ;;
        --skip-cluster) WITH_CLUSTER=0; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n 2,19p "$0"; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-$ROOT/benches/results/$(date -u +%Y-%m-%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# Same members and accounts everywhere.
ACCOUNTS=10000
INITIAL_POINTS=1000000
DEV_PORT=50061
PG_PORT=55432

log() { printf '\n== %s  %s\n' "$(date -u +%H:%M:%S)" "$*"; }

if [[ "$WITH_CLUSTER" == 1 && -e "$ROOT/tally-cluster" ]]; then
    echo "tally-cluster/ exists (a local cluster of yours?): run 'cluster/local.sh wipe' first, or pass --skip-cluster" >&2
    exit 2
fi

if [[ "$BUILD" == 1 ]]; then
    log "building (release): tally, tally-loadtest, tally-bench-report"
    cargo build --release -p tally --bin tally -p tally-loadtest --bin tally-loadtest -p tally-benches --bin tally-bench-report
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TALLY="$TARGET_DIR/release/tally"
LOADTEST="$TARGET_DIR/release/tally-loadtest"
REPORT="$TARGET_DIR/release/tally-bench-report"

WORK="$(mktemp -d /tmp/tally-baseline.XXXXXX)"
chmod 755 "$WORK"
STARTED_PIDS=()
PG_DATA=""
cleanup() {
    set +e
    for pid in "${STARTED_PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    if [[ -n "$PG_DATA" && -f "$PG_DATA/postmaster.pid" ]]; then pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null; fi
    if [[ "$WITH_CLUSTER" == 1 && -e "$ROOT/tally-cluster" ]]; then "$ROOT/cluster/local.sh" wipe >/dev/null; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

flush_probe_secs() { # 500 synchronous 4 KiB writes: the disk's fsync cost right now
    local start end
    start=$(date +%s.%N)
    dd if=/dev/zero of="$WORK/flush-probe" bs=4k count=500 oflag=dsync status=none
    end=$(date +%s.%N)
    rm -f "$WORK/flush-probe"
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$start" "$end"
}

FLUSH_BEFORE="$(flush_probe_secs)"
log "flush probe (500 x dd bs=4k oflag=dsync): ${FLUSH_BEFORE} s"

# ---------------------------------------------------------------- PostgreSQL
pg_as_owner() { # runs a PostgreSQL program as the folder's owner (the server refuses root)
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

run_postgres() {
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    if [[ -z "$PG_BIN" ]]; then
        log "installing PostgreSQL (Debian package postgresql)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >/dev/null
        PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    fi
    PG_DATA="$WORK/postgres"
    mkdir -p "$PG_DATA"
    [[ "$(id -u)" == 0 ]] && chown postgres "$PG_DATA"
    log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'): private server in $PG_DATA"
    pg_as_owner "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U tally >/dev/null
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w \
        -o "-p $PG_PORT -k $PG_DATA -c listen_addresses='' -c synchronous_commit=on -c fsync=on -c max_connections=300 -c shared_buffers=256MB" \
        start >/dev/null
    local psql=("$PG_BIN/psql" -h "$PG_DATA" -p "$PG_PORT" -U tally -d postgres -v ON_ERROR_STOP=1 -q)
    pg_as_owner "${psql[@]}" -f "$ROOT/benches/baseline/postgres.sql"
    pg_as_owner "${psql[@]}" -c "INSERT INTO accounts SELECT id, $INITIAL_POINTS FROM generate_series(1, $ACCOUNTS) AS id"
    pg_as_owner "${psql[@]}" -c "VACUUM ANALYZE"
    cp "$ROOT/benches/baseline/transfer.pgbench" "$WORK/transfer.pgbench"
    chmod 644 "$WORK/transfer.pgbench"
    for clients in 16 64; do
        log "pgbench: durable transfers, $clients clients, ${DURATION_SECS} s"
        pg_as_owner "$PG_BIN/pgbench" -h "$PG_DATA" -p "$PG_PORT" -U tally -n -M prepared -c "$clients" -j 2 \
            -T "$DURATION_SECS" -D accounts="$ACCOUNTS" -f "$WORK/transfer.pgbench" postgres | tee "$WORK/pgbench-$clients.txt"
        local tps latency
        tps="$(awk '/^tps = / {print $3}' "$WORK/pgbench-$clients.txt")"
        latency="$(awk '/^latency average = / {print $4}' "$WORK/pgbench-$clients.txt")"
        printf '{"system": "postgresql", "workload": "durable transfer with idempotency key (pgbench, synchronous_commit on)", "clients": %s, "ops_per_sec": %s, "latency_mean_ms": %s}\n' \
            "$clients" "$tps" "$latency" >"$OUT/postgresql__c$clients.json"
    done
    # The baseline must be correct too: points conserved, no negative balance.
    local total negative
    total="$(pg_as_owner "${psql[@]}" -At -c "SELECT sum(balance_points) FROM accounts")"
    negative="$(pg_as_owner "${psql[@]}" -At -c "SELECT count(*) FROM accounts WHERE balance_points < 0")"
    if [[ "$total" != "$((ACCOUNTS * INITIAL_POINTS))" || "$negative" != 0 ]]; then
        echo "PostgreSQL baseline broke its own invariants: total $total, negative balances $negative" >&2
        exit 1
    fi
    log "PostgreSQL: points conserved ($total), no negative balance, $(pg_as_owner "${psql[@]}" -At -c "SELECT count(*) FROM operations") transfers recorded"
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null
}

# ---------------------------------------------------------------- etcd (optional)
run_etcd() {
    if ! command -v etcd >/dev/null 2>&1; then
        log "installing etcd-server (Debian package)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
    fi
    if ! command -v wrk >/dev/null 2>&1; then
        log "installing wrk (Debian package)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
    fi
    local cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
    for member in 1 2 3; do
        etcd --name "e$member" --data-dir "$WORK/etcd-$member" \
            --listen-peer-urls "http://127.0.0.1:2380$member" --initial-advertise-peer-urls "http://127.0.0.1:2380$member" \
            --listen-client-urls "http://127.0.0.1:2379$member" --advertise-client-urls "http://127.0.0.1:2379$member" \
            --initial-cluster "$cluster" --initial-cluster-state new --log-level error >"$WORK/etcd-$member.log" 2>&1 &
        STARTED_PIDS+=($!)
    done
    for _ in $(seq 1 100); do
        curl -sf -X POST -d '{}' http://127.0.0.1:23791/v3/maintenance/status >/dev/null && break
        sleep 0.2
    done
    for clients in 16 64; do
        log "etcd (3 members): puts through the v3 JSON gateway, $clients connections, ${DURATION_SECS} s"
        wrk -t 2 -c "$clients" -d "${DURATION_SECS}s" --latency -s "$ROOT/benches/baseline/etcd-put.lua" \
            http://127.0.0.1:23791 | tee "$WORK/wrk-$clients.txt"
        local rps latency
        rps="$(awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk-$clients.txt")"
        latency="$(awk '/^ +Latency / {print $2; exit}' "$WORK/wrk-$clients.txt")"
        latency="$(python3 -c "import sys; v = sys.argv[1]; print(float(v[:-2]) / 1000 if v.endswith('us') else float(v[:-2]) if v.endswith('ms') else float(v[:-1]) * 1000)" "$latency")"
        printf '{"system": "etcd", "workload": "put (3 members, wrk over the JSON gateway)", "clients": %s, "ops_per_sec": %s, "latency_mean_ms": %s}\n' \
            "$clients" "$rps" "$latency" >"$OUT/etcd__c$clients.json"
    done
    for pid in "${STARTED_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    STARTED_PIDS=()
}

# ---------------------------------------------------------------- Tally
RUN_INDEX=0
loadtest() { # system, run name, target, extra flags...
    local system="$1" name="$2" target="$3"
    shift 3
    RUN_INDEX=$((RUN_INDEX + 1))
    local share="$CROSS_SHARD_SHARE"
    if [[ "${1:-}" == --cross-shard-share ]]; then share="$2"; shift 2; fi
    log "tally-loadtest: $system $name"
    "$LOADTEST" --target "$target" --profile gifting --members "$ACCOUNTS" --initial-points "$INITIAL_POINTS" \
        --cross-shard-share "$share" --duration-secs "$DURATION_SECS" --run-id "r$RUN_INDEX" \
        --report "$OUT/${system}__${name}.json" "$@" >"$OUT/${system}__${name}.txt"
    tail -n 25 "$OUT/${system}__${name}.txt"
}

tally_runs() { # system, gateway URL
    local system="$1" target="$2"
    for concurrency in $CONCURRENCY_SWEEP; do
        loadtest "$system" "c$concurrency" "$target" --concurrency "$concurrency"
    done
    if [[ ! -f "$OUT/${system}__c64.json" ]]; then
        loadtest "$system" "c64" "$target" --concurrency 64
    fi
    # The same at 64 callers with half of the transfers crossing shards (three Raft entries on
    # two shards each: TransferOut, TransferIn, TransferComplete).
    loadtest "$system" "c64-cross-shard" "$target" --cross-shard-share 0.5 --concurrency 64
    loadtest "$system" "batch1000" "$target" --batch 1000 --concurrency 8
    local peak
    peak="$(python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['totals']['ops_per_sec']))" "$OUT/${system}__c64.json")"
    loadtest "$system" "openhalf" "$target" --rate "$((peak / 2))" --concurrency 1024
}

run_tally_dev() {
    log "tally dev (release, fresh data folder) on 127.0.0.1:$DEV_PORT"
    start_tally_dev "$TALLY" "$WORK/dev" "127.0.0.1:$DEV_PORT" "$WORK/dev.log" || exit 1
    STARTED_PIDS+=("$TALLY_DEV_PID")
    tally_runs tally-dev "http://127.0.0.1:$DEV_PORT"
    stop_tally_dev
    STARTED_PIDS=()
}

run_tally_cluster() {
    log "3-node cluster (cluster/local.sh, release binary, $CLUSTER_SHARDS shards): 3 nodes + gateway on 127.0.0.1"
    TALLY_SHARDS="$CLUSTER_SHARDS" TALLY_BIN="$TALLY" "$ROOT/cluster/local.sh" start
    tally_runs tally-cluster "http://127.0.0.1:50051"
    "$ROOT/cluster/local.sh" wipe
}

if [[ "$WITH_POSTGRES" == 1 ]]; then run_postgres; fi
if [[ "$WITH_ETCD" == 1 ]]; then run_etcd; fi
run_tally_dev
if [[ "$WITH_CLUSTER" == 1 ]]; then run_tally_cluster; fi

FLUSH_AFTER="$(flush_probe_secs)"
log "flush probe after: ${FLUSH_AFTER} s"
cat >"$OUT/machine.json" <<EOF
{
  "date": "$(date -u +%Y-%m-%dT%H:%MZ)",
  "commit": "$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo "+changes")",
  "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores shared by every process of the run",
  "memory": "$(free -g | awk '/^Mem:/ {print $2}') GiB",
  "flush probe, 500 x dd bs=4k oflag=dsync (before, after)": "${FLUSH_BEFORE} s, ${FLUSH_AFTER} s",
  "measured phase per run": "${DURATION_SECS} s",
  "tally workload": "tally-loadtest --profile gifting, ${ACCOUNTS} members, cross-shard share ${CROSS_SHARD_SHARE}",
  "cluster": "cluster/local.sh: 3 nodes, ${CLUSTER_SHARDS} shards, replication factor 3"
}
EOF
"$REPORT" "$OUT"
