#!/usr/bin/env python3
"""The LITE benchmark's reference: the official LiteRT Python interpreter
(ai-edge-litert 2.3.0, XNNPACK) running a model in-process. One call is what
a sidecar Infer does for its caller: copy the input in, invoke, copy the
outputs out. Prints `p50_us=.. p99_us=.. n=..`.

Usage: bench_lite_reference.py MODEL THREADS SECONDS
"""

import sys
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def pattern(shape, dtype):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.int64)
    return (((i * 7919) % 1000).astype(np.float32) / np.float32(500.0) - np.float32(1.0)).astype(dtype).reshape(shape)


def main() -> None:
    model, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    it = Interpreter(model_path=model, num_threads=threads)
    it.allocate_tensors()
    inputs = [(d["index"], pattern(tuple(d["shape"]), d["dtype"])) for d in it.get_input_details()]
    outputs = [d["index"] for d in it.get_output_details()]

    def call():
        for index, value in inputs:
            it.set_tensor(index, value)
        it.invoke()
        return [it.get_tensor(o) for o in outputs]

    for _ in range(5):
        call()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    times.sort()
    p = lambda q: times[min(len(times) - 1, round(q * (len(times) - 1)))] * 1e6
    print(f"p50_us={p(0.5):.1f} p99_us={p(0.99):.1f} n={len(times)}")


if __name__ == "__main__":
    main()
