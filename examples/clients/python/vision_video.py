#!/usr/bin/env python3
"""Face detection on a video file, frame by frame over one VisionService
stream, with back-pressure and frame dropping.

Two ways to feed a stream:

- a file (default): every frame matters. At most `--window` frames are in
  flight (sent, no result yet); the reader waits for a result before it
  sends more, and the server holds the stream (HTTP/2 flow control) when
  `--max-pending` frames wait for its worker. Nothing is dropped.
- `--live`: a camera does not wait. Frames are read at the video's own
  rate; a frame that finds the window full is dropped here (the newest
  frame matters, not a queue of stale ones), and the stream asks the
  server to drop its oldest waiting frame (OVERFLOW_POLICY_DROP_OLDEST)
  rather than hold the camera back; such a frame's result says
  `dropped`.

    .venv/bin/python examples/clients/python/vision_video.py --model faces --video face.mp4
"""
import sys
import threading
import time

import cv2

from sidecar_client import Deadline, connect, metadata
from sidecar_client.cli import parser


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--model", default="faces", help="a VISION model (e.g. BlazeFace)")
    p.add_argument("--video", required=True, help="any file OpenCV reads (mp4, avi, ...)")
    p.add_argument("--window", type=int, default=4, help="frames in flight at most (default 4)")
    p.add_argument("--max-pending", type=int, default=4, help="frames the server queues per stream, 1..64 (default 4)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: the whole video)")
    p.add_argument("--live", action="store_true", help="pace at the video's fps and drop frames instead of waiting")
    args = p.parse_args()
    if args.window < 1:
        p.error(f"--window {args.window} must be >= 1")
    deadline = Deadline(args.deadline)

    cap = cv2.VideoCapture(args.video)
    if not cap.isOpened():
        print(f"cannot open {args.video} with OpenCV", file=sys.stderr)
        return 2
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    print(f"video: {width}x{height} at {fps:.0f} fps, {'live' if args.live else 'file'} mode, window {args.window}")

    with connect(args.target) as api:
        v = api.pb.vision_pb2
        policy = v.OVERFLOW_POLICY_DROP_OLDEST if args.live else v.OVERFLOW_POLICY_UNSPECIFIED
        config = v.StreamConfig(
            model_id=args.model,
            tasks=[v.VisionTask(faces=v.FaceDetectionTask(min_score=0.5))],
            max_pending_frames=args.max_pending,
            overflow=policy,
        )
        window = threading.Semaphore(args.window)
        counts = {"read": 0, "sent": 0, "dropped_locally": 0}
        started = time.monotonic()

        def requests():
            yield v.ProcessRequest(config=config)
            index = 0
            while not args.max_frames or counts["read"] < args.max_frames:
                ok, frame = cap.read()  # BGR, OpenCV's order
                if not ok:
                    break
                counts["read"] += 1
                ts_us = int(cap.get(cv2.CAP_PROP_POS_MSEC) * 1000)
                if args.live:
                    # The camera's clock: frame n is due at n / fps.
                    due = started + (counts["read"] - 1) / fps
                    time.sleep(max(0.0, due - time.monotonic()))
                    if not window.acquire(blocking=False):
                        counts["dropped_locally"] += 1
                        continue
                else:
                    window.acquire()  # back-pressure: wait for a result
                h, w = frame.shape[:2]
                raw = v.RawImage(width=w, height=h, format=v.PIXEL_FORMAT_BGR8, data=frame.tobytes())
                counts["sent"] += 1
                yield v.ProcessRequest(frame=v.Frame(index=index, timestamp_us=ts_us, raw=raw))
                index += 1

        results = processed = server_dropped = with_faces = 0
        md = metadata(token=args.token, client_id=args.client_id)
        for r in api.vision.Process(requests(), timeout=deadline.remaining(), metadata=md):
            window.release()
            results += 1
            if r.dropped:
                server_dropped += 1
                continue
            processed += 1
            if r.faces:
                with_faces += 1
            if processed <= 3:
                f = r.faces[0] if r.faces else None
                where = (f"face at ({f.box.x:.0f},{f.box.y:.0f}) {f.box.width:.0f}x{f.box.height:.0f} score {f.score:.2f}"
                         if f else "no face")
                print(f"frame {r.frame_index}: {r.width}x{r.height}, {where}, {r.timings.total_us / 1000:.1f} ms")
        cap.release()
        elapsed = time.monotonic() - started
        print(f"frames read={counts['read']} sent={counts['sent']} results={results} processed={processed} "
              f"dropped_by_server={server_dropped} dropped_locally={counts['dropped_locally']} "
              f"with_faces={with_faces} in {elapsed:.1f} s")
        balanced = results == counts["sent"] and counts["sent"] + counts["dropped_locally"] == counts["read"]
        return 0 if balanced and processed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
