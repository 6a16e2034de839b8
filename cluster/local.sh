#!/usr/bin/env bash
# A 3-node Tally cluster and a gateway as local processes on 127.0.0.1, each node with its own
# data folder under ./tally-cluster (configs in cluster/local/).
#
#   cluster/local.sh start          build (release), start nodes 1-3 and the gateway and run
#                                   `tally cluster init`; later starts restart every node that
#                                   has a data folder, and the gateway
#   cluster/local.sh stop           stop every process this script started (by PID)
#   cluster/local.sh status         `tally status` through the gateway
#   cluster/local.sh start-node N   start (or restart) node N alone (4 is a spare node)
#   cluster/local.sh stop-node N    stop node N (SIGTERM)
#   cluster/local.sh kill-node N    kill -9 node N
#   cluster/local.sh wipe           stop, then delete ./tally-cluster
#
# TALLY_BIN=path uses that binary instead of building one. Logs: tally-cluster/logs/.
# The cluster token (the secret of the nodes' internal services) is made at the first start,
# kept in tally-cluster/cluster-token, and given to every process as TALLY_CLUSTER_TOKEN; a
# TALLY_CLUSTER_TOKEN already set is used instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
STATE="$ROOT/tally-cluster"
CONFIGS="$ROOT/cluster/local"
mkdir -p "$STATE/logs" "$STATE/pids"
if [[ -z "${TALLY_CLUSTER_TOKEN:-}" ]]; then
  if [[ ! -s "$STATE/cluster-token" ]]; then
    (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$STATE/cluster-token")
  fi
  TALLY_CLUSTER_TOKEN="$(cat "$STATE/cluster-token")"
fi
export TALLY_CLUSTER_TOKEN

tally_bin() {
  if [[ -n "${TALLY_BIN:-}" ]]; then
    echo "$TALLY_BIN"
    return
  fi
  cargo build --release -p tally >&2
  echo "${CARGO_TARGET_DIR:-$ROOT/target}/release/tally"
}

running() { [[ -f "$STATE/pids/$1.pid" ]] && kill -0 "$(cat "$STATE/pids/$1.pid")" 2>/dev/null; }

start_process() { # name, args...
  local name="$1"
  shift
  if running "$name"; then
    echo "$name already running (pid $(cat "$STATE/pids/$name.pid"))"
    return
  fi
  # The previous run's log is kept as .log.1, so that waiting for "ready" sees only this run.
  [[ -f "$STATE/logs/$name.log" ]] && mv "$STATE/logs/$name.log" "$STATE/logs/$name.log.1"
  (cd "$ROOT" && exec "$BIN" "$@" >"$STATE/logs/$name.log" 2>&1) &
  echo $! >"$STATE/pids/$name.pid"
  echo "$name started (pid $!, log tally-cluster/logs/$name.log)"
}

stop_process() { # name, signal
  local name="$1" signal="${2:-TERM}"
  if running "$name"; then
    local pid
    pid="$(cat "$STATE/pids/$name.pid")"
    kill "-$signal" "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "$name stopped ($signal)"
  fi
  rm -f "$STATE/pids/$name.pid"
}

wait_for_log() { # name, text
  for _ in $(seq 1 300); do
    grep -q "$2" "$STATE/logs/$1.log" 2>/dev/null && return 0
    running "$1" || { echo "$1 exited; see tally-cluster/logs/$1.log" >&2; tail -5 "$STATE/logs/$1.log" >&2; return 1; }
    sleep 0.1
  done
  echo "$1 did not log '$2' in 30 s" >&2
  return 1
}

start_node() {
  start_process "node$1" node --config "$CONFIGS/node$1.toml"
  wait_for_log "node$1" "ready on"
}

case "${1:-}" in
  start)
    BIN="$(tally_bin)"
    if [[ -e "$STATE/initialized" ]]; then
      # A restart: every node that has a data folder (removed nodes' folders are deleted).
      for dir in "$STATE"/node*/; do n="${dir%/}"; start_node "${n##*node}"; done
    else
      for n in 1 2 3; do start_node "$n"; done
    fi
    if [[ ! -e "$STATE/initialized" ]]; then
      "$BIN" cluster init --nodes 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
      touch "$STATE/initialized"
    fi
    start_process gateway gateway --config "$CONFIGS/gateway.toml"
    wait_for_log gateway "ready on"
    echo "cluster ready: gateway at http://127.0.0.1:50051 (try: $BIN status)"
    ;;
  start-node)
    BIN="$(tally_bin)"
    start_node "${2:?node number}"
    ;;
  stop-node) stop_process "node${2:?node number}" TERM ;;
  kill-node) stop_process "node${2:?node number}" KILL ;;
  stop)
    stop_process gateway TERM
    for pidfile in "$STATE"/pids/node*.pid; do
      if [[ -e "$pidfile" ]]; then stop_process "$(basename "$pidfile" .pid)" TERM; fi
    done
    ;;
  status)
    BIN="$(tally_bin)"
    "$BIN" --addr http://127.0.0.1:50051 status
    ;;
  wipe)
    "$0" stop
    rm -rf "$STATE"
    echo "deleted tally-cluster/"
    ;;
  *)
    sed -n '2,14p' "$0"
    exit 2
    ;;
esac
