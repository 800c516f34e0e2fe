#!/usr/bin/env python3
"""The MediaPipe benchmark's reference: MediaPipe's own legacy solutions
(mediapipe==0.10.21) in VIDEO mode (static_image_mode=False: the detector
runs only when tracking is lost) in-process, on the frames of the
moving-crop video (tests/fixtures/mediapipe/video.json: the 60 `track`
frames, looped for SECONDS), one solution at a time. Prints one JSON object
per solution on stdout.

Run it in the venv of scripts/mediapipe_venv.sh (not part of setup or CI):

    ~/.cache/sidecar/mediapipe-venv/bin/python scripts/bench_mediapipe_reference.py \
        [--solutions hands,pose,face_mesh] [--seconds 10] [--threads 1] [--cpus 0]

Frames: each crop is cut out of the photo decoded by OpenCV (BGR) and
converted to RGB BEFORE timing (MediaPipe's Python API takes RGB); the timed
loop is `process(rgb)` alone. `--rgb-inside` moves the BGR->RGB conversion
into the timed loop (what a client holding BGR frames pays).

Threads: MediaPipe runs a graph's calculators on its default executor (a
thread pool; the graph config's `num_threads`, 0 = the number of cores), and
the Python API's `process()` waits until the graph is idle, so frames never
overlap: one frame's calculators run one after the other (the graphs are
chains). `--threads N` (default 1) sets the graph's `num_threads` (it reaches
the default executor's ThreadPoolExecutorOptions; 0 keeps MediaPipe's
default). What was seen with 0.10.21 on a 2-core machine: 3 OS threads more
than Python's own whatever `num_threads` is (1, 0 or 8): two named
`mediapipe/<tid>`, one per CPU of the process's affinity mask, and one more;
the process's CPU time never exceeded ~1.0x its wall time (inference is one
XNNPACK thread). `--cpus LIST` pins the process to those CPUs
(sched_setaffinity), which bounds every thread of MediaPipe's, inference
included. For a fair comparison with a sidecar worker run with 1 thread:
`--cpus 0` here and the worker (its inference thread) on one CPU too, or both
unpinned (each then uses about one core). The JSON reports the CPU time over
wall time and the OS threads seen, so what was really used is visible.

Detector runs: the graphs' detection streams (`palm_detections`,
`pose_detection`, `face_detections`) carry a packet only on frames where the
detector ran AND found something (a run that finds nothing leaves no packet,
so over frames without a subject this counts 0); on the `track` frames the
subject is always in view, so this is the count of detector runs. Hands:
with `max_num_hands` 2 and one hand in view, MediaPipe runs the palm
detector on EVERY frame (it looks for the second hand); the default here is
`--max-hands 1` (the video has one hand), where it runs once. `--trace`
prints, for one pass over all the video's frames (track, away, back), per
frame whether the detector ran (and found) and the results.
"""

import argparse
import json
import os
import sys
import time

import cv2
import mediapipe as mp
import numpy as np
from mediapipe.framework import calculator_pb2
from mediapipe.python import solution_base

# Per solution: the graph's detection stream, observed to count detector runs.
DETECTION_STREAM = {
    "hands": "palm_detections",
    "pose": "pose_detection",
    "face_mesh": "face_detections",
}
LANDMARK_STREAM = {
    "hands": "multi_hand_landmarks",
    "pose": "pose_landmarks",
    "face_mesh": "multi_face_landmarks",
}


def patch_solution_base(extra_output, num_threads):
    """Makes the next solution also observe `extra_output` and run its graph
    on `num_threads` default-executor threads (0: MediaPipe's default)."""
    original = solution_base.SolutionBase.__init__

    def init(self, binary_graph_path=None, graph_config=None, outputs=None, **kw):
        if binary_graph_path is not None:
            path = os.path.join(os.path.dirname(os.path.dirname(mp.__file__)), binary_graph_path)
            graph_config = calculator_pb2.CalculatorGraphConfig()
            with open(path, "rb") as f:
                graph_config.ParseFromString(f.read())
            binary_graph_path = None
        if num_threads > 0:
            graph_config.num_threads = num_threads
        outputs = list(outputs or []) + [extra_output]
        original(self, graph_config=graph_config, outputs=outputs, **kw)

    solution_base.SolutionBase.__init__ = init
    return original


def make_solution(name, max_hands):
    if name == "hands":
        return mp.solutions.hands.Hands(static_image_mode=False, max_num_hands=max_hands,
                                        model_complexity=1, min_detection_confidence=0.5,
                                        min_tracking_confidence=0.5)
    if name == "pose":
        return mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1,
                                      smooth_landmarks=True, enable_segmentation=False,
                                      min_detection_confidence=0.5, min_tracking_confidence=0.5)
    return mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                           refine_landmarks=False, min_detection_confidence=0.5,
                                           min_tracking_confidence=0.5)


def frames_of(video, name, photos, phase):
    sol = video["solutions"][name]
    bgr = cv2.imread(os.path.join(photos, sol["photo"]), cv2.IMREAD_COLOR)
    if bgr is None:
        sys.exit(f"{photos}/{sol['photo']}: missing or unreadable (run scripts/setup.sh)")
    ph = next(p for p in video["phases"] if p["name"] == phase)
    out = []
    for f in sol["frames"][ph["first"]:ph["first"] + ph["count"]]:
        out.append(np.ascontiguousarray(bgr[f["y"]:f["y"] + f["h"], f["x"]:f["x"] + f["w"]]))
    return out, sol


def os_threads():
    return len(os.listdir("/proc/self/task"))


def open_solution(name, threads, max_hands):
    original = patch_solution_base(DETECTION_STREAM[name], threads)
    try:
        return make_solution(name, max_hands)
    finally:
        solution_base.SolutionBase.__init__ = original


def trace(name, frames_bgr, threads, max_hands):
    """One pass over frames_bgr in video mode: per frame, whether the
    detector ran and how many results came out."""
    det_stream, lm_stream = DETECTION_STREAM[name], LANDMARK_STREAM[name]
    ran, results = [], []
    with open_solution(name, threads, max_hands) as sol:
        for f in frames_bgr:
            res = sol.process(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
            ran.append(int(getattr(res, det_stream) is not None))
            lm = getattr(res, lm_stream)
            results.append(0 if lm is None else (1 if name == "pose" else len(lm)))
    return {"solution": name, "detector_ran": ran, "results": results}


def bench(name, frames_bgr, seconds, threads, rgb_inside, max_hands):
    rgb = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames_bgr]
    det_stream, lm_stream = DETECTION_STREAM[name], LANDMARK_STREAM[name]
    with open_solution(name, threads, max_hands) as sol:
        # One pass untimed: the graph starts, the first detection is made.
        warmup_detector = 0
        for f in rgb:
            warmup_detector += getattr(sol.process(f), det_stream) is not None
        threads_seen = os_threads()
        n = detector = found = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        end = wall0 + seconds
        while time.perf_counter() < end:
            i = n % len(rgb)
            if rgb_inside:
                res = sol.process(cv2.cvtColor(frames_bgr[i], cv2.COLOR_BGR2RGB))
            else:
                res = sol.process(rgb[i])
            n += 1
            if getattr(res, det_stream) is not None:
                detector += 1
            if getattr(res, lm_stream) is not None:
                found += 1
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        threads_seen = max(threads_seen, os_threads())
    return {
        "solution": name,
        "fps": round(n / wall, 2),
        "frames": n,
        "seconds": round(wall, 3),
        "mean_ms": round(1000 * wall / n, 3),
        "detector_runs": detector,
        "warmup_pass_detector_runs": warmup_detector,
        "frames_with_result": found,
        "cpu_over_wall": round(cpu / wall, 3),
        "os_threads": threads_seen,
    }


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--solutions", default="hands,pose,face_mesh")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="the graph's default-executor threads (0: MediaPipe's default)")
    ap.add_argument("--cpus", default=None, help="pin to these CPUs, e.g. 0 or 0,1")
    ap.add_argument("--rgb-inside", action="store_true",
                    help="convert BGR->RGB inside the timed loop")
    ap.add_argument("--phase", default="track", help="the video's phase to loop")
    ap.add_argument("--max-hands", type=int, default=1,
                    help="hands: max_num_hands (MediaPipe runs the palm detector on every "
                         "frame while fewer hands than this are tracked)")
    ap.add_argument("--trace", action="store_true",
                    help="instead of timing: one pass over ALL the video's frames, printing "
                         "per frame whether the detector ran")
    ap.add_argument("--photos", default=os.path.join(root, "models", "testdata"))
    ap.add_argument("--video", default=os.path.join(root, "tests", "fixtures", "mediapipe", "video.json"))
    args = ap.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    with open(args.video) as f:
        video = json.load(f)
    for name in args.solutions.split(","):
        if name not in DETECTION_STREAM:
            sys.exit(f"--solutions: unknown solution {name!r} (hands, pose, face_mesh)")
        if args.trace:
            frames = []
            for ph in video["phases"]:
                frames += frames_of(video, name, args.photos, ph["name"])[0]
            print(json.dumps(trace(name, frames, args.threads, args.max_hands)), flush=True)
            continue
        frames, sol = frames_of(video, name, args.photos, args.phase)
        result = bench(name, frames, args.seconds, args.threads, args.rgb_inside, args.max_hands)
        result.update({
            "mediapipe_version": mp.__version__,
            "mode": "video (static_image_mode=False)",
            "photo": sol["photo"],
            "frame_size": [sol["crop_width"], sol["crop_height"]],
            "distinct_frames": len(frames),
            "graph_num_threads": args.threads or "default (cores)",
            "options": {"max_num_hands": args.max_hands} if name == "hands" else {},
            "cpus": sorted(os.sched_getaffinity(0)),
            "rgb_conversion": "inside the timed loop" if args.rgb_inside else "before timing",
        })
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
