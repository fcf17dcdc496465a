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

from numba import njit, prange

__all__ = ["col2im", "im2col"]


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
