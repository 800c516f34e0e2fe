#!/usr/bin/env python3
"""LITE inference through shared memory (a client on the same host or in
the same pod): the input tensor is written into a POSIX shared-memory
object, registered once as a region, and named in the call instead of
carried in it; the output is written by the server into the same region.

    .venv/bin/python examples/clients/python/lite_shm.py --target unix:///run/sidecar-api/api.sock --model face-detector

Use the API's Unix socket (`[api_socket]`): it tells the server the
caller's uid, so an object only the caller can read (mode 0600) is
accepted; over TCP only objects readable by all are.
"""
import os
import sys

import numpy as np

from sidecar_client import Deadline, connect, metadata
from sidecar_client.cli import parser
from sidecar_client.tensors import DTYPES, from_tensor, to_tensor


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--model", default="face-detector")
    p.add_argument("--output", default=None, help="the output placed in the region (default: the model's last)")
    args = p.parse_args()
    deadline = Deadline(args.deadline)
    with connect(args.target) as api:
        lite, common, shm = api.pb.lite_pb2, api.pb.common_pb2, api.pb.shm_pb2
        md = lambda: metadata(token=args.token, client_id=args.client_id)  # noqa: E731
        info = api.lite.GetModelInfo(lite.GetModelInfoRequest(model_id=args.model), timeout=deadline.remaining(), metadata=md())
        (inp,) = info.inputs
        out = next(o for o in info.outputs if o.name == args.output) if args.output else info.outputs[-1]
        array = np.random.default_rng(7).uniform(-1.0, 1.0, size=tuple(inp.shape)).astype(DTYPES[inp.dtype])
        in_bytes = array.nbytes
        out_bytes = int(np.prod(out.shape)) * DTYPES[out.dtype].itemsize

        # The object: /dev/shm/<key> (what shm_open(key) opens), ours alone.
        key = f"/sidecar-example-{os.getpid()}"
        path = f"/dev/shm{key}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, in_bytes + out_bytes)
            os.pwrite(fd, array.tobytes(), 0)
            region = api.shm.RegisterRegion(
                shm.RegisterRegionRequest(name="io", key=key, offset=0, byte_size=in_bytes + out_bytes, writable=True),
                timeout=deadline.remaining(), metadata=md())
            print(f"shm: region {region.name} ({region.key}, {region.byte_size} bytes) registered, writable={region.writable}")
            ref_in = common.SharedMemoryRef(region="io", offset=0, byte_size=in_bytes)
            ref_out = common.SharedMemoryRef(region="io", offset=in_bytes, byte_size=out_bytes)
            req = lite.InferRequest(
                model_id=args.model,
                inputs=[lite.Tensor(name=inp.name, dtype=inp.dtype, shape=inp.shape, shm=ref_in)],
                outputs=[out.name],
                output_placements=[lite.OutputPlacement(name=out.name, shm=ref_out)],
            )
            r = api.lite.Infer(req, timeout=deadline.remaining(), metadata=md())
            (placed,) = r.outputs
            got = np.frombuffer(os.pread(fd, out_bytes, in_bytes), dtype=DTYPES[out.dtype]).reshape(tuple(out.shape))
            # The same input inline, for comparison.
            inline = api.lite.Infer(lite.InferRequest(model_id=args.model, inputs=[to_tensor(api.pb, inp.name, array, inp.dtype)],
                                                      outputs=[out.name]), timeout=deadline.remaining(), metadata=md())
            same = np.array_equal(got, from_tensor(inline.outputs[0]))
            print(f"shm infer: input {in_bytes} bytes read from the region, output {out.name} {out_bytes} bytes "
                  f"written into it (inline data {len(placed.data)} bytes), identical to inline: {same}")
            gone = api.shm.UnregisterRegion(shm.UnregisterRegionRequest(name="io"), timeout=deadline.remaining(), metadata=md())
            print(f"shm: unregistered {gone.unregistered}")
            return 0 if same and not placed.data else 1
        finally:
            os.close(fd)
            os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())
