#!/usr/bin/env bash
# The text benchmark: the whole stack against llama.cpp's own tools, side by
# side in one run. Builds `llama-bench` and `llama-batched-bench` from the
# llama.cpp tree in the PyPI source package of llama-cpp-python (cached in
# ~/.cache/sidecar), compiled against the static llama.cpp libraries that
# the llama-cpp-sys-2 build left in the target folder, so both sides run
# the same llama.cpp. Prints a Markdown report (see docs/benchmarks.md).
#
# `scripts/bench.sh lite [REPS]` runs the LITE benchmark instead: latency
# through the whole stack against the LiteRT Python interpreter in-process.
#
# `scripts/bench.sh vision [REPS]`: face-detection stream FPS against the
# same processing in-process.
#
# `scripts/bench.sh batching [REPS]`: batching across calls: N one-text
# Embed callers against one N-text call, N Infer callers against one
# InferBatch of N sets, and the shipped LITE models' input shapes.
#
# `scripts/bench.sh cache [CALLS]`: the result cache, hit against miss,
# for Embed of 64 texts and LITE Infer.
# `scripts/bench.sh prefix [REPS]`: prompt-prefix reuse: a 4-turn chat's
# time to first token per turn with `prompt_cache` on and off.
# `scripts/bench.sh traffic [CALLS]`: a polite client's Generate latency
# alone and beside a 20x flood from another client class, with and without
# [traffic] classes.
#
# Usage: scripts/bench.sh [THREADS [REPS]]   (defaults 2 and 3)
#        scripts/bench.sh lite [REPS]
#        scripts/bench.sh cache [CALLS]
#        scripts/bench.sh vision [REPS]
#        scripts/bench.sh batching [REPS]
#        scripts/bench.sh traffic [CALLS]
#        scripts/bench.sh prefix [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
cache="${SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

if [[ "${1:-}" == lite ]]; then
    scripts/setup.sh
    cargo build --release --workspace --bins
    cargo build --release -p e2e --example bench_lite
    echo "bench: LITE, ${2:-3} interleaved runs; this takes a few minutes" >&2
    BENCH_PYTHON="$root/.venv/bin/python" BENCH_REPS="${2:-3}" \
        SIDECAR_LOG="${SIDECAR_LOG:-warn}" "$CARGO_TARGET_DIR/release/examples/bench_lite"
    exit
fi
if [[ "${1:-}" == cache ]]; then
    scripts/setup.sh
    cargo build --release --workspace --bins
    cargo build --release -p e2e --example bench_cache
    echo "bench: result cache, hit against miss" >&2
    BENCH_CALLS="${2:-200}" SIDECAR_LOG="${SIDECAR_LOG:-warn}" \
        "$CARGO_TARGET_DIR/release/examples/bench_cache"
    exit
fi
if [[ "${1:-}" == vision ]]; then
    scripts/setup.sh
    cargo build --release --workspace --bins
    cargo build --release -p worker-vision --example vision_direct
    cargo build --release -p e2e --example bench_vision
    echo "bench: VISION, ${2:-3} interleaved runs; this takes a few minutes" >&2
    VISION_DIRECT="$CARGO_TARGET_DIR/release/examples/vision_direct" BENCH_REPS="${2:-3}" \
        SIDECAR_LOG="${SIDECAR_LOG:-warn}" "$CARGO_TARGET_DIR/release/examples/bench_vision"
    exit
fi
if [[ "${1:-}" == batching ]]; then
    scripts/setup.sh
    cargo build --release --workspace --bins
    cargo build --release -p e2e --example bench_batching
    echo "bench: batching across calls, ${2:-3} interleaved runs; this takes a few minutes" >&2
    BENCH_REPS="${2:-3}" SIDECAR_LOG="${SIDECAR_LOG:-warn}" \
        "$CARGO_TARGET_DIR/release/examples/bench_batching"
    exit
fi
if [[ "${1:-}" == traffic ]]; then
    scripts/setup.sh
    cargo build --release --workspace --bins
    cargo build --release -p e2e --example bench_traffic
    echo "bench: traffic, ${2:-40} polite calls per phase; this takes a few minutes" >&2
    BENCH_CALLS="${2:-40}" SIDECAR_LOG="${SIDECAR_LOG:-warn}" \
        "$CARGO_TARGET_DIR/release/examples/bench_traffic"
    exit
fi
if [[ "${1:-}" == prefix ]]; then
    scripts/setup.sh
    cargo build --release --workspace --bins
    cargo build --release -p e2e --example bench_prefix
    echo "bench: prompt-prefix reuse, ${2:-5} conversations per side" >&2
    BENCH_REPS="${2:-5}" SIDECAR_LOG="${SIDECAR_LOG:-warn}" \
        "$CARGO_TARGET_DIR/release/examples/bench_prefix"
    exit
fi
threads="${1:-2}"
reps="${2:-3}"

scripts/setup.sh
cargo build --release --workspace --bins
cargo build --release -p worker-text --example embed_direct
cargo build --release -p e2e --example bench_text
release="$CARGO_TARGET_DIR/release"

# --- the reference tools ----------------------------------------------------
sdist_spec="llama-cpp-python==0.3.36"
sdist_sha="${LLAMA_CPP_PYTHON_SDIST_SHA256:-832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e}"
sdist_dir="$cache/downloads/llama-cpp-python-0.3.36-sdist"
sdist="$(find "$sdist_dir" -name '*.tar.gz' 2>/dev/null | head -1)"
if [[ -z "$sdist" ]]; then
    echo "bench: downloading the $sdist_spec source package (~77 MB)" >&2
    mkdir -p "$sdist_dir"
    "$root/.venv/bin/pip" download -q --no-deps --no-binary :all: -d "$sdist_dir" "$sdist_spec" >/dev/null
    sdist="$(find "$sdist_dir" -name '*.tar.gz' | head -1)"
fi
if ! echo "$sdist_sha  $sdist" | sha256sum --quiet -c -; then
    echo "bench: checksum mismatch for $sdist" >&2
    exit 1
fi

# The llama-cpp-sys-2 build of this profile: headers and static libraries.
out="$(ls -dt "$release"/build/llama-cpp-sys-2-*/out 2>/dev/null | while read -r d; do
    [[ -f "$d/lib/libllama.a" ]] && echo "$d" && break; done)"
if [[ -z "$out" ]]; then
    echo "bench: no llama-cpp-sys-2 build under $release/build" >&2
    exit 1
fi
# The llama.cpp sources that build compiled (for the `common` headers).
src="$(grep -m1 '^CMAKE_HOME_DIRECTORY' "$out/build/CMakeCache.txt" | cut -d= -f2)"
tools="$cache/llama-tools/$(basename "$(dirname "$out")")"
if [[ ! -x "$tools/llama-bench" || ! -x "$tools/llama-batched-bench" ]]; then
    echo "bench: building llama-bench and llama-batched-bench" >&2
    mkdir -p "$tools"
    tmp="$(mktemp -d)"
    tar -xzf "$sdist" -C "$tmp" --wildcards '*/vendor/llama.cpp/tools/llama-bench/*' \
        '*/vendor/llama.cpp/tools/batched-bench/*'
    t="$(echo "$tmp"/*/vendor/llama.cpp/tools)"
    libs=("$out/build/common/libllama-common.a" "$out/build/common/libllama-common-base.a"
        "$out/lib/libllama.a" "$out/lib/libggml.a" "$out/lib/libggml-cpu.a" "$out/lib/libggml-base.a")
    for extra in "$out"/build/vendor/*/*.a; do libs+=("$extra"); done
    ssl=()
    if pkg-config --exists openssl 2>/dev/null; then read -ra ssl <<<"$(pkg-config --libs openssl)"; fi
    for tool in llama-bench:llama-bench batched-bench:llama-batched-bench; do
        dir="${tool%%:*}" bin="${tool##*:}"
        g++ -O2 -std=c++17 -fopenmp -I"$out/include" -I"$src/common" -I"$out/build/common" \
            -I"$src/vendor" "$t/$dir/$dir.cpp" "$t/$dir/main.cpp" -o "$tools/$bin" \
            "${libs[@]}" "${ssl[@]}" -lpthread -ldl
    done
    rm -rf "$tmp"
fi

echo "bench: $threads threads, $reps interleaved runs; this takes a few minutes" >&2
LLAMA_BENCH="$tools/llama-bench" LLAMA_BATCHED_BENCH="$tools/llama-batched-bench" \
    EMBED_DIRECT="$release/examples/embed_direct" BENCH_THREADS="$threads" BENCH_REPS="$reps" \
    SIDECAR_LOG="${SIDECAR_LOG:-warn}" "$release/examples/bench_text"
