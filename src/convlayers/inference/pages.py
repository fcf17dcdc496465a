"""Memory that a compiled plan reads on every call, on 2 MiB pages where the system allows.

A plan streams its weights from memory on each call (ResNet-50's 100 MB at batch 1: most
of them no longer in any cache by the time their layer comes round again), and at larger
batches its arena too. On 4 KiB pages every 4 KiB of a weight panel is another translation
(a TLB miss and a page walk, once the weights outgrow the TLB) and a boundary the hardware
prefetchers stop at. Linux backs an anonymous mapping advised ``MADV_HUGEPAGE`` with 2 MiB
pages (transparent huge pages, in their "madvise" and "always" modes). NumPy advises its
own allocations from 4 MiB, so a plan's arena mostly had them already, but its weights were
one array per layer, most smaller. Gathered into one block, the compiled models ran, against
their weights apart (same process, alternating calls): ResNet-50 0.93x the time at batch 1
and 0.92x at batch 16, ResNet-18 0.88x and MobileNetV2 0.92x at batch 1.

Elsewhere (no ``madvise``, or huge pages off), the blocks are ordinary 64-byte aligned
arrays: the same results, at the old speed.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Sequence

import numpy as np

__all__ = ["HUGE_PAGE_BYTES", "block", "gather"]

#: The size of a transparent huge page on x86-64 and of the blocks' alignment.
HUGE_PAGE_BYTES = 2 * 1024 * 1024
#: Alignment of each array that :func:`gather` places (a cache line).
ALIGN = 64


def block(nbytes: int) -> np.ndarray:
    """A writable ``uint8`` array of ``nbytes``, 64-byte aligned; from one huge page up, on a
    2 MiB boundary of an anonymous mapping advised ``MADV_HUGEPAGE`` when the platform has it.

    Its contents are unspecified (zeros from a fresh mapping, anything otherwise), as with
    :func:`numpy.empty`. The mapping lives as long as the array or any view of it.

    Examples
    --------
    >>> b = block(3 * HUGE_PAGE_BYTES)
    >>> b.nbytes, b.ctypes.data % 64
    (6291456, 0)
    >>> block(100).nbytes
    100
    """
    if nbytes < 0:
        raise ValueError(f"nbytes must be non-negative, got {nbytes}")
    advise = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes >= HUGE_PAGE_BYTES and advise is not None and hasattr(mmap, "MAP_ANONYMOUS"):
        size = nbytes + HUGE_PAGE_BYTES
        mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        with contextlib.suppress(OSError):  # a kernel without transparent huge pages
            mapping.madvise(advise)
        raw = np.frombuffer(mapping, np.uint8)
        start = (-raw.ctypes.data) % HUGE_PAGE_BYTES
        return raw[start:start + nbytes]
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + nbytes]


def gather(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Copies of ``arrays`` (same shapes, dtypes and values, C-contiguous), all in one
    :func:`block`, each at a 64-byte boundary.

    Examples
    --------
    >>> a, b = np.arange(3.0), np.ones((2, 2), np.float32)
    >>> c, d = gather([a, b])
    >>> c.tolist(), d.dtype, d.shape, np.shares_memory(a, c)
    ([0.0, 1.0, 2.0], dtype('float32'), (2, 2), False)
    """
    sizes = [-(-a.nbytes // ALIGN) * ALIGN for a in arrays]
    whole = block(sum(sizes))
    out, at = [], 0
    for a, size in zip(arrays, sizes, strict=True):
        copy = whole[at:at + a.nbytes].view(a.dtype).reshape(a.shape)
        copy[...] = a
        out.append(copy)
        at += size
    return out
