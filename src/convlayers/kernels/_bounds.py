"""Small helpers the compiled kernels share: which outputs a tap reaches, which unit is which,
the row copy, a zero of an array's dtype, and the layout of scratch rows in cache lines.

All are ``inline="always"``: numba splices them into the caller's IR, so a kernel's
loops compile as if the lines were written in place.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from convlayers.config import CACHE_LINE_BYTES

__all__ = ["copy_row", "inside_range", "line_aligned", "line_stride", "slab_unit", "store_rows",
           "store_rows_spaced", "tap_cols", "typed_zero", "unit_block", "unit_parts"]


@njit(cache=True, inline="always")
def typed_zero(a):
    """A zero of ``a``'s dtype. Not ``np.zeros(1, a.dtype)[0]``: in a ``parallel=True`` kernel
    numba makes that fill a parallel loop of its own, a parallel region per use (1.4 us on
    warm threads; the serial loop of an adaptive average pool over 42 planes of 10x10 took
    64 us for its 42 zeros, 7 us without)."""
    z = np.empty(1, dtype=a.dtype)
    z[0] = 0
    return z[0]


@njit(cache=True, inline="always")
def tap_cols(off, step, size, n_out):
    """Output columns ``[lo, hi)`` whose tap ``o*step + off`` lies inside ``0 .. size-1``, of
    ``n_out`` outputs (``hi >= lo``; ``lo`` may exceed ``n_out`` when none does)."""
    lo = 0 if off >= 0 else (-off + step - 1) // step
    last = size - 1 - off
    hi = 0 if last < 0 else min(n_out, last // step + 1)
    return lo, max(lo, hi)


@njit(cache=True, inline="always")
def inside_range(n_out, size, k, s, p, d):
    """Range ``[lo, hi)`` of outputs whose taps ``o*s - p + j*d`` (``j < k``) all lie in
    ``[0, size)`` (``lo == hi`` when none does): the windows with no tap in the padding."""
    lo = min(n_out, (p + s - 1) // s)
    hi = (size - 1 - (k - 1) * d + p) // s + 1
    hi = max(lo, min(n_out, hi))
    return lo, hi


@njit(cache=True, inline="always")
def unit_parts(unit, a, b):
    """``(n, i, j)`` of the parallel unit numbered ``(n*a + i)*b + j`` (``i < a``, ``j < b``)."""
    n = unit // (a * b)
    rest = unit - n * (a * b)
    i = rest // b
    return n, i, rest - i * b


@njit(cache=True, inline="always")
def unit_block(unit, a, b, size, total):
    """``(n, i, lo, count)`` of the unit numbered ``(n*a + i)*b + j`` whose last part ``j`` is
    a block of ``size`` out of ``total`` (rows, channels): it starts at ``lo = j*size`` and
    holds ``count = min(size, total - lo)`` of them."""
    n, i, j = unit_parts(unit, a, b)
    lo = j * size
    return n, i, lo, min(size, total - lo)


@njit(cache=True, inline="always")
def slab_unit(unit, G, nr, nb, R, Ho, B, Cog):
    """``(n, g, oh0, rows, co0, cos)`` of the slab kernels' unit numbered ``((n*G + g)*nr +
    r)*nb + cb``: image ``n``, group ``g``, output rows ``oh0 .. oh0 + rows`` (slab ``r`` of
    ``R`` rows out of ``Ho``) and output channels ``co0 .. co0 + cos`` (block ``cb`` of ``B``
    out of ``Cog``)."""
    n, g, rest = unit_parts(unit, G, nr * nb)
    r = rest // nb
    oh0, co0 = r * R, (rest - r * nb) * B
    return n, g, oh0, min(R, Ho - oh0), co0, min(B, Cog - co0)


@njit(cache=True, inline="always")
def store_rows(dst, src, rows, width, stride, b, step):
    """``dst[i*step + j] = src[i*stride + j] + b`` for ``rows`` rows of ``width`` (flat views
    starting at the first row): a product's rows, bias added, into the output."""
    for i in range(rows):
        d = dst[i * step: i * step + width]
        s = src[i * stride: i * stride + width]
        for j in range(width):
            d[j] = s[j] + b


@njit(cache=True, inline="always")
def store_rows_spaced(dst, src, rows, width, stride, b, step, space):
    """:func:`store_rows` into every ``space``-th element of each output row:
    ``dst[i*step + j*space] = src[i*stride + j] + b``."""
    for i in range(rows):
        d = dst[i * step: i * step + (width - 1) * space + 1]
        s = src[i * stride: i * stride + width]
        for j in range(width):
            d[j * space] = s[j] + b


@njit(cache=True, inline="always")
def copy_row(dst, src):
    """``dst[:] = src`` (1-D, ``len(dst)`` elements read from ``src``) as a loop from index 0:
    numba's slice-to-slice assignment goes through its generic broadcasting copy (13x slower on
    a 56-element row), and ``dst[base + j]`` keeps numba's negative-index wraparound in the loop
    so it does not vectorise; pass views that start where the copy starts."""
    for k in range(dst.shape[0]):
        dst[k] = src[k]


@njit(cache=True, inline="always")
def line_stride(n, itemsize):
    """Elements between the starts of scratch rows of ``n`` elements that the register tiles
    read down (a product's right operand): ``n`` rounded up to an odd number of cache lines,
    ``n`` itself under two lines. Rows a multiple of 1-4 KiB apart fall in a few sets of the
    L1 cache and evict each other before the next band of tiles reads them again, and rows
    that do not start on a line split the tiles' loads over two. On one Zen 3 core the tiled
    GEMM ran 0.84-0.96x the time with its right operand's rows so laid out (and starting on a
    line; :func:`line_aligned`): 256, 384, 420 and 49 columns (0.90, 0.95, 0.94, 0.84-0.88x),
    none slower on 36, 64, 784 or 3136 (0.99-1.00x). The values are those of the unpadded
    rows, so the products' sums are unchanged. The 1x1 kernel's packed panels take the same
    rows (from Python: ``line_stride.py_func``)."""
    per = CACHE_LINE_BYTES // itemsize
    if n < 2 * per:
        return n
    lines = (n + per - 1) // per
    return (lines + 1 - lines % 2) * per


@njit(cache=True, inline="always")
def line_aligned(buf):
    """The 1-D ``buf`` from its first element on a cache line (up to ``CACHE_LINE_BYTES //
    itemsize - 1`` elements dropped: allocate that many more)."""
    per = CACHE_LINE_BYTES // buf.itemsize
    return buf[(per - (buf.ctypes.data // buf.itemsize) % per) % per:]
