"""Weights as NumPy ``.npz`` archives, read with ``allow_pickle=False`` so nothing is executed."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping

import numpy as np

from convlayers.io import atomic_write
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


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Read an ``.npz`` archive into ``{name: array}``; object arrays are refused.

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
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{where} is a single .npy array, not an archive of named arrays")
        with npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError) or str(exc).startswith(where):
            raise
        raise ValueError(f"cannot read npz file {where}: {exc}") from exc
