#!/usr/bin/env python3
"""LITE inference from numpy: read the model's tensors, build an input
array of that shape and type, run Infer and InferBatch, read the outputs
back as arrays.

    .venv/bin/python examples/clients/python/lite_numpy.py --model face-detector
"""
import sys

import numpy as np

from sidecar_client import Deadline, connect, metadata
from sidecar_client.cli import parser
from sidecar_client.tensors import DTYPES, from_tensor, to_tensor


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--model", default="face-detector")
    args = p.parse_args()
    deadline = Deadline(args.deadline)
    with connect(args.target) as api:
        lite = api.pb.lite_pb2
        md = lambda: metadata(token=args.token, client_id=args.client_id)  # noqa: E731
        info = api.lite.GetModelInfo(lite.GetModelInfoRequest(model_id=args.model), timeout=deadline.remaining(), metadata=md())
        for t in info.inputs:
            print(f"input {t.name}: shape={list(t.shape)} dtype={lite.DType.Name(t.dtype)}")
        rng = np.random.default_rng(7)
        arrays = {}
        for t in info.inputs:
            dt = DTYPES[t.dtype]
            if dt.kind == "f":
                arrays[t.name] = rng.uniform(-1.0, 1.0, size=tuple(t.shape)).astype(dt)
            else:
                arrays[t.name] = rng.integers(0, 2, size=tuple(t.shape)).astype(dt)
        tensors = [to_tensor(api.pb, t.name, arrays[t.name], t.dtype) for t in info.inputs]
        r = api.lite.Infer(lite.InferRequest(model_id=args.model, inputs=tensors), timeout=deadline.remaining(), metadata=md())
        outs = {o.name: from_tensor(o) for o in r.outputs}
        for name, a in outs.items():
            print(f"output {name}: shape={a.shape} dtype={a.dtype} min={a.min():.4f} max={a.max():.4f}")
        print(f"infer: {len(outs)} outputs, invoke {r.timings.invoke_us} us")

        # The same input twice in one InferBatch: the same outputs, bit for bit.
        sets = [lite.InputSet(inputs=tensors), lite.InputSet(inputs=tensors)]
        b = api.lite.InferBatch(lite.InferBatchRequest(model_id=args.model, sets=sets), timeout=deadline.remaining(), metadata=md())
        same = all(np.array_equal(from_tensor(o), outs[o.name]) for s in b.results for o in s.outputs)
        print(f"batch: {len(b.results)} sets, identical to Infer: {same}")
        return 0 if same and outs else 1


if __name__ == "__main__":
    sys.exit(main())
