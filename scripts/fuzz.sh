#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a fixed time over the committed corpus.
#
#   scripts/fuzz.sh [seconds_per_target]     (default 20)
#
# Needs the nightly toolchain; installs cargo-fuzz if it is missing. Each target starts from
# fuzz/corpus/<target>/ (read, never written: new inputs go to a temporary folder) with a
# fixed seed, so a run is repeatable on one machine. Builds use debug assertions and overflow
# checks (-a), so an arithmetic wrap is a crash. Exits non-zero on the first crash and prints
# the path of the input that caused it; replay it with
#   cargo +nightly fuzz run -a <target> <path>
set -euo pipefail

seconds_per_target="${1:-20}"
seed=1
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# TALLY_FUZZ_TARGET_DIR keeps the sanitizer build outside a fresh clone (CI reuses it).
target_dir=(--target-dir "${TALLY_FUZZ_TARGET_DIR:-fuzz/target}")

targets=(command_decode state_machine_apply)
echo "fuzz: building ${targets[*]} (nightly, sanitizer, debug assertions)"
cargo +nightly fuzz build -a "${target_dir[@]}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    artifacts="fuzz/artifacts/$target"
    mkdir -p "$scratch/$target" "$artifacts"
    log="$scratch/$target.log"
    echo "fuzz: $target for ${seconds_per_target}s over $corpus ($(ls "$corpus" | wc -l) inputs), seed $seed"
    set +e
    cargo +nightly fuzz run -a "${target_dir[@]}" "$target" "$scratch/$target" "$corpus" -- \
        -max_total_time="$seconds_per_target" -seed="$seed" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1
    status=$?
    set -e
    executions="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
    rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        artifact="$(grep -o "Test unit written to [^ ]*" "$log" | awk '{print $5}' | tail -n 1)"
        echo "fuzz: $target CRASHED (exit $status); input: ${artifact:-see the log above}" >&2
        exit 1
    fi
    echo "fuzz: $target ok: ${executions:-?} executions, ${rate:-?}/s"
done
echo "fuzz: no crash"
