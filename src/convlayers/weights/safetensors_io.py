"""Read and write the safetensors format with the standard library and NumPy alone.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of UTF-8 JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``, then
the tensors' little-endian, C-ordered bytes; offsets count from the end of the header and the
tensors tile the rest of the file exactly. Nothing in the file is executed.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from convlayers.io import atomic_write
from convlayers.limits import check_elements
from convlayers.weights._budget import Budget, check_shape
from convlayers.weights._common import (
    PathLike,
    as_path,
    bfloat16_to_float32,
    check_tensors,
    short_repr,
)

MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit

_DTYPES: dict[str, np.dtype] = {
    code: np.dtype(spec)
    for code, spec in (
        ("F64", "<f8"), ("F32", "<f4"), ("F16", "<f2"), ("BF16", "<u2"),
        ("I64", "<i8"), ("I32", "<i4"), ("I16", "<i2"), ("I8", "i1"),
        ("U64", "<u8"), ("U32", "<u4"), ("U16", "<u2"), ("U8", "u1"), ("BOOL", "?"),
        ("C64", "<c8"), ("C128", "<c16"),
    )
}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items() if code != "BF16"}


def _code(arr: np.ndarray, key: str) -> str:
    code = _CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"tensors[{key!r}] has dtype {arr.dtype}, which safetensors cannot hold")
    return code


def save_safetensors(
    tensors: Mapping[str, np.ndarray], path: PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` to ``path`` in the safetensors format, atomically.

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray
        Names and arrays (any layout or byte order; stored C-ordered, little-endian). Float,
        integer, unsigned, bool and complex dtypes are accepted.
    path : str or os.PathLike
        Destination; written to a temporary file first and moved into place on success.
    metadata : mapping of str to str, optional
        Free-form text stored in the header's ``__metadata__``.

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_safetensors({"w": np.eye(2, dtype=np.float32)}, p, metadata={"format": "np"})
    >>> load_safetensors(p)["w"]
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    arrays = check_tensors(tensors)
    if "__metadata__" in arrays:
        raise ValueError("tensors must not use the reserved name '__metadata__'")
    header: dict[str, Any] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise TypeError(f"metadata must be a mapping of str to str or None, got {metadata!r}")
        header["__metadata__"] = dict(metadata)
    # largest items first keeps every tensor aligned to its item size, as the reference does
    order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    offset = 0
    for key in order:
        arr = arrays[key]
        header[key] = {"dtype": _code(arr, key), "shape": list(arr.shape),
                       "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    blob = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key in order:
            arr = arrays[key]
            little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            f.write(little.reshape(-1).view(np.uint8).data)


def _read_header(f: Any, where: str, size: int) -> tuple[dict[str, Any], int]:
    head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"safetensors file {where} is truncated: {size} bytes, no header length")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES or n > size - 8:
        raise ValueError(
            f"safetensors file {where} is truncated or corrupt: header length {n} exceeds the "
            f"file's remaining {size - 8} bytes (or the {MAX_HEADER_BYTES}-byte limit)"
        )
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except RecursionError:
        raise ValueError(f"safetensors file {where} has a corrupt header: it nests JSON deeper "
                         "than Python's recursion limit") from None
    except ValueError as exc:  # bad UTF-8 or JSON, or an int past Python's digit limit
        raise ValueError(f"safetensors file {where} has a corrupt header: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(f"safetensors file {where} header must be a JSON object")
    return header, size - 8 - n


_Entry = tuple[int, str, str, tuple[int, ...]]  # begin, name, dtype code, shape


def _metadata(header: dict[str, Any], where: str) -> dict[str, str]:
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"safetensors file {where}: __metadata__ must map str to str")
    return dict(meta)


def _entries(header: dict[str, Any], where: str, data_len: int) -> list[_Entry]:
    entries: list[_Entry] = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        bad = f"safetensors file {where}: tensor {key!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{bad} needs exactly dtype, shape and data_offsets, got {short_repr(info)}")
        if not isinstance(info["dtype"], str) or info["dtype"] not in _DTYPES:
            raise ValueError(f"{bad} has unknown dtype {short_repr(info['dtype'])}; known: {sorted(_DTYPES)}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape
        ):
            raise ValueError(f"{bad} shape must be a list of non-negative ints, got {short_repr(shape)}")
        check_shape(tuple(shape), bad, _DTYPES[info["dtype"]].itemsize)
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"{bad} data_offsets must be [begin, end], got {short_repr(offsets)}")
        dtype = _DTYPES[info["dtype"]]
        if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"{bad} spans {offsets} but shape {shape} needs "
                             f"{math.prod(shape) * dtype.itemsize} bytes")
        entries.append((offsets[0], key, info["dtype"], tuple(shape)))
    entries.sort(key=lambda e: (e[0], _DTYPES[e[2]].itemsize * math.prod(e[3])))
    pos = 0
    for begin, key, code, shape in entries:
        if begin != pos:
            raise ValueError(f"safetensors file {where}: tensor {key!r} starts at {begin}, "
                             f"expected {pos} (tensors must tile the data without gaps or overlap)")
        pos += _DTYPES[code].itemsize * math.prod(shape)
    if pos != data_len:
        state = "truncated" if pos > data_len else "corrupt"
        raise ValueError(f"safetensors file {where} is {state}: tensors need {pos} data bytes, "
                         f"file has {data_len}")
    return entries


def load_safetensors(path: PathLike, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Read a safetensors file into ``{name: numpy array}``, validating it first.

    Parameters
    ----------
    path : str or os.PathLike
        A safetensors file.
    max_bytes : int, optional
        Most bytes the arrays may take together (default: as
        :func:`convlayers.weights.load_torch_checkpoint`); checked before any is allocated.

    Returns
    -------
    dict of str to numpy.ndarray
        Writable, native-byte-order arrays in header order; ``BF16`` is widened to float32.

    Raises
    ------
    ValueError
        Naming the path, if the file is truncated, its header is not valid JSON, a dtype is
        unknown, the offsets do not tile the data exactly, or the arrays exceed the cap.

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "b.safetensors")
    >>> save_safetensors({"b": np.arange(3, dtype=np.int64)}, p)
    >>> load_safetensors(p)
    {'b': array([0, 1, 2])}
    """
    where = repr(as_path(path))
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header, data_len = _read_header(f, where, size)
        _metadata(header, where)
        entries = _entries(header, where, data_len)
        budget = Budget(where, size, max_bytes)
        for _, key, code, shape in entries:  # all of them before the first is allocated
            nbytes = check_elements(shape, _DTYPES[code], f"{where}: tensor {key!r}")
            budget.charge(3 * nbytes if code == "BF16" else nbytes, f"tensor {key!r}")
        arrays: dict[str, np.ndarray] = {}
        for _, key, code, shape in entries:
            arr = np.empty(shape, dtype=_DTYPES[code])
            got = f.readinto(arr.reshape(-1).view(np.uint8).data)
            if got != arr.nbytes:
                raise ValueError(f"safetensors file {where} is truncated inside tensor {key!r}")
            native = arr.astype(arr.dtype.newbyteorder("="), copy=False)
            arrays[key] = bfloat16_to_float32(native) if code == "BF16" else native
    return {k: arrays[k] for k in header if k != "__metadata__"}


def load_safetensors_metadata(path: PathLike) -> dict[str, str]:
    """Return the ``__metadata__`` of a safetensors file without reading its tensors.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save_safetensors({"x": np.zeros(1)}, p, metadata={"epoch": "3"})
    >>> load_safetensors_metadata(p)
    {'epoch': '3'}
    """
    where = repr(as_path(path))
    with open(path, "rb") as f:
        header, _ = _read_header(f, where, os.fstat(f.fileno()).st_size)
    return _metadata(header, where)
