#!/usr/bin/env bash
# Builds the `tally:local` Docker image without pulling anything: a fully static `tally`
# binary (glibc, +crt-static) copied into a `FROM scratch` image (Dockerfile.scratch).
#
#   cluster/docker/build-image.sh            # from any directory
#
# Environment:
#   TALLY_STATIC_TARGET_DIR  cargo target folder for the static build [/work/target-static];
#                            kept apart from the normal target folder so the two builds
#                            (different RUSTFLAGS) do not invalidate each other's cache.
#                            Use one such folder per checkout: cargo decides freshness of
#                            workspace crates by file mtime, and two checkouts sharing it can
#                            get each other's stale artifacts.
#   TALLY_IMAGE              image tag [tally:local]
#   TALLY_IMAGE_DEBUGINFO=1  keep the debug info in the image's copy of the binary (the
#                            release profile has debug = 1: ~93 MB instead of ~18 MB); by
#                            default the copy gets `objcopy --strip-debug` (symbols stay, so
#                            backtraces still name functions). The cargo output is untouched.
#
# Users who can pull public images can use cluster/docker/Dockerfile instead (see README.md).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
target="x86_64-unknown-linux-gnu"
target_dir="${TALLY_STATIC_TARGET_DIR:-/work/target-static}"
image="${TALLY_IMAGE:-tally:local}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
run() { printf '+ %s\n' "$*" >&2; "$@"; }

command -v docker >/dev/null 2>&1 || die "docker is not installed (or not on PATH); it is needed to build $image"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running, and may this user use it?)"
command -v cargo >/dev/null 2>&1 || die "cargo is not installed (or not on PATH)"

cd "$repo_root"
say "repository: $repo_root"

say "building a static tally binary (target $target, target dir $target_dir)"
start=$(date +%s)
# An explicit --target is required: with it RUSTFLAGS apply to the binary only, not to build
# scripts and proc-macros (which cannot be linked statically).
printf "+ RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=%s cargo build --release -p tally --target %s\n" \
    "$target_dir" "$target" >&2
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$target_dir" \
    cargo build --release -p tally --target "$target"
say "cargo build took $(( $(date +%s) - start )) s"

binary="$target_dir/$target/release/tally"
[[ -x "$binary" ]] || die "build finished but $binary is missing"
# A FROM scratch image has no dynamic loader or libraries: refuse a dynamically linked binary.
if command -v readelf >/dev/null 2>&1; then
    if readelf -l "$binary" | grep -q 'INTERP' || readelf -d "$binary" | grep -q '(NEEDED)'; then
        die "$binary is dynamically linked; it would not run in a FROM scratch image"
    fi
    say "$binary is statically linked"
else
    say "readelf not found: not checking that $binary is static"
fi

context="$(mktemp -d "${TMPDIR:-/tmp}/tally-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
say "build context: $context"
if [[ "${TALLY_IMAGE_DEBUGINFO:-0}" != 1 ]] && command -v objcopy >/dev/null 2>&1; then
    run objcopy --strip-debug "$binary" "$context/tally"
else
    run cp "$binary" "$context/tally"
fi
run cp "$script_dir/Dockerfile.scratch" "$context/Dockerfile"
# Empty folders for the image (scratch has none): /data for the volume, /tmp world-writable.
run mkdir -p "$context/rootfs/data" "$context/rootfs/tmp"
run chmod 0755 "$context/rootfs/data"
run chmod 1777 "$context/rootfs/tmp"

say "building image $image"
DOCKER_BUILDKIT=0 run docker build -t "$image" "$context"
say "done: $(docker image inspect -f '{{.Id}} {{.Size}} bytes' "$image")"
