#!/usr/bin/env bash
# Container fault test of the compose cluster (compose.yaml): three nodes, a gateway, init.
#
#   cluster/docker/fault-test.sh                          # from any directory
#   TALLY_SKIP_IMAGE_BUILD=1 TALLY_GATEWAY_PORT=55051 cluster/docker/fault-test.sh
#
# Steps (each must pass; the script exits non-zero with the reason on the first failure):
#   image      cluster/docker/build-image.sh (skipped with TALLY_SKIP_IMAGE_BUILD=1)
#   up         compose up on 127.0.0.1:$TALLY_GATEWAY_PORT; tally-init exits 0; `tally status`
#              shows 3 healthy nodes, a leader for every shard, all replicas caught up
#   writes     a partner, an earn for each of 20 members, 8 transfers; every acknowledged
#              write is recorded (expected balance per member)
#   kill       `docker kill` the node leading the most shards; time until a write to each
#              shard it led succeeds again (retried with the same idempotency key)
#   restart    `docker start` it; wait until every replica's applied index and state digest
#              equal its group leader's
#   partition  `docker network disconnect tallynet` the node leading the most shards; writes
#              to every shard (and a transfer) still succeed; reconnect; replicas converge
#   gateway    `docker restart tally-gateway`; time until writes succeed again
#   verify     every member's balance equals the expected one; every currency conserved
#   teardown   `docker stop` all containers at once: each should exit 0 on SIGINT (a WARN
#              otherwise, see TALLY_FAULT_TEST_STRICT_STOP), then `down -v`
# A summary table (step, result, seconds) is printed at the end, pass or fail.
#
# The CLI runs in throwaway containers on the cluster network (`docker run --rm --network
# tallynet tally:local --addr http://gateway:50051 ...`), so no host binary is needed. Set
# TALLY_BIN=path/to/tally to use a host binary instead (it talks to 127.0.0.1:$TALLY_GATEWAY_PORT).
#
# Environment:
#   TALLY_GATEWAY_PORT           host port of the gateway [55051]
#   TALLY_SKIP_IMAGE_BUILD=1     use the existing tally:local image
#   TALLY_BIN                    host tally binary for the CLI [unset: CLI in containers]
#   TALLY_FAULT_TEST_BUDGET_SECS time allowed after the image step [240]
#   TALLY_FAULT_TEST_REPLACE=1   delete an existing compose cluster (tally-node*, tally-gateway,
#                                tally-init and the tally-node*-data volumes) instead of refusing
#   TALLY_FAULT_TEST_STRICT_STOP=1  fail (not just warn) when a container does not stop on its
#                                stop signal within compose's grace period at teardown
#
# The cluster is always torn down at exit (`docker-compose down -v`: containers, the tallynet
# network and the three data volumes). Needs docker and docker-compose (or `docker compose`).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
cd "$repo_root"

port="${TALLY_GATEWAY_PORT:-55051}"
export TALLY_GATEWAY_PORT="$port"
image="tally:local" # compose.yaml names this image
budget="${TALLY_FAULT_TEST_BUDGET_SECS:-240}"
network="tallynet"
nodes=(1 2 3)
member_count=20
partner_id="faulttest"
currency="FAULT"
cli_prefix="tally-faulttest-cli-"

# shellcheck source=lib.sh
source "$script_dir/lib.sh"
compose=("${compose_base[@]}" -f "$script_dir/compose.yaml")

# ---------------------------------------------------------------------------------------------
# Output, timing, the summary table

script_start=$(now_ms)
work_dir="" # made once the preconditions hold
budget_end=0 # set after the image step
summary_steps=()
summary_results=()
summary_secs=()
current_step=""
step_start=0
record() { summary_steps+=("$1"); summary_results+=("$2"); summary_secs+=("$3"); }
begin() { current_step="$1"; step_start=$(now_ms); log "== $1: $2"; }
pass() { record "$current_step" "ok${1:+ ($1)}" "$(secs_since "$step_start")"; current_step=""; }
fail() {
    log "FAIL: $*"
    [[ -n "$current_step" ]] && record "$current_step" "FAIL: $*" "$(secs_since "$step_start")"
    current_step=""
    exit 1
}

print_summary() {
    local i
    printf '\n%-10s %8s  %s\n' "step" "seconds" "result"
    for i in "${!summary_steps[@]}"; do
        printf '%-10s %8s  %s\n' "${summary_steps[$i]}" "${summary_secs[$i]}" "${summary_results[$i]}"
    done
    printf '%-10s %8s\n' "total" "$(secs_since "$script_start")"
}

check_budget() {
    (( budget_end == 0 || $(now_ms) < budget_end )) || fail "over the time budget (${budget} s after the image step)"
}

# ---------------------------------------------------------------------------------------------
# Teardown

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$current_step" ]]; then
        record "$current_step" "FAIL: interrupted (exit $rc)" "$(secs_since "$step_start")"
    fi
    local c
    if (( rc != 0 )) && docker inspect tally-gateway >/dev/null 2>&1; then
        log "logs of the last 20 s (failure diagnostics):"
        for c in tally-init tally-gateway tally-node1 tally-node2 tally-node3; do
            docker logs --since 20s "$c" 2>&1 | tail -n 8 | sed "s/^/  $c| /" >&2 || true
        done
        # A node that exited on its own says why in its last lines, however long ago.
        for c in tally-node1 tally-node2 tally-node3; do
            if [[ "$(docker inspect -f '{{.State.Status}}' "$c" 2>/dev/null)" == exited ]]; then
                log "$c exited (code $(docker inspect -f '{{.State.ExitCode}}' "$c")); its last lines:"
                docker logs "$c" 2>&1 | grep -v 'dns error' | tail -n 12 | sed "s/^/  $c| /" >&2 || true
            fi
        done
    fi
    # Stop every container first (all at once, as compose does) to check that each stops
    # cleanly on its stop signal (SIGINT) within the grace period: exit code 0, not 137.
    local stop_ms unclean="" slowest="" line
    if docker inspect tally-gateway >/dev/null 2>&1; then
        current_step=teardown
        step_start=$(now_ms)
        log "== teardown: docker stop every container, then ${compose[*]} down -v"
        for c in tally-gateway tally-node1 tally-node2 tally-node3; do
            (
                trap - EXIT INT TERM
                stop_ms=$(now_ms)
                timeout 60 docker stop "$c" >/dev/null 2>&1 || true
                echo "$c $(secs_since "$stop_ms") $(docker inspect -f '{{.State.ExitCode}}' "$c" 2>/dev/null)"
            ) >"$work_dir/stop-$c" &
        done
        wait
        for c in tally-gateway tally-node1 tally-node2 tally-node3; do
            read -r line <"$work_dir/stop-$c" || line="$c ? ?"
            set -- $line
            log "  $1 stopped in $2 s, exit code $3"
            [[ "$3" == 0 ]] || unclean="$unclean $1 (exit $3 after $2 s)"
        done
        slowest="$(cat "$work_dir"/stop-* | sort -k2 -n | tail -n 1 | awk '{print $1 " " $2 " s"}')"
        if [[ -n "$unclean" ]]; then
            # Known: a node holding half-open connections from peers that vanished (a killed node,
            # a partition) waits for them in its graceful shutdown until docker's SIGKILL.
            if [[ "${TALLY_FAULT_TEST_STRICT_STOP:-0}" == 1 ]]; then
                record teardown "FAIL: not stopped cleanly by SIGINT:$unclean" "$(secs_since "$step_start")"
                (( rc == 0 )) && rc=1
            else
                record teardown "WARN: not stopped cleanly by SIGINT (killed after the grace period):$unclean" \
                    "$(secs_since "$step_start")"
            fi
        else
            record teardown "ok (all stopped cleanly; slowest $slowest)" "$(secs_since "$step_start")"
        fi
        current_step=""
    fi
    if (( rc != 0 )) && docker inspect tally-gateway >/dev/null 2>&1; then
        local logs_dir="${TMPDIR:-/tmp}/tally-fault-test-logs-$(date +%Y%m%d-%H%M%S)"
        mkdir -p "$logs_dir"
        for c in tally-init tally-gateway tally-node1 tally-node2 tally-node3; do
            docker logs -t "$c" >"$logs_dir/$c.log" 2>&1 || true
        done
        log "full container logs kept in $logs_dir"
    fi
    log "teardown: ${compose[*]} down -v"
    remove_stray_cli_containers
    timeout 120 "${compose[@]}" down -v >/dev/null 2>&1 || log "teardown: down -v failed (rc $?)"
    [[ -n "$work_dir" ]] && rm -rf "$work_dir"
    print_summary
    if (( rc == 0 )); then echo "fault test PASSED"; else echo "fault test FAILED"; fi
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# The CLI (`cli` is in lib.sh)

host_bin="${TALLY_BIN:-}"
if [[ -n "$host_bin" ]]; then
    [[ -x "$host_bin" ]] || { echo "error: TALLY_BIN=$host_bin is not an executable" >&2; exit 2; }
    cli_addr="http://127.0.0.1:$port"
else
    cli_addr="http://gateway:50051"
fi
export TALLY_API_KEY="" # set after `partner create`; given to the CLI through the environment

last_output=""
# write_retry KEY TIMEOUT_S ARGS... : a write with idempotency key KEY, sent again with the same
# key until it is acknowledged or TIMEOUT_S passed. Refusals that a retry cannot change fail
# at once. Sets last_output.
write_retry() {
    local key="$1" limit="$2"
    shift 2
    local deadline=$(( $(now_ms) + limit * 1000 )) attempt=0
    while true; do
        attempt=$((attempt + 1))
        if last_output="$(cli 15 --key "$key" "$@")"; then
            (( attempt > 1 )) && log "  $1 $key acknowledged after $attempt attempts"
            return 0
        fi
        if grep -qE 'InvalidArgument|FailedPrecondition|AlreadyExists|OutOfRange' <<<"$last_output"; then
            fail "$* (key $key) refused: $(tail -n 2 <<<"$last_output" | tr '\n' ' ')"
        fi
        log "  $1 $key attempt $attempt not acknowledged: $(grep -m 1 -E '^error|: ' <<<"$last_output" | cut -c1-160)"
        if (( $(now_ms) >= deadline )); then
            fail "$* (key $key) not acknowledged within ${limit} s; last answer: $(tail -n 2 <<<"$last_output" | tr '\n' ' ')"
        fi
        check_budget
        sleep 0.3
    done
}

declare -A expected=()
acknowledged=0
earn() { # MEMBER POINTS KEY TIMEOUT_S
    write_retry "$3" "$4" earn --member "$1" --points "$2"
    expected[$1]=$(( ${expected[$1]:-0} + $2 ))
    acknowledged=$((acknowledged + 1))
}
transfer() { # FROM TO POINTS KEY TIMEOUT_S
    write_retry "$4" "$5" transfer --from "$1" --to "$2" --points "$3"
    expected[$1]=$(( ${expected[$1]:-0} - $3 ))
    expected[$2]=$(( ${expected[$2]:-0} + $3 ))
    acknowledged=$((acknowledged + 1))
}

# ---------------------------------------------------------------------------------------------
# Routing (docs: shard = u64::from_be_bytes(sha256(member_id)[0..8]) % shard_count)

shard_count=8
# member_on_shard SHARD -> a member id on that shard (one of ours if one is there)
member_on_shard() {
    local m i
    for m in "${members[@]}"; do
        [[ "$(shard_of "$m")" == "$1" ]] && { echo "$m"; return; }
    done
    for i in $(seq 1 500); do
        m="ft-probe-$1-$i"
        [[ "$(shard_of "$m")" == "$1" ]] && { echo "$m"; return; }
    done
    fail "no member id found for shard $1"
}

# Status: get_status, status_problems, wait_converged, busiest_leader, shards_led_by (lib.sh).

# ---------------------------------------------------------------------------------------------
# 0. Preconditions

command -v docker >/dev/null 2>&1 || { echo "error: docker is not installed" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "error: cannot reach the Docker daemon" >&2; exit 2; }
existing="$(docker ps -a --format '{{.Names}}' | grep -E '^tally-(node[0-9]+|gateway|init)$' || true)"
existing_volumes="$(docker volume ls --format '{{.Name}}' | grep -E '^tally-node[0-9]+-data$' || true)"
if [[ -n "$existing$existing_volumes" ]]; then
    if [[ "${TALLY_FAULT_TEST_REPLACE:-0}" != 1 ]]; then
        echo "error: a compose cluster (or its data) exists: $(echo $existing $existing_volumes)" >&2
        echo "       the fault test deletes it at the end; remove it yourself" >&2
        echo "       (${compose[*]} down -v) or rerun with TALLY_FAULT_TEST_REPLACE=1" >&2
        exit 2
    fi
    log "TALLY_FAULT_TEST_REPLACE=1: deleting the existing compose cluster"
    timeout 120 "${compose[@]}" down -v >/dev/null 2>&1 || true
fi
# From here on every exit tears the cluster down.
work_dir="$(mktemp -d "${TMPDIR:-/tmp}/tally-fault-test.XXXXXX")"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# 1. Image

if [[ "${TALLY_SKIP_IMAGE_BUILD:-0}" == 1 ]]; then
    docker image inspect "$image" >/dev/null 2>&1 || { echo "error: TALLY_SKIP_IMAGE_BUILD=1 but there is no $image image" >&2; exit 2; }
    record image "skipped (TALLY_SKIP_IMAGE_BUILD=1)" 0
else
    begin image "cluster/docker/build-image.sh (log: ${TMPDIR:-/tmp}/tally-fault-test-build.log)"
    TALLY_IMAGE="$image" "$script_dir/build-image.sh" >"${TMPDIR:-/tmp}/tally-fault-test-build.log" 2>&1 \
        || { tail -n 20 "${TMPDIR:-/tmp}/tally-fault-test-build.log" >&2; fail "build-image.sh failed"; }
    pass
fi
budget_end=$(( $(now_ms) + budget * 1000 ))

# ---------------------------------------------------------------------------------------------
# 2. Up

begin up "compose up (gateway on 127.0.0.1:$port), cluster init"
timeout 120 "${compose[@]}" up -d --no-build >/dev/null 2>&1 \
    || { timeout 120 "${compose[@]}" up -d --no-build >&2 || true; fail "compose up failed (is port $port free?)"; }
init_rc="$(timeout 100 docker wait tally-init)" || fail "tally-init did not exit within 100 s"
if [[ "$init_rc" != 0 ]]; then
    docker logs tally-init 2>&1 | tail -n 20 >&2
    fail "tally-init exited with $init_rc"
fi
docker logs tally-init 2>&1 | sed 's/^/  init| /' >&2
wait_converged 90
shard_count="$(head -n 1 <<<"$status_out" | awk '{print $1}')"
[[ "$shard_count" =~ ^[0-9]+$ && "$shard_count" -gt 0 ]] || fail "cannot read the shard count from status"
pass "$shard_count shards, 3 healthy nodes"

# ---------------------------------------------------------------------------------------------
# 3. Writes

begin writes "partner, $member_count earns, 8 transfers"
out="$(cli 20 partner create --id "$partner_id" --currency "$currency" --name "fault test")" || true
if ! grep -q 'api key (shown once):' <<<"$out"; then
    # A lost answer may have created it: a new key then.
    grep -q 'AlreadyExists' <<<"$out" || fail "partner create failed: $out"
    out="$(cli 20 partner rotate-key --id "$partner_id")" || fail "partner rotate-key failed: $out"
fi
TALLY_API_KEY="$(sed -n 's/.*api key (shown once): *//p' <<<"$out" | tail -n 1)"
[[ -n "$TALLY_API_KEY" ]] || fail "no API key in: $out"
export TALLY_API_KEY
members=()
for i in $(seq 1 "$member_count"); do members+=("$(printf 'ft-member-%02d' "$i")"); done
for i in "${!members[@]}"; do
    earn "${members[$i]}" $(( 100 + i )) "ft-earn-$i" 30
done
for j in $(seq 0 7); do
    transfer "${members[$j]}" "${members[$((j + 10))]}" $(( 5 * (j + 1) )) "ft-transfer-$j" 30
done
pass "$acknowledged writes acknowledged"

# ---------------------------------------------------------------------------------------------
# 4. Kill the busiest leader

begin kill "docker kill the node leading the most shards"
get_status || fail "status failed: $status_out"
victim="$(busiest_leader)"
[[ -n "$victim" ]] || fail "no shard leader in status"
mapfile -t victim_shards < <(shards_led_by "$victim")
log "  node $victim leads shards ${victim_shards[*]}; killing tally-node$victim"
declare -A probe=()
for s in "${victim_shards[@]}"; do probe[$s]="$(member_on_shard "$s")"; done
# Baseline: one write to a shard it leads, through the same CLI path (a container start is
# part of every measured time below).
base_ms=$(now_ms)
earn "${probe[${victim_shards[0]}]}" 1 "ft-baseline" 30
baseline="$(secs_since "$base_ms")"
log "  baseline: a write takes ${baseline} s end to end (CLI start included)"
kill_ms=$(now_ms)
dock kill "tally-node$victim"
# One prober per shard it led, all at once: each sends its write, with its own idempotency
# key, again and again until acknowledged; the time from the kill to that is the shard's
# failover time.
for s in "${victim_shards[@]}"; do
    (
        trap - EXIT INT TERM
        while true; do
            if out="$(cli 15 --key "ft-failover-$s" earn --member "${probe[$s]}" --points 1)"; then
                echo $(( $(now_ms) - kill_ms )) >"$work_dir/failover-$s"
                exit 0
            elif grep -qE 'InvalidArgument|FailedPrecondition|AlreadyExists|OutOfRange' <<<"$out"; then
                echo "refused: $out" >"$work_dir/failover-$s.error"
                exit 1
            elif (( $(now_ms) - kill_ms >= 60000 )); then
                echo "not acknowledged 60 s after the kill: $(tail -n 1 <<<"$out")" >"$work_dir/failover-$s.error"
                exit 1
            fi
            sleep 0.2
        done
    ) &
done
wait
failover_list=()
for s in "${victim_shards[@]}"; do
    [[ -f "$work_dir/failover-$s" ]] || fail "shard $s (member ${probe[$s]}): $(cat "$work_dir/failover-$s.error" 2>/dev/null)"
    ms="$(cat "$work_dir/failover-$s")"
    expected[${probe[$s]}]=$(( ${expected[${probe[$s]}]:-0} + 1 ))
    acknowledged=$((acknowledged + 1))
    failover_list+=("$(printf '%d.%d' $(( ms / 1000 )) $(( (ms % 1000) / 100 )))")
    log "  shard $s (member ${probe[$s]}) writable again ${failover_list[-1]} s after the kill"
done
failover_max="$(printf '%s\n' "${failover_list[@]}" | sort -n | tail -n 1)"
failover_min="$(printf '%s\n' "${failover_list[@]}" | sort -n | head -n 1)"
pass "node $victim killed; its ${#victim_shards[@]} shards writable again after ${failover_min}-${failover_max} s (one write: ${baseline} s)"

# ---------------------------------------------------------------------------------------------
# 5. Restart it

begin restart "docker start tally-node$victim, wait for every replica to catch up"
dock start "tally-node$victim"
wait_converged 90
pass "node $victim caught up"

# ---------------------------------------------------------------------------------------------
# 6. Network partition of one node

begin partition "docker network disconnect one node, write, reconnect"
get_status || fail "status failed: $status_out"
isolated="$(busiest_leader)"
log "  disconnecting tally-node$isolated (leads shards $(shards_led_by "$isolated" | tr '\n' ' '))"
cut_ms=$(now_ms)
dock network disconnect "$network" "tally-node$isolated"
slowest=0
for s in $(seq 0 $(( shard_count - 1 ))); do
    one_ms=$(now_ms)
    member="$(member_on_shard "$s")"
    earn "$member" 2 "ft-partition-$s" 60
    (( $(now_ms) - one_ms > slowest )) && slowest=$(( $(now_ms) - one_ms ))
done
transfer "${members[18]}" "${members[1]}" 3 "ft-partition-transfer" 60
partition_writes="$(secs_since "$cut_ms")"
slowest="$(printf '%d.%d' $(( slowest / 1000 )) $(( (slowest % 1000) / 100 )))"
log "  writes to all $shard_count shards and a transfer acknowledged ${partition_writes} s after the disconnect (slowest earn ${slowest} s)"
# The partition is real: the gateway cannot reach the node.
get_status || fail "status failed during the partition: $status_out"
awk -v who="$isolated" '/^ *node +address +health/ { sec = 1; next } /^ *shard +leader/ { sec = 0 }
    sec && $1 == who && $3 == "UNREACHABLE" { found = 1 } END { exit !found }' <<<"$status_out" \
    || fail "status does not show node $isolated as UNREACHABLE while it is disconnected"
join_ms=$(now_ms)
# compose gave the container the alias node$isolated on the network; a plain connect would not.
dock network connect --alias "node$isolated" "$network" "tally-node$isolated"
wait_converged 90
pass "node $isolated cut off: $(( shard_count + 1 )) writes in ${partition_writes} s, slowest ${slowest} s; caught up $(secs_since "$join_ms") s after reconnecting"

# ---------------------------------------------------------------------------------------------
# 7. Gateway restart

begin gateway "docker restart tally-gateway, writes resume"
gw_ms=$(now_ms)
dock restart tally-gateway
restart_done="$(secs_since "$gw_ms")"
earn "${members[0]}" 4 "ft-after-gateway" 60
gateway_resume="$(secs_since "$gw_ms")"
pass "docker restart took ${restart_done} s; first write acknowledged ${gateway_resume} s after the restart began"

# ---------------------------------------------------------------------------------------------
# 8. Verify

begin verify "balances of every acknowledged member, conservation, replica digests"
wait_converged 60
mismatches=()
for m in $(printf '%s\n' "${!expected[@]}" | sort); do
    out="$(cli 20 balance --member "$m")" || fail "balance of $m failed: $out"
    got="$(sed -n 's/.*: balance \([0-9-]*\) .*/\1/p' <<<"$out" | head -n 1)"
    if [[ "$got" != "${expected[$m]}" ]]; then mismatches+=("$m: expected ${expected[$m]}, got ${got:-?}"); fi
done
(( ${#mismatches[@]} == 0 )) || fail "balances differ: ${mismatches[*]}"
conserved="$(grep -c '(conserved)' <<<"$status_out" || true)"
grep -q "^$currency: .*(conserved)" <<<"$status_out" || fail "no conserved total for $currency in status"
pass "${#expected[@]} balances as expected ($acknowledged acknowledged writes), $conserved currencies conserved"

log "failover after killing node $victim: ${failover_list[*]} s (shards ${victim_shards[*]}; a write alone takes ${baseline} s); gateway restart: ${gateway_resume} s"
