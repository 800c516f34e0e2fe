#!/usr/bin/env bash
# Makes the Python venv that runs MediaPipe's own legacy solutions
# (mediapipe==0.10.21), for the reference fixtures
# (scripts/mediapipe_fixtures.py) and the in-process reference benchmark
# (scripts/bench_mediapipe_reference.py). Not part of setup or CI.
# Idempotent: does nothing when the venv already imports mediapipe 0.10.21.
#
# mediapipe is installed without its optional heavy dependencies (jax,
# jaxlib, sentencepiece, sounddevice: used only by model maker, the text
# and audio Tasks); what the legacy `mediapipe.solutions` import is pinned
# here. Python 3.11 (the wheel is cp311).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar}"
venv="${MEDIAPIPE_VENV:-$cache/mediapipe-venv}"
python="${PYTHON:-python3.11}"
pkgs=(
    mediapipe==0.10.21
    numpy==1.26.4
    opencv-contrib-python==4.11.0.86
    protobuf==4.25.8
    absl-py==2.1.0
    attrs==25.3.0
    flatbuffers==25.2.10
    matplotlib==3.9.4
)
if [[ -x "$venv/bin/python" ]] &&
    "$venv/bin/python" -c 'import mediapipe, cv2, numpy; assert mediapipe.__version__ == "0.10.21"' 2>/dev/null; then
    echo "mediapipe_venv: $venv has mediapipe 0.10.21" >&2
    exit 0
fi
echo "mediapipe_venv: creating $venv" >&2
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip==24.3.1
# The wheel that setup.sh already fetched (same pinned checksum), else PyPI.
wheel="$(find "$cache/downloads/mediapipe-0.10.21" -name 'mediapipe-0.10.21-*.whl' 2>/dev/null | head -1)"
sha="${MEDIAPIPE_WHEEL_SHA256:-05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3}"
if [[ -n "$wheel" ]] && echo "$sha  $wheel" | sha256sum --quiet -c - 2>/dev/null; then
    pkgs[0]="$wheel"
fi
# matplotlib and opencv bring their own dependencies; mediapipe's own list
# is replaced by the pins above.
"$venv/bin/pip" install -q --no-deps "${pkgs[0]}"
"$venv/bin/pip" install -q "${pkgs[@]:1}"
"$venv/bin/python" -c 'import mediapipe as mp; mp.solutions.hands.Hands; print("mediapipe_venv: mediapipe", mp.__version__)' >&2
