#!/usr/bin/env python3
"""An H.264 Annex-B file sent in fixed-size chunks over one stream (split
anywhere: the server's decoder keeps its state), then a flush for the
pictures the decoder still holds. One result per decoded picture.

    ffmpeg -f lavfi -i testsrc2=size=320x240:rate=25 -frames:v 50 -c:v libx264 -f h264 clip.264
    .venv/bin/python examples/clients/python/h264_chunks.py --model faces --file clip.264
"""
import sys

from sidecar_client import Deadline, connect, metadata
from sidecar_client.cli import parser


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--model", default="faces")
    p.add_argument("--file", required=True, help="an H.264 Annex-B stream (.264/.h264)")
    p.add_argument("--chunk", type=int, default=4096, help="bytes per message (default 4096)")
    args = p.parse_args()
    if args.chunk < 1:
        p.error(f"--chunk {args.chunk} must be >= 1")
    data = open(args.file, "rb").read()
    deadline = Deadline(args.deadline)
    with connect(args.target) as api:
        v = api.pb.vision_pb2
        config = v.StreamConfig(model_id=args.model, tasks=[v.VisionTask(faces=v.FaceDetectionTask())],
                                max_pending_frames=8)
        chunks = [data[i:i + args.chunk] for i in range(0, len(data), args.chunk)]

        def requests():
            yield v.ProcessRequest(config=config)
            for c in chunks:
                yield v.ProcessRequest(frame=v.Frame(h264=c))
            yield v.ProcessRequest(frame=v.Frame(flush=True))

        indices, size = [], None
        md = metadata(token=args.token, client_id=args.client_id)
        for r in api.vision.Process(requests(), timeout=deadline.remaining(), metadata=md):
            indices.append(r.frame_index)
            size = (r.width, r.height)
        in_order = indices == list(range(len(indices)))
        print(f"h264: {len(data)} bytes in {len(chunks)} chunks of {args.chunk}, pictures={len(indices)} "
              f"size={size[0]}x{size[1]} in order: {in_order}" if size else "h264: no picture decoded")
        return 0 if indices and in_order else 1


if __name__ == "__main__":
    sys.exit(main())
