"""Read torch's legacy (pre-1.6) ``torch.save`` format without torch, safely.

That format is a stream rather than an archive::

    pickle  magic number 0x1950a86a20f9469cfc6c
    pickle  protocol version 1001
    pickle  system info (endianness, type sizes)
    pickle  the saved object; storages appear as persistent ids
            ("storage", storage type, key, location, numel, view or None)
    pickle  the list of storage keys, in the order their data follows
    then, per key: numel as a little-endian int64, then numel elements, little-endian

The object pickle goes through the allow-listed unpickler that the zip format also uses
(:mod:`convlayers.weights._unpickle`); its tensors are rebuilt once the data section has been
read. The small header pickles may hold only plain values (any global is refused).
"""

from __future__ import annotations

import io
import os
from typing import IO, Any

import numpy as np

from convlayers.weights._budget import PICKLE_EXPANSION, Budget
from convlayers.weights._common import PathLike, short_repr
from convlayers.weights._unpickle import PlainUnpickler, Storage, StorageType, TensorUnpickler

__all__ = ["load_legacy"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


class _LegacyUnpickler(TensorUnpickler):
    """The object pickle: storages are created empty and filled from the data section."""

    record_length = 6

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.views: list[tuple[Storage, str, int]] = []

    def storage(self, stype: StorageType, key: str, numel: int, rest: tuple[Any, ...]) -> Storage:
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = Storage(stype, numel)
        elif root.dtype != stype.dtype or root.numel != numel:
            raise ValueError(f"storage {key} is named with two types or sizes")
        (view,) = rest
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise ValueError(f"malformed storage view {short_repr(view)}")
        _view_key, offset, size = view
        if not (type(offset) is int and type(size) is int and offset >= 0 and size >= 0
                and offset + size <= numel):
            raise ValueError(f"storage view {short_repr(view)} does not fit in storage {key} of {numel}")
        storage = Storage(stype, size)
        self.views.append((storage, key, offset))
        return storage


def _read_exact(f: IO[bytes], n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"file ends inside {what}: wanted {n} bytes, got {len(data)}")
    return data


def _read_header(f: IO[bytes]) -> None:
    magic = PlainUnpickler(f).load()
    if magic != MAGIC_NUMBER:
        raise ValueError("not a torch file: its first pickle is not torch's magic number")
    protocol = PlainUnpickler(f).load()
    if protocol != PROTOCOL_VERSION:
        raise ValueError(f"unsupported legacy torch protocol version {short_repr(protocol)}")
    info = PlainUnpickler(f).load()
    if isinstance(info, dict) and info.get("little_endian") is False:
        raise ValueError("big-endian legacy torch files are not supported")


def load_legacy(path: PathLike, budget: Budget) -> Any:
    """Unpickle a legacy ``torch.save`` file; tensors come back as recipes to materialise.

    Every storage's bytes are checked against what is left of the file and charged to
    ``budget`` before they are read. Callers normally use
    :func:`convlayers.weights.load_torch_checkpoint`, which dispatches here and turns the
    recipes into arrays.
    """
    with open(path, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        budget.charge(size, f"its {size:,} bytes")
        # parsed from memory: a pickle opcode declaring a huge length then reads what is
        # there and stops, where a file object would first allocate the length it was given
        f = io.BytesIO(source.read(size))
    _read_header(f)
    unpickler = _LegacyUnpickler(f)
    obj = unpickler.load()
    # the pickle's objects count against the cap as well (its bytes are charged already)
    budget.charge((PICKLE_EXPANSION - 1) * f.tell(), f"its pickles ({f.tell():,} bytes)")
    keys = PlainUnpickler(f).load()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("the storage key list of the legacy file is malformed")
    for key in keys:
        if key not in unpickler.storages:
            raise ValueError(f"data section names storage {key!r}, which no tensor uses")
        storage = unpickler.storages[key]
        count = int(np.frombuffer(_read_exact(f, 8, "a storage size"), "<i8")[0])
        if count != storage.numel:
            raise ValueError(f"storage {key} holds {count} elements, its record says "
                             f"{storage.numel}")
        nbytes = count * storage.dtype.itemsize
        if nbytes > size - f.tell():
            raise ValueError(f"storage {key} needs {nbytes:,} bytes, but the file has only "
                             f"{size - f.tell():,} left")
        budget.charge(nbytes, f"storage {key} ({count:,} elements)")
        raw = _read_exact(f, nbytes, f"storage {key}")
        storage.array = np.frombuffer(raw, dtype=storage.dtype, count=count)
    for view, key, offset in unpickler.views:
        root = unpickler.storages[key].array
        if root is None:
            raise ValueError(f"the data section has no bytes for storage {key!r}")
        view.array = root[offset : offset + view.numel]
    missing = [k for k, s in unpickler.storages.items() if s.array is None]
    if missing:
        raise ValueError(f"the data section has no bytes for storages {missing[:5]}")
    return obj
