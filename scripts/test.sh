#!/usr/bin/env bash
# The whole test suite: setup, formatting, lints, every test. `.ci/run`
# calls exactly this; it exits non-zero when anything fails.
#
# Everything builds in the release profile (lints included) so native
# dependencies compile once. The cargo target directory lives outside the
# clone (~/.cache/sidecar/target unless CARGO_TARGET_DIR is set), so a warm
# machine reuses it; a cold one builds from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar/target}"
mkdir -p "$CARGO_TARGET_DIR"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

# The workers answer the test-only sandbox probe (tests/sandbox.rs). The
# same features on every command, or `cargo test` would relink the worker
# binaries without it; production builds (scripts/run.sh, the Dockerfile)
# never pass it.
features=(--features worker-text/sandbox-probe,worker-vision/sandbox-probe,worker-lite/sandbox-probe)

set -x
cargo fmt --all --check
cargo clippy --workspace --all-targets --release --locked "${features[@]}" -- -D warnings
# The end-to-end tests start the real binaries: build every one first
# (`cargo test` builds a package's binaries only for its own tests).
cargo build --workspace --bins --release --locked "${features[@]}"
cargo test --workspace --doc --release --locked "${features[@]}" 2>&1 | tee -a "$log"
cargo test --workspace --all-targets --release --locked "${features[@]}" 2>&1 | tee -a "$log"
{ set +x; } 2>/dev/null

# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f; exit (p == 0 || f > 0) }' "$log"
