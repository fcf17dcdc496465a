"""Numba kernels behind :mod:`convlayers.filters`: 2-D cross-correlation of a padded image.

Both kernels compute the *valid* cross-correlation of a virtually padded image with a kernel,
``out[y, x] = sum_{a, b} k[a, b] * P[y + a, x + b]``, without ever building the padded image
``P``. Padding is described by two index maps built once by the caller:

- ``rowmap[p]`` is the image row that padded row ``p`` copies, or ``-1`` for a row of
  ``fill``; ``colmap[q]`` likewise for columns.
- Columns ``left .. left + W - 1`` of ``P`` are the image's columns ``0 .. W - 1`` (every mode
  keeps the whole image inside the padded one), so only the border columns use ``colmap``.

Rows are split across threads in contiguous chunks (``prange`` over chunks); inside a chunk the
loops run along a row, so that LLVM vectorises them (``fastmath``). Zero taps are skipped.
Every array (image, kernel, factors, ``fill``) arrives in the output dtype, so float32 stays
float32 throughout: no Python float literal enters the arithmetic.

Importing this module compiles nothing; the first call per dtype compiles (a few seconds) and
``cache=True`` keeps the machine code on disk for later processes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["correlate_direct", "correlate_separable"]


@njit(cache=True, fastmath=True, inline="always")
def _padded_row(image, r, colmap, left, fill, dst):
    """Write padded row ``r`` (``-1``: a row of ``fill``) of the image into ``dst``."""
    W = image.shape[1]
    Wp = dst.shape[0]
    if r < 0:
        for q in range(Wp):
            dst[q] = fill
        return
    src = image[r]
    for x in range(W):
        dst[left + x] = src[x]
    for q in range(left):
        c = colmap[q]
        dst[q] = src[c] if c >= 0 else fill
    for q in range(left + W, Wp):
        c = colmap[q]
        dst[q] = src[c] if c >= 0 else fill


@njit(parallel=True, cache=True, fastmath=True)
def correlate_direct(image, kernel, rowmap, colmap, left, fill, out, nchunks):
    """Valid cross-correlation of the padded ``image`` with a 2-D ``kernel``, into ``out``.

    Each chunk of output rows keeps a ring of ``kh`` padded rows, so every padded row is built
    once per chunk; each output row then accumulates ``kernel[a, b] * row[x + b]`` tap by tap.
    """
    kh, kw = kernel.shape
    Ho, Wo = out.shape
    Wp = colmap.shape[0]
    for chunk in prange(nchunks):
        y0 = chunk * Ho // nchunks
        y1 = (chunk + 1) * Ho // nchunks
        if y0 >= y1:
            continue
        ring = np.empty((kh, Wp), dtype=out.dtype)
        for a in range(kh - 1):
            _padded_row(image, rowmap[y0 + a], colmap, left, fill, ring[(y0 + a) % kh])
        for y in range(y0, y1):
            p = y + kh - 1
            _padded_row(image, rowmap[p], colmap, left, fill, ring[p % kh])
            o = out[y]
            for x in range(Wo):
                o[x] = 0
            for a in range(kh):
                row = ring[(y + a) % kh]
                for b in range(kw):
                    w = kernel[a, b]
                    if w != 0:
                        for x in range(Wo):
                            o[x] += w * row[x + b]
    return out


@njit(parallel=True, cache=True, fastmath=True)
def correlate_separable(image, col, row, rowmap, colmap, left, fill, out, nchunks):
    """Valid cross-correlation with the rank-1 kernel ``outer(col, row)``: two 1-D passes.

    For each output row, the vertical pass combines ``len(col)`` image rows into one padded
    row (the border columns are filled after combining, which is exact because padding only
    copies columns), then the horizontal pass applies ``row`` along it.
    """
    kh = col.shape[0]
    kw = row.shape[0]
    Ho, Wo = out.shape
    W = image.shape[1]
    Wp = colmap.shape[0]
    # value of a fill column after the vertical pass: every one of its kh entries is `fill`
    colsum = col[0] - col[0]  # a zero of the working dtype (a literal would upcast float32)
    for a in range(kh):
        colsum += col[a]
    fill_col = fill * colsum
    for chunk in prange(nchunks):
        y0 = chunk * Ho // nchunks
        y1 = (chunk + 1) * Ho // nchunks
        tmp = np.empty(Wp, dtype=out.dtype)
        for y in range(y0, y1):
            mid = tmp[left : left + W]
            for x in range(W):
                mid[x] = 0
            fill_w = col[0] - col[0]
            for a in range(kh):
                w = col[a]
                if w == 0:
                    continue
                r = rowmap[y + a]
                if r < 0:
                    fill_w += w
                else:
                    src = image[r]
                    for x in range(W):
                        mid[x] += w * src[x]
            if fill_w != 0:
                extra = fill_w * fill
                for x in range(W):
                    mid[x] += extra
            for q in range(left):
                c = colmap[q]
                tmp[q] = mid[c] if c >= 0 else fill_col
            for q in range(left + W, Wp):
                c = colmap[q]
                tmp[q] = mid[c] if c >= 0 else fill_col
            o = out[y]
            for x in range(Wo):
                o[x] = 0
            for b in range(kw):
                w = row[b]
                if w != 0:
                    for x in range(Wo):
                        o[x] += w * tmp[x + b]
    return out
