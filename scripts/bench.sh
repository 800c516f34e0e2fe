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
# `scripts/bench.sh colocated [REPS]`: a client beside the sidecar, three
# rows in one run (TCP inline, Unix socket inline, Unix socket + shared
# memory) for LITE face detection (against the LiteRT Python interpreter)
# and a raw 1280x720 VISION stream (against vision_direct). A row the
# sidecar cannot serve is printed with the reason; the exit status is 2.
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
# `scripts/bench.sh mediapipe [REPS]`: stream FPS of hands, pose and face
# mesh through the sidecar (the e2e example `bench_mediapipe`) against
# MediaPipe's own legacy solutions in video mode in-process
# (scripts/bench_mediapipe_reference.py, in the venv of
# scripts/mediapipe_venv.sh, made when missing), on the same frames of the
# moving-crop video (tests/fixtures/mediapipe/video.json), interleaved per
# solution, REPS times (default 3), BENCH_SECONDS (default 10) per run;
# BENCH_FIFO=1 runs both sides under SCHED_FIFO (a shared, loaded machine).
# A row that cannot run says why; the exit status is then 2.
#
# `scripts/bench.sh openai [ROUNDS]`: streaming /v1/chat/completions of the
# sidecar against llama-server (built here from the same source package),
# 1, 4 and 8 concurrent clients, 128 tokens each, EOS ignored.
#
# `scripts/bench.sh knobs [REPS [KNOB,...]]`: the tuning knobs of
# docs/performance.md, each A against B in fresh sidecars, interleaved
# (scripts/bench_knobs.py; knobs threads, parallel, context, batch, queue,
# overflow, cache, window).
#
# Usage: scripts/bench.sh [THREADS [REPS]]   (defaults 2 and 3)
#        scripts/bench.sh knobs [REPS [KNOB,...]]
#        scripts/bench.sh lite [REPS]
#        scripts/bench.sh cache [CALLS]
#        scripts/bench.sh vision [REPS]
#        scripts/bench.sh colocated [REPS]
#        scripts/bench.sh batching [REPS]
#        scripts/bench.sh traffic [CALLS]
#        scripts/bench.sh openai [ROUNDS]
#        scripts/bench.sh mediapipe [REPS]
#        scripts/bench.sh prefix [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
cache="${SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

# The llama.cpp trees both sides of a comparison come from: `sdist`, the
# PyPI source package of llama-cpp-python 0.3.36 (downloaded once, checked
# by its SHA-256 `sdist_sha`), and `out`, this profile's llama-cpp-sys-2 build (its
# headers and static libraries).
llama_sources() {
    local spec="llama-cpp-python==0.3.36"
    sdist_sha="${LLAMA_CPP_PYTHON_SDIST_SHA256:-832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e}"
    local dir="$cache/downloads/llama-cpp-python-0.3.36-sdist"
    sdist="$(find "$dir" -name '*.tar.gz' 2>/dev/null | head -1)"
    if [[ -z "$sdist" ]]; then
        echo "bench: downloading the $spec source package (~77 MB)" >&2
        mkdir -p "$dir"
        "$root/.venv/bin/pip" download -q --no-deps --no-binary :all: -d "$dir" "$spec" >/dev/null
        sdist="$(find "$dir" -name '*.tar.gz' | head -1)"
    fi
    if ! echo "$sdist_sha  $sdist" | sha256sum --quiet -c -; then
        echo "bench: checksum mismatch for $sdist" >&2
        exit 1
    fi
    out="$(ls -dt "$CARGO_TARGET_DIR"/release/build/llama-cpp-sys-2-*/out 2>/dev/null | while read -r d; do
        [[ -f "$d/lib/libllama.a" ]] && echo "$d" && break; done)"
    if [[ -z "$out" ]]; then
        echo "bench: no llama-cpp-sys-2 build under $CARGO_TARGET_DIR/release/build" >&2
        exit 1
    fi
}

if [[ "${1:-}" == knobs ]]; then
    scripts/setup.sh
    cargo build --release --workspace --bins
    echo "bench: tuning knobs, ${2:-3} interleaved runs each; this takes about 15 minutes" >&2
    exec "$root/.venv/bin/python" scripts/bench_knobs.py "$CARGO_TARGET_DIR/release/sidecar" "${2:-3}" ${3:+"$3"}
fi
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
if [[ "${1:-}" == colocated ]]; then
    scripts/setup.sh
    cargo build --release --workspace --bins
    cargo build --release -p worker-vision --example vision_direct
    cargo build --release -p e2e --example bench_colocated
    echo "bench: colocated clients (TCP, Unix socket, shared memory), ${2:-3} interleaved runs; a few minutes" >&2
    BENCH_PYTHON="$root/.venv/bin/python" VISION_DIRECT="$CARGO_TARGET_DIR/release/examples/vision_direct" \
        BENCH_REPS="${2:-3}" SIDECAR_LOG="${SIDECAR_LOG:-warn}" \
        "$CARGO_TARGET_DIR/release/examples/bench_colocated"
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
if [[ "${1:-}" == mediapipe ]]; then
    scripts/setup.sh
    mp_python="${MEDIAPIPE_VENV:-$cache/mediapipe-venv}/bin/python"
    [[ -x "$mp_python" ]] || scripts/mediapipe_venv.sh
    cargo build --release --workspace --bins
    cargo build --release -p e2e --example bench_mediapipe
    echo "bench: MediaPipe, ${2:-3} interleaved runs of ${BENCH_SECONDS:-10} s per side and solution; a few minutes" >&2
    # BENCH_FIFO=1: both sides (the example, the sidecar it starts, the
    # reference it runs) under SCHED_FIFO, ahead of other tenants' work on
    # a shared machine (needs CAP_SYS_NICE).
    sched=()
    [[ "${BENCH_FIFO:-0}" == 1 ]] && sched=(chrt -f 10)
    MEDIAPIPE_PYTHON="$mp_python" BENCH_REPS="${2:-3}" BENCH_SECONDS="${BENCH_SECONDS:-10}" \
        SIDECAR_LOG="${SIDECAR_LOG:-warn}" "${sched[@]}" "$CARGO_TARGET_DIR/release/examples/bench_mediapipe"
    exit
fi
if [[ "${1:-}" == openai ]]; then
    # The sidecar's /v1/chat/completions against llama-server's, one after
    # the other in one run: llama-server is built with its own CMake build
    # from the llama.cpp tree of the llama-cpp-python 0.3.36 source package
    # (the one checked below for llama-bench), with the ISA flags of our
    # llama-cpp-sys-2 build and its -O2, cached under llama-tools/ by the
    # package's checksum. The web UI is left out (an empty asset table:
    # LLAMA_BUILD_UI and LLAMA_USE_PREBUILT_UI off), so nothing is fetched.
    scripts/setup.sh
    cargo build --release --workspace --bins
    cargo build --release -p e2e --example bench_openai
    release="$CARGO_TARGET_DIR/release"
    llama_sources
    # The llama.cpp revision of each side. The source package names its own
    # in its changelog; llama-cpp-sys-2 vendors llama.cpp as a git submodule
    # whose commit the crate does not carry, so its side is named by the
    # crate's version, the llama-cpp-rs commit it was published from, and
    # the ggml version in its tree.
    ggml_version() {
        sed -n 's/^set(GGML_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))/\2/p' "$1/ggml/CMakeLists.txt" |
            paste -sd.
    }
    sys_src="$(grep -m1 '^CMAKE_HOME_DIRECTORY' "$out/build/CMakeCache.txt" | cut -d= -f2)"
    sys_crate="$(dirname "$sys_src")"
    sys_vcs="$(sed -n 's/.*"sha1": "\([0-9a-f]*\)".*/\1/p' "$sys_crate/.cargo_vcs_info.json" 2>/dev/null)"
    server_dir="$cache/llama-tools/llama-server-${sdist_sha:0:16}"
    server="$server_dir/llama-server"
    if [[ ! -x "$server" || ! -f "$server_dir/revision" ]]; then
        echo "bench: building llama-server from the source package (CMake, a while on 2 cores)" >&2
        tmp="$(mktemp -d)"
        tar -xzf "$sdist" -C "$tmp" --wildcards '*/CHANGELOG.md' '*/vendor/llama.cpp/*'
        pkg="$(echo "$tmp"/*)"
        src_llama="$pkg/vendor/llama.cpp"
        commit="$(awk '/^## \[0\.3\.36\]/{f=1;next} /^## \[/{f=0} f' "$pkg/CHANGELOG.md" |
            sed -n 's/.*ggml-org\/llama\.cpp@\([0-9a-f]*\).*/\1/p' | head -1)"
        # The same instruction sets as the sidecar's llama.cpp.
        isa=()
        while IFS='=' read -r key value; do
            isa+=("-D${key%%:*}=$value")
        done < <(grep -E '^GGML_(NATIVE|OPENMP|AVX|AVX2|AVX512|AVX512_BF16|AVX512_VBMI|AVX512_VNNI|AVX_VNNI|BMI2|F16C|FMA):BOOL=' \
            "$out/build/CMakeCache.txt")
        cmake -S "$src_llama" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
            -DCMAKE_C_FLAGS_RELEASE="-O2 -DNDEBUG" -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
            -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
            -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF \
            -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
            -DLLAMA_BUILD_COMMIT="${commit:-unknown}" "${isa[@]}" >"$tmp/cmake.log" 2>&1 ||
            { cat "$tmp/cmake.log" >&2; exit 1; }
        cmake --build "$tmp/build" --target llama-server -j "$(nproc)" >"$tmp/build.log" 2>&1 ||
            { tail -50 "$tmp/build.log" >&2; exit 1; }
        mkdir -p "$server_dir"
        cp "$tmp/build/bin/llama-server" "$server.tmp" && mv "$server.tmp" "$server"
        echo "llama.cpp ${commit:-unknown} (ggml $(ggml_version "$src_llama")), llama-cpp-python 0.3.36 sdist" \
            >"$server_dir/revision"
        rm -rf "$tmp"
    fi
    echo "bench: OpenAI API against llama-server; a few minutes" >&2
    LLAMA_SERVER="$server" \
        LLAMA_SERVER_REVISION="$(cat "$server_dir/revision")" \
        SIDECAR_LLAMA_REVISION="the llama.cpp of llama-cpp-sys-2 $(basename "$sys_crate" | sed 's/^llama-cpp-sys-2-//') (llama-cpp-2 $(grep -A1 '^name = "llama-cpp-2"$' Cargo.lock | sed -n 's/version = "\(.*\)"/\1/p'), llama-cpp-rs ${sys_vcs:-unknown}, ggml $(ggml_version "$sys_src"))" \
        BENCH_ROUNDS="${2:-3}" SIDECAR_LOG="${SIDECAR_LOG:-warn}" \
        "$release/examples/bench_openai"
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
llama_sources
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
