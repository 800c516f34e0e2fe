#!/usr/bin/env bash
# Sets up, builds and starts the sidecar with the small default models
# preloaded (examples/sidecar.toml). Extra arguments go to `sidecar`
# (e.g. --listen 127.0.0.1:50052). It prints where it listens.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar/target}"
# The same build as the tests (one set of artifacts): every worker binary.
cargo build --release --locked --workspace --bins
exec "$CARGO_TARGET_DIR/release/sidecar" --config examples/sidecar.toml "$@"
