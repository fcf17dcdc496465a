"""Reading and writing chunked images: zarr stores and ordinary image files.

- :func:`open_image` gives a lazy dask array from a zarr store (chunked on disk, read chunk by
  chunk by the workers) or from an image file (read whole, then chunked).
- :func:`save` writes a dask array to a zarr store, an ``.npy`` file or an image file. The
  output appears under its final name only when complete: a zarr store is written under a
  hidden temporary name beside the target (``.NAME.tmp-PID-XXXXXXXX``) and renamed at the end;
  files go through :func:`convlayers.io.atomic_write`. A failed write leaves no partial output
  (and an existing target untouched until the rename); the temporary store of a write that was
  killed is removed by the next write to the same path, once its process is gone.
- An existing output is replaced only with ``overwrite=True``, and a zarr path only when it
  holds a zarr array and nothing else (what :func:`save` writes): a folder named ``*.zarr``
  with other files in it, or a plain file, is never deleted.

Zarr writes rechunk the array to regular chunks first, so that every dask chunk is exactly
one zarr chunk: no two tasks ever write into the same zarr chunk (dask PR #12587).

Examples
--------
>>> import tempfile, pathlib, numpy as np, dask.array as da
>>> with tempfile.TemporaryDirectory() as d:
...     path = pathlib.Path(d) / "ramp.zarr"
...     _ = save(da.arange(12.0, chunks=5).reshape(3, 4), path)
...     back = open_image(path)
...     print(back.shape, back.dtype, float(back.sum().compute()))
(3, 4) float64 66.0
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from convlayers.dask._chunks import as_dask

__all__ = ["clean_stale", "is_zarr", "open_image", "save"]

PathLike = str | os.PathLike[str]


def is_zarr(path: PathLike) -> bool:
    """True for a path ending in ``.zarr`` or a directory holding zarr metadata."""
    p = Path(path)
    if p.suffix.lower() == ".zarr":
        return True
    return p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zarray", ".zgroup"))


def open_image(path: PathLike, chunks: int | None = None, *, component: str | None = None) -> da.Array:
    """A lazy dask array of an image stored in zarr, ``.npy``, or any format Pillow reads.

    Parameters
    ----------
    path : str or os.PathLike
        A zarr store (``*.zarr`` or a directory with zarr metadata), an ``.npy`` file (memory
        mapped) or an image file (:func:`convlayers.io.read_image`, read whole).
    chunks : int, optional
        Side of the spatial chunks (axes 0 and 1). Default: the zarr store's own chunks (the
        cheapest to read), or Dask's "auto" for files.
    component : str, optional
        Array inside a zarr group.

    Returns
    -------
    dask.array.Array
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path {os.fspath(path)!r} does not exist")
    if is_zarr(p):
        arr = da.from_zarr(os.fspath(p), component=component)
        return as_dask(arr, "image", chunks, axes=(0, 1)) if chunks is not None else arr
    if p.suffix.lower() == ".npy":
        data: Any = np.load(p, mmap_mode="r")
    else:
        from convlayers.io import read_image

        data = read_image(p)
    return as_dask(data, "image", chunks, axes=(0, 1) if np.ndim(data) >= 2 else ())


def _regular(x: da.Array, chunks: int | None) -> da.Array:
    """Rechunk to regular chunks (all equal but the last), aligned with the zarr chunks."""
    spec = {}
    for ax, cs in enumerate(x.chunks):
        size = int(chunks) if chunks is not None and ax < 2 else max(cs)
        spec[ax] = max(1, min(size, x.shape[ax] or 1))
    return x.rechunk(spec)


_METADATA = (".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json")
_CHUNK_KEY = re.compile(r"^(c|\d+)([./]\d+)*$")


def _foreign_entry(store: Path) -> str | None:
    """The first entry of ``store`` that a zarr array store does not hold (None: it is one).

    A zarr array holds its metadata files at the top and chunk keys below it (``0.1``,
    ``c/0/1``, ``0/1``); anything else (``thesis.txt``, a subfolder of other names, a link) is
    not ours to delete."""
    if store.is_symlink() or not store.is_dir():
        return os.fspath(store)
    for root, dirs, files in os.walk(store):
        rel = Path(root).relative_to(store)
        for name in dirs:
            if Path(root, name).is_symlink() or not _CHUNK_KEY.match(name):
                return os.fspath(Path(root, name))
        for name in files:
            top = rel == Path(".")
            if not (top and name in _METADATA) and not _CHUNK_KEY.match(name):
                return os.fspath(Path(root, name))
    if not any((store / m).is_file() for m in (".zarray", "zarr.json")):
        return f"{os.fspath(store)} (no zarr array metadata: .zarray or zarr.json)"
    return None


def _check_replaceable(target: Path, overwrite: bool) -> None:
    """Refuse, before any work, to replace what :func:`save` may not delete."""
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"path {os.fspath(target)!r} exists; pass overwrite=True to "
                              f"replace it")
    if target.suffix.lower() == ".zarr":
        foreign = _foreign_entry(target)
        if foreign is not None:
            raise ValueError(f"path {os.fspath(target)!r} is not a zarr array store that save() "
                             f"wrote: {foreign!r} is not zarr data; it is left untouched (remove "
                             f"it yourself, or choose another path)")
    elif target.is_dir():
        raise ValueError(f"path {os.fspath(target)!r} is a folder; save() replaces files only")


def _temp_pattern(target: Path) -> re.Pattern[str]:
    """Names of the temporary (and replaced) stores of writes to ``target``."""
    return re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp|old)-(?:(\d+)-)?[0-9a-f]{{8}}$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's live process
        return True
    return True


def clean_stale(target: PathLike) -> list[Path]:
    """Remove the temporary stores that killed writes to ``target`` left beside it.

    Only names of :func:`save`'s own pattern (``.NAME.tmp-PID-XXXXXXXX``, ``.NAME.old-...``)
    whose writing process is no longer running (names without a PID are from older versions)
    are removed; returns them.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     (pathlib.Path(d) / ".out.zarr.tmp-0123abcd").mkdir()
    ...     [p.name for p in clean_stale(pathlib.Path(d) / "out.zarr")]
    ['.out.zarr.tmp-0123abcd']
    """
    target = Path(target)
    pattern = _temp_pattern(target)
    removed = []
    parent = target.parent if os.fspath(target.parent) else Path(".")
    for entry in parent.iterdir() if parent.is_dir() else ():
        match = pattern.match(entry.name)
        if match is None or (match.group(1) is not None and _alive(int(match.group(1)))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` directory to ``target``, replacing what was there."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def save(
    array: Any, path: PathLike, *, chunks: int | None = None, overwrite: bool = False,
) -> Path:
    """Compute ``array`` and write it to ``path``; the file appears only once complete.

    Parameters
    ----------
    array : dask.array.Array or array_like
    path : str or os.PathLike
        ``*.zarr``: a zarr store written chunk by chunk by the workers (the only format for
        images larger than memory; the directory must be on storage every worker sees).
        ``*.npy``: computed here, written atomically. Any image suffix (``.png``, ``.jpg``,
        ``.tif``, ...): computed here and written with :func:`convlayers.io.write_image` (its
        8-bit conversion rule applies).
    chunks : int, optional
        Side of the zarr chunks along axes 0 and 1 (default: the array's largest chunk).
    overwrite : bool, default False
        Replace an existing output; without it an existing path raises ``FileExistsError``
        before computing. Even then a ``*.zarr`` path is replaced only when it holds a zarr
        array and nothing else, and a folder never replaces a file path (``ValueError``).

    Returns
    -------
    pathlib.Path
        The final path.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise ValueError(f"path {os.fspath(path)!r}: directory {os.fspath(target.parent)!r} does not exist")
    _check_replaceable(target, bool(overwrite))
    x = as_dask(array, "array")
    if target.suffix.lower() == ".zarr":
        clean_stale(target)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            da.to_zarr(_regular(x, chunks), os.fspath(tmp), overwrite=True)
            _replace_dir(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target
    data = np.asarray(x.compute())
    if target.suffix.lower() == ".npy":
        from convlayers.io import atomic_write

        with atomic_write(target, "wb") as f:
            np.save(f, data)
        return target
    from convlayers.io import write_image

    write_image(target, data)
    return target
