"""Read torch's legacy (pre-1.6) ``torch.save`` format without torch, safely.

That format is a stream rather than an archive::

    pickle  magic number 0x1950a86a20f9469cfc6c
    pickle  protocol version 1001
    pickle  system info (endianness, type sizes)
    pickle  the saved object; storages appear as persistent ids
            ("storage", storage type, key, location, numel, view or None)
    pickle  the list of storage keys, in the order their data follows
    then, per key: numel as a little-endian int64, then numel elements, little-endian

The object pickle goes through the same allow-listed unpickler as the zip format; its tensors
are rebuilt once the data section has been read. The small header pickles may hold only
plain values (any global is refused).
"""

from __future__ import annotations

import pickle
from typing import IO, Any

import numpy as np

from convlayers.weights._common import PathLike, UnsafeWeightsError
from convlayers.weights.torch_pickle import _ALLOWED, _Storage, _StorageType

__all__ = ["load_legacy"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


class _PlainUnpickler(pickle.Unpickler):
    """For header pickles: numbers, strings and containers only."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafeWeightsError(f"refused global {module}.{name!r} in a legacy header pickle")


class _LegacyUnpickler(pickle.Unpickler):
    """The object pickle: allow-listed globals; storages are created empty, filled later."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[str, tuple[_Storage, np.dtype, int]] = {}
        self.views: list[tuple[_Storage, str, int, int]] = []

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname not in _ALLOWED:
            raise UnsafeWeightsError(
                f"refused global {qualname!r}: a weights file may only rebuild tensors and plain "
                "containers; this file asks to call other code"
            )
        return _ALLOWED[qualname]

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise ValueError(f"unknown persistent record {pid!r}")
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType):
            raise ValueError(f"storage type must be a torch storage class, got {stype!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ValueError(f"malformed storage record {pid!r}")
        if key not in self.storages:
            self.storages[key] = (_Storage(None, stype.bfloat16), stype.dtype, numel)
        root = self.storages[key][0]
        if view is None:
            return root
        _view_key, offset, size = view
        if not (isinstance(offset, int) and isinstance(size, int) and offset >= 0 and size >= 0):
            raise ValueError(f"malformed storage view {view!r}")
        storage = _Storage(None, stype.bfloat16)
        self.views.append((storage, key, offset, size))
        return storage


def _read_exact(f: IO[bytes], n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"file ends inside {what}: wanted {n} bytes, got {len(data)}")
    return data


def _read_header(f: IO[bytes]) -> None:
    magic = _PlainUnpickler(f).load()
    if magic != MAGIC_NUMBER:
        raise ValueError("not a torch file: its first pickle is not torch's magic number")
    protocol = _PlainUnpickler(f).load()
    if protocol != PROTOCOL_VERSION:
        raise ValueError(f"unsupported legacy torch protocol version {protocol!r}")
    info = _PlainUnpickler(f).load()
    if isinstance(info, dict) and info.get("little_endian") is False:
        raise ValueError("big-endian legacy torch files are not supported")


def load_legacy(path: PathLike) -> Any:
    """Unpickle a legacy ``torch.save`` file; tensors come back as placeholders to materialise.

    Callers normally use :func:`convlayers.weights.load_torch_checkpoint`, which dispatches
    here and turns the placeholders into arrays.
    """
    with open(path, "rb") as f:
        _read_header(f)
        unpickler = _LegacyUnpickler(f)
        obj = unpickler.load()
        keys = _PlainUnpickler(f).load()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("the storage key list of the legacy file is malformed")
        for key in keys:
            if key not in unpickler.storages:
                raise ValueError(f"data section names storage {key!r}, which no tensor uses")
            storage, dtype, numel = unpickler.storages[key]
            count = int(np.frombuffer(_read_exact(f, 8, "a storage size"), "<i8")[0])
            if count != numel:
                raise ValueError(f"storage {key} holds {count} elements, its record says {numel}")
            raw = _read_exact(f, count * dtype.itemsize, f"storage {key}")
            storage.array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count)
    for view, key, offset, size in unpickler.views:
        root = unpickler.storages[key][0].array
        if root is None or offset + size > root.size:
            raise ValueError(f"storage view of {key} reaches past its data")
        view.array = root[offset : offset + size]
    missing = [k for k, (s, _, _) in unpickler.storages.items() if s.array is None]
    if missing:
        raise ValueError(f"the data section has no bytes for storages {missing[:5]}")
    return obj
