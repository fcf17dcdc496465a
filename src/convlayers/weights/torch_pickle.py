"""Read ``torch.save`` files without torch, through an unpickler that only rebuilds tensors.

A ``.pt`` file written by ``torch.save`` (PyTorch >= 1.6) is a zip archive (older files are a
stream of pickles, see :mod:`convlayers.weights.torch_legacy`)::

    <name>/data.pkl      a pickle of the saved object; tensors refer to storages by key
    <name>/data/<key>    the raw bytes of each storage
    <name>/byteorder     "little" or "big" (absent in old files: little)

Pickles can call any importable function, so ``data.pkl`` is read by an unpickler whose
``find_class`` knows a short allow-list (the tensor rebuild functions, storage types,
``collections.OrderedDict`` and a few builtins), each mapped to a local function that builds a
NumPy array. Anything else raises :class:`UnsafeWeightsError` before it is called.
"""

from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from convlayers.weights._common import PathLike, UnsafeWeightsError, as_path, bfloat16_to_float32
from convlayers.weights.state_dicts import select_state_dict

# storage class name -> (little-endian numpy dtype, is bfloat16)
_STORAGES: dict[str, tuple[str, bool]] = {
    "DoubleStorage": ("<f8", False),
    "FloatStorage": ("<f4", False),
    "HalfStorage": ("<f2", False),
    "BFloat16Storage": ("<u2", True),
    "LongStorage": ("<i8", False),
    "IntStorage": ("<i4", False),
    "ShortStorage": ("<i2", False),
    "CharStorage": ("i1", False),
    "ByteStorage": ("u1", False),
    "BoolStorage": ("?", False),
    "ComplexFloatStorage": ("<c8", False),
    "ComplexDoubleStorage": ("<c16", False),
}


class _Frozen:
    """Base of everything the unpickler hands to a pickle: BUILD on it is refused."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise UnsafeWeightsError(f"refused BUILD on {type(self).__name__}: not a plain container")


class _StorageType(_Frozen):
    __slots__ = ("bfloat16", "dtype", "name")

    def __init__(self, name: str, dtype: str, bfloat16: bool) -> None:
        self.name, self.dtype, self.bfloat16 = name, np.dtype(dtype), bfloat16


class _Storage(_Frozen):
    """A storage's elements; ``array`` is None until a legacy file's data section is read."""

    __slots__ = ("array", "bfloat16")

    def __init__(self, array: np.ndarray | None, bfloat16: bool) -> None:
        self.array, self.bfloat16 = array, bfloat16


class _Tensor(_Frozen):
    """A rebuilt tensor, or (legacy files) the recipe to rebuild it once its storage is read."""

    __slots__ = ("array", "pending")

    def __init__(self, array: np.ndarray | None, pending: tuple[Any, ...] | None = None) -> None:
        self.array, self.pending = array, pending

    def materialize(self) -> np.ndarray:
        if self.array is None:
            assert self.pending is not None
            self.array = _rebuild_tensor(*self.pending).array
        assert self.array is not None
        return self.array


class _Global(_Frozen):
    """An allowed global: a fixed, local callable standing in for the one the pickle named."""

    __slots__ = ("fn", "qualname")

    def __init__(self, qualname: str, fn: Callable[..., Any]) -> None:
        self.qualname, self.fn = qualname, fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ValueError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise ValueError(f"tensor storage must be a persistent storage record, got {storage!r}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    (start,) = _ints((offset,), "storage offset")
    if len(shape) != len(strides):
        raise ValueError(f"tensor size {shape} and stride {strides} differ in length")
    base = storage.array
    if base is None:  # legacy format: the data comes after the pickle
        return _Tensor(None, (storage, start, shape, strides))
    native = base.dtype.newbyteorder("=")
    if 0 in shape:
        out = np.zeros(shape, dtype=native)
    else:
        last = start + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        if last >= base.size:
            raise ValueError(
                f"tensor of size {shape}, stride {strides} at offset {start} reads past its "
                f"storage of {base.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            base[start:], shape, [s * base.itemsize for s in strides], writeable=False
        )
        out = np.array(view, dtype=native, order="C")
    return _Tensor(bfloat16_to_float32(out) if storage.bfloat16 else out)


def _rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any,
    metadata: Any = None,
) -> _Tensor:
    tensor = _rebuild_tensor(storage, offset, size, stride)
    if tensor.array is None:
        return tensor
    if isinstance(metadata, dict) and metadata.get("neg"):
        tensor.array = np.negative(tensor.array)
    if isinstance(metadata, dict) and metadata.get("conj"):
        tensor.array = np.conj(tensor.array)
    return tensor


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, state: Any = None) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise ValueError(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


_TORCH_DTYPES = (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
    "bool", "complex64", "complex128",
)


def _device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise ValueError(f"torch.device needs a str and an optional int, got {kind!r}, {index!r}")
    return kind if index is None else f"{kind}:{index}"


def _allowed() -> dict[str, Any]:
    table: dict[str, Any] = {
        f"torch.{name}": _StorageType(name, dtype, bf16) for name, (dtype, bf16) in _STORAGES.items()
    }
    fns: dict[str, Callable[..., Any]] = {
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "collections.OrderedDict": OrderedDict,
        "torch.Size": tuple,
        "torch.device": _device,
    }
    for mod in ("builtins", "__builtin__"):
        for name, fn in (("set", set), ("frozenset", frozenset), ("complex", complex)):
            fns[f"{mod}.{name}"] = fn
    table.update({q: _Global(q, fn) for q, fn in fns.items()})
    # dtypes and devices stored beside tensors (configs, AMP state) load as plain strings
    table.update({f"torch.{name}": f"torch.{name}" for name in _TORCH_DTYPES})
    return table


_ALLOWED = _allowed()


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, read_storage: Callable[[str], bytes], byteorder: str) -> None:
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage
        self._byteorder: Literal["<", ">"] = "<" if byteorder == "little" else ">"
        self._storages: dict[tuple[str, str], _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname not in _ALLOWED:
            raise UnsafeWeightsError(
                f"refused global {qualname!r}: a weights file may only rebuild tensors and plain "
                "containers (dict, list, tuple, OrderedDict); this file asks to call other code"
            )
        return _ALLOWED[qualname]

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unknown persistent record {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise ValueError(f"storage type must be a torch storage class, got {stype!r}")
        if not isinstance(key, str) or not key.isalnum() or not isinstance(numel, int):
            raise ValueError(f"malformed storage record {pid!r}")
        cached = self._storages.get((key, stype.name))
        if cached is None:
            raw = self._read_storage(key)
            dtype = stype.dtype.newbyteorder(self._byteorder)
            if len(raw) < numel * dtype.itemsize:
                raise ValueError(
                    f"storage {key} holds {len(raw)} bytes, fewer than its {numel} "
                    f"{stype.name} elements need"
                )
            array = np.frombuffer(raw, dtype=dtype, count=numel)
            cached = self._storages[key, stype.name] = _Storage(array, stype.bfloat16)
        return cached


def _to_numpy(obj: Any) -> Any:
    """Replace every rebuilt tensor in a nest of containers with its array; dicts become dicts."""
    if isinstance(obj, _Tensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return type(obj)(_to_numpy(v) for v in obj)
    if isinstance(obj, _Frozen):
        raise ValueError(f"checkpoint holds a bare {type(obj).__name__}, not a tensor")
    return obj


def _archive_prefix(zf: zipfile.ZipFile, where: str) -> str:
    pickles = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise ValueError(
            f"{where} is a zip file but not a torch checkpoint: expected one '<dir>/data.pkl', "
            f"found {len(pickles)}"
        )
    return pickles[0][: -len("data.pkl")]


def _file_kind(where: str, head: bytes) -> str:
    """'zip' (torch >= 1.6) or 'legacy' (a stream of pickles, torch < 1.6)."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80":
        return "legacy"
    if head[257:262] == b"ustar":
        raise ValueError(
            f"{where} uses torch's unsupported tar format (torch < 0.4); re-save it with a "
            "current torch: torch.save(torch.load(p), p)"
        )
    raise ValueError(f"{where} is not a torch checkpoint (no zip or pickle signature at its start)")


def load_torch_checkpoint(path: PathLike) -> Any:
    """Load everything a ``torch.save`` file holds, tensors as NumPy arrays, without torch.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``torch.save``: the zip format of PyTorch >= 1.6, or the older
        stream of pickles (read by :mod:`convlayers.weights.torch_legacy`).

    Returns
    -------
    object
        The saved object with every tensor replaced by a C-contiguous ``numpy.ndarray``
        (bfloat16 widened to float32) and every ``OrderedDict`` by a ``dict``.

    Raises
    ------
    UnsafeWeightsError
        If the pickle names any global besides tensor rebuilders and plain containers.
    ValueError
        If the file is truncated, corrupt, or in torch's pre-0.4 tar format.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
    >>> torch.save({"epoch": 3, "w": torch.ones(2)}, p)
    >>> load_torch_checkpoint(p)
    {'epoch': 3, 'w': array([1., 1.], dtype=float32)}
    """
    where = repr(as_path(path))
    try:
        with open(path, "rb") as f:
            kind = _file_kind(where, f.read(512))
        if kind == "legacy":
            from convlayers.weights.torch_legacy import load_legacy

            return _to_numpy(load_legacy(path))
        with zipfile.ZipFile(path) as zf:
            prefix = _archive_prefix(zf, where)
            names = set(zf.namelist())
            byteorder = "little"
            if prefix + "byteorder" in names:
                byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise ValueError(f"byteorder must be 'little' or 'big', got {byteorder!r}")

            def read_storage(key: str) -> bytes:
                return zf.read(f"{prefix}data/{key}")

            obj = _Unpickler(zf.read(prefix + "data.pkl"), read_storage, byteorder).load()
            return _to_numpy(obj)
    except UnsafeWeightsError as exc:
        raise UnsafeWeightsError(f"refusing to load {where}: {exc}") from None
    except (
        zipfile.BadZipFile, zlib.error, pickle.UnpicklingError, EOFError, KeyError, IndexError,
        TypeError, ValueError, AttributeError, RecursionError, OverflowError, UnicodeError,
    ) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(where):
            raise
        raise ValueError(f"cannot read torch checkpoint {where}: {exc}") from exc


def load_torch_state_dict(path: PathLike, *, key: str | None = None) -> dict[str, np.ndarray]:
    """Load a ``torch.save``-d state dict as ``{name: numpy array}`` without importing torch.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``torch.save(model.state_dict(), path)`` or a checkpoint dict that
        holds a state dict (e.g. ``{"state_dict": ..., "epoch": ...}``).
    key : str, optional
        The checkpoint entry holding the state dict; by default found as
        :func:`select_state_dict` describes.

    Returns
    -------
    dict of str to numpy.ndarray
        Arrays in torch's dtypes (bfloat16 widened to float32), C-contiguous, in file order.

    Raises
    ------
    UnsafeWeightsError
        If the pickle asks to call anything but tensor rebuilders and plain containers.
    ValueError
        If the file is truncated, corrupt, tar-format or holds no state dict.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "linear.pt")
    >>> torch.save(torch.nn.Linear(3, 2).state_dict(), p)
    >>> {k: v.shape for k, v in load_torch_state_dict(p).items()}
    {'weight': (2, 3), 'bias': (2,)}
    """
    obj = load_torch_checkpoint(path)
    return select_state_dict(obj, key, repr(as_path(path)))
