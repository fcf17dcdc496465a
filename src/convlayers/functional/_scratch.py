"""Scratch buffers kept between calls, one set per Python thread.

A kernel's scratch (slabs, products) taken from ``np.empty`` on every call is, past glibc's
dynamic mmap threshold, fresh pages from the kernel each time once smaller allocations have
trimmed the heap: after a few small layers, a 1x112x56x17 implicit GEMM ran 0.9-1.0 ms instead
of 0.65 (page faults on its scratch at every call). Kept here, a layer's scratch is written
into pages already mapped. Each name is one buffer: a call takes it and is done with it before
the next call on the same thread takes it again (no kernel nests a call that takes the same
name).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

_local = threading.local()
#: The largest buffer kept (larger scratch is allocated per call: its work dwarfs the faults).
KEEP_BYTES = 16 * 1024 * 1024


def take(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised ``shape`` array of ``dtype`` for this thread's ``name`` scratch:
    the buffer kept since the last call when it is large enough, else a new one kept in its
    place (up to :data:`KEEP_BYTES`; larger requests get a new array each time).

    >>> a = take("example", (2, 3), np.float32)
    >>> b = take("example", (3, 2), np.float32)
    >>> a.shape, b.shape, np.shares_memory(a, b)
    ((2, 3), (3, 2), True)
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    if size * dtype.itemsize > KEEP_BYTES:
        return np.empty(shape, dtype)
    buffers: dict[tuple[str, str], np.ndarray] = getattr(_local, "buffers", None) or {}
    _local.buffers = buffers
    key = (name, dtype.str)
    held = buffers.get(key)
    if held is None or held.size < size:
        held = buffers[key] = np.empty(size, dtype)
    return held[:size].reshape(shape)
