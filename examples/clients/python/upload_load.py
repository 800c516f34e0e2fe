#!/usr/bin/env python3
"""Uploads a model file into the model store with progress, loads it and
watches its state until READY, then (with `--api`) calls it, with
`--swap` replaces it by a second version while calls run (none refused),
and unloads and deletes it unless `--keep`.

Changing the catalog or the store needs the `manage` scope: over the
control socket (the sidecar's own user), or with a token that has it.

    .venv/bin/python examples/clients/python/upload_load.py --target unix:///run/sidecar/control.sock \
        --file models/mediapipe/face_detection_short_range.tflite --family lite --model-id uploaded-face \
        --api 127.0.0.1:50051
"""
import hashlib
import os
import sys
import threading
import time

import grpc

from sidecar_client import Deadline, connect, metadata
from sidecar_client.cli import parser

CHUNK = 64 << 10


def swap(api, args, dest: str, deadline: Deadline, md) -> bool:
    """LoadModel with `replace`: the new version (other options) loads
    beside the old one, the id switches to it once READY, the old one
    drains; calls made meanwhile are answered by one or the other."""
    m, lite_opts = api.pb.model_pb2, api.pb.model_pb2.LiteOptions(threads=2)
    stop, calls, failed = threading.Event(), [0], []

    def caller() -> None:
        with connect(args.api) as c:
            req = c.pb.lite_pb2.GetModelInfoRequest(model_id=args.model_id)
            while not stop.is_set():
                try:
                    c.lite.GetModelInfo(req, timeout=min(5.0, deadline.remaining()), metadata=metadata(token=args.token))
                    calls[0] += 1
                except grpc.RpcError as e:
                    failed.append(f"{e.code().name}: {e.details()}")
                time.sleep(0.01)  # a client's pace, not a flood

    before = api.model.GetModel(m.GetModelRequest(model_id=args.model_id), timeout=deadline.remaining(), metadata=md).version
    t = threading.Thread(target=caller)
    t.start()
    try:
        r = api.model.LoadModel(
            m.LoadModelRequest(model_id=args.model_id, family=api.pb.common_pb2.MODEL_FAMILY_LITE, path=dest,
                               lite=lite_opts, replace=True, drain_timeout_ms=1000),
            timeout=deadline.remaining(), metadata=md)
        time.sleep(0.2)  # calls on the new version too
    finally:
        stop.set()
        t.join()
    print(f"swap {args.model_id}: version {before} -> {r.model.version} (threads 1 -> 2), "
          f"{calls[0]} calls during the swap, {len(failed)} failed{': ' + failed[0] if failed else ''}")
    return r.model.version == before + 1 and not failed and calls[0] > 0


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--file", required=True)
    p.add_argument("--dest", default=None, help="path in the store (default uploads/<file name>)")
    p.add_argument("--family", choices=["text", "lite", "vision"], required=True)
    p.add_argument("--model-id", required=True)
    p.add_argument("--api", default=None, help="API address to call the loaded model on (lite models)")
    p.add_argument("--swap", action="store_true",
                   help="lite with --api: swap in a second version (2 threads) while calls run, none refused")
    p.add_argument("--keep", action="store_true", help="leave the model loaded and the file in the store")
    args = p.parse_args()
    deadline = Deadline(args.deadline)
    data = open(args.file, "rb").read()
    dest = args.dest or f"uploads/{os.path.basename(args.file)}"
    digest = hashlib.sha256(data).hexdigest()

    with connect(args.target) as api:
        m = api.pb.model_pb2
        md = metadata(token=args.token)

        def chunks():
            yield m.PutFileRequest(header=m.PutFileHeader(path=dest, size_bytes=len(data), sha256=digest, overwrite=True))
            sent, shown = 0, -1
            for i in range(0, len(data), CHUNK):
                piece = data[i:i + CHUNK]
                yield m.PutFileRequest(chunk=piece)
                sent += len(piece)
                pct = sent * 100 // len(data)
                if pct // 25 != shown:
                    shown = pct // 25
                    print(f"upload: {sent >> 10} / {len(data) >> 10} KiB ({pct}%)")

        put = api.model.PutFile(chunks(), timeout=deadline.remaining(), metadata=md)
        ok = put.file.sha256 == digest
        print(f"uploaded {put.file.path}: {put.file.size_bytes} bytes, sha256 verified by the server: {ok}")

        c = api.pb.common_pb2
        family = {"text": c.MODEL_FAMILY_TEXT, "lite": c.MODEL_FAMILY_LITE, "vision": c.MODEL_FAMILY_VISION}[args.family]
        # LoadModel returns when the model is READY; meanwhile GetModel shows
        # its state (LOADING, then READY or FAILED with a reason).
        load = api.model.LoadModel.future(
            m.LoadModelRequest(model_id=args.model_id, family=family, path=dest),
            timeout=deadline.remaining(), metadata=md)
        started, seen = time.monotonic(), []
        while not load.done():
            try:
                state = api.model.GetModel(m.GetModelRequest(model_id=args.model_id), timeout=deadline.remaining(), metadata=md).state
            except Exception:  # not registered yet
                state = None
            if state is not None and (not seen or seen[-1] != state):
                seen.append(state)
            time.sleep(0.02)
        info = load.result().model
        if not seen or seen[-1] != info.state:
            seen.append(info.state)
        names = " -> ".join(api.pb.common_pb2.ModelState.Name(s).removeprefix("MODEL_STATE_") for s in seen)
        print(f"load {args.model_id}: {names} in {time.monotonic() - started:.2f} s")

        if args.api and args.family == "lite":
            with connect(args.api) as call_api:
                lite = call_api.pb.lite_pb2
                mi = call_api.lite.GetModelInfo(lite.GetModelInfoRequest(model_id=args.model_id),
                                                timeout=deadline.remaining(), metadata=metadata(token=args.token))
                print(f"call {args.model_id}: inputs {[list(t.shape) for t in mi.inputs]}, {len(mi.outputs)} outputs")
        swapped = True
        if args.swap and args.api and args.family == "lite":
            swapped = swap(api, args, dest, deadline, md)
        if not args.keep:
            api.model.UnloadModel(m.UnloadModelRequest(model_id=args.model_id), timeout=deadline.remaining(), metadata=md)
            api.model.DeleteFile(m.DeleteFileRequest(path=dest), timeout=deadline.remaining(), metadata=md)
            print(f"unloaded {args.model_id} and deleted {dest}")
        return 0 if ok and swapped and info.state == api.pb.common_pb2.MODEL_STATE_READY else 1


if __name__ == "__main__":
    sys.exit(main())
