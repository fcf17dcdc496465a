"""Read ``torch.save`` files without torch, through an unpickler that only rebuilds tensors.

A ``.pt`` file written by ``torch.save`` (PyTorch >= 1.6) is a zip archive (older files are a
stream of pickles, see :mod:`convlayers.weights.torch_legacy`)::

    <name>/data.pkl      a pickle of the saved object; tensors refer to storages by key
    <name>/data/<key>    the raw bytes of each storage
    <name>/byteorder     "little" or "big" (absent in old files: little)

Pickles can call any importable function, so ``data.pkl`` is read by the allow-listed
unpickler of :mod:`convlayers.weights._unpickle` (the legacy format uses the same one): the
tensor rebuild functions, storage types, ``collections.OrderedDict`` and a few builtins, each
mapped to a local function. Anything else raises :class:`UnsafeWeightsError` before it is
called. Every allocation (an inflated member, a storage, a tensor) is counted first against a
cap (see :mod:`convlayers.weights._budget`), so a small file cannot demand a large memory.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
import zlib
from typing import Any, Literal

import numpy as np

from convlayers.weights._budget import PICKLE_EXPANSION, Budget
from convlayers.weights._common import PathLike, UnsafeWeightsError, as_path
from convlayers.weights._unpickle import Storage, StorageType, TensorUnpickler, to_numpy
from convlayers.weights.state_dicts import select_state_dict
from convlayers.weights.torch_legacy import load_legacy

__all__ = ["load_torch_checkpoint", "load_torch_state_dict"]


def _read_member(zf: zipfile.ZipFile, name: str, nbytes: int, budget: Budget, what: str) -> bytes:
    """The first ``nbytes`` of member ``name``, inflated as a stream (never more), charged."""
    info = zf.getinfo(name)
    if info.flag_bits & 0x1:
        raise ValueError(f"{what} is encrypted")
    if info.file_size < nbytes:
        raise ValueError(f"{what} holds {info.file_size} bytes, fewer than the {nbytes} it needs")
    budget.charge(nbytes, what)
    with zf.open(info) as member:
        data = member.read(nbytes)
    if len(data) < nbytes:
        raise ValueError(f"{what} holds {len(data)} bytes, fewer than the {nbytes} it needs")
    return data


class _ZipUnpickler(TensorUnpickler):
    """``data.pkl`` of a zip checkpoint: each storage is the member ``data/<key>``."""

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, byteorder: str,
                 budget: Budget) -> None:
        super().__init__(io.BytesIO(data))
        self._zf, self._prefix, self._budget = zf, prefix, budget
        self._order: Literal["<", ">"] = "<" if byteorder == "little" else ">"

    def storage(self, stype: StorageType, key: str, numel: int, rest: tuple[Any, ...]) -> Storage:
        cached = self.storages.get(f"{key}:{stype.name}")
        if cached is not None:
            if cached.numel != numel:
                raise ValueError(f"storage {key} is given two sizes, {cached.numel} and {numel}")
            return cached
        dtype = stype.dtype.newbyteorder(self._order)
        raw = _read_member(self._zf, f"{self._prefix}data/{key}", numel * dtype.itemsize,
                           self._budget, f"storage {key} ({numel:,} {stype.name} elements)")
        array = np.frombuffer(raw, dtype=dtype, count=numel)
        cached = self.storages[f"{key}:{stype.name}"] = Storage(stype, numel, array)
        return cached


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


def load_torch_checkpoint(path: PathLike, *, max_bytes: int | None = None) -> Any:
    """Load everything a ``torch.save`` file holds, tensors as NumPy arrays, without torch.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``torch.save``: the zip format of PyTorch >= 1.6, or the older
        stream of pickles (read by :mod:`convlayers.weights.torch_legacy`).
    max_bytes : int, optional
        Most bytes the load may allocate (storages, tensors, the pickle's objects); by default
        64 times the file's size, at least 256 MiB, and never more than
        :func:`convlayers.config.max_array_bytes`. Checked before each allocation.

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
        Naming the file, if it is truncated, corrupt, in torch's pre-0.4 tar format, or would
        need more memory than ``max_bytes`` (e.g. a stride-0 tensor, or many tensors copying
        one storage).

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
            budget = Budget(where, os.fstat(f.fileno()).st_size, max_bytes)
        if kind == "legacy":
            return to_numpy(load_legacy(path, budget), budget)
        with zipfile.ZipFile(path) as zf:
            prefix = _archive_prefix(zf, where)
            names = set(zf.namelist())
            byteorder = "little"
            if prefix + "byteorder" in names:
                raw = zf.open(prefix + "byteorder").read(16)
                byteorder = raw.decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise ValueError(f"byteorder must be 'little' or 'big', got {byteorder!r}")
            info = zf.getinfo(prefix + "data.pkl")
            # the objects a pickle builds can take many times its size: count them first
            budget.charge((PICKLE_EXPANSION - 1) * info.file_size,
                          f"data.pkl ({info.file_size:,} bytes unpickled)")
            data = _read_member(zf, info.filename, info.file_size, budget, "data.pkl")
            obj = _ZipUnpickler(data, zf, prefix, byteorder, budget).load()
            return to_numpy(obj, budget)
    except UnsafeWeightsError as exc:
        raise UnsafeWeightsError(f"refusing to load {where}: {exc}") from None
    except RecursionError:
        raise ValueError(f"cannot read torch checkpoint {where}: it nests containers deeper "
                         "than Python's recursion limit") from None
    except (
        zipfile.BadZipFile, zlib.error, pickle.UnpicklingError, EOFError, KeyError, IndexError,
        TypeError, ValueError, AttributeError, OverflowError, UnicodeError, NotImplementedError,
    ) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(where):
            raise
        raise ValueError(f"cannot read torch checkpoint {where}: {exc}") from exc


def load_torch_state_dict(
    path: PathLike, *, key: str | None = None, max_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """Load a ``torch.save``-d state dict as ``{name: numpy array}`` without importing torch.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``torch.save(model.state_dict(), path)`` or a checkpoint dict that
        holds a state dict (e.g. ``{"state_dict": ..., "epoch": ...}``).
    key : str, optional
        The checkpoint entry holding the state dict; by default found as
        :func:`select_state_dict` describes.
    max_bytes : int, optional
        Memory cap of the load, as in :func:`load_torch_checkpoint`.

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
    obj = load_torch_checkpoint(path, max_bytes=max_bytes)
    return select_state_dict(obj, key, repr(as_path(path)))
