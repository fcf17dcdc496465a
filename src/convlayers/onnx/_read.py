"""Reading an ONNX file safely: size caps before allocation, external data kept inside the
model's folder, declared tensor sizes checked against the bytes present, clear errors.

Nothing here trusts the file: every tensor's size is worked out from its declared shape with
Python ints and checked (alone and summed over the model) against a cap before anything is
allocated, and a tensor's bytes must all be present (in the file, or in an external-data file
under the model's own folder) before they are read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from convlayers import limits

__all__ = ["OnnxSource", "read_model", "require_onnx", "tensor_to_array"]

# ONNX TensorProto.DataType -> (numpy dtype, name of the typed field that may hold the values)
_DTYPES: dict[int, tuple[Any, str]] = {
    1: (np.float32, "float_data"), 2: (np.uint8, "int32_data"), 3: (np.int8, "int32_data"),
    4: (np.uint16, "int32_data"), 5: (np.int16, "int32_data"), 6: (np.int32, "int32_data"),
    7: (np.int64, "int64_data"), 9: (np.bool_, "int32_data"), 10: (np.float16, "int32_data"),
    11: (np.float64, "double_data"), 12: (np.uint32, "uint64_data"), 13: (np.uint64, "uint64_data"),
}


def require_onnx() -> Any:
    """The ``onnx`` package, or an ImportError that says how to install it."""
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - the test environment has onnx
        raise ImportError("convlayers.onnx needs the 'onnx' package: pip install convlayers[onnx]") from err
    return onnx


class OnnxSource:
    """Where a model came from: its name in messages and the folder external data must lie in."""

    def __init__(self, name: str, folder: Path | None, cap: int | None) -> None:
        self.name, self.folder, self.cap = name, folder, cap
        self.declared = 0  # bytes declared by the tensors read so far


def read_model(source: Any, max_bytes: int | None = None) -> tuple[Any, OnnxSource]:
    """Parse ``source`` (a path or the bytes of a model) into a ``ModelProto``.

    The file's size is checked against the cap before it is read; protobuf errors become a
    ValueError naming the file.
    """
    onnx = require_onnx()
    cap = None if max_bytes is None else int(max_bytes)  # None: config.max_array_bytes()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, origin = bytes(source), OnnxSource("<ONNX bytes>", None, cap)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"ONNX file {str(path)!r} does not exist or is not a file")
        limits.check_bytes(path.stat().st_size, f"ONNX file {str(path)!r}", cap)
        data, origin = path.read_bytes(), OnnxSource(repr(str(path)), path.resolve().parent, cap)
    else:
        raise TypeError(f"source must be a path or the bytes of an ONNX model, got {type(source).__name__}")
    limits.check_bytes(len(data), f"ONNX model {origin.name}", cap)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as err:  # google.protobuf.message.DecodeError and friends
        raise ValueError(f"{origin.name} is not a valid ONNX model: the protobuf does not parse "
                         f"({type(err).__name__}: {err}); is the file truncated?") from None
    if not model.HasField("graph") or not model.graph.output:
        raise ValueError(f"{origin.name} is not a valid ONNX model: it has no graph with outputs "
                         f"(truncated, or not an ONNX file)")
    return model, origin


def _declared_bytes(tensor: Any, origin: OnnxSource, what: str) -> tuple[np.dtype, tuple[int, ...], int]:
    if tensor.data_type not in _DTYPES:
        raise ValueError(f"{what} in {origin.name} has ONNX data type {tensor.data_type}, which "
                         f"convlayers cannot read (supported: float16/32/64, bool, (u)int8-64)")
    dtype = np.dtype(_DTYPES[tensor.data_type][0])
    dims = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{what} in {origin.name} declares a negative dimension: {dims}")
    count = 1
    for d in dims:
        count *= d
    nbytes = count * dtype.itemsize
    limits.check_bytes(nbytes, f"{what} in {origin.name} (shape {dims})", origin.cap)
    origin.declared += nbytes
    limits.check_bytes(origin.declared, f"the tensors of {origin.name}", origin.cap)
    return dtype, dims, count


def _external(tensor: Any, origin: OnnxSource, what: str, nbytes: int) -> np.ndarray:
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if origin.folder is None:
        raise ValueError(f"{what} in {origin.name} keeps its data in an external file "
                         f"({location!r}); load the model from its path so the file can be found")
    if not location or os.path.isabs(location) or ".." in Path(location).parts:
        raise ValueError(f"{what} in {origin.name} refers to external data {location!r} outside "
                         f"the model's folder: refused (only relative paths below it are read)")
    target = (origin.folder / location).resolve()
    if not target.is_relative_to(origin.folder):
        raise ValueError(f"{what} in {origin.name} refers to external data {location!r} that "
                         f"resolves outside the model's folder ({target}): refused")
    if not target.is_file():
        raise ValueError(f"{what} in {origin.name}: external data file {location!r} is missing")
    offset = int(info.get("offset", 0) or 0)
    length = int(info.get("length", nbytes) or nbytes)
    size = target.stat().st_size
    if offset < 0 or length != nbytes or offset + nbytes > size:
        raise ValueError(f"{what} in {origin.name} needs {nbytes:,} bytes at offset {offset} of "
                         f"{location!r} (declared length {length}), but the file has {size:,}")
    with target.open("rb") as f:
        f.seek(offset)
        return np.frombuffer(f.read(nbytes), dtype=np.uint8)


def tensor_to_array(tensor: Any, origin: OnnxSource, what: str) -> np.ndarray:
    """A TensorProto as a NumPy array, its size checked before anything is allocated."""
    dtype, dims, count = _declared_bytes(tensor, origin, what)
    nbytes = count * dtype.itemsize
    if tensor.data_location == 1:  # EXTERNAL
        raw = _external(tensor, origin, what, nbytes)
        return raw.view(dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    if tensor.HasField("raw_data"):
        if len(tensor.raw_data) != nbytes:
            raise ValueError(f"{what} in {origin.name} declares shape {dims} ({nbytes:,} bytes) but "
                             f"holds {len(tensor.raw_data):,} bytes")
        return np.frombuffer(tensor.raw_data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    field = _DTYPES[tensor.data_type][1]
    values = getattr(tensor, field)
    if len(values) != count:
        raise ValueError(f"{what} in {origin.name} declares shape {dims} ({count:,} values) but "
                         f"holds {len(values):,}")
    if dtype == np.float16:
        return np.asarray(values, dtype=np.uint16).view(np.float16).reshape(dims)
    return np.asarray(values, dtype=dtype).reshape(dims)
