"""The library's few explicit settings: scratch-memory cap and thread count.

These are the only global state in convlayers. Change them with the setters or, for a block of
code, with :func:`settings`.

Examples
--------
>>> from convlayers import config
>>> with config.settings(scratch_bytes=1 << 20):
...     config.scratch_bytes()
1048576
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from convlayers._validate import as_int

__all__ = [
    "PerformanceWarning", "apply_numba_threads", "max_array_bytes", "max_image_pixels",
    "prefer_passive_openmp", "scratch_bytes", "set_max_array_bytes", "set_max_image_pixels",
    "set_scratch_bytes", "set_threads", "settings", "threads",
]

_DEFAULT_SCRATCH = 256 * 1024 * 1024
#: Images may hold at most this many pixels (Pillow's own bomb limit is about 89 M).
_DEFAULT_IMAGE_PIXELS = 50_000_000


def _physical_memory() -> int:
    """Bytes of physical memory (1 TiB where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return 1 << 40


_state = {"scratch_bytes": _DEFAULT_SCRATCH, "threads": os.cpu_count() or 1,
          "max_array_bytes": _physical_memory() // 2, "max_image_pixels": _DEFAULT_IMAGE_PIXELS}


def max_array_bytes() -> int:
    """Largest array (an op's output, a decoded image, a tensor read from a file) the library
    will allocate, in bytes (default: half the physical memory). Checked before allocating by
    :func:`convlayers.limits.check_bytes`."""
    return _state["max_array_bytes"]


def set_max_array_bytes(n: int) -> None:
    """Set the largest array the library allocates, in bytes."""
    if as_int(n, "max_array_bytes") < 1:
        raise ValueError(f"max_array_bytes must be >= 1, got {n}")
    _state["max_array_bytes"] = int(n)


def max_image_pixels() -> int:
    """Most pixels (width x height) an image may have to be decoded (default 50 M), for every
    reader: the CLI, the explorer, datasets."""
    return _state["max_image_pixels"]


def set_max_image_pixels(n: int) -> None:
    """Set the pixel limit of the image readers."""
    if as_int(n, "max_image_pixels") < 1:
        raise ValueError(f"max_image_pixels must be >= 1, got {n}")
    _state["max_image_pixels"] = int(n)


def scratch_bytes() -> int:
    """Upper bound on the temporary memory one lowering (e.g. a window copy) may use."""
    return _state["scratch_bytes"]


def set_scratch_bytes(n: int) -> None:
    """Set the scratch-memory cap in bytes (default 256 MiB). Results do not depend on it."""
    if as_int(n, "scratch_bytes") < 1:
        raise ValueError(f"scratch_bytes must be >= 1, got {n}")
    _state["scratch_bytes"] = int(n)


def threads() -> int:
    """Number of threads compiled kernels use (default: all cores)."""
    return _state["threads"]


def set_threads(n: int) -> None:
    """Set the number of threads for compiled kernels (and numba, when it is loaded).

    The compiled kernels apply it on every call (``numba.set_num_threads``, capped at numba's
    pool size); NumPy's BLAS keeps its own setting (use ``threadpoolctl`` to change it).
    """
    if as_int(n, "threads") < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _state["threads"] = int(n)
    if "numba" in sys.modules:
        apply_numba_threads()


class PerformanceWarning(UserWarning):
    """The process is set up in a way that makes convlayers' compiled kernels much slower."""


def prefer_passive_openmp() -> None:
    """Ask idle OpenMP threads to sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose.

    ``import convlayers`` calls this. numba's kernels run on the process's OpenMP runtime
    (libgomp), which reads the policy once, when it is loaded; idle threads that spin steal the
    cores the next kernel or BLAS call needs, which made MobileNetV2 3x slower and alternating
    numba and BLAS work up to 10x slower on 2 cores. When libgomp is already loaded (typically
    ``import torch`` came first) it is too late, and a :class:`PerformanceWarning` says how to fix
    it: set ``OMP_WAIT_POLICY`` yourself before importing torch, or import convlayers first.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if _libgomp_loaded():
        import warnings

        warnings.warn(
            "libgomp (OpenMP) was loaded before convlayers, so its idle threads keep spinning and "
            "convlayers' compiled kernels can run ~3x slower. Import convlayers before torch, or "
            "set OMP_WAIT_POLICY=PASSIVE (or ACTIVE, to keep spinning and silence this) in the "
            "environment before starting Python.", PerformanceWarning, stacklevel=3)


def _libgomp_loaded() -> bool:
    """Whether the shared libgomp numba uses is mapped into this process already (Linux)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any(line.rstrip().rsplit("/", 1)[-1].startswith("libgomp.so") for line in maps)
    except OSError:
        return False


def apply_numba_threads() -> None:
    """Make numba's thread count follow :func:`threads` (the kernels call this before running)."""
    import numba

    want = max(1, min(_state["threads"], numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)


@contextmanager
def settings(*, scratch_bytes: int | None = None, threads: int | None = None,
             max_array_bytes: int | None = None,
             max_image_pixels: int | None = None) -> Iterator[None]:
    """Temporarily change settings inside a ``with`` block."""
    saved = dict(_state)
    try:
        if scratch_bytes is not None:
            set_scratch_bytes(scratch_bytes)
        if threads is not None:
            set_threads(threads)
        if max_array_bytes is not None:
            set_max_array_bytes(max_array_bytes)
        if max_image_pixels is not None:
            set_max_image_pixels(max_image_pixels)
        yield
    finally:
        _state.update(saved)
        if "numba" in sys.modules:
            apply_numba_threads()
