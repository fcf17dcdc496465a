"""Output paths: one rule, checked before any long work, for every command and writer.

:func:`prepare_output` is what ``convlayers filter``, ``gallery``, ``animate``, ``train`` (its
weights, checkpoint and plots), ``demo`` and ``classify`` call on their outputs before they start:
a suffix that suits what will be written, nothing else in the way (a folder, a device, a folder
named ``x.zarr`` that is not a zarr store), and a folder that can be written. It is re-exported
by :mod:`convlayers.io`.

Examples
--------
>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as d:
...     prepare_output(pathlib.Path(d) / "plots", "folder").is_dir()
True
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from PIL import Image

from convlayers._validate import one_of

__all__ = ["OUTPUT_SUFFIXES", "is_zarr_store", "prepare_output"]

PathLike = str | os.PathLike[str]


#: Suffixes each kind of output may have (``"image"``: any Pillow writes; ``"folder"``: none).
OUTPUT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "figure": (".png", ".jpg", ".jpeg", ".svg", ".pdf"),
    "gif": (".gif",),
    "weights": (".safetensors", ".npz"),
    "checkpoint": (".safetensors",),
    "zarr": (".zarr",),
    "npy": (".npy",),
}
_OUTPUT_KINDS = ("image", "folder", *OUTPUT_SUFFIXES)


def _image_suffixes() -> tuple[str, ...]:
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items()
                        if fmt in Image.SAVE))


def is_zarr_store(path: PathLike) -> bool:
    """Whether ``path`` is a folder holding a zarr store (v2 or v3 metadata at its top).

    >>> is_zarr_store("no/such/place.zarr")
    False
    """
    p = Path(path)
    return p.is_dir() and any((p / m).is_file() for m in (".zarray", ".zgroup", "zarr.json"))


def prepare_output(path: PathLike, kind: str, *, what: str = "output") -> Path:
    """Check an output path before any long work, and return it; the one rule for every writer.

    - its suffix must suit ``kind`` (a folder may not have one, so ``out.txt`` never
      silently becomes a folder);
    - an existing file may be replaced only by a file of the same kind: a folder, a device or
      anything else in the way is refused, and an existing ``*.zarr`` must be a zarr store;
    - the parent folder is created when missing, and must be writable (checked by creating
      and removing a temporary file there), so that a failure comes now, not after the work.

    Parameters
    ----------
    path : str or os.PathLike
        The output.
    kind : {"image", "figure", "gif", "weights", "checkpoint", "zarr", "npy", "folder"}
        What will be written: an image Pillow writes (``.png``, ``.jpg``, ...), a matplotlib
        figure, an animated GIF, weights (``.safetensors``/``.npz``), a checkpoint, a zarr
        store, a NumPy file, or a folder (created) that will receive files.
    what : str
        How messages name the path (a command-line flag, say).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        A wrong suffix, something else in the way, or a folder that cannot be written; the
        message names ``what``, the path and what was expected.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     prepare_output(pathlib.Path(d) / "new" / "w.safetensors", "weights").name
    'w.safetensors'
    >>> prepare_output("out.txt", "image")
    Traceback (most recent call last):
    ...
    ValueError: output 'out.txt' must end in an image suffix Pillow writes ...
    """
    one_of(kind, _OUTPUT_KINDS, "kind")
    target = Path(path)
    shown = f"{what} {os.fspath(path)!r}"
    suffix = target.suffix.lower()
    if kind == "folder":
        if target.exists() and not target.is_dir():
            raise ValueError(f"{shown} exists and is not a folder")
        if not target.exists() and suffix:
            raise ValueError(f"{shown} would be a new folder but has the file suffix {suffix!r}; "
                             "name a folder without one (or create it first)")
        _make_folder(target, shown)
        _check_writable(target, shown)
        return target
    if kind == "image":
        allowed = _image_suffixes()
        if suffix not in allowed:
            raise ValueError(f"{shown} must end in an image suffix Pillow writes (.png, .jpg, "
                             f".bmp, .tif, .webp, ...), got {suffix or 'no suffix'!r}")
    elif suffix not in OUTPUT_SUFFIXES[kind]:
        raise ValueError(f"{shown} must end in {' or '.join(OUTPUT_SUFFIXES[kind])}, "
                         f"got {suffix or 'no suffix'!r}")
    if kind == "zarr":
        if target.exists() and not is_zarr_store(target):
            raise ValueError(f"{shown} exists and is not a zarr store; not replacing it")
    elif target.is_dir():
        raise ValueError(f"{shown} is a folder, expected a file name")
    elif target.exists() and not target.is_file():
        raise ValueError(f"{shown} exists and is not a regular file; not replacing it")
    if target.parent.exists() and not target.parent.is_dir():
        raise ValueError(f"{shown} cannot be written: {str(target.parent)!r} is not a folder")
    _make_folder(target.parent, shown)
    _check_writable(target.parent, shown)
    return target


def _make_folder(folder: Path, shown: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{shown} cannot be written: cannot create folder {str(folder)!r} "
                         f"({exc.strerror or exc})") from None


def _check_writable(folder: Path, shown: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".convlayers-probe-", suffix=".tmp")
    except OSError as exc:
        raise ValueError(f"{shown} cannot be written: folder {str(folder)!r} is not writable "
                         f"({exc.strerror or exc})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
