#!/usr/bin/env bash
# Chaos run of the compose cluster (compose.yaml: three nodes, a gateway, init) under the load
# generator, ending with its correctness proof.
#
#   cluster/docker/chaos.sh [--duration-secs N] [--seed S] [--build-image]
#
# 1. Uses the tally:local image (builds it with build-image.sh when missing or with
#    --build-image), builds tally-loadtest and tally-chaos-report on the host (cargo, debug
#    profile; TALLY_CHAOS_RELEASE=1 for release), and takes the `tally` CLI out of the image.
# 2. Starts the cluster as its own compose project (TALLY_CHAOS_PROJECT, default tallychaos:
#    containers tallychaos-node1..3, -gateway, -init, network tallychaos-net, volumes
#    tallychaos-node*-data), gateway on 127.0.0.1:$TALLY_CHAOS_GATEWAY_PORT (default 56051), so
#    it never touches fault-test.sh's cluster (tally-*, tallynet, port 55051).
# 3. Runs `tally-loadtest --profile mixed` (closed loop, cross-shard transfers, replays and
#    short-timeout probes, --timeline) against the gateway for N seconds, and meanwhile injects
#    faults in an order drawn from the seed, each kind once per round, with pauses between them:
#      partition        docker network disconnect of a node, hold, connect (with its alias)
#      kill-leader      docker kill (SIGKILL) of the node leading the most shards, hold, start
#      restart          docker restart of a node (SIGINT, then SIGKILL after 10 s)
#      pause            docker kill -s STOP of a node for longer than the election timeout
#                       (2 s max), then -s CONT
#      gateway-restart  docker restart of the gateway
#    Faults are logged with their start and end times. None is injected in the last
#    TALLY_CHAOS_QUIET_SECS (12) seconds of the load, so the cluster heals before the proof.
# 4. After the load: the generator's proof (acknowledged operations read back, each checked by
#    key in the statements, unknown outcomes resolved, conservation), then every replica's
#    applied index and state digest must equal its leader's (`tally status`).
# 5. tally-chaos-report prints the table (acknowledged, lost, applied twice, faults by kind,
#    each fault's unavailability, every unavailability window) and writes chaos-report.json.
# Exits non-zero when the proof fails, anything is lost or applied twice, replicas differ, a
# fault kind was never injected, or a step fails. The cluster is always deleted at exit
# (`down -v` of the project only).
#
# Environment:
#   TALLY_CHAOS_GATEWAY_PORT  host port of the gateway [56051]
#   TALLY_CHAOS_PROJECT       compose project and name prefix [tallychaos]
#   TALLY_CHAOS_OUT_DIR       where the reports go [${TMPDIR:-/tmp}/tally-chaos-<time>]
#   TALLY_CHAOS_MEMBERS       members of the load [2000]
#   TALLY_CHAOS_CONCURRENCY   calls in flight [32]
#   TALLY_CHAOS_QUIET_SECS    fault-free tail of the load [12]
#   TALLY_CHAOS_RELEASE=1     build the generator in release mode
#   TALLY_CHAOS_BIN_DIR       take tally-loadtest and tally-chaos-report from this folder
#                             instead of running cargo (e.g. target/debug after a build step)
#   TALLY_CHAOS_REPLACE=1     delete an existing cluster of the same project instead of refusing
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
cd "$repo_root"
# shellcheck source=lib.sh
source "$script_dir/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
duration=300
seed=""
build_image=0
while (( $# > 0 )); do
    case "$1" in
        --duration-secs) duration="${2:?--duration-secs needs a value}"; shift 2 ;;
        --seed) seed="${2:?--seed needs a value}"; shift 2 ;;
        --build-image) build_image=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$duration" =~ ^[0-9]+$ ]] && (( duration >= 45 )) \
    || { echo "error: --duration-secs must be a whole number of seconds, at least 45" >&2; exit 2; }
[[ -z "$seed" ]] && seed=$(( $(date +%s%N) % 1000000 ))
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "error: --seed must be a non-negative integer" >&2; exit 2; }
RANDOM=$seed # every draw below comes from bash's generator, seeded here

project="${TALLY_CHAOS_PROJECT:-tallychaos}"
[[ "$project" =~ ^[a-z][a-z0-9]*$ ]] || { echo "error: TALLY_CHAOS_PROJECT must be lower-case letters and digits" >&2; exit 2; }
port="${TALLY_CHAOS_GATEWAY_PORT:-56051}"
export TALLY_GATEWAY_PORT="$port" # compose.yaml publishes the gateway on it
image="tally:local"               # compose.yaml names this image
network="$project-net"
gateway="$project-gateway"
cli_prefix="$project-cli-"
nodes=(1 2 3)
shard_count=8
members="${TALLY_CHAOS_MEMBERS:-2000}"
concurrency="${TALLY_CHAOS_CONCURRENCY:-32}"
quiet_secs="${TALLY_CHAOS_QUIET_SECS:-12}"
out_dir="${TALLY_CHAOS_OUT_DIR:-${TMPDIR:-/tmp}/tally-chaos-$(date +%Y%m%d-%H%M%S)}"
script_start=$(now_ms)
node_container() { echo "$project-node$1"; }

work_dir=""
cid=""
load_pid=""
budget_end=0
fail() { log "FAIL: $*"; exit 1; }
check_budget() { (( budget_end == 0 || $(now_ms) < budget_end )) || fail "over the time budget"; }

# ---------------------------------------------------------------------------------------------
# Teardown

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$load_pid" ]] && kill -0 "$load_pid" 2>/dev/null; then
        log "stopping the load generator (pid $load_pid)"
        kill "$load_pid" 2>/dev/null || true
        wait "$load_pid" 2>/dev/null || true
    fi
    if [[ -n "$work_dir" ]] && docker inspect "$gateway" >/dev/null 2>&1; then
        if (( rc != 0 )); then
            local c
            for c in "$project-init" "$gateway" "$(node_container 1)" "$(node_container 2)" "$(node_container 3)"; do
                docker logs -t "$c" >"$out_dir/$c.log" 2>&1 || true
            done
            log "container logs kept in $out_dir"
        fi
        log "teardown: ${compose[*]} down -v"
        remove_stray_cli_containers
        timeout 120 "${compose[@]}" down -v -t 5 >/dev/null 2>&1 || log "teardown: down -v failed (rc $?)"
    fi
    [[ -n "$cid" ]] && docker rm -v "$cid" >/dev/null 2>&1
    local left
    left="$(docker ps -a --format '{{.Names}}' | grep -E "^$project-" || true) $(docker volume ls -q | grep -E "^$project-" || true)"
    [[ -z "${left// /}" ]] || log "teardown: WARNING: still there: $left"
    [[ -n "$work_dir" ]] && rm -rf "$work_dir"
    log "reports in $out_dir"
    if (( rc == 0 )); then echo "chaos run PASSED (seed $seed)"; else echo "chaos run FAILED (seed $seed, exit $rc)"; fi
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Preconditions, image, host binaries

command -v docker >/dev/null 2>&1 || { echo "error: docker is not installed" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "error: cannot reach the Docker daemon" >&2; exit 2; }
existing="$(docker ps -a --format '{{.Names}}' | grep -E "^$project-(node[0-9]+|gateway|init)\$" || true)"
existing_volumes="$(docker volume ls --format '{{.Name}}' | grep -E "^$project-node[0-9]+-data\$" || true)"
mkdir -p "$out_dir"
work_dir="$(mktemp -d "${TMPDIR:-/tmp}/tally-chaos.XXXXXX")"
# The same compose file, with this project's own container, network and volume names.
override="$work_dir/compose.override.yaml"
{
    echo "services:"
    for s in node1 node2 node3 gateway init; do printf '  %s:\n    container_name: %s-%s\n' "$s" "$project" "$s"; done
    printf 'networks:\n  tallynet:\n    name: %s\nvolumes:\n' "$network"
    for n in "${nodes[@]}"; do printf '  tally-node%s-data:\n    name: %s-node%s-data\n' "$n" "$project" "$n"; done
} >"$override"
compose=("${compose_base[@]}" -p "$project" -f "$script_dir/compose.yaml" -f "$override")
if [[ -n "$existing$existing_volumes" ]]; then
    if [[ "${TALLY_CHAOS_REPLACE:-0}" != 1 ]]; then
        echo "error: a $project cluster (or its data) exists: $(echo $existing $existing_volumes)" >&2
        echo "       remove it (${compose[*]} down -v) or rerun with TALLY_CHAOS_REPLACE=1" >&2
        rm -rf "$work_dir"
        exit 2
    fi
    log "TALLY_CHAOS_REPLACE=1: deleting the existing $project cluster"
    timeout 120 "${compose[@]}" down -v -t 5 >/dev/null 2>&1 || true
fi
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log "chaos run: seed $seed, $duration s of load, project $project, gateway 127.0.0.1:$port, reports in $out_dir"

if (( build_image == 1 )) || ! docker image inspect "$image" >/dev/null 2>&1; then
    log "building $image (log: $out_dir/build-image.log)"
    TALLY_IMAGE="$image" "$script_dir/build-image.sh" >"$out_dir/build-image.log" 2>&1 \
        || { tail -n 20 "$out_dir/build-image.log" >&2; fail "build-image.sh failed"; }
fi
log "image $image: $(docker image inspect -f '{{.Id}} built {{.Created}}' "$image" | cut -c1-80)"

if [[ -n "${TALLY_CHAOS_BIN_DIR:-}" ]]; then
    bin_dir="$TALLY_CHAOS_BIN_DIR"
else
    cargo_profile=debug
    cargo_flags=()
    if [[ "${TALLY_CHAOS_RELEASE:-0}" == 1 ]]; then cargo_profile=release; cargo_flags=(--release); fi
    log "building tally-loadtest and tally-chaos-report ($cargo_profile; log: $out_dir/cargo-build.log)"
    cargo build -p tally-loadtest --bins "${cargo_flags[@]}" >"$out_dir/cargo-build.log" 2>&1 \
        || { tail -n 20 "$out_dir/cargo-build.log" >&2; fail "cargo build -p tally-loadtest failed"; }
    bin_dir="${CARGO_TARGET_DIR:-$repo_root/target}/$cargo_profile"
fi
loadtest_bin="$bin_dir/tally-loadtest"
report_bin="$bin_dir/tally-chaos-report"
[[ -x "$loadtest_bin" && -x "$report_bin" ]] || fail "no tally-loadtest and tally-chaos-report in $bin_dir"
# The CLI of the image itself (a static binary), talking to the published gateway port.
cid="$(docker create "$image")"
docker cp "$cid:/tally" "$work_dir/tally" >/dev/null
docker rm -v "$cid" >/dev/null # -v: the image declares VOLUME /data
cid=""
host_bin="$work_dir/tally"
cli_addr="http://127.0.0.1:$port"

# ---------------------------------------------------------------------------------------------
# Up

log "== up: ${compose[*]} up -d --no-build"
timeout 120 "${compose[@]}" up -d --no-build >"$out_dir/compose-up.log" 2>&1 \
    || { cat "$out_dir/compose-up.log" >&2; fail "compose up failed (is port $port free?)"; }
init_rc="$(timeout 100 docker wait "$project-init")" || fail "$project-init did not exit within 100 s"
[[ "$init_rc" == 0 ]] || { docker logs "$project-init" 2>&1 | tail -n 20 >&2; fail "$project-init exited with $init_rc"; }
budget_end=$(( $(now_ms) + 120000 ))
wait_converged 90
budget_end=0
log "cluster up: 3 healthy nodes, every shard led, replicas equal"

# ---------------------------------------------------------------------------------------------
# Faults

faults_file="$out_dir/faults.tsv"
: >"$faults_file"
declare -A injected=()
fault_start=0
rand_between() { r=$(( $1 + RANDOM % ($2 - $1 + 1) )); } # LO HI (integers) -> r; main shell only
begin_fault() { fault_start=$(now_ms); log "fault $1 on $2: $3"; }
end_fault() { # KIND TARGET
    local end
    end=$(now_ms)
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$fault_start" "$end" >>"$faults_file"
    injected[$1]=$(( ${injected[$1]:-0} + 1 ))
    log "fault $1 on $2 undone $(secs_since "$fault_start") s after its injection"
}
random_node() { rand_between 1 "${#nodes[@]}"; target_node="${nodes[$((r - 1))]}"; }

fault_partition() {
    random_node
    local c hold_ms
    c="$(node_container "$target_node")"
    rand_between 2000 5000; hold_ms=$r
    begin_fault partition "node$target_node" "docker network disconnect for $hold_ms ms"
    dock network disconnect "$network" "$c"
    sleep "$(( hold_ms / 1000 )).$(printf '%03d' $(( hold_ms % 1000 )))"
    # compose gave the container the alias node<N>; a plain connect would not.
    dock network connect --alias "node$target_node" "$network" "$c"
    end_fault partition "node$target_node"
}

fault_kill_leader() {
    local victim="" attempt hold_ms c
    for attempt in 1 2 3 4 5; do
        if get_status; then victim="$(busiest_leader)"; fi
        [[ -n "$victim" ]] && break
        sleep 0.5
    done
    if [[ -z "$victim" ]]; then random_node; victim="$target_node"; log "no leader in status; killing node $victim"; fi
    c="$(node_container "$victim")"
    rand_between 2000 5000; hold_ms=$r
    begin_fault kill-leader "node$victim" "docker kill (SIGKILL), leads shards $(shards_led_by "$victim" | tr '\n' ' ')for $hold_ms ms down"
    dock kill "$c"
    sleep "$(( hold_ms / 1000 )).$(printf '%03d' $(( hold_ms % 1000 )))"
    dock start "$c"
    end_fault kill-leader "node$victim"
}

fault_restart() {
    random_node
    begin_fault restart "node$target_node" "docker restart -t 10"
    dock restart -t 10 "$(node_container "$target_node")"
    end_fault restart "node$target_node"
}

fault_pause() {
    random_node
    local c hold_ms pid state
    c="$(node_container "$target_node")"
    rand_between 2500 4500; hold_ms=$r # election timeout: 1-2 s
    begin_fault pause "node$target_node" "docker kill -s STOP for $hold_ms ms"
    dock kill -s STOP "$c"
    pid="$(docker inspect -f '{{.State.Pid}}' "$c")"
    state="$(ps -o stat= -p "$pid" 2>/dev/null || echo '?')"
    [[ "$state" == T* ]] || log "  warning: node$target_node (pid $pid) is in state '$state', not stopped"
    sleep "$(( hold_ms / 1000 )).$(printf '%03d' $(( hold_ms % 1000 )))"
    dock kill -s CONT "$c"
    end_fault pause "node$target_node"
}

fault_gateway_restart() {
    begin_fault gateway-restart gateway "docker restart -t 10"
    dock restart -t 10 "$gateway"
    end_fault gateway-restart gateway
}

# Upper bound of a fault's length in seconds (its hold, plus docker's own time).
cost_secs() {
    case "$1" in
        partition) echo 7 ;; kill-leader) echo 9 ;; restart) echo 14 ;; pause) echo 6 ;; gateway-restart) echo 13 ;;
    esac
}

kinds=(partition kill-leader restart pause gateway-restart)
skipped=()
inject_faults() { # LOAD_END_MS
    local load_end="$1" round=0 i j tmp kind order gap_ms
    while true; do
        round=$((round + 1))
        order=("${kinds[@]}")
        for (( i = ${#order[@]} - 1; i > 0; i-- )); do # Fisher-Yates from the seed
            j=$(( RANDOM % (i + 1) )); tmp="${order[$i]}"; order[$i]="${order[$j]}"; order[$j]="$tmp"
        done
        log "round $round: ${order[*]}"
        local fitted=0
        for kind in "${order[@]}"; do
            rand_between 2000 4000; gap_ms=$r
            if (( $(now_ms) + gap_ms + ($(cost_secs "$kind") + quiet_secs) * 1000 > load_end )); then
                (( round == 1 )) && skipped+=("$kind")
                continue
            fi
            sleep "$(( gap_ms / 1000 )).$(printf '%03d' $(( gap_ms % 1000 )))"
            kill -0 "$load_pid" 2>/dev/null || fail "the load generator exited during the faults (see $out_dir/load.err)"
            "fault_${kind//-/_}"
            fitted=1
        done
        (( fitted == 1 )) || break
    done
}

# ---------------------------------------------------------------------------------------------
# Load

log "== load: tally-loadtest --profile mixed for $duration s ($members members, $concurrency in flight)"
"$loadtest_bin" --target "$cli_addr" --profile mixed --partners 2 --members "$members" \
    --concurrency "$concurrency" --connections 4 --cross-shard-share 0.5 --duration-secs "$duration" \
    --seed "$seed" --timeline --report "$out_dir/load.json" >"$out_dir/load.txt" 2>"$out_dir/load.err" &
load_pid=$!
deadline=$(( $(now_ms) + 300000 ))
until grep -q 'measured phase started' "$out_dir/load.err" 2>/dev/null; do
    kill -0 "$load_pid" 2>/dev/null || { tail -n 20 "$out_dir/load.err" >&2; fail "the load generator exited during its setup"; }
    (( $(now_ms) < deadline )) || fail "the load generator's setup took over 300 s"
    sleep 0.2
done
load_start=$(now_ms)
log "load running: $(grep -m 1 'measured phase started' "$out_dir/load.err")"
inject_faults $(( load_start + duration * 1000 ))
log "faults done: $(for k in "${kinds[@]}"; do printf '%s %s  ' "$k" "${injected[$k]:-0}"; done)"
log "waiting for the load generator (load ends $(( (load_start + duration * 1000 - $(now_ms)) / 1000 )) s from now, then its proof)"
load_rc=0
wait "$load_pid" || load_rc=$?
load_pid=""
sed 's/^/  load| /' "$out_dir/load.txt" >&2
(( load_rc == 0 || load_rc == 1 )) || { tail -n 20 "$out_dir/load.err" >&2; fail "the load generator failed (exit $load_rc)"; }

# ---------------------------------------------------------------------------------------------
# Replicas, verdict

log "== replicas: every replica's applied index and state digest equal its leader's"
replicas="never converged"
converge_deadline=$(( $(now_ms) + 120000 ))
good=0
while (( $(now_ms) < converge_deadline )); do
    if get_status; then replicas="$(status_problems)"; else replicas="status failed: $(tail -n 1 <<<"$status_out")"; fi
    if [[ -z "$replicas" ]]; then good=$((good + 1)); (( good >= 2 )) && break; else good=0; fi
    sleep 0.5
done
printf '%s\n' "$status_out" >"$out_dir/status.txt"
[[ -z "$replicas" ]] && replicas=ok
log "replicas: $replicas"

never=()
for k in "${kinds[@]}"; do [[ -n "${injected[$k]:-}" ]] || never+=("$k"); done
report_rc=0
"$report_bin" --report "$out_dir/load.json" --faults "$faults_file" --replicas "$replicas" --seed "$seed" \
    --json "$out_dir/chaos-report.json" | tee "$out_dir/chaos-report.txt" || report_rc=$?
(( ${#never[@]} == 0 )) || fail "fault kinds never injected (load too short?): ${never[*]}"
(( report_rc == 0 && load_rc == 0 )) || fail "the chaos report failed (report exit $report_rc, load generator exit $load_rc)"
log "chaos run passed in $(secs_since "$script_start") s"
