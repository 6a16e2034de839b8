# Shell helpers to run a `tally dev` process for a script (sourced, not executed):
#
#   source scripts/lib/tally-dev.sh
#   start_tally_dev BIN DATA_DIR ADDRESS LOG_FILE   # sets TALLY_DEV_PID; fails if not ready in 30 s
#   stop_tally_dev                                  # stops the process started above, by its PID
#
# The dev cluster prints "ready" once every group has a leader and the gateway serves.

TALLY_DEV_PID=""

start_tally_dev() {
    local binary="$1" data_dir="$2" address="$3" log_file="$4"
    "$binary" dev --data-dir "$data_dir" --listen "$address" --no-metrics >"$log_file" 2>&1 &
    TALLY_DEV_PID=$!
    for _ in $(seq 1 300); do
        grep -q "ready" "$log_file" && return 0
        kill -0 "$TALLY_DEV_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "tally dev ($binary) did not get ready on $address; its log:" >&2
    tail -n 30 "$log_file" >&2
    stop_tally_dev
    return 1
}

stop_tally_dev() {
    if [[ -n "$TALLY_DEV_PID" ]]; then
        kill "$TALLY_DEV_PID" 2>/dev/null || true
        wait "$TALLY_DEV_PID" 2>/dev/null || true
        TALLY_DEV_PID=""
    fi
}
