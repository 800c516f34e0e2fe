#!/usr/bin/env python3
"""MediaPipe's own results on the test photographs, as JSON fixtures.

Runs MediaPipe's legacy `mediapipe.solutions` (mediapipe==0.10.21) in
static-image mode on every photograph of PHOTOS (extracted by
scripts/setup.sh into models/testdata/) and on every frame of the moving-crop
video (tests/fixtures/mediapipe/video.json, written here too), and writes
tests/fixtures/mediapipe/*.json. Not part of setup or CI: run it in the venv
made by scripts/mediapipe_venv.sh:

    scripts/mediapipe_venv.sh
    ~/.cache/sidecar/mediapipe-venv/bin/python scripts/mediapipe_fixtures.py \
        [--photos models/testdata] [--out tests/fixtures/mediapipe]

Units: landmarks in pixels of the image given to MediaPipe (x * width,
y * height, z * width: MediaPipe's z is on the scale of x), world landmarks
in metres as MediaPipe gives them. Images are decoded with OpenCV (BGR) and
converted to RGB for MediaPipe, as its own examples do.
"""

import argparse
import json
import os
import sys

import cv2
import mediapipe as mp
import numpy as np

MP_VERSION = "0.10.21"

# name in models/testdata -> where scripts/setup.sh takes it from.
PHOTOS = {
    "astronaut.png": "scikit-image 0.25.2 wheel, skimage/data/astronaut.png",
    "grace_hopper.jpg": "matplotlib 3.9.4 wheel, matplotlib/mpl-data/sample_data/grace_hopper.jpg",
    "bus.jpg": "ultralytics 8.4.190 wheel, ultralytics/assets/bus.jpg",
    "zidane.jpg": "ultralytics 8.4.190 wheel, ultralytics/assets/zidane.jpg",
    "people_sofa.jpg": "npm @vladmandic/face-api 1.7.15, package/demo/sample2.jpg",
    "people_stairs.jpg": "npm @vladmandic/face-api 1.7.15, package/demo/sample5.jpg",
    "rocket.jpg": "scikit-image 0.25.2 wheel, skimage/data/rocket.jpg",
}

# Every 4th face-mesh landmark: the video truth of face mesh keeps these
# only, so that the file stays small (the tests compare mean distances).
FACE_VIDEO_STEP = 4
VIDEO_FRAMES = {"track": 60, "away": 12, "back": 24}


def r(v, nd=2):
    return round(float(v), nd)


def landmarks_px(lms, w, h, extra=()):
    """[[x, y, z, *extra]] in pixels; extra names optional fields."""
    out = []
    for p in lms.landmark:
        row = [r(p.x * w), r(p.y * h), r(p.z * w)]
        for name in extra:
            row.append(r(getattr(p, name), 4) if p.HasField(name) else None)
        out.append(row)
    return out


def world(lms, extra=()):
    out = []
    for p in lms.landmark:
        row = [r(p.x, 5), r(p.y, 5), r(p.z, 5)]
        for name in extra:
            row.append(r(getattr(p, name), 4) if p.HasField(name) else None)
        out.append(row)
    return out


def mask_fixture(mask, grid_cols=64):
    """A float mask [0, 1] as the rows of its 0.5-threshold (run lengths,
    alternating, the first run background, possibly 0) and an area-averaged
    float grid grid_cols wide."""
    h, w = mask.shape
    fg = mask >= 0.5
    rows = []
    for y in range(h):
        line = fg[y]
        change = np.flatnonzero(np.diff(line.astype(np.int8))) + 1
        bounds = np.concatenate(([0], change, [w]))
        runs = np.diff(bounds).tolist()
        if line[0]:
            runs = [0] + runs
        rows.append(runs)
    grid_rows = max(1, round(grid_cols * h / w))
    grid = cv2.resize(mask.astype(np.float32), (grid_cols, grid_rows), interpolation=cv2.INTER_AREA)
    return {
        "width": w,
        "height": h,
        "threshold": 0.5,
        "foreground_pixels": int(fg.sum()),
        "rle_rows": rows,
        "grid": {
            "cols": grid_cols,
            "rows": grid_rows,
            "resize": "cv2.INTER_AREA of the float mask",
            "values": [r(v, 3) for v in grid.reshape(-1)],
        },
    }


def run_hands(rgb, complexity, max_hands=2):
    h, w = rgb.shape[:2]
    with mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=max_hands,
                                  model_complexity=complexity,
                                  min_detection_confidence=0.5) as sol:
        res = sol.process(rgb)
    hands = []
    lms = res.multi_hand_landmarks or []
    wlms = res.multi_hand_world_landmarks or []
    hds = res.multi_handedness or []
    for i, lm in enumerate(lms):
        c = hds[i].classification[0]
        hands.append({
            "handedness": {"label": c.label, "score": r(c.score, 4), "index": c.index},
            "landmarks": landmarks_px(lm, w, h),
            "world_landmarks": world(wlms[i]) if i < len(wlms) else None,
        })
    return hands


def run_pose(rgb, segmentation=True):
    h, w = rgb.shape[:2]
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                enable_segmentation=segmentation,
                                min_detection_confidence=0.5) as sol:
        res = sol.process(rgb)
    if res.pose_landmarks is None:
        return [], None
    pose = {
        "landmarks": landmarks_px(res.pose_landmarks, w, h, ("visibility", "presence")),
        "world_landmarks": world(res.pose_world_landmarks, ("visibility", "presence")),
    }
    mask = None
    if segmentation and res.segmentation_mask is not None:
        mask = mask_fixture(res.segmentation_mask)
    return [pose], mask


def run_face_mesh(rgb, refine, max_faces=2):
    h, w = rgb.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces,
                                         refine_landmarks=refine,
                                         min_detection_confidence=0.5) as sol:
        res = sol.process(rgb)
    return [{"landmarks": landmarks_px(lm, w, h)} for lm in (res.multi_face_landmarks or [])]


def run_selfie(rgb, selection):
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=selection) as sol:
        res = sol.process(rgb)
    return mask_fixture(res.segmentation_mask)


def write(out_dir, name, doc):
    path = os.path.join(out_dir, name)
    text = json.dumps(doc, separators=(",", ":"))
    with open(path, "w") as f:
        f.write(text + "\n")
    size = len(text) + 1
    if size > 200_000:
        sys.exit(f"{path}: {size} bytes, over the 200 KB limit")
    print(f"{path}: {size} bytes", file=sys.stderr)


def header(image, w, h, solution, options, source):
    return {
        "mediapipe_version": mp.__version__,
        "api": "mediapipe.solutions (legacy), static_image_mode=True",
        "image": image,
        "image_source": source,
        "width": w,
        "height": h,
        "solution": solution,
        "options": options,
        "units": "landmarks [x, y, z(, visibility, presence)] in pixels of the image "
                 "(x*width, y*height, z*width); world_landmarks in metres",
    }


def photo_fixtures(photos_dir, out_dir):
    for image, source in PHOTOS.items():
        bgr = cv2.imread(os.path.join(photos_dir, image), cv2.IMREAD_COLOR)
        if bgr is None:
            sys.exit(f"{photos_dir}/{image}: missing or unreadable (run scripts/setup.sh)")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = bgr.shape[:2]
        stem = os.path.splitext(image)[0]

        for complexity, variant in ((1, "full"), (0, "lite")):
            opts = {"static_image_mode": True, "max_num_hands": 2,
                    "model_complexity": complexity, "min_detection_confidence": 0.5,
                    "palm_model": f"palm_detection_{variant}.tflite",
                    "landmark_model": f"hand_landmark_{variant}.tflite"}
            hands = run_hands(rgb, complexity)
            doc = header(image, w, h, "hands", opts, source)
            doc.update({"detections": len(hands), "hands": hands})
            write(out_dir, f"{stem}.hands.{variant}.json", doc)

        opts = {"static_image_mode": True, "model_complexity": 1, "enable_segmentation": True,
                "smooth_landmarks": False, "min_detection_confidence": 0.5,
                "landmark_model": "pose_landmark_full.tflite"}
        poses, mask = run_pose(rgb)
        doc = header(image, w, h, "pose", opts, source)
        doc.update({"detections": len(poses), "poses": poses, "segmentation": mask})
        write(out_dir, f"{stem}.pose.json", doc)

        for refine, variant in ((False, "mesh"), (True, "refined")):
            opts = {"static_image_mode": True, "max_num_faces": 2, "refine_landmarks": refine,
                    "min_detection_confidence": 0.5}
            faces = run_face_mesh(rgb, refine)
            doc = header(image, w, h, "face_mesh", opts, source)
            doc.update({"detections": len(faces), "faces": faces})
            write(out_dir, f"{stem}.face_mesh.{variant}.json", doc)

        for selection, variant in ((0, "general"), (1, "landscape")):
            opts = {"model_selection": selection,
                    "model": "selfie_segmentation.tflite" if selection == 0
                    else "selfie_segmentation_landscape.tflite"}
            doc = header(image, w, h, "selfie_segmentation", opts, source)
            doc.update({"segmentation": run_selfie(rgb, selection)})
            write(out_dir, f"{stem}.selfie_segmentation.{variant}.json", doc)


# --- the moving-crop video ----------------------------------------------

def video_plan():
    """Per solution: the photo, the crop size and the crop rectangles.

    Phases: `track` (the subject in view, the crop moving smoothly: a
    Lissajous path, a few pixels a frame), `away` (the crop jumps to a place
    without the subject and drifts there), `back` (it jumps back to where
    `track` began and moves smoothly again). Each crop's top-left corner is
    origin + amp * (sin t, sin 2t), t = 2 pi i / 60."""
    plans = {
        # One right hand at (1190..1377, 1125..1305) of 1920x1398.
        "hands": {"photo": "people_stairs.jpg", "size": (640, 480),
                  "origin": (963, 878), "amp": (150, 40), "away": (0, 0)},
        # The left man of the street photo (810x1080), at (54..213, 434..888).
        "pose": {"photo": "bus.jpg", "size": (360, 600),
                 "origin": (30, 370), "amp": (20, 30), "away": (360, 0)},
        # One face (512x512), at (178..272, 72..175).
        "face_mesh": {"photo": "astronaut.png", "size": (256, 256),
                      "origin": (97, 20), "amp": (40, 20), "away": (256, 256)},
    }
    out = {}
    for name, p in plans.items():
        cw, ch = p["size"]
        ox, oy = p["origin"]
        ax, ay = p["amp"]
        frames = []
        n = VIDEO_FRAMES["track"]

        def at(i, period):
            t = 2 * np.pi * i / period
            return [int(round(ox + ax * np.sin(t))), int(round(oy + ay * np.sin(2 * t))), cw, ch]

        for i in range(n):
            frames.append(at(i, n))
        bx, by = p["away"]
        for i in range(VIDEO_FRAMES["away"]):
            # a one-pixel wobble, inwards, so that the frames differ
            dx = i % 2 if bx == 0 else -(i % 2)
            frames.append([bx + dx, by, cw, ch])
        for i in range(VIDEO_FRAMES["back"]):
            frames.append(at(i, n))
        out[name] = {"photo": p["photo"], "crop_width": cw, "crop_height": ch, "frames": frames}
    return out


def check_crop(name, photo_wh, frames):
    w, h = photo_wh
    for i, (x, y, cw, ch) in enumerate(frames):
        if x < 0 or y < 0 or x + cw > w or y + ch > h:
            sys.exit(f"video {name}: frame {i} crop {x},{y} {cw}x{ch} outside {w}x{h}")


def video_mode(name, bgr, frames):
    """MediaPipe in VIDEO mode (tracking) over all the frames in order: per
    frame whether its detector ran and found something, and the results.
    Hands with max_num_hands 1 and 2 (with 2 and one hand in view MediaPipe
    runs the palm detector on every frame)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_mediapipe_reference as bench

    crops = [np.ascontiguousarray(bgr[y:y + ch, x:x + cw]) for x, y, cw, ch in frames]
    runs = []
    for max_hands in ((1, 2) if name == "hands" else (1,)):
        t = bench.trace(name, crops, 1, max_hands)
        options = {"static_image_mode": False, "min_detection_confidence": 0.5,
                   "min_tracking_confidence": 0.5}
        if name == "hands":
            options.update({"max_num_hands": max_hands, "model_complexity": 1})
        elif name == "pose":
            options.update({"model_complexity": 1, "smooth_landmarks": True})
        else:
            options.update({"max_num_faces": 1, "refine_landmarks": False})
        runs.append({"options": options,
                     "detector_ran_and_found": t["detector_ran"],
                     "detector_frames": sum(t["detector_ran"]),
                     "results": t["results"]})
    return runs


def video_fixtures(photos_dir, out_dir):
    plan = video_plan()
    phases = []
    start = 0
    for phase in ("track", "away", "back"):
        phases.append({"name": phase, "first": start, "count": VIDEO_FRAMES[phase]})
        start += VIDEO_FRAMES[phase]
    video = {
        "mediapipe_version": mp.__version__,
        "about": "A video made from a photograph by explicit crops: frame i is "
                 "photo[y:y+h, x:x+w] of the photo decoded by OpenCV (BGR), not resized. "
                 "Phases: track (the subject in view, moving smoothly), away (the crop "
                 "leaves the subject entirely), back (the subject comes back).",
        "phases": phases,
        "solutions": {},
    }
    for name, p in plan.items():
        bgr = cv2.imread(os.path.join(photos_dir, p["photo"]), cv2.IMREAD_COLOR)
        if bgr is None:
            sys.exit(f"{photos_dir}/{p['photo']}: missing or unreadable (run scripts/setup.sh)")
        h, w = bgr.shape[:2]
        check_crop(name, (w, h), p["frames"])
        video["solutions"][name] = {
            "photo": p["photo"], "photo_width": w, "photo_height": h,
            "crop_width": p["crop_width"], "crop_height": p["crop_height"],
            "frames": [{"x": x, "y": y, "w": cw, "h": ch} for x, y, cw, ch in p["frames"]],
        }
        truth = []
        for i, (x, y, cw, ch) in enumerate(p["frames"]):
            rgb = cv2.cvtColor(np.ascontiguousarray(bgr[y:y + ch, x:x + cw]), cv2.COLOR_BGR2RGB)
            if name == "hands":
                res = run_hands(rgb, 1)
                truth.append({"detections": len(res), "hands": [
                    {"handedness": hd["handedness"]["label"],
                     "landmarks": [[l[0], l[1]] for l in hd["landmarks"]]} for hd in res]})
            elif name == "pose":
                res, _ = run_pose(rgb, segmentation=False)
                truth.append({"detections": len(res), "poses": [
                    {"landmarks": [[l[0], l[1], l[3]] for l in ps["landmarks"]]} for ps in res]})
            else:
                res = run_face_mesh(rgb, False, max_faces=1)
                truth.append({"detections": len(res), "faces": [
                    {"landmarks": [[l[0], l[1]] for l in fc["landmarks"][::FACE_VIDEO_STEP]]}
                    for fc in res]})
        options = {
            "hands": {"static_image_mode": True, "max_num_hands": 2, "model_complexity": 1,
                      "min_detection_confidence": 0.5},
            "pose": {"static_image_mode": True, "model_complexity": 1,
                     "enable_segmentation": False, "min_detection_confidence": 0.5},
            "face_mesh": {"static_image_mode": True, "max_num_faces": 1,
                          "refine_landmarks": False, "min_detection_confidence": 0.5},
        }[name]
        doc = {
            "mediapipe_version": mp.__version__,
            "api": "mediapipe.solutions (legacy), static_image_mode=True, on each crop alone",
            "solution": name,
            "video": "video.json",
            "options": options,
            "units": "landmarks in pixels of the crop (the frame): [x, y] "
                     + ("(pose: [x, y, visibility])" if name == "pose" else "")
                     + ("; face mesh: landmarks 0, 4, 8, ... 464 only (every 4th)"
                        if name == "face_mesh" else ""),
            "landmark_indices_step": FACE_VIDEO_STEP if name == "face_mesh" else 1,
            "frames": truth,
            "mediapipe_video_mode": video_mode(name, bgr, p["frames"]),
        }
        write(out_dir, f"video.{name}.json", doc)
        counts = [t["detections"] for t in truth]
        print(f"video {name}: detections per frame {counts}", file=sys.stderr)
    write(out_dir, "video.json", video)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--photos", default=os.path.join(root, "models", "testdata"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "mediapipe"))
    ap.add_argument("--only", choices=("photos", "video"), default=None)
    args = ap.parse_args()
    if mp.__version__ != MP_VERSION:
        sys.exit(f"mediapipe {mp.__version__} found, the fixtures are made with {MP_VERSION}")
    os.makedirs(args.out, exist_ok=True)
    if args.only in (None, "photos"):
        photo_fixtures(args.photos, args.out)
    if args.only in (None, "video"):
        video_fixtures(args.photos, args.out)


if __name__ == "__main__":
    main()
