#!/usr/bin/env python3
"""Makes int8-quantized LITE test models from MediaPipe float32 models with
the PyPI `litert-quantizer` (no int8 `.tflite` ships in any package).

MediaPipe's files predate the current TFLite schema: their operator codes
live in `deprecated_builtin_code` (`builtin_code` reads 0, ADD) and they
carry no signature. The quantizer reads `builtin_code` and calibrates
through a signature, so each model is first rewritten: codes moved to
`builtin_code`, and a `serving_default` signature over the subgraph's
inputs and outputs. Then:

  <name>_dynamic_int8.tflite  int8 weights, dynamic-range int8 compute
  <name>_static_int8.tflite   int8 weights and activations (calibrated on
                              64 deterministic inputs), float32 I/O

Usage: make_int8_models.py SRC_DIR OUT_DIR NAME...
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from litert_quantizer import quantizer, recipe
from litert_quantizer.utils import tfl_flatbuffer_utils as tfl

SIGNATURE = "serving_default"


def modernize(src: Path, dst: Path) -> None:
    model = tfl.read_model(str(src))
    for code in model.operatorCodes:
        code.builtinCode = max(code.builtinCode, code.deprecatedBuiltinCode)
    if not model.signatureDefs:
        sub = model.subgraphs[0]

        def tensor_map(i):
            m = schema.TensorMapT()
            m.name = sub.tensors[i].name
            m.tensorIndex = i
            return m

        sig = schema.SignatureDefT()
        sig.signatureKey = SIGNATURE
        sig.subgraphIndex = 0
        sig.inputs = [tensor_map(i) for i in sub.inputs]
        sig.outputs = [tensor_map(i) for i in sub.outputs]
        model.signatureDefs = [sig]
    tfl.write_model(model, str(dst))


def calibration(path: Path) -> dict:
    it = Interpreter(model_path=str(path))
    runner = it.get_signature_runner(SIGNATURE)
    details = runner.get_input_details()
    samples = []
    for k in range(64):
        sample = {}
        for name, d in details.items():
            n = int(np.prod(d["shape"]))
            i = np.arange(n, dtype=np.int64) + k * 131
            sample[name] = (((i * 7919) % 1000).astype(np.float32) / 500.0 - 1.0).reshape(d["shape"])
        samples.append(sample)
    return {SIGNATURE: samples}


def main() -> None:
    src_dir, out_dir, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            modern = Path(tmp) / f"{name}.tflite"
            modernize(src_dir / f"{name}.tflite", modern)
            q = quantizer.Quantizer(str(modern), recipe.dynamic_wi8_afp32())
            q.quantize().export_model(str(out_dir / f"{name}_dynamic_int8.tflite"), overwrite=True)
            q = quantizer.Quantizer(str(modern), recipe.static_wi8_ai8())
            result = q.calibrate(calibration(modern))
            q.quantize(result).export_model(str(out_dir / f"{name}_static_int8.tflite"), overwrite=True)
            print(f"{name}: int8 models written")


if __name__ == "__main__":
    main()
