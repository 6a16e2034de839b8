# Shell functions shared by the container tests of the compose cluster (fault-test.sh, chaos.sh).
# Source it; it defines functions and the `compose_base` array, and runs nothing else.
#
# The caller sets, before calling the functions:
#   script_start   now_ms at the start of the script (log prefixes count from it)
#   network        Docker network of the cluster (the CLI containers join it)
#   image          image of the CLI containers
#   cli_prefix     name prefix of the throwaway CLI containers
#   host_bin       a host `tally` binary for the CLI, or empty to run the CLI in containers
#   cli_addr       gateway address for the CLI (host port with host_bin, gateway:50051 without)
#   nodes          array of node numbers, e.g. (1 2 3)
#   shard_count    for shard_of
# and defines `fail MESSAGE` (exits) and `check_budget` (fails when over the time budget).
# `status_out` holds the output of the last `get_status`.

# Compose: docker-compose v1 where installed, else the `docker compose` v2 plugin.
if command -v docker-compose >/dev/null 2>&1; then
    compose_base=(docker-compose)
else
    compose_base=(docker compose)
fi

# ---------------------------------------------------------------------------------------------
# Output and timing

now_ms() { date +%s%3N; }
secs_since() { # start_ms -> seconds with one decimal
    local ms=$(( $(now_ms) - $1 ))
    printf '%d.%d' $(( ms / 1000 )) $(( (ms % 1000) / 100 ))
}
log() { printf '[%6ss] %s\n' "$(secs_since "$script_start")" "$*" >&2; }

# dock ARGS... : a docker command that must succeed within 60 s (output discarded).
dock() { timeout 60 docker "$@" >/dev/null || fail "docker $* failed"; }

# ---------------------------------------------------------------------------------------------
# The CLI

# cli TIMEOUT_S ARGS... : one CLI call, its stdout and stderr on stdout.
cli() {
    local limit="$1" rc=0
    shift
    if [[ -n "$host_bin" ]]; then
        timeout -k 2 "$limit" "$host_bin" --addr "$cli_addr" "$@" 2>&1 || rc=$?
    else
        local name="${cli_prefix}$(date +%s%N)"
        # PID 1 in the container ignores SIGTERM: on timeout the container is removed by name.
        timeout -k 2 "$limit" docker run --rm --name "$name" --network "$network" -e TALLY_API_KEY \
            "$image" --addr "$cli_addr" "$@" 2>&1 || rc=$?
        if (( rc == 124 || rc == 137 )); then docker rm -f "$name" >/dev/null 2>&1 || true; fi
    fi
    return "$rc"
}

# Removes CLI containers left behind (a CLI call interrupted by a signal).
remove_stray_cli_containers() {
    local stray
    stray="$(docker ps -aq --filter "name=^/${cli_prefix}" 2>/dev/null || true)"
    [[ -n "$stray" ]] && docker rm -f $stray >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
# Routing (docs: shard = u64::from_be_bytes(sha256(member_id)[0..8]) % shard_count)

shard_of() {
    local hex
    hex="$(printf '%s' "$1" | sha256sum | cut -c1-16)"
    local hi=$(( 16#${hex:0:8} )) lo=$(( 16#${hex:8:8} ))
    echo $(( ( (hi % shard_count) * ((1 << 32) % shard_count) + lo % shard_count ) % shard_count ))
}

# ---------------------------------------------------------------------------------------------
# Status

status_out=""
get_status() { status_out="$(cli 20 status --digests)"; }

# Prints what keeps the status from "converged" (nothing when it is): every node reachable and
# healthy, every shard with a leader, every group with a leader and all replicas whose applied
# index and state digest equal the leader's, every currency conserved.
status_problems() {
    awk -v want_nodes="${#nodes[@]}" '
        /^ *node +address +health/ { sec = "nodes"; next }
        /^ *shard +leader +version/ { sec = "shards"; next }
        /^group +node +role/ { sec = "groups"; next }
        /: debits [0-9]+ credits [0-9]+/ {
            sec = "totals"
            if ($0 !~ /\(conserved\)/) bad = bad "; not conserved: " $0
            next
        }
        sec == "nodes" {
            nodes++
            if ($3 != "healthy") bad = bad "; node " $1 " " $3
        }
        sec == "shards" {
            shards++
            if ($2 == 0) bad = bad "; shard " $1 " has no leader"
        }
        sec == "groups" {
            g = $1; count[g]++
            applied[g, count[g]] = $8; digest[g, count[g]] = $11; node[g, count[g]] = $2
            if ($3 == "leader") { lapplied[g] = $8; ldigest[g] = $11; lnode[g] = $2 }
        }
        END {
            if (nodes != want_nodes) bad = bad "; " nodes + 0 " nodes listed, want " want_nodes
            if (shards == 0) bad = bad "; no shard table (cluster not initialized?)"
            for (g in count) {
                if (count[g] != want_nodes) bad = bad "; " g " has " count[g] " replicas reporting"
                if (!(g in lnode)) { bad = bad "; " g " has no leader"; continue }
                for (i = 1; i <= count[g]; i++) {
                    if (applied[g, i] != lapplied[g])
                        bad = bad "; " g " node " node[g, i] " applied " applied[g, i] " < leader " lnode[g] " " lapplied[g]
                    else if (digest[g, i] != ldigest[g])
                        bad = bad "; " g " node " node[g, i] " digest " digest[g, i] " != leader " ldigest[g]
                }
            }
            sub(/^; /, "", bad); print bad
        }' <<<"$status_out"
}

# wait_converged TIMEOUT_S : until status_problems is empty (two polls in a row, 0.5 s apart).
wait_converged() {
    local deadline=$(( $(now_ms) + $1 * 1000 )) problems="" good=0
    while true; do
        if get_status; then problems="$(status_problems)"; else problems="status failed: $(tail -n 1 <<<"$status_out")"; fi
        if [[ -z "$problems" ]]; then
            good=$((good + 1))
            (( good >= 2 )) && return 0
        else
            good=0
        fi
        if (( $(now_ms) >= deadline )); then
            printf '%s\n' "$status_out" >&2
            fail "cluster did not converge within $1 s: $problems"
        fi
        check_budget
        sleep 0.5
    done
}

# Node leading the most shards in $status_out.
busiest_leader() {
    awk '
        /^ *shard +leader +version/ { sec = 1; next }
        /^group +node +role/ { sec = 0 }
        sec && $2 > 0 { n[$2]++ }
        END { best = 0; for (id in n) if (n[id] > best) { best = n[id]; who = id }; print who }' <<<"$status_out"
}
shards_led_by() { # NODE -> shard numbers
    awk -v who="$1" '
        /^ *shard +leader +version/ { sec = 1; next }
        /^group +node +role/ { sec = 0 }
        sec && $2 == who { print $1 }' <<<"$status_out"
}
