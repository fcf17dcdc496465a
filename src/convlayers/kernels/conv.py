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

from convlayers.kernels.gemm import gemm_nt_cols_add
from convlayers.kernels.simd import gemm_tiled, gemm_tiled_add, gemm_tiled_cols

__all__ = [
    "col2im", "im2col", "im2col_pad", "lowered_backward", "lowered_fused", "pointwise",
    "pointwise_weight_grad",
]


@njit(cache=True, inline="always")
def _gather_row(src, off, sw, lo, hi, dst):
    """``dst[t] = src[(lo + t)*sw + off]`` for ``t < hi - lo`` (``lo*sw + off >= 0``). Slices
    start the indices at 0: indexing ``src[ow + off]`` with a signed ``off`` made numba check
    for negative indices on every load, which kept the loop scalar."""
    s = src[lo * sw + off:]
    if sw == 1:
        for t in range(hi - lo):
            dst[t] = s[t]
    elif sw == 2:  # a literal stride: LLVM deinterleaves with shuffles
        for t in range(hi - lo):
            dst[t] = s[2 * t]
    else:
        for t in range(hi - lo):
            dst[t] = s[t * sw]


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
                    _gather_row(src, off, sw, 0, Wo, dst[oh * Wo: (oh + 1) * Wo])


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
                    _gather_row(src, off, sw, lo, hi, dst[base + lo: base + hi])
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
                    _gather_row(src, off, sw, lo, hi, dst[base + lo: base + hi])
                    for ow in range(hi, Wo):
                        dst[base + ow] = zero


@njit(cache=True)
def _window_index(Ho, Wo, sh, sw, Hp, Wp):
    """Offsets ``oh*sh*Wp + ow*sw`` of the output positions in a padded plane ``(Hp, Wp)``,
    the extents read by the windows: ``Hp = (Ho-1)*sh + (kh-1)*dh + 1`` (``Wp`` alike)."""
    idx = np.empty(Ho * Wo, dtype=np.int64)
    for oh in range(Ho):
        for ow in range(Wo):
            idx[oh * Wo + ow] = oh * sh * Wp + ow * sw
    return idx


@njit(cache=True)
def _im2col_gather(xn, kh, kw, dh, dw, pt, pl, Hp, Wp, idx, xp, cols):
    """:func:`_im2col_one` through a zero-padded copy ``xp (C*Hp*Wp,)`` of the image and one
    flat gather per row of ``cols`` by the offsets ``idx`` (:func:`_window_index`): no
    per-output-row loops (with ``Wo`` about 14 their overhead dominated), no bounds tests."""
    C, H, W = xn.shape
    L = idx.shape[0]
    plane = Hp * Wp
    xp[:] = 0
    r0, q0 = max(0, -pt), max(0, -pl)
    r1, q1 = max(r0, min(H, Hp - pt)), max(q0, min(W, Wp - pl))
    for c in range(C):
        for r in range(r0, r1):
            d0 = c * plane + (r + pt) * Wp + q0 + pl
            d = xp[d0 : d0 + q1 - q0]
            src = xn[c, r, q0:q1]
            for i in range(q1 - q0):
                d[i] = src[i]
    for c in range(C):
        for a in range(kh):
            for b in range(kw):
                src = xp[c * plane + a * dh * Wp + b * dw :]
                dst = cols[(c * kh + a) * kw + b]
                for i in range(L):
                    dst[i] = src[idx[i]]


@njit(cache=True, fastmath=True)
def _col2im_scatter(cols, kh, kw, dh, dw, pt, pl, Hp, Wp, idx, xp, gxn):
    """The adjoint of :func:`_im2col_gather`: scatter-add the rows of ``cols`` into the padded
    scratch ``xp`` and *overwrite* ``gxn (C, H, W)`` with its interior (zero where no window
    reads). Faster than :func:`_col2im_one` for strided windows."""
    C, H, W = gxn.shape
    L = idx.shape[0]
    plane = Hp * Wp
    xp[:] = 0
    for c in range(C):
        for a in range(kh):
            for b in range(kw):
                d = xp[c * plane + a * dh * Wp + b * dw :]
                src = cols[(c * kh + a) * kw + b]
                for i in range(L):
                    d[idx[i]] += src[i]
    r0, q0 = max(0, -pt), max(0, -pl)
    r1, q1 = max(r0, min(H, Hp - pt)), max(q0, min(W, Wp - pl))
    for c in range(C):
        for r in range(H):
            row = gxn[c, r]
            if r < r0 or r >= r1:
                for i in range(W):
                    row[i] = 0
                continue
            for i in range(q0):
                row[i] = 0
            for i in range(q1, W):
                row[i] = 0
            s0 = c * plane + (r + pt) * Wp + q0 + pl
            src = xp[s0 : s0 + q1 - q0]
            d = row[q0:q1]
            for i in range(q1 - q0):
                d[i] = src[i]


@njit(parallel=True, cache=True, fastmath=True)
def lowered_fused(x, taps, bias, kh, kw, sh, sw, dh, dw, pt, pl, Wo, nt, out):
    """A whole lowered convolution (groups 1) in one parallel region, one image per unit: its
    columns into the thread's scratch, then ``out[n] (C_out, Ho*Wo) = taps (C_out, C*kh*kw) @
    cols`` (``out (N, C_out, Ho*Wo)``) with the register-tiled GEMM, plus ``bias``
    (possibly empty)."""
    N = x.shape[0]
    Cout, L = out.shape[1], out.shape[2]
    K = taps.shape[1]
    buf = np.empty((nt, K, L), dtype=x.dtype)
    Ho = L // Wo
    Hp, Wp = (Ho - 1) * sh + (kh - 1) * dh + 1, (Wo - 1) * sw + (kw - 1) * dw + 1
    idx = _window_index(Ho, Wo, sh, sw, Hp, Wp)
    pbuf = np.empty((nt, x.shape[1] * Hp * Wp), dtype=x.dtype)
    has_bias = bias.shape[0] > 0
    for n in prange(N):
        t = numba.get_thread_id()
        _im2col_gather(x[n], kh, kw, dh, dw, pt, pl, Hp, Wp, idx, pbuf[t], buf[t])
        on = out[n]
        gemm_tiled(taps, buf[t], on)
        if has_bias:
            for co in range(Cout):
                b = bias[co]
                row = on[co]
                for j in range(L):
                    row[j] += b


@njit(cache=True, fastmath=True)
def _col2im_one(cols, kh, kw, sh, sw, dh, dw, pt, pl, Wo, gxn):
    """Add ``cols (C*kh*kw, Ho*Wo)`` onto the *unpadded* gradient ``gxn (C, H, W)`` (taps in the
    padding dropped): the adjoint of :func:`_im2col_one`."""
    C, H, W = gxn.shape
    Ho = cols.shape[1] // Wo
    for c in range(C):
        for a in range(kh):
            for b in range(kw):
                src = cols[(c * kh + a) * kw + b]
                off = b * dw - pl
                lo = 0 if off >= 0 else (-off + sw - 1) // sw
                last = W - 1 - off
                hi = 0 if last < 0 else min(Wo, last // sw + 1)
                hi = max(lo, hi)
                n = hi - lo
                for oh in range(Ho):
                    ih = oh * sh + a * dh - pt
                    if ih < 0 or ih >= H:
                        continue
                    s = src[oh * Wo + lo : oh * Wo + hi]
                    if sw == 1:
                        d = gxn[c, ih, lo + off : hi + off]
                        for i in range(n):
                            d[i] += s[i]
                    else:
                        row = gxn[c, ih]
                        for i in range(n):
                            row[(lo + i) * sw + off] += s[i]


@njit(parallel=True, cache=True, fastmath=True)
def lowered_backward(x, gy, taps_t, kh, kw, sh, sw, dh, dw, pt, pl, Wo, gx, acc, used):
    """Both gradients of :func:`lowered_fused`'s convolution in one parallel region, one image
    per unit (so each image's input gradient has one owner and nothing races). Per image: its
    columns into the thread's scratch; ``acc[t] (C*kh*kw, C_out) += cols @ gy[n]^T`` (the
    transposed weight gradient; a thread's first image overwrites, and ``used[t]`` is set, so
    the caller sums the used ``acc[t]`` only); ``taps_t (C*kh*kw, C_out) @ gy[n]`` into a second
    scratch, added onto ``gx[n]`` (``gx (N, C, H, W)``, *overwritten*, zeroed here by the thread
    that fills it) by :func:`_col2im_one`. ``gy`` is ``(N, C_out, Ho*Wo)``."""
    N = x.shape[0]
    Cout, L = gy.shape[1], gy.shape[2]
    K = taps_t.shape[0]
    nt = acc.shape[0]
    cbuf = np.empty((nt, K, L), dtype=x.dtype)
    dbuf = np.empty((nt, K, L), dtype=x.dtype)
    tbuf = np.empty((nt, L, Cout), dtype=x.dtype)
    Ho = L // Wo
    Hp, Wp = (Ho - 1) * sh + (kh - 1) * dh + 1, (Wo - 1) * sw + (kw - 1) * dw + 1
    idx = _window_index(Ho, Wo, sh, sw, Hp, Wp)
    pbuf = np.empty((nt, x.shape[1] * Hp * Wp), dtype=x.dtype)
    for n in prange(N):
        t = numba.get_thread_id()
        cols = cbuf[t]
        _im2col_gather(x[n], kh, kw, dh, dw, pt, pl, Hp, Wp, idx, pbuf[t], cols)
        gyn = gy[n]
        gyt = tbuf[t]
        for j in range(L):  # read strided, write contiguous: 10x faster than the other way
            row = gyt[j]
            for co in range(Cout):
                row[co] = gyn[co, j]
        if used[t]:
            gemm_tiled_add(cols, gyt, acc[t])
        else:
            gemm_tiled(cols, gyt, acc[t])
            used[t] = True
        dcols = dbuf[t]
        gemm_tiled(taps_t, gyn, dcols)
        gxn = gx[n]
        if sw > 1 or sh > 1:
            _col2im_scatter(dcols, kh, kw, dh, dw, pt, pl, Hp, Wp, idx, pbuf[t], gxn)
        else:
            C, H, W = gxn.shape
            for c in range(C):
                for r in range(H):
                    for j in range(W):
                        gxn[c, r, j] = 0
            _col2im_one(dcols, kh, kw, sh, sw, dh, dw, pt, pl, Wo, gxn)


# ----------------------------------------------------------------------------- 1x1 (pointwise)
#
# A 1x1 convolution is one GEMM per image and group over the pixels. The kernels below run all
# of them in one parallel region, a unit being one block of ``B`` pixel columns of one image
# (every group): the register-tiled GEMM of ``simd.py`` when a block spans the image, else the
# loops of ``gemm.py`` restricted to the columns ``j0 .. j1`` of full rows (so the rows stay
# contiguous and nothing is copied): no BLAS
# call, no hand-over between numba's and OpenBLAS's threads. The engine picks ``B`` so that the
# unit's block of the right-hand operand stays in the core's L2 cache.


@njit(parallel=True, cache=True, fastmath=True)
def pointwise(x, taps, bias, B, R, out):
    """``out[n, g] = taps[g] @ x[n, g]`` (+ ``bias``, ``C_out`` entries or none) for
    ``x (N, G, C_in/g, L)``, ``taps (G, C_out/g, C_in/g)``, ``out (N, G, C_out/g, L)``, in units
    of ``B`` columns and ``R`` output rows (a multiple of 4) of one image: small feature maps at
    batch 1 have too few column blocks to keep every thread busy. Also the input gradient, with
    ``taps`` transposed."""
    N, G, L = x.shape[0], x.shape[1], x.shape[3]
    Cog = taps.shape[1]
    nb = (L + B - 1) // B
    nr = (Cog + R - 1) // R
    has_bias = bias.shape[0] > 0
    for unit in prange(N * nb * nr):
        n = unit // (nb * nr)
        rest = unit - n * nb * nr
        blk = rest // nr
        r0 = (rest - blk * nr) * R
        r1 = min(Cog, r0 + R)
        j0 = blk * B
        j1 = min(L, j0 + B)
        for g in range(G):
            o = out[n, g, r0:r1]
            if nb == 1:
                gemm_tiled(taps[g, r0:r1], x[n, g], o)
            else:
                gemm_tiled_cols(taps[g, r0:r1], x[n, g], o, j0, j1)
            if has_bias:
                for co in range(r1 - r0):
                    b = bias[g * Cog + r0 + co]
                    row = o[co]
                    for j in range(j0, j1):
                        row[j] += b


@njit(parallel=True, cache=True, fastmath=True)
def pointwise_weight_grad(x, gy, B, acc):
    """Weight gradient of :func:`pointwise`: ``acc[t, g]`` (``acc (threads, G, C_out/g,
    C_in/g)``, overwritten) receives thread ``t``'s sum of ``gy[n, g][:, blk] @ x[n, g][:, blk].T``
    over its units; the caller sums over threads."""
    N, G, L = x.shape[0], x.shape[1], x.shape[3]
    nb = (L + B - 1) // B
    acc[:] = 0
    for unit in prange(N * nb):
        t = numba.get_thread_id()
        n = unit // nb
        j0 = (unit - n * nb) * B
        j1 = min(L, j0 + B)
        for g in range(G):
            gemm_nt_cols_add(gy[n, g], x[n, g], acc[t, g], j0, j1)
