"""numpy arrays to and from LiteService tensors."""
from __future__ import annotations

import numpy as np

# DType enum values (lite.proto) and their numpy types, little-endian.
DTYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("<f2"),
    3: np.dtype("i1"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("<i4"),
    7: np.dtype("<i8"),
    8: np.dtype("?"),
}


def to_tensor(pb, name: str, array: np.ndarray, dtype: int):
    """A `lite_pb2.Tensor` holding `array` as the model's `dtype` expects
    (row-major, little-endian)."""
    want = DTYPES.get(dtype)
    if want is None:
        raise ValueError(f"dtype {dtype} has no numpy type here")
    data = np.ascontiguousarray(array, dtype=want)
    return pb.lite_pb2.Tensor(name=name, dtype=dtype, shape=list(data.shape), data=data.tobytes())


def from_tensor(tensor) -> np.ndarray:
    """The tensor's elements as an array of its shape."""
    want = DTYPES.get(tensor.dtype)
    if want is None:
        raise ValueError(f"tensor {tensor.name}: dtype {tensor.dtype} has no numpy type here")
    expected = int(np.prod(tensor.shape)) * want.itemsize
    if len(tensor.data) != expected:
        raise ValueError(f"tensor {tensor.name}: {len(tensor.data)} bytes, shape {list(tensor.shape)} needs {expected}")
    return np.frombuffer(tensor.data, dtype=want).reshape(tuple(tensor.shape))
