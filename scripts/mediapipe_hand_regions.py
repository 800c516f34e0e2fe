#!/usr/bin/env python3
"""MediaPipe's hand regions (the crops its hand landmark model runs on), as a
JSON fixture for the hands pipeline's geometry.

Runs the legacy Hands graph (mediapipe==0.10.21,
`hand_landmark_tracking_cpu.binarypb`, the graph `mediapipe.solutions.hands`
runs) in video mode (`use_prev_landmarks`) on the same photograph three times:
frame 0 finds the hands with the palm detector, frames 1 and 2 take each
hand's region from the previous frame's landmarks. Reads the graph's own
output streams `hand_rects_from_palm_detections` and
`hand_rects_from_landmarks`, which the `Hands` class does not return.
Not part of setup or CI; run it in the venv of scripts/mediapipe_venv.sh:

    ~/.cache/sidecar/mediapipe-venv/bin/python scripts/mediapipe_hand_regions.py \
        [--photos models/testdata] [--out tests/fixtures/mediapipe]

Writes `hands.regions.json`: per photograph and model complexity, per frame,
the regions in pixels of the photograph: centre x, y, width, height (before
rotation) and rotation (radians, clockwise on screen).
"""

import argparse
import json
import os

import cv2
import mediapipe as mp
from mediapipe.python.solution_base import SolutionBase

GRAPH = "mediapipe/modules/hand_landmark/hand_landmark_tracking_cpu.binarypb"
PHOTOS = ["people_sofa.jpg", "people_stairs.jpg"]
FRAMES = 3


def regions(rects, w, h):
    return [
        [round(r.x_center * w, 3), round(r.y_center * h, 3), round(r.width * w, 3),
         round(r.height * h, 3), round(r.rotation, 5)]
        for r in (rects or [])
    ]


def run(path, complexity):
    bgr = cv2.imread(path)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = bgr.shape[:2]
    graph = SolutionBase(
        binary_graph_path=GRAPH,
        side_inputs={"model_complexity": complexity, "num_hands": 2, "use_prev_landmarks": True},
        outputs=["hand_rects_from_palm_detections", "hand_rects_from_landmarks"],
    )
    frames = []
    for _ in range(FRAMES):
        r = graph.process({"image": rgb})
        frames.append({
            "from_palms": regions(r.hand_rects_from_palm_detections, w, h),
            "from_landmarks": regions(r.hand_rects_from_landmarks, w, h),
        })
    graph.close()
    return frames


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default="models/testdata")
    ap.add_argument("--out", default="tests/fixtures/mediapipe")
    a = ap.parse_args()
    out = {
        "mediapipe_version": mp.__version__,
        "graph": GRAPH + " (video mode: use_prev_landmarks true, num_hands 2)",
        "units": "regions [x_center, y_center, width, height] in pixels of the photograph, rotation in radians",
        "about": "frame 0: regions from the palm detections; every frame: the next frame's regions from the landmarks (hand_rects_from_landmarks); frames 1 and 2 run on those, without the palm detector",
        "photos": {},
    }
    for name in PHOTOS:
        out["photos"][name] = {
            label: run(os.path.join(a.photos, name), complexity)
            for label, complexity in (("full", 1), ("lite", 0))
        }
    with open(os.path.join(a.out, "hands.regions.json"), "w") as f:
        json.dump(out, f)
        f.write("\n")


if __name__ == "__main__":
    main()
