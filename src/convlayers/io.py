"""Files: image read/write through Pillow, and atomic writes for everything the library saves.

:func:`atomic_write` is the one way convlayers writes a file (images here; weights, checkpoints
and CLI outputs elsewhere): the data goes to a temporary file in the target's directory, is
flushed to disk, and replaces the target in one ``os.replace``. A reader sees the old file or
the new one, never half of one, and a failure leaves the old file as it was.

Examples
--------
>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as d:
...     target = pathlib.Path(d) / "notes.txt"
...     with atomic_write(target, "w") as f:
...         _ = f.write("hello")
...     target.read_text()
'hello'
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageOps, UnidentifiedImageError

from convlayers import limits
from convlayers._validate import one_of
from convlayers.output_paths import OUTPUT_SUFFIXES, is_zarr_store, prepare_output

__all__ = ["OUTPUT_SUFFIXES", "CorruptImageWarning", "NonFiniteImageWarning", "atomic_write",
           "is_zarr_store", "prepare_output", "read_image", "write_image"]

PathLike = str | os.PathLike[str]

_WRITE_MODES = ("wb", "w", "wt")


class CorruptImageWarning(UserWarning):
    """Pillow decoded the picture but reported damage (e.g. corrupt EXIF data); the message
    names the file."""


class NonFiniteImageWarning(UserWarning):
    """An image file (a float TIFF, say) holds NaN or infinite pixel values."""


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would race with other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: PathLike, mode: str = "wb", *, encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` only if the block succeeds.

    The temporary file lives in the target's directory (so the final ``os.replace`` is an
    atomic rename on the same file system), is flushed and fsynced before the rename, and is
    removed if anything raises inside the ``with`` block; an existing ``path`` is then left
    untouched. The new file gets the permissions of the file it replaces, or the usual
    ``0o666 & ~umask`` for a new one. A symbolic link is followed: its target is replaced.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file. Its directory must exist.
    mode : {"wb", "w", "wt"}, default "wb"
        Binary or text writing.
    encoding : str, optional
        Text encoding for text modes (default UTF-8); must be None in binary mode.

    Yields
    ------
    file object
        Write to it inside the ``with`` block; do not close it.

    Raises
    ------
    ValueError
        ``mode`` is not a write mode, ``path`` is a directory, or its directory is missing.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     target = pathlib.Path(d) / "data.bin"
    ...     _ = target.write_bytes(b"old")
    ...     try:
    ...         with atomic_write(target) as f:
    ...             _ = f.write(b"new, half written")
    ...             raise RuntimeError("disk on fire")
    ...     except RuntimeError:
    ...         pass
    ...     target.read_bytes()
    b'old'
    """
    one_of(mode, _WRITE_MODES, "mode")
    binary = "b" in mode
    if binary and encoding is not None:
        raise ValueError(f"encoding must be None in binary mode {mode!r}, got {encoding!r}")
    target = Path(os.path.realpath(os.fspath(path)))
    if target.is_dir():
        raise ValueError(f"path must be a file, got the directory {os.fspath(path)!r}")
    if not target.parent.is_dir():
        raise ValueError(
            f"path {os.fspath(path)!r} cannot be written: directory {str(target.parent)!r} "
            "does not exist"
        )
    try:
        perms = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        perms = 0o666 & ~_umask()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:64]}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, encoding=None if binary else (encoding or "utf-8")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, perms)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def read_image(path: PathLike, mode: str | None = None) -> np.ndarray:
    """Read an image file into a NumPy array (Pillow), upright according to its EXIF tag.

    Parameters
    ----------
    path : str or os.PathLike
        Any format Pillow reads (PNG, JPEG, BMP, TIFF, WebP, ...).
    mode : {None, "L", "RGB", "RGBA"}, default None
        Convert to grayscale ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` uint8. None keeps the
        file's own layout: gray stays ``(H, W)``, RGB/RGBA stay, palette images become RGB (or
        RGBA with transparency), 1-bit becomes 0/255 gray, 16-bit and float files keep their
        dtype, other color spaces (CMYK, YCbCr, ...) become RGB.

    Returns
    -------
    ndarray
        A new, writable array; uint8 for the modes above.

    Raises
    ------
    ValueError
        ``path`` does not exist, is a directory, is not an image Pillow can read, is truncated
        or corrupt, or its header claims more pixels than :func:`config.max_image_pixels`
        (or more bytes than :func:`config.max_array_bytes`); the sizes are checked before any
        pixel is decoded, and the message names the file.

    Warns
    -----
    NonFiniteImageWarning
        Once, when a float image holds NaN or infinite values (returned as they are).
    CorruptImageWarning
        Once, naming the file, for what Pillow warned while reading it (corrupt EXIF data in a
        picture that still decodes). Only on the main thread: on other threads Pillow's own
        warnings pass unchanged, as collecting them is not thread-safe.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d) / "tiny.png"
    ...     write_image(p, np.array([[0, 255]], dtype=np.uint8))
    ...     read_image(p), read_image(p, "RGB").shape
    (array([[  0, 255]], dtype=uint8), (1, 2, 3))
    """
    if mode is not None:
        one_of(mode, ("L", "RGB", "RGBA"), "mode")
    name = os.fspath(path)
    if not os.path.exists(name):
        raise ValueError(f"path {name!r} does not exist")
    if os.path.isdir(name):
        raise ValueError(f"path {name!r} is a directory, not an image file")
    with _pillow_warnings() as pillow_said:  # our pixel limit decides
        try:
            opened = Image.open(name)
        except Image.DecompressionBombError as exc:
            raise ValueError(f"image {name!r} is too large to decode ({exc})") from None
        except UnidentifiedImageError:
            raise ValueError(f"path {name!r} is not an image file Pillow can read") from None
        except _DECODE_ERRORS as exc:
            raise ValueError(f"path {name!r} could not be read as an image: {exc}") from None
        with opened:
            _check_decoded_size(opened, name, mode)
            try:
                arr = _decode(opened, mode)
            except Image.DecompressionBombError as exc:
                raise ValueError(f"image {name!r} is too large to decode ({exc})") from None
            except _DECODE_ERRORS as exc:  # truncated or corrupt data
                raise ValueError(f"path {name!r} could not be decoded as an image: "
                                 f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
    said = sorted({" ".join(str(w.message).split()) for w in pillow_said
                   if not issubclass(w.category, Image.DecompressionBombWarning)})
    if said:  # e.g. corrupt EXIF data in a picture that still decodes: one line naming the file
        warnings.warn(CorruptImageWarning(f"image {name!r}: {'; '.join(said)}"), stacklevel=2)
    if arr.dtype.kind == "f":
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            warnings.warn(NonFiniteImageWarning(
                f"image {name!r} holds {bad:,} NaN or infinite value(s) among its {arr.size:,}; "
                "anything computed from them is NaN or infinite too"), stacklevel=2)
    return arr


@contextlib.contextmanager
def _pillow_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Collect what Pillow warns while a file is read, so it can be said once naming the file.

    ``warnings.catch_warnings`` swaps process-wide state and is not thread-safe: entered on
    several decoding threads at once (an :class:`~convlayers.datasets.ImageFolder` load), the
    exits can restore each other's recorders and lose every later warning of the process. So
    only the main thread collects; on other threads Pillow's warnings pass as Pillow words them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        yield said


#: What Pillow raises on truncated or corrupt files besides OSError (plugins differ).
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, IndexError, TypeError,
                  KeyError, ZeroDivisionError, struct.error, MemoryError)
_BAND_BYTES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def _check_decoded_size(img: Image.Image, name: str, mode: str | None) -> None:
    """The header's size against :func:`config.max_image_pixels` and the decoded bytes against
    :func:`config.max_array_bytes`, before any pixel is decoded."""
    width, height = img.size
    if width < 1 or height < 1:
        raise ValueError(f"image {name!r} has no pixels (its header says {width}x{height})")
    limits.check_pixels(width, height, f"image {name!r}")
    bands = max(len(img.getbands()), len(mode or ""), 3 if img.mode in ("P", "PA") else 1)
    # Pillow's own buffer (4 bytes a pixel at least) and the array it becomes
    per_pixel = max(4, bands * _BAND_BYTES.get(img.mode, 1)) + bands * _BAND_BYTES.get(img.mode, 1)
    limits.check_bytes(width * height * per_pixel, f"decoding image {name!r} ({width}x{height})")


def _decode(opened: Image.Image, mode: str | None) -> np.ndarray:
    opened.load()
    img: Image.Image = ImageOps.exif_transpose(opened) or opened
    if mode is None:
        if img.mode == "1":
            img = img.convert("L")
        elif img.mode in ("P", "PA"):
            transparent = img.mode == "PA" or "transparency" in img.info
            img = img.convert("RGBA" if transparent else "RGB")
        elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "I;16", "F"):
            img = img.convert("RGB")
    elif img.mode != mode:
        img = img.convert(mode)
    return np.array(img)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"array must be bool, integer or float, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError("array must not contain NaN or infinity")
    lo, hi = float(arr.min()), float(arr.max())
    if arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        return np.rint(arr * 255.0).astype(np.uint8)
    if arr.dtype.kind in "iu" and lo >= 0 and hi <= 255:
        return arr.astype(np.uint8)
    if hi == lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def write_image(path: PathLike, array: ArrayLike) -> None:
    """Write an array as an image file, atomically; the format follows the file's suffix.

    Values become 8-bit by one rule:

    - uint8 is written as is; bool as 0 and 255;
    - floats all within [0, 1] are scaled by 255 and rounded;
    - integers all within [0, 255] are written as they are;
    - anything else (a signed filter response, say) is rescaled linearly so that its minimum
      becomes 0 and its maximum 255; a constant array outside those ranges becomes 0.
      NaN and infinity are rejected.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its suffix (``.png``, ``.jpg``, ``.bmp``, ``.tif``, ...) picks the format.
    array : array_like
        ``(H, W)`` or ``(H, W, 1)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA.

    Raises
    ------
    ValueError
        Unsupported shape or suffix, non-finite values, or a missing directory.
    TypeError
        A dtype that is not bool, integer or float.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d) / "ramp.png"
    ...     write_image(p, np.array([[-1.0, 0.0, 1.0]]))  # outside [0, 1]: min-max rescaled
    ...     read_image(p)
    array([[  0, 128, 255]], dtype=uint8)
    """
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or arr.size == 0:
        raise ValueError(
            "array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) and not be "
            f"empty, got shape {arr.shape}"
        )
    name = os.fspath(path)
    suffix = os.path.splitext(name)[1].lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(
            f"path {name!r} must end in an image suffix Pillow can write (.png, .jpg, .bmp, "
            f".tif, ...), got {suffix!r}"
        )
    img = Image.fromarray(np.ascontiguousarray(_to_uint8(arr)))
    if fmt == "JPEG" and img.mode == "RGBA":
        raise ValueError(f"path {name!r}: JPEG cannot store an alpha channel; use .png")
    with atomic_write(name, "wb") as f:
        img.save(f, format=fmt)
