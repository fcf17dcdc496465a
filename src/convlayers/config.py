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
from collections.abc import Iterator
from contextlib import contextmanager

from convlayers._validate import as_int

__all__ = ["scratch_bytes", "set_scratch_bytes", "set_threads", "settings", "threads"]

_DEFAULT_SCRATCH = 256 * 1024 * 1024
_state = {"scratch_bytes": _DEFAULT_SCRATCH, "threads": os.cpu_count() or 1}


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
    """Set the number of threads for compiled kernels (and numba, when it is loaded)."""
    if as_int(n, "threads") < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _state["threads"] = int(n)


@contextmanager
def settings(*, scratch_bytes: int | None = None, threads: int | None = None) -> Iterator[None]:
    """Temporarily change settings inside a ``with`` block."""
    saved = dict(_state)
    try:
        if scratch_bytes is not None:
            set_scratch_bytes(scratch_bytes)
        if threads is not None:
            set_threads(threads)
        yield
    finally:
        _state.update(saved)
