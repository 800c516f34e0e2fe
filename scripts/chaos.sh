#!/usr/bin/env bash
# The chaos run: 8 client tasks call Embed (MiniLM), Tokenize (SmolLM2),
# LITE Infer and VISION ProcessBatch (BlazeFace) without pause for 2
# minutes while every worker is `kill -9`ed in turn every 5 s (never the
# same worker twice within 5 s), after 30 s of the same load without kills.
# Checks: no call fails; LITE, ProcessBatch and Tokenize answers bit-equal
# to the no-chaos answers, Embed cosine >= 0.99999; every model READY at
# the end; the supervisor never restarted. Prints a Markdown report (calls,
# errors by code, kills, p50/p99 with and without chaos, restarts) and
# exits 1 when a check fails. The harness is tests/chaos_support.rs; the
# e2e test tests/chaos.rs runs it for 30 s.
#
# Usage: scripts/chaos.sh [CHAOS_SECONDS [CALM_SECONDS [KILL_EVERY_SECONDS]]]
#        (defaults 120, 30, 5)
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

scripts/setup.sh
cargo build --release --workspace --bins
cargo build --release -p e2e --example chaos
echo "chaos: ${1:-120} s of kills after ${2:-30} s without" >&2
SIDECAR_LOG="${SIDECAR_LOG:-warn}" "$CARGO_TARGET_DIR/release/examples/chaos" "${1:-120}" "${2:-30}" "${3:-5}"
