"""Numba kernels for the lowered (im2col) 2-D convolution: gather windows into columns, and
scatter-add columns back (col2im) for the input gradient.

The column buffer of a chunk of images is ``(nb, C*kh*kw, Ho*Wo)``: row ``c*kh*kw + a*kw + b``
holds tap ``(a, b)`` of channel ``c`` for every output position, so that one GEMM per image
(``W (C_out, C*kh*kw) @ cols``) gives the NCHW output directly, and groups are contiguous
blocks of rows (a batched matmul over groups). Both kernels ``prange`` over (image, channel)
planes; each plane writes only its own rows, so no two threads touch the same memory.

Importing compiles nothing; the first call per dtype compiles and ``cache=True`` keeps the
machine code on disk.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from convlayers.kernels.winograd import _gemm

__all__ = ["col2im", "im2col", "im2col_pad", "lowered_fused"]


@njit(parallel=True, cache=True)
def im2col(xp, kh, kw, sh, sw, dh, dw, oh0, Wo, cols):
    """Windows of output rows ``oh0 ..`` of the padded images ``xp`` ``(nb, C, Hp, Wp)``."""
    nb, C = xp.shape[0], xp.shape[1]
    Ho = cols.shape[2] // Wo
    for q in prange(nb * C):
        n = q // C
        c = q - n * C
        for a in range(kh):
            for b in range(kw):
                dst = cols[n, (c * kh + a) * kw + b]
                off = b * dw
                for oh in range(Ho):
                    src = xp[n, c, (oh0 + oh) * sh + a * dh]
                    base = oh * Wo
                    if sw == 1:
                        for ow in range(Wo):
                            dst[base + ow] = src[ow + off]
                    else:
                        for ow in range(Wo):
                            dst[base + ow] = src[ow * sw + off]


@njit(parallel=True, cache=True, fastmath=True)
def col2im(cols, kh, kw, sh, sw, dh, dw, oh0, Wo, gxp):
    """Add the columns of output rows ``oh0 ..`` onto the padded gradient ``gxp``."""
    nb, C = gxp.shape[0], gxp.shape[1]
    Ho = cols.shape[2] // Wo
    for q in prange(nb * C):
        n = q // C
        c = q - n * C
        for a in range(kh):
            for b in range(kw):
                src = cols[n, (c * kh + a) * kw + b]
                off = b * dw
                for oh in range(Ho):
                    dst = gxp[n, c, (oh0 + oh) * sh + a * dh]
                    base = oh * Wo
                    for ow in range(Wo):
                        dst[ow * sw + off] += src[base + ow]


@njit(parallel=True, cache=True)
def im2col_pad(x, kh, kw, sh, sw, dh, dw, pt, pl, oh0, Wo, cols):
    """:func:`im2col` straight from the *unpadded* images ``x`` ``(nb, C, H, W)``: taps outside
    the image (top/left padding ``pt``, ``pl``; the rest implied by the output size) are zero."""
    nb, C, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    Ho = cols.shape[2] // Wo
    zero = np.zeros(1, dtype=cols.dtype)[0]
    for q in prange(nb * C):
        n = q // C
        c = q - n * C
        for a in range(kh):
            for b in range(kw):
                dst = cols[n, (c * kh + a) * kw + b]
                off = b * dw - pl
                lo = 0 if off >= 0 else (-off + sw - 1) // sw
                last = W - 1 - off
                hi = 0 if last < 0 else min(Wo, last // sw + 1)
                hi = max(lo, hi)
                for oh in range(Ho):
                    ih = (oh0 + oh) * sh + a * dh - pt
                    base = oh * Wo
                    if ih < 0 or ih >= H:
                        for ow in range(Wo):
                            dst[base + ow] = zero
                        continue
                    src = x[n, c, ih]
                    for ow in range(lo):
                        dst[base + ow] = zero
                    if sw == 1:
                        for ow in range(lo, hi):
                            dst[base + ow] = src[ow + off]
                    else:
                        for ow in range(lo, hi):
                            dst[base + ow] = src[ow * sw + off]
                    for ow in range(hi, Wo):
                        dst[base + ow] = zero


@njit(cache=True)
def _im2col_one(xn, kh, kw, sh, sw, dh, dw, pt, pl, Wo, cols):
    """:func:`im2col_pad` of one image ``xn (C, H, W)`` into ``cols (C*kh*kw, Ho*Wo)``."""
    C, H, W = xn.shape
    Ho = cols.shape[1] // Wo
    zero = np.zeros(1, dtype=cols.dtype)[0]
    for c in range(C):
        for a in range(kh):
            for b in range(kw):
                dst = cols[(c * kh + a) * kw + b]
                off = b * dw - pl
                lo = 0 if off >= 0 else (-off + sw - 1) // sw
                last = W - 1 - off
                hi = 0 if last < 0 else min(Wo, last // sw + 1)
                hi = max(lo, hi)
                for oh in range(Ho):
                    ih = oh * sh + a * dh - pt
                    base = oh * Wo
                    if ih < 0 or ih >= H:
                        for ow in range(Wo):
                            dst[base + ow] = zero
                        continue
                    src = xn[c, ih]
                    for ow in range(lo):
                        dst[base + ow] = zero
                    if sw == 1:
                        for ow in range(lo, hi):
                            dst[base + ow] = src[ow + off]
                    else:
                        for ow in range(lo, hi):
                            dst[base + ow] = src[ow * sw + off]
                    for ow in range(hi, Wo):
                        dst[base + ow] = zero


@njit(parallel=True, cache=True, fastmath=True)
def lowered_fused(x, taps, bias, kh, kw, sh, sw, dh, dw, pt, pl, Wo, nt, out):
    """A whole lowered convolution (groups 1) in one parallel region, one image per unit: its
    columns into the thread's scratch, then ``out[n] (C_out, Ho*Wo) = taps (C_out, C*kh*kw) @
    cols`` (``out (N, C_out, Ho*Wo)``) with the register-blocked micro-kernel, plus ``bias``
    (possibly empty)."""
    N = x.shape[0]
    Cout, L = out.shape[1], out.shape[2]
    K = taps.shape[1]
    buf = np.empty((nt, K, L), dtype=x.dtype)
    has_bias = bias.shape[0] > 0
    for n in prange(N):
        t = numba.get_thread_id()
        _im2col_one(x[n], kh, kw, sh, sw, dh, dw, pt, pl, Wo, buf[t])
        on = out[n]
        _gemm(taps, buf[t], on)
        if has_bias:
            for co in range(Cout):
                b = bias[co]
                row = on[co]
                for j in range(L):
                    row[j] += b
