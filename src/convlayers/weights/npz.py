"""Weights as NumPy ``.npz`` archives, read with ``allow_pickle=False`` so nothing is executed."""

from __future__ import annotations

import os
import tokenize
import zipfile
import zlib
from collections.abc import Mapping
from typing import IO

import numpy as np

from convlayers.io import atomic_write
from convlayers.limits import check_elements
from convlayers.weights._budget import Budget, check_shape
from convlayers.weights._common import PathLike, as_path, check_tensors


def save_npz(tensors: Mapping[str, np.ndarray], path: PathLike, *, compress: bool = False) -> None:
    """Write ``tensors`` to an ``.npz`` archive atomically (any key is allowed, even ``file``).

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> save_npz({"conv.weight": np.ones((1, 1, 2, 2), np.float32)}, p)
    >>> load_npz(p)["conv.weight"].shape
    (1, 1, 2, 2)
    """
    arrays = check_tensors(tensors)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", compression=method, allowZip64=True) as zf:
        for key, arr in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _member_header(member: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an ``.npy`` member's header, read before any of its data."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"member {name!r} has .npy format version {version}, not 1.0 or 2.0")
    if dtype.hasobject or dtype.kind not in "biufc" or dtype.fields is not None:
        raise ValueError(f"member {name!r} has dtype {dtype}; only numeric and bool arrays load "
                         "(object arrays would need pickle)")
    return tuple(int(n) for n in shape), dtype


def load_npz(path: PathLike, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Read an ``.npz`` archive into ``{name: array}``; object arrays are refused.

    Every member's header is read first, and the arrays it declares are checked against the
    cap (``max_bytes``; see :func:`convlayers.weights.load_torch_checkpoint` for the default)
    before any data is inflated, so a small compressed archive cannot ask for gigabytes.

    Parameters
    ----------
    path : str or os.PathLike
        The archive.
    max_bytes : int, optional
        Most bytes the arrays may take together.

    Raises
    ------
    ValueError
        Naming the file, if it is not a zip of ``.npy`` members, a member is corrupt or not
        numeric, or the arrays exceed the cap.

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "b.npz")
    >>> np.savez(p, bias=np.zeros(2))
    >>> load_npz(p)
    {'bias': array([0., 0.])}
    """
    where = repr(as_path(path))
    try:
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                raise ValueError(f"{where} is a single .npy array, not an archive of named arrays")
            budget = Budget(where, os.fstat(f.fileno()).st_size, max_bytes)
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            keys = [info.filename[:-4] for info in infos]
            for info in infos:
                if not info.filename.endswith(".npy") or info.flag_bits & 0x1:
                    raise ValueError(f"member {info.filename!r} is not a plain .npy array")
            if len(set(keys)) != len(keys):
                raise ValueError("it names one array twice")
            for info in infos:  # every header first: nothing is inflated past a header yet
                with zf.open(info) as member:
                    shape, dtype = _member_header(member, info.filename)
                check_shape(shape, f"array {info.filename[:-4]!r}", dtype.itemsize)
                nbytes = check_elements(shape, dtype, f"{where}: array {info.filename[:-4]!r}")
                budget.charge(nbytes, f"array {info.filename[:-4]!r} of shape {shape}")
            out: dict[str, np.ndarray] = {}
            for key, info in zip(keys, infos, strict=True):
                with zf.open(info) as member:
                    out[key] = np.lib.format.read_array(member, allow_pickle=False)
            return out
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError,
            zlib.error, SyntaxError, tokenize.TokenError) as exc:  # numpy parses with tokenize
        if isinstance(exc, FileNotFoundError) or str(exc).startswith(where):
            raise
        raise ValueError(f"cannot read npz file {where}: {exc}") from exc
