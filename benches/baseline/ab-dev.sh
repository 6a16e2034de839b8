#!/usr/bin/env bash
# Side-by-side throughput of two `tally` binaries in dev mode, alternated round by round so
# that the machine's drift hits both alike. Each run gets a fresh data folder and a fresh
# `tally dev`, then one tally-loadtest run (with its end-of-run proof). With --cluster, each
# run gets a fresh 3-node cluster of cluster/local.sh instead (started with that binary, wiped
# after the run).
#
#   benches/baseline/ab-dev.sh --a BIN --b BIN [--cluster] [--loadtest BIN] [--rounds 3]
#       [--duration-secs 10] [--concurrency 64] [--profile gifting] [--out DIR] [-- extra loadtest flags]
#
# Prints, and writes to DIR/ab.md, the median ops/s, p50 and p99 (ms) of each binary and the
# B/A ratio of the medians. Uses 127.0.0.1:50071 (dev) or the local cluster's ports (50051,
# 7101-7103, 9101-9103, 9200); refuses to start if the port is taken or tally-cluster/ exists.
set -euo pipefail

A_BIN="" B_BIN="" LOADTEST="" ROUNDS=3 DURATION_SECS=10 CONCURRENCY=64 PROFILE=gifting OUT="" CLUSTER=0
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --a) A_BIN="$2"; shift 2 ;;
        --b) B_BIN="$2"; shift 2 ;;
        --cluster) CLUSTER=1; shift ;;
        --loadtest) LOADTEST="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration-secs) DURATION_SECS="$2"; shift 2 ;;
        --concurrency) CONCURRENCY="$2"; shift 2 ;;
        --profile) PROFILE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "unknown flag $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
[[ -x "$A_BIN" && -x "$B_BIN" ]] || { echo "--a and --b must name executable tally binaries" >&2; exit 2; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOADTEST="${LOADTEST:-$ROOT/target/release/tally-loadtest}"
[[ -x "$LOADTEST" ]] || { echo "no tally-loadtest at $LOADTEST (cargo build --release -p tally-loadtest, or --loadtest)" >&2; exit 2; }
OUT="${OUT:-$(mktemp -d /tmp/tally-ab.XXXXXX)}"
mkdir -p "$OUT"
PORT=50071
if [[ "$CLUSTER" == 1 ]]; then PORT=50051; fi
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "127.0.0.1:$PORT is in use" >&2
    exit 1
fi
if [[ "$CLUSTER" == 1 && -e "$ROOT/tally-cluster" ]]; then
    echo "tally-cluster/ exists (a local cluster of yours?): run 'cluster/local.sh wipe' first" >&2
    exit 1
fi

source "$ROOT/scripts/lib/tally-dev.sh"
stop_all() {
    stop_tally_dev
    if [[ "$CLUSTER" == 1 && -e "$ROOT/tally-cluster" ]]; then "$ROOT/cluster/local.sh" wipe >/dev/null; fi
}
trap stop_all EXIT

run_one() { # label, binary, round
    local label="$1" binary="$2" round="$3" data="$OUT/data-$1-$3"
    if [[ "$CLUSTER" == 1 ]]; then
        TALLY_BIN="$binary" "$ROOT/cluster/local.sh" start >"$OUT/cluster-$label-$round.log" 2>&1 \
            || { tail -n 5 "$OUT/cluster-$label-$round.log" >&2; exit 1; }
    else
        rm -rf "$data"
        start_tally_dev "$binary" "$data" "127.0.0.1:$PORT" "$OUT/dev-$label-$round.log" || exit 1
    fi
    echo "ab: round $round/$ROUNDS, $label ($binary)"
    "$LOADTEST" --target "http://127.0.0.1:$PORT" --profile "$PROFILE" --concurrency "$CONCURRENCY" \
        --duration-secs "$DURATION_SECS" --report "$OUT/$label-$round.json" "${EXTRA[@]}" >"$OUT/$label-$round.txt"
    tail -n 3 "$OUT/$label-$round.txt"
    if [[ "$CLUSTER" == 1 ]]; then
        "$ROOT/cluster/local.sh" wipe >/dev/null
    else
        stop_tally_dev
        rm -rf "$data"
    fi
}

for round in $(seq 1 "$ROUNDS"); do
    run_one a "$A_BIN" "$round"
    run_one b "$B_BIN" "$round"
done

python3 - "$OUT" "$ROUNDS" "$A_BIN" "$B_BIN" <<'EOF' | tee "$OUT/ab.md"
import json, statistics, sys
out, rounds, a_bin, b_bin = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def figures(label):
    rows = []
    for round in range(1, rounds + 1):
        report = json.load(open(f"{out}/{label}-{round}.json"))
        if not report["proof"]["passed"]:
            sys.exit(f"{label} round {round}: the load generator's proof failed")
        latency = [op["latency"] for op in report["operations"] if op["latency"] and op["latency"]["count"]]
        weight = sum(l["count"] for l in latency)
        p50 = sum(l["p50_us"] * l["count"] for l in latency) / weight / 1000
        p99 = max(l["p99_us"] for l in latency) / 1000
        rows.append((report["totals"]["ops_per_sec"], p50, p99))
    return rows
a, b = figures("a"), figures("b")
median = lambda rows, i: statistics.median(row[i] for row in rows)
print(f"| binary | runs ops/s | median ops/s | median p50 ms | median p99 ms |")
print(f"|---|---|---|---|---|")
for name, path, rows in (("A", a_bin, a), ("B", b_bin, b)):
    runs = ", ".join(f"{row[0]:,.0f}" for row in rows)
    print(f"| {name} `{path}` | {runs} | {median(rows, 0):,.0f} | {median(rows, 1):.1f} | {median(rows, 2):.1f} |")
print()
print(f"B/A median ops/s: {median(b, 0) / median(a, 0):.2f}x; p50 {median(b, 1) / median(a, 1):.2f}x; p99 {median(b, 2) / median(a, 2):.2f}x")
EOF
echo "ab: reports in $OUT"
