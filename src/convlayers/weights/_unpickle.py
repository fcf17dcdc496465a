"""The one allow-listed unpickler behind both ``torch.save`` formats (zip and legacy).

A pickle can call any importable function, so :class:`TensorUnpickler` maps the few globals a
weight file needs (tensor rebuilders, storage types, ``OrderedDict``, ``torch.Size``, a few
builtins) to local stand-ins and refuses every other one with :class:`UnsafeWeightsError`
before it is called. Tensors come out as recipes (storage, offset, size, stride) that
:func:`to_numpy` turns into arrays once every byte they need is counted against the load's
:class:`~convlayers.weights._budget.Budget`. The formats differ only in where a storage's bytes
live, which each supplies by overriding :meth:`TensorUnpickler.storage`.

Examples
--------
>>> import io, pickle
>>> TensorUnpickler(io.BytesIO(pickle.dumps({"epoch": 3}))).load()
{'epoch': 3}
"""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from convlayers.weights._budget import Budget, check_shape
from convlayers.weights._common import UnsafeWeightsError, bfloat16_to_float32, short_repr

__all__ = ["PlainUnpickler", "Storage", "StorageType", "Tensor", "TensorUnpickler", "to_numpy"]

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


class StorageType(_Frozen):
    """A torch storage class (``torch.FloatStorage``, ...) as the dtype it stands for."""

    __slots__ = ("bfloat16", "dtype", "name")

    def __init__(self, name: str, dtype: str, bfloat16: bool) -> None:
        self.name, self.dtype, self.bfloat16 = name, np.dtype(dtype), bfloat16


class Storage(_Frozen):
    """``numel`` elements of one storage; ``array`` is None until its bytes are read."""

    __slots__ = ("array", "bfloat16", "dtype", "numel")

    def __init__(self, stype: StorageType, numel: int, array: np.ndarray | None = None) -> None:
        self.dtype, self.bfloat16, self.numel, self.array = stype.dtype, stype.bfloat16, numel, array


class Tensor(_Frozen):
    """A tensor's recipe: a view (offset, size, stride) of a storage, made an array later."""

    __slots__ = ("flags", "offset", "shape", "storage", "strides")

    def __init__(self, storage: Storage, offset: int, shape: tuple[int, ...],
                 strides: tuple[int, ...]) -> None:
        self.storage, self.offset, self.shape, self.strides = storage, offset, shape, strides
        self.flags: dict[str, bool] = {}

    def nbytes(self) -> int:
        """Bytes :meth:`materialize` allocates (bfloat16: the uint16 copy and its float32)."""
        count = 1
        for n in self.shape:
            count *= n
        return count * (6 if self.storage.bfloat16 else self.storage.dtype.itemsize)

    def materialize(self) -> np.ndarray:
        """A C-contiguous, native-byte-order copy of the elements the recipe names."""
        base = self.storage.array
        if base is None:
            raise ValueError("a tensor's storage has no data")
        native = base.dtype.newbyteorder("=")
        if 0 in self.shape:
            out = np.zeros(self.shape, dtype=native)
        else:
            view = np.lib.stride_tricks.as_strided(
                base[self.offset:], self.shape, [s * base.itemsize for s in self.strides],
                writeable=False,
            )
            out = np.array(view, dtype=native, order="C")
        if self.storage.bfloat16:
            out = bfloat16_to_float32(out)
        if self.flags.get("neg"):
            np.negative(out, out=out)
        if self.flags.get("conj"):
            np.conjugate(out, out=out)
        return out


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
        raise ValueError(f"tensor {what} must be a tuple of non-negative ints, got {short_repr(value)}")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> Tensor:
    """Check a view against its storage's declared size; nothing is read or allocated."""
    if not isinstance(storage, Storage):
        raise ValueError(f"tensor storage must be a persistent storage record, got {short_repr(storage)}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    (start,) = _ints((offset,), "storage offset")
    if len(shape) != len(strides):
        raise ValueError(f"tensor size {shape} and stride {strides} differ in length")
    check_shape(shape, "tensor")
    if 0 not in shape:
        last = start + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        if last >= storage.numel:
            raise ValueError(
                f"tensor of size {shape}, stride {strides} at offset {start} reads past its "
                f"storage of {storage.numel} elements"
            )
    return Tensor(storage, start, shape, strides)


def _rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any,
    metadata: Any = None,
) -> Tensor:
    tensor = _rebuild_tensor(storage, offset, size, stride)
    if isinstance(metadata, dict):
        tensor.flags = {k: bool(metadata.get(k)) for k in ("neg", "conj")}
    return tensor


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, state: Any = None) -> Tensor:
    if not isinstance(data, Tensor):
        raise ValueError(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


_TORCH_DTYPES = (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
    "bool", "complex64", "complex128",
)


def _device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise ValueError(f"torch.device needs a str and an optional int, got "
                         f"{short_repr(kind)}, {short_repr(index)}")
    return kind if index is None else f"{kind}:{index}"


def _allowed() -> dict[str, Any]:
    table: dict[str, Any] = {
        f"torch.{name}": StorageType(name, dtype, bf16) for name, (dtype, bf16) in _STORAGES.items()
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


#: Tuple and frozenset nodes one load may hash (dict keys, set elements). A tuple's hash
#: visits every node of its tree, so one tuple shared at each of 40 levels takes 2**40 steps.
HASH_NODES = 100_000

_HASHING = {"collections.OrderedDict", "builtins.set", "builtins.frozenset",
            "__builtin__.set", "__builtin__.frozenset"}


class _Bounded(pickle._Unpickler):
    """CPython's pure-Python unpickler with every opcode that hashes checked first.

    The C unpickler offers no hook before it hashes a dict key or a set element, and hashing a
    nest of shared tuples is exponential in its depth; here each key is measured first against
    :data:`HASH_NODES`. Its objects are the same; a length field that asks for more bytes than
    the pickle holds reads what is there and fails as truncated, allocating nothing.
    """

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self._hash_nodes = HASH_NODES
        self.dispatch = {**self.dispatch, **_CHECKED}  # type: ignore[misc, dict-item]

    def hashable(self, keys: Any) -> None:
        """Count the tuple nodes hashing ``keys`` will visit; refuse past the load's budget."""
        todo = list(keys)
        while todo:
            item = todo.pop()
            if isinstance(item, (tuple, frozenset)):
                self._hash_nodes -= 1 + len(item)
                if self._hash_nodes < 0:
                    raise ValueError(
                        f"its dict keys or set elements nest shared tuples more than "
                        f"{HASH_NODES:,} nodes wide (hashing them would take too long)")
                todo.extend(item)

    def load(self) -> Any:
        """Unpickle; a malformed opcode argument is a ValueError."""
        try:
            return super().load()
        except (struct.error, MemoryError) as exc:
            raise ValueError(f"the pickle is truncated or corrupt ({exc})") from None


def _checked(code: bytes, keys: Callable[[list[Any]], Any]) -> Callable[[_Bounded], None]:
    original = pickle._Unpickler.dispatch[code[0]]

    def run(unpickler: _Bounded) -> None:
        unpickler.hashable(keys(unpickler.stack))  # type: ignore[attr-defined]
        original(unpickler)  # type: ignore[arg-type]

    return run


_CHECKED = {  # opcode -> the keys it is about to hash, taken from the stack
    code[0]: _checked(code, keys) for code, keys in (
        (pickle.SETITEM, lambda stack: stack[-2:-1]),
        (pickle.SETITEMS, lambda stack: stack[0::2]),  # the items since MARK
        (pickle.DICT, lambda stack: stack[0::2]),
        (pickle.ADDITEMS, lambda stack: stack),
        (pickle.FROZENSET, lambda stack: stack),
    )
}


class PlainUnpickler(_Bounded):
    """Numbers, strings and containers only: every global is refused (legacy header pickles)."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafeWeightsError(f"refused global {module}.{name!r} in a header pickle")


class TensorUnpickler(_Bounded):
    """Allow-listed globals; storages come from :meth:`storage`, which each format supplies.

    A persistent record is ``("storage", type, key, location, numel)``, with a sixth item (a
    view or None) in the legacy format.
    """

    record_length = 5

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[str, Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname not in _ALLOWED:
            raise UnsafeWeightsError(
                f"refused global {qualname!r}: a weights file may only rebuild tensors and plain "
                "containers (dict, list, tuple, OrderedDict); this file asks to call other code"
            )
        if qualname in _HASHING:  # set(...), frozenset(...), OrderedDict(pairs) hash their input
            return _Global(qualname, self._hashing(_ALLOWED[qualname].fn))
        return _ALLOWED[qualname]

    def _hashing(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def checked(*args: Any) -> Any:
            items = [list(a.keys() if isinstance(a, dict) else a) for a in args[:1]]
            keys = [p[0] if fn is OrderedDict and isinstance(p, (tuple, list)) and p else p
                    for p in (items[0] if items else [])]
            self.hashable(keys)
            return fn(*args)

        return checked

    def persistent_load(self, pid: Any) -> Storage:
        if not (isinstance(pid, tuple) and len(pid) == self.record_length and pid[0] == "storage"):
            raise ValueError(f"unknown persistent record {short_repr(pid)}")
        stype, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(stype, StorageType):
            raise ValueError(f"storage type must be a torch storage class, got {short_repr(stype)}")
        if not (isinstance(key, str) and key.isalnum() and type(numel) is int and numel >= 0):
            raise ValueError(f"malformed storage record {short_repr(pid)}")
        return self.storage(stype, key, numel, pid[5:])

    def storage(self, stype: StorageType, key: str, numel: int, rest: tuple[Any, ...]) -> Storage:
        """The storage a record names (each format reads or schedules its bytes)."""
        raise ValueError(f"this pickle may not refer to storages (record {key!r})")


def to_numpy(obj: Any, budget: Budget) -> Any:
    """Replace every tensor in a nest of containers with its array; ``OrderedDict`` -> dict.

    Every distinct tensor's bytes are counted against ``budget`` before the first is made, and
    containers are converted once each however often they are shared, so a pickle that reuses
    one list at every level of a deep nest costs its size, not 2**depth.
    """
    tensors: dict[int, Tensor] = {}
    seen: set[int] = set()
    stack = [obj]
    while stack:  # first pass, iterative: count what materialising will cost
        item = stack.pop()
        if type(item) in _ATOMIC:
            continue
        if isinstance(item, Tensor):
            tensors.setdefault(id(item), item)
        elif isinstance(item, (dict, list, tuple, set, frozenset)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)
            if isinstance(item, dict):
                stack.extend(item.keys())
    for tensor in tensors.values():
        budget.charge(tensor.nbytes(), f"tensor of shape {tensor.shape}")
    memo: dict[int, Any] = {}
    return _convert(obj, memo)


_ATOMIC = frozenset({str, int, float, bool, bytes, complex, type(None)})


def _convert(obj: Any, memo: dict[int, Any]) -> Any:
    if type(obj) in _ATOMIC:
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, Tensor):
        out: Any = obj.materialize()
    elif isinstance(obj, dict):
        out = memo[id(obj)] = {}
        for k, v in obj.items():
            if isinstance(k, _Frozen):
                raise ValueError(f"a dict key is a {type(k).__name__}, not a plain value")
            out[k] = _convert(v, memo)
    elif isinstance(obj, list):
        out = memo[id(obj)] = []
        out.extend(v if type(v) in _ATOMIC else _convert(v, memo) for v in obj)
    elif isinstance(obj, (tuple, set, frozenset)):
        out = type(obj)(_convert(v, memo) for v in obj)
    elif isinstance(obj, _Frozen):
        raise ValueError(f"checkpoint holds a bare {type(obj).__name__}, not a tensor")
    else:
        return obj
    memo[id(obj)] = out
    return out
