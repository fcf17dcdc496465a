"""Numba kernels of the lowered (im2col) 2-D convolution, and of 1x1 convolutions.

The lowered convolution gathers the windows of a slab of output rows into columns, ``cols (K,
L)`` with ``K = C_in/g * kh * kw`` (row ``(c*kh + a)*kw + b`` holds tap ``(a, b)`` of channel
``c`` for every output position of the slab), and multiplies: ``out (C_out/g, L) = taps (C_out/g,
K) @ cols``. Everything runs in one numba parallel region per pass, whose units the engine sizes
so that every thread has work even for one image (:mod:`convlayers.functional._engine`):

- forward (:func:`lowered_forward`): a unit is (image, group, slab of output rows, block of
  output channels); its columns go into the thread's scratch, the product into a second one,
  copied out with the bias added;
- weight gradient (:func:`lowered_weight_grad`): a unit is (image, group, slab of output
  rows); ``acc[t, g] (K, C_out/g) += cols @ grad^T`` per thread, summed by the caller;
- input gradient (:func:`lowered_input_grad`): a unit is (image, group, block of input
  channels), so each input plane has one owner: per slab, ``dcols = taps^T[block] @ grad``,
  added back onto the input planes by bounds (col2im).

Windows read the *unpadded* input: the unit copies the input rows its slab reads into a
zero-bordered scratch (so no tap tests bounds), and col2im drops the taps that fall in the
padding. Every product is the register-tiled GEMM of :mod:`convlayers.kernels.simd`; no BLAS call,
so no hand-over between numba's and OpenBLAS's thread pools.

Importing compiles nothing; the first call per dtype compiles and ``cache=True`` keeps the
machine code on disk.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from convlayers.config import CACHE_LINE_BYTES
from convlayers.kernels._bounds import (
    copy_row,
    line_aligned,
    line_stride,
    slab_unit,
    store_rows,
    tap_cols,
    typed_zero,
    unit_block,
)
from convlayers.kernels._twin import serial_twin
from convlayers.kernels._typed import FALSE, TRUE, ZERO
from convlayers.kernels.gemm import gemm_nt_cols_add
from convlayers.kernels.queue import claim, new_queue
from convlayers.kernels.simd import (
    few_columns,
    gemm_few,
    gemm_indirect_cols,
    gemm_tiled,
    gemm_tiled_add,
    gemm_tiled_cols,
    gemm_tiled_cols_add,
    gemm_tiled_inner,
    transpose_block,
)

__all__ = [
    "lowered_forward",
    "lowered_forward_merged",
    "lowered_input_grad",
    "lowered_input_grad_merged",
    "lowered_weight_grad",
    "lowered_weight_grad_merged",
    "pointwise",
    "pointwise_few",
    "pointwise_few_weight_grad",
    "pointwise_serial",
    "pointwise_strided",
    "pointwise_weight_grad",
    "pointwise_weight_grad_tiled",
    "scatter_strided",
    "slab_index",
    "subsample",
    "sum_transposed",
]

#: Output positions an image up to which the merged forward gathers its images' columns
#: together (:func:`_columns_across_images`): on 24 random layers of 5-16 positions, gathering
#: so ran 1.28x the per-image gather's time on 171->48 4x4 stride 3 (11x171x9x9).
FEW_POSITIONS = 4


@njit(cache=True)
def slab_index(rows, Wo, sh, sw, Wp):
    """Offsets ``oh*sh*Wp + ow*sw`` of a slab's ``rows x Wo`` output positions in its padded
    input slab of row length ``Wp`` (the gather of narrow maps)."""
    idx = np.empty(rows * Wo, dtype=np.int64)
    for oh in range(rows):
        for ow in range(Wo):
            idx[oh * Wo + ow] = oh * sh * Wp + ow * sw
    return idx


@njit(cache=True, inline="always")
def _slab_scratch(x, nt, Cig, K, kh, kw, sh, sw, dh, dw, R, Wo):
    """What :func:`_columns` needs for slabs of ``R`` output rows by ``Wo``: the padded slab's
    row length ``Wp``, the gather offsets (:func:`slab_index`), and per-thread scratch for
    ``nt`` threads (the input slab, ``Cig x Hs x Wp``, and the columns, ``K`` rows of ``R*Wo``
    laid out by :func:`~convlayers.kernels._bounds.line_stride` from a cache line on)."""
    Wp = (Wo - 1) * sw + (kw - 1) * dw + 1
    Hs = (R - 1) * sh + (kh - 1) * dh + 1
    idx = slab_index(R, Wo, sh, sw, Wp)
    xbuf = np.empty((nt, Cig * Hs * Wp), dtype=x.dtype)
    cbuf = np.empty((nt, K * line_stride(R * Wo, x.itemsize) + CACHE_LINE_BYTES // x.itemsize),
                    dtype=x.dtype)
    return Wp, idx, xbuf, cbuf


@njit(cache=True, fastmath=True)
def _columns(xn, c0, C, kh, kw, sh, sw, dh, dw, ih0, pl, nr, Wo, Wp, idx, xp, cols):
    """The columns ``cols (C*kh*kw, nr*Wo)`` (the first ``nr*Wo`` of longer rows) of output rows
    whose first reads input row ``ih0`` (may be negative: top padding), channels ``c0 .. c0 +
    C`` of ``xn (C_in, H, W)``, through the zero-bordered copy ``xp`` of the input rows they
    read (``Hs x Wp`` per channel)."""
    H, W = xn.shape[1], xn.shape[2]
    Hs = (nr - 1) * sh + (kh - 1) * dh + 1
    plane = Hs * Wp
    L = nr * Wo
    j_lo, j_hi = max(0, pl), min(Wp, W + pl)
    for c in range(C):
        base = c * plane
        for i in range(Hs):
            ih = ih0 + i
            d = xp[base + i * Wp: base + (i + 1) * Wp]
            if ih < 0 or ih >= H or j_hi <= j_lo:
                for j in range(Wp):
                    d[j] = 0
                continue
            for j in range(j_lo):
                d[j] = 0
            for j in range(j_hi, Wp):
                d[j] = 0
            copy_row(d[j_lo:j_hi], xn[c0 + c, ih, j_lo - pl: j_hi - pl])
    for c in range(C):
        for a in range(kh):
            for b in range(kw):
                dst = cols[(c * kh + a) * kw + b]
                src = xp[c * plane + a * dh * Wp + b * dw:]
                if Wo >= 16 and sw == 1:  # whole rows: contiguous copies
                    for oh in range(nr):
                        copy_row(dst[oh * Wo: oh * Wo + Wo], src[oh * sh * Wp:])
                else:  # narrow or strided rows: one gather over the slab
                    for i in range(L):
                        dst[i] = src[idx[i]]


@njit(cache=True, fastmath=True)
def _columns_by_bounds(xf, base, H, W, kh, kw, sh, sw, dh, dw, ih0, iw0, Ho, Wo, cf, r0, ld, j0,
                       zero):
    """Rows ``r0 .. r0 + kh*kw`` (one per tap), columns ``j0 .. j0 + Ho*Wo`` of the flat
    columns ``cf`` (row length ``ld``) for the ``H x W`` plane at ``xf[base:]``, read straight
    from the input with its bounds: no padded copy and no array views (for narrow maps both
    cost more than the gather). ``zero`` in the columns' dtype."""
    for a in range(kh):
        for b in range(kw):
            row = (r0 + a * kw + b) * ld + j0
            for oh in range(Ho):
                ih = ih0 + oh * sh + a * dh
                d = row + oh * Wo
                if ih < 0 or ih >= H:
                    for ow in range(Wo):
                        cf[d + ow] = zero
                    continue
                src = base + ih * W
                for ow in range(Wo):
                    iw = iw0 + ow * sw + b * dw
                    cf[d + ow] = xf[src + iw] if 0 <= iw < W else zero


@njit(cache=True, fastmath=True)
def _columns_across_images(xf, base, step, images, H, W, kh, kw, sh, sw, dh, dw, ih0, iw0, Ho,
                           Wo, cf, r0, tap_step, position_step, image_step, zero):
    """The windows of ``images`` planes ``step`` apart from ``xf[base:]`` at once, tap ``t``
    (``r0 + a*kw + b``) of output position ``q`` of image ``i`` at ``cf[t*tap_step +
    q*position_step + i*image_step]`` (the forward's columns, a row per tap, or the weight
    gradient's, a row per position), read by bounds: each tap's bounds found once for all the
    images. For maps of a few output positions a plane's gather had been all bounds checks
    and loop overhead (29 images of 305 channels, one 5x5 window each: 0.9 ms of a 1 ms
    call)."""
    for a in range(kh):
        for b in range(kw):
            row = (r0 + a * kw + b) * tap_step
            for oh in range(Ho):
                ih = ih0 + oh * sh + a * dh
                for ow in range(Wo):
                    iw = iw0 + ow * sw + b * dw
                    d = row + (oh * Wo + ow) * position_step
                    if ih < 0 or ih >= H or iw < 0 or iw >= W:
                        for i in range(images):
                            cf[d + i * image_step] = zero
                        continue
                    src = base + ih * W + iw
                    for i in range(images):
                        cf[d + i * image_step] = xf[src + i * step]


@njit(cache=True, fastmath=True)
def _col2im(dcols, gxn, c0, C, kh, kw, sh, sw, dh, dw, pt, pl, oh0, nr, Wo):
    """Add ``dcols (C*kh*kw, nr*Wo)`` (the first ``nr*Wo`` of longer rows; output rows ``oh0
    ..``) onto channels ``c0 .. c0 + C`` of the unpadded gradient ``gxn (C_in, H, W)``; taps
    in the padding are dropped.

    The rows are a few elements long: the loops index the flat arrays with unsigned offsets, no
    view built per row and no negative-index wraparound per element (0.56-0.79x the time of
    row views, on 7 layers of 2-4 taps a side, strides 1 and 2)."""
    H, W = gxn.shape[1], gxn.shape[2]
    L = dcols.shape[1]
    gf = gxn.reshape(gxn.size)
    df = dcols.reshape(dcols.size)
    usw = np.uint64(sw)
    for c in range(C):
        for a in range(kh):
            for b in range(kw):
                off = b * dw - pl
                lo, hi = tap_cols(off, sw, W, Wo)
                if hi <= lo:
                    continue
                count = hi - lo
                first = np.uint64(((c * kh + a) * kw + b) * L + lo)
                for r in range(nr):
                    ih = (oh0 + r) * sh + a * dh - pt
                    if ih < 0 or ih >= H:
                        continue
                    s0 = first + np.uint64(r * Wo)
                    d0 = np.uint64(((c0 + c) * H + ih) * W + lo * sw + off)  # lo*sw + off >= 0
                    if sw == 1:
                        for i in range(count):
                            gf[d0 + np.uint64(i)] += df[s0 + np.uint64(i)]
                    else:
                        for i in range(count):
                            gf[d0 + np.uint64(i) * usw] += df[s0 + np.uint64(i)]


@njit(parallel=True, cache=True, fastmath=True)
def lowered_forward(x, taps, bias, kh, kw, sh, sw, dh, dw, pt, pl, Wo, R, B, nt, out):
    """``out (N, C_out, Ho*Wo)`` = the convolution of ``x (N, C_in, H, W)`` by ``taps (G,
    C_out/g, C_in/g*kh*kw)`` (+ ``bias``, ``C_out`` entries or none), in units of ``R`` output
    rows by ``B`` output channels of one image and group, handed out in order to the first
    free thread (:mod:`convlayers.kernels.queue`); scratch for ``nt`` threads."""
    N, C_in = x.shape[0], x.shape[1]
    G, Cog, K = taps.shape[0], taps.shape[1], taps.shape[2]
    Cig = C_in // G
    Ho = out.shape[2] // Wo
    nr = (Ho + R - 1) // R
    nb = (Cog + B - 1) // B
    Wp, idx, xbuf, cbuf = _slab_scratch(x, nt, Cig, K, kh, kw, sh, sw, dh, dw, R, Wo)
    obuf = np.empty((nt, B * line_stride(R * Wo, x.itemsize) + CACHE_LINE_BYTES // x.itemsize),
                    dtype=x.dtype)
    has_bias = bias.shape[0] > 0
    zero = typed_zero(out)
    units = N * G * nr * nb
    few = few_columns(Cog, N * Ho * Wo)  # the whole batch's positions: as the merged kernel
    if nt == 1:  # one thread: no parallel region, no queue (2-3 us of a small call)
        for unit in range(units):
            _lowered_unit(x, taps, bias, kh, kw, sh, sw, dh, dw, pt, pl, Wo, R, B, out, unit,
                          Cig, Ho, nr, nb, Wp, idx, xbuf[0], cbuf[0], obuf[0], has_bias, zero,
                          few)
        return
    queue = new_queue()
    for _ in prange(nt):
        while True:
            unit = claim(queue)
            if unit >= units:
                break
            t = numba.get_thread_id()
            _lowered_unit(x, taps, bias, kh, kw, sh, sw, dh, dw, pt, pl, Wo, R, B, out, unit,
                          Cig, Ho, nr, nb, Wp, idx, xbuf[t], cbuf[t], obuf[t], has_bias, zero,
                          few)


@njit(cache=True, fastmath=True, inline="always")
def _lowered_unit(x, taps, bias, kh, kw, sh, sw, dh, dw, pt, pl, Wo, R, B, out, unit, Cig, Ho,
                  nr, nb, Wp, idx, xb, cb, ob, has_bias, zero, few):
    """One unit of :func:`lowered_forward` (image, group, slab of rows, block of channels) in
    one thread's scratch ``xb``, ``cb``, ``ob``; ``few``: its product by dots
    (:func:`convlayers.kernels.simd.gemm_few`)."""
    G, Cog, K = taps.shape[0], taps.shape[1], taps.shape[2]
    n, g, oh0, rows, co0, cos = slab_unit(unit, G, nr, nb, R, Ho, B, Cog)
    L = rows * Wo
    ld = L if few else line_stride(L, x.itemsize)  # the columns' rows, ld apart
    cols = line_aligned(cb)[: K * ld].reshape(K, ld)
    _columns(x[n], g * Cig, Cig, kh, kw, sh, sw, dh, dw, oh0 * sh - pt, pl, rows, Wo, Wp, idx,
             xb, cols)
    o = line_aligned(ob)[: cos * ld].reshape(cos, ld)
    if few:
        gemm_few(taps[g, co0: co0 + cos], cols, o)
    else:
        gemm_tiled_cols(taps[g, co0: co0 + cos], cols, o, ZERO, L)
    for co in range(cos):
        c = g * Cog + co0 + co
        store_rows(out[n, c, oh0 * Wo:], o[co], 1, L, L, bias[c] if has_bias else zero, L)


@njit(parallel=True, cache=True, fastmath=True)
def lowered_forward_merged(x, taps, bias, kh, kw, sh, sw, dh, dw, pt, pl, Wo, P, B, nt, out):
    """:func:`lowered_forward` for batches and maps too small to give every thread its own
    slabs: ``P`` images at a time, their whole columns side by side (``C_in/g*kh*kw x
    P*Ho*Wo``, filled in units of input channels), then one product over all of them in
    units of ``B`` output channels. Slab units made one image's columns once per block of
    channels, and a map of a few output pixels made products a few columns wide; here the
    columns are made once and the products are as wide as ``P`` images. The sums run in the
    same order as :func:`lowered_forward`'s. Scratch for ``nt`` threads."""
    N, C_in = x.shape[0], x.shape[1]
    G, Cog, K = taps.shape[0], taps.shape[1], taps.shape[2]
    Cig = C_in // G
    kk = kh * kw
    L = out.shape[2]
    Ho = L // Wo
    Wp = (Wo - 1) * sw + (kw - 1) * dw + 1
    Hs = (Ho - 1) * sh + (kh - 1) * dh + 1
    idx = slab_index(Ho, Wo, sh, sw, Wp)
    xbuf = np.empty((nt, Hs * Wp), dtype=x.dtype)
    tbuf = np.empty((nt, kk * L), dtype=x.dtype)
    few = few_columns(Cog, N * L)  # by the batch, not the pass: as the slab units decide
    ld = P * L if few else line_stride(P * L, x.itemsize)  # the columns' rows, ld apart
    spare = CACHE_LINE_BYTES // x.itemsize
    cols = line_aligned(np.empty(K * ld + spare, dtype=x.dtype))[: K * ld].reshape(K, ld)
    obuf = line_aligned(np.empty(Cog * ld + spare, dtype=x.dtype))[: Cog * ld].reshape(Cog, ld)
    H, W = x.shape[2], x.shape[3]
    xf, cf = x.reshape(-1), cols.reshape(-1)
    of, obf = out.reshape(-1), obuf.reshape(-1)
    C_out = G * Cog
    nb = (Cog + B - 1) // B
    has_bias = bias.shape[0] > 0
    zero = typed_zero(out)
    for n0 in range(0, N, P):
        p_n = min(P, N - n0)
        span = max(1, Cig // (4 * nt))  # column units: about 4 a thread, each its own rows
        for g in range(G):
            for u in prange((Cig + span - 1) // span):
                t_id = numba.get_thread_id()
                t = tbuf[t_id].reshape(kk, L)
                for c in range(u * span, min(Cig, u * span + span)):
                    if L <= FEW_POSITIONS:  # a few positions an image: the images innermost
                        _columns_across_images(xf, (n0 * C_in + g * Cig + c) * H * W,
                                               C_in * H * W, p_n, H, W, kh, kw, sh, sw, dh,
                                               dw, -pt, -pl, Ho, Wo, cf, c * kk, ld, 1, L,
                                               zero)
                        continue
                    for i in range(p_n):
                        if Wo < 16 or sw > 1:  # narrow or strided rows: a gather by bounds
                            _columns_by_bounds(xf, ((n0 + i) * C_in + g * Cig + c) * H * W, H,
                                               W, kh, kw, sh, sw, dh, dw, -pt, -pl, Ho, Wo, cf,
                                               c * kk, ld, i * L, zero)
                            continue
                        _columns(x[n0 + i], g * Cig + c, 1, kh, kw, sh, sw, dh, dw, -pt, pl, Ho,
                                 Wo, Wp, idx, xbuf[t_id], t)
                        for r in range(kk):
                            copy_row(cols[c * kk + r, i * L: (i + 1) * L], t[r])
            for cb in prange(nb):
                co0 = cb * B
                cos = min(B, Cog - co0)
                if few and p_n == P:  # (a last, short pass of a batch this narrow would
                    # need a scratch cap under its four columns: tiles then)
                    gemm_few(taps[g, co0: co0 + cos], cols, obuf[co0: co0 + cos])
                else:
                    gemm_tiled_cols(taps[g, co0: co0 + cos], cols, obuf[co0: co0 + cos],
                                    ZERO, p_n * L)
                for co in range(cos):  # flat indices: a view per row costs more than L=1
                    c_out = g * Cog + co0 + co
                    b = bias[c_out] if has_bias else zero
                    for i in range(p_n):
                        d = ((n0 + i) * C_out + c_out) * L
                        src = (co0 + co) * ld + i * L
                        for j in range(L):
                            of[d + j] = obf[src + j] + b


@njit(parallel=True, cache=True, fastmath=True)
def lowered_weight_grad(x, gy, G, kh, kw, sh, sw, dh, dw, pt, pl, Wo, R, B, nt, acc, gw):
    """Weight gradient of :func:`lowered_forward`: ``acc[t, g] (C_in/g*kh*kw, C_out/g)`` (zeroed
    here) receives thread ``t``'s sum of ``cols @ gy_slab^T`` over its units (image, group,
    slab of ``R`` output rows, block of ``B`` input channels: its rows of ``acc``); the caller
    sums over threads. ``gy`` is ``(N, C_out, Ho*Wo)``. Scratch for ``nt`` threads.

    With one image in one slab, every unit owns its rows outright: then ``acc`` may have no
    entry (``acc.shape[0] == 0``), and each unit writes its columns of ``gw (G, C_out/g,
    C_in/g*kh*kw)`` itself, without zeroing or adding, in chunks of :data:`OWNED_ROWS` rows
    of its product, each transposed into ``gw`` while in cache (batch 1, small maps: the
    zeroing and the caller's sum over threads' accumulators took most of the time, and then
    the transposed copy of the whole product from memory as long as the product: 207 -> 507
    5x5 on 1x207x11x11, 2.1 ms and 1.0). ``gw`` is not touched otherwise."""
    N, C_in = x.shape[0], x.shape[1]
    K, Cog = acc.shape[2], acc.shape[3]
    Cig = C_in // G
    kk = kh * kw
    Ho = gy.shape[2] // Wo
    nr = (Ho + R - 1) // R
    nb = (Cig + B - 1) // B
    Wp, idx, xbuf, cbuf = _slab_scratch(x, nt, Cig, K, kh, kw, sh, sw, dh, dw, R, Wo)
    tbuf = np.empty((nt, R * Wo * Cog), dtype=x.dtype)
    owned = acc.shape[0] == 0
    if owned:  # each unit's product in chunks of rows, transposed into gw
        dbuf, gwf, table = owned_scratch(gw, nt)
    else:
        acc[:] = 0
    for unit in prange(N * G * nr * nb):
        t = numba.get_thread_id()
        n, g, oh0, rows, c0, cs = slab_unit(unit, G, nr, nb, R, Ho, B, Cig)
        L = rows * Wo
        ld = line_stride(L, x.itemsize)  # the columns' rows, ld apart: the tiles read L of each
        cols = line_aligned(cbuf[t])[: cs * kk * ld].reshape(cs * kk, ld)
        _columns(x[n], g * Cig + c0, cs, kh, kw, sh, sw, dh, dw, oh0 * sh - pt, pl, rows, Wo, Wp,
                 idx, xbuf[t], cols)
        gyt = tbuf[t, : L * Cog].reshape(L, Cog)
        for j in range(L):  # read strided, write contiguous
            row = gyt[j]
            for co in range(Cog):
                row[co] = gy[n, g * Cog + co, oh0 * Wo + j]
        if owned:  # this unit's columns of gw, whole
            for r0 in range(0, cs * kk, OWNED_ROWS):
                r1 = min(cs * kk, r0 + OWNED_ROWS)
                part = dbuf[t, : (r1 - r0) * Cog].reshape(r1 - r0, Cog)
                gemm_tiled_inner(cols[r0:r1], gyt, part, L, FALSE)
                transpose_block(dbuf[t], 0, Cog, r1 - r0, Cog, gwf, table,
                                g * Cog * K + c0 * kk + r0)
        else:
            gemm_tiled_inner(cols, gyt, acc[t, g, c0 * kk: (c0 + cs) * kk], L, TRUE)


#: Rows of a unit's product that :func:`lowered_weight_grad` and
#: :func:`convlayers.kernels.implicit.implicit_weight_grad` write into the gradient at a time,
#: when they write it themselves (the scratch, ``OWNED_ROWS x C_out/g``, stays in L2).
OWNED_ROWS = 64


@njit(cache=True, inline="always")
def owned_scratch(gw, nt):
    """What a weight-gradient kernel whose units own their rows needs to write ``gw (G,
    C_out/g, K)`` itself: per-thread scratch for :data:`OWNED_ROWS` rows of a product, ``gw``
    flat, and each output channel's offset in ``gw[g]`` (the table of
    :func:`convlayers.kernels.simd.transpose_block`)."""
    Cog, K = gw.shape[1], gw.shape[2]
    return (np.empty((nt, OWNED_ROWS * Cog), dtype=gw.dtype), gw.reshape(gw.size),
            np.arange(Cog) * K)


@njit(parallel=True, cache=True, fastmath=True)
def sum_transposed(acc, out):
    """``out[g] (C_out/g, K) = sum over t of acc[t, g] (K, C_out/g)`` transposed (``acc``
    C-contiguous; its first thread's entry becomes the sum): the threads' weight-gradient
    accumulators in the weight's layout, in units of :data:`SUM_ROWS` rows of ``K``, each
    summed in place (in thread order, along whole rows) and then transposed a vector's lanes
    by a vector at a time (:func:`convlayers.kernels.simd.transpose_block`). Blocks of 32x32
    copied one value at a time took longer than the product on batch-1 layers (207 -> 507
    5x5 on 1x207x11x11: 2.9-3.7 ms against the product's 2.4)."""
    nt, G, K, Cog = acc.shape
    nbk = (K + SUM_ROWS - 1) // SUM_ROWS
    table = np.arange(Cog) * K  # each output channel's row of out[g]
    for unit in prange(G * nbk):
        g, k0 = unit // nbk, (unit % nbk) * SUM_ROWS
        k1 = min(K, k0 + SUM_ROWS)
        first = acc[0, g]
        for t in range(1, nt):
            other = acc[t, g]
            for k in range(k0, k1):
                row, add = first[k], other[k]
                for c in range(Cog):
                    row[c] += add[c]
        transpose_block(first.reshape(K * Cog), k0 * Cog, Cog, k1 - k0, Cog,
                        out[g].reshape(Cog * K), table, k0)


#: Rows of ``K`` one unit of :func:`sum_transposed` takes.
SUM_ROWS = 64


@njit(parallel=True, cache=True, fastmath=True)
def lowered_input_grad(gy, taps, kh, kw, sh, sw, dh, dw, pt, pl, Wo, R, B, nt, gx):
    """Input gradient of :func:`lowered_forward` into the unpadded ``gx (N, C_in, H, W)``
    (overwritten), from ``gy (N, C_out, Ho*Wo)`` and ``taps (G, C_out/g, C_in/g*kh*kw)``, in
    units of ``B`` input channels of one image and group (each plane has one owner), ``R``
    output rows at a time; scratch for ``nt`` threads. The product's left operand is a
    transposed view of the taps (a copy of a large weight, transposed, took as long as the
    product: it is read from memory once either way)."""
    N, C_in = gx.shape[0], gx.shape[1]
    G, Cog = taps.shape[0], taps.shape[1]
    Cig = C_in // G
    kk = kh * kw
    nb = (Cig + B - 1) // B
    # the output gradient's rows are copied ld apart (line_stride), the products' rows too
    longest = line_stride(R * Wo, gy.itemsize)
    spare = CACHE_LINE_BYTES // gy.itemsize
    dbuf = np.empty((nt, B * kk * longest + spare), dtype=gy.dtype)
    gbuf = np.empty((nt, Cog * longest + spare), dtype=gy.dtype)
    if nt == 1:  # one thread: no parallel region (as lowered_forward)
        for unit in range(N * G * nb):
            _input_grad_unit(gy, taps, kh, kw, sh, sw, dh, dw, pt, pl, Wo, R, B, gx, unit,
                             dbuf[0], gbuf[0])
        return
    for unit in prange(N * G * nb):
        t = numba.get_thread_id()
        _input_grad_unit(gy, taps, kh, kw, sh, sw, dh, dw, pt, pl, Wo, R, B, gx, unit, dbuf[t],
                         gbuf[t])


@njit(cache=True, fastmath=True, inline="always")
def _input_grad_unit(gy, taps, kh, kw, sh, sw, dh, dw, pt, pl, Wo, R, B, gx, unit, db, gb):
    """One unit of :func:`lowered_input_grad` (image, group, block of input channels) in one
    thread's scratch ``db``, ``gb``."""
    C_in = gx.shape[1]
    G, Cog = taps.shape[0], taps.shape[1]
    Cig = C_in // G
    kk = kh * kw
    Ho = gy.shape[2] // Wo
    nr = (Ho + R - 1) // R
    nb = (Cig + B - 1) // B
    n, g, c0, cs = unit_block(unit, G, nb, B, Cig)
    for c in range(cs):
        gx[n, g * Cig + c0 + c] = 0
    for r in range(nr):
        oh0 = r * R
        rows = min(R, Ho - oh0)
        L = rows * Wo
        ld = L if Ho * Wo == 1 else line_stride(L, gy.itemsize)
        gs = line_aligned(gb)[: Cog * ld].reshape(Cog, ld)
        for co in range(Cog):
            copy_row(gs[co, :L], gy[n, g * Cog + co, oh0 * Wo:])
        dcols = line_aligned(db)[: cs * kk * ld].reshape(cs * kk, ld)
        if Ho * Wo == 1:  # every unit's product one column (a geometry rule, as the forward)
            gemm_few(taps[g, :, c0 * kk: (c0 + cs) * kk].T, gs, dcols)
        else:
            gemm_tiled_cols(taps[g, :, c0 * kk: (c0 + cs) * kk].T, gs, dcols, ZERO, L)
        _col2im(dcols, gx[n], g * Cig + c0, cs, kh, kw, sh, sw, dh, dw, pt, pl, oh0, rows, Wo)


@njit(parallel=True, cache=True)
def _images_side_by_side(gy, G):
    """``(G, C_out/g, N*L)``: each group's output gradient ``gy (N, C_out, L)`` with the images'
    positions side by side (the right operand of the merged gradients' products)."""
    N, C_out, L = gy.shape
    Cog = C_out // G
    gcols = np.empty((G, Cog, N * L), dtype=gy.dtype)
    for g in prange(G):
        for co in range(Cog):
            for i in range(N):
                for j in range(L):
                    gcols[g, co, i * L + j] = gy[i, g * Cog + co, j]
    return gcols


@njit(parallel=True, cache=True, fastmath=True)
def lowered_input_grad_merged(gy, taps, kh, kw, sh, sw, dh, dw, pt, pl, Wo, B, nt, gx):
    """:func:`lowered_input_grad` for maps of a few output positions (the engine's
    ``config.engine.merged_gradient_positions``): a
    unit is (group, block of ``B`` input channels) for every image at once, one product
    ``dcols = taps^T[block] @ gy_g`` over all the images' positions side by side, scattered back
    by :func:`_col2im_across_images`. Per image, the products were ``Ho*Wo`` columns wide
    (one, for a map of one window: one lane of each vector) and their inner dimension
    ``C_out/g``, a few rows; 29 images of 305 channels, 8 output channels, one 5x5 window each,
    took 1.6 ms. Scratch for ``nt`` threads."""
    N, C_in = gx.shape[0], gx.shape[1]
    G = taps.shape[0]
    Cig = C_in // G
    kk = kh * kw
    L = gy.shape[2]
    Ho = L // Wo
    H, W = gx.shape[2], gx.shape[3]
    nb = (Cig + B - 1) // B
    gcols = _images_side_by_side(gy, G)
    dbuf = np.empty((nt, B * kk * N * L), dtype=gy.dtype)
    gf = gx.reshape(gx.size)
    zero = typed_zero(gx)
    for unit in prange(G * nb):
        t = numba.get_thread_id()
        g, _, c0, cs = unit_block(unit, 1, nb, B, Cig)
        dcols = dbuf[t, : cs * kk * N * L].reshape(cs * kk, N * L)
        gemm_tiled(taps[g, :, c0 * kk: (c0 + cs) * kk].T, gcols[g], dcols)
        df = dcols.reshape(dcols.size)
        for c in range(cs):
            plane = (g * Cig + c0 + c) * H * W
            for i in range(N):
                for e in range(H * W):
                    gf[i * C_in * H * W + plane + e] = zero
            _col2im_across_images(df, gf, plane, C_in * H * W, N, H, W, kh, kw, sh, sw, dh, dw,
                                  -pt, -pl, Ho, Wo, c * kk, N * L)


@njit(parallel=True, cache=True, fastmath=True)
def lowered_weight_grad_merged(x, gy, G, kh, kw, sh, sw, dh, dw, pt, pl, Wo, B, nt, gw):
    """Weight gradient of :func:`lowered_forward` into ``gw (G, C_out/g, C_in/g*kh*kw)``
    (overwritten) for maps of a few output positions, as :func:`lowered_input_grad_merged`:
    a unit is (group, block of ``B`` input channels) for every image at once, one product
    ``gy_g @ cols^T`` whose inner dimension is all the images' positions and whose columns
    are the block's taps, written straight into its columns of ``gw`` (no per-thread sums).
    Per image, the units added a product of a few positions onto the whole gradient (a
    rank-one update for a map of one window: 29 images of 305 channels, 8 output channels,
    5x5 windows, took 0.9 ms, memory-bound). Scratch for ``nt`` threads."""
    N, C_in, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    Cog = gw.shape[1]
    Cig = C_in // G
    kk = kh * kw
    L = gy.shape[2]
    Ho = L // Wo
    nb = (Cig + B - 1) // B
    gcols = _images_side_by_side(gy, G)
    cbuf = np.empty((nt, N * L * B * kk), dtype=x.dtype)
    obuf = np.empty((nt, Cog * B * kk), dtype=x.dtype)
    xf = x.reshape(x.size)
    zero = typed_zero(x)
    for unit in prange(G * nb):
        t = numba.get_thread_id()
        g, _, c0, cs = unit_block(unit, 1, nb, B, Cig)
        width = cs * kk
        cols = cbuf[t, : N * L * width].reshape(N * L, width)
        cf = cols.reshape(cols.size)
        for c in range(cs):  # row i*L + position: image i's windows, the block's taps in order
            _columns_across_images(xf, (g * Cig + c0 + c) * H * W, C_in * H * W, N, H, W, kh,
                                   kw, sh, sw, dh, dw, -pt, -pl, Ho, Wo, cf, c * kk, 1, width,
                                   L * width, zero)
        o = obuf[t, : Cog * width].reshape(Cog, width)
        gemm_tiled(gcols[g], cols, o)
        for co in range(Cog):
            for j in range(width):
                gw[g, co, c0 * kk + j] = o[co, j]


@njit(cache=True, fastmath=True)
def _col2im_across_images(df, gf, base, step, images, H, W, kh, kw, sh, sw, dh, dw, ih0, iw0,
                          Ho, Wo, r0, ld):
    """Add rows ``r0 .. r0 + kh*kw`` of the flat columns ``df`` (row length ``ld``, image
    ``i``'s at ``i * Ho*Wo``) onto the ``images`` planes ``step`` apart from ``gf[base:]``,
    the inverse of :func:`_columns_across_images`; taps in the padding are dropped."""
    L = Ho * Wo
    for a in range(kh):
        for b in range(kw):
            row = (r0 + a * kw + b) * ld
            for oh in range(Ho):
                ih = ih0 + oh * sh + a * dh
                if ih < 0 or ih >= H:
                    continue
                for ow in range(Wo):
                    iw = iw0 + ow * sw + b * dw
                    if iw < 0 or iw >= W:
                        continue
                    d = base + ih * W + iw
                    src = row + oh * Wo + ow
                    for i in range(images):
                        gf[d + i * step] += df[src + i * L]


# ----------------------------------------------------------------------------- 1x1 (pointwise)
#
# A 1x1 convolution is one GEMM per image and group over the pixels. The kernels below run all
# of them in one parallel region, a unit being one block of ``B`` pixel columns of one image
# (every group): the register-tiled GEMM of ``simd.py`` over the columns ``j0 .. j1`` of full
# rows, read in place, or, where the rows lie a multiple of 2-4 KiB apart (32x32 and 64x64
# maps), copied first into a panel whose rows are an odd number of cache lines apart: no BLAS
# call, no hand-over between numba's and OpenBLAS's threads. The engine picks ``B`` so that the
# unit's block of the right-hand operand stays in the core's L2 cache.


@njit(parallel=True, cache=True, fastmath=True)
def pointwise(x, taps, bias, B, R, panels, out):
    """``out[n, g] = taps[g] @ x[n, g]`` (+ ``bias``, ``C_out`` entries or none) for
    ``x (N, G, C_in/g, L)``, C-contiguous ``taps (G, C_out/g, C_in/g)``,
    ``out (N, G, C_out/g, L)``, in units of ``B`` columns and ``R`` output rows (a multiple of
    4) of one image: small feature maps at batch 1 have too few column blocks to keep every
    thread busy. The input gradient, with ``taps`` transposed, is :func:`pointwise_strided`.

    ``panels (T, C_in/g * S)``, ``T`` at least the parallel region's threads (each takes row
    ``numba.get_thread_id()``), when not empty: each thread copies its unit's columns of
    ``x[n, g]`` into rows ``S`` elements apart in its panel first, and the tiles read those
    (rows near a multiple of 4 KiB apart evict each other from the L1 and L2 caches)."""
    _pointwise_parallel(x, taps, bias, B, R, panels, out)


@njit(parallel=True, cache=True, fastmath=True)
def pointwise_strided(x, w, strides, bias, B, R, panels, out):
    """:func:`pointwise` with ``taps`` read from the flat ``w`` at the element ``strides``
    (three int64): a transposed weight. Passed as a view, its layout (F for one group, A for
    more) made a kernel of its own, ~25 s to compile on a first call; so, one per dtype. The
    forward keeps its C-contiguous ``taps``: typed strided, its tiles ran 5-12% slower."""
    size = w.itemsize
    taps = np.lib.stride_tricks.as_strided(
        w, shape=(x.shape[1], out.shape[2], x.shape[2]),
        strides=(strides[0] * size, strides[1] * size, strides[2] * size))
    _pointwise_parallel(x, taps, bias, B, R, panels, out)


@njit(cache=True, fastmath=True, inline="always")
def _pointwise_parallel(x, taps, bias, B, R, panels, out):
    """The parallel units of :func:`pointwise` and :func:`pointwise_strided`."""
    N, K, L = x.shape[0], x.shape[2], x.shape[3]
    Cog = taps.shape[1]
    nb = (L + B - 1) // B
    nr = (Cog + R - 1) // R
    # one parallel loop whether the tiles read panels or ``x`` in place, each thread's panel
    # by its id: each loop is a function numba compiles with the unit and the tiles linked in
    # (with a second loop for the panels' units, from a queue, and the index below, a first
    # call's compile of ``pointwise`` took 25.6 s on an empty cache; now 14.9 s). The units
    # run in prange's contiguous chunks: handed out one by one from a queue, the in-place
    # ones ran 1.1-1.5x the time (a thread's consecutive units share their columns, kept in
    # its core's L2).
    offs = np.empty((panels.shape[0], K if panels.shape[1] > 0 else 0), np.int64)
    for unit in prange(N * nb * nr):
        t = numba.get_thread_id()  # row k of its unit's columns at panels[t, offs[t, k] + j]
        # int64: the loop's index is typed int64 and then, in the parallel region, uint64,
        # and each compiled the unit again (5.2 s, not 2.1, of a first call's compile)
        _pointwise_unit(x, taps, bias, B, R, nb, nr, np.int64(unit), panels[t], offs[t], out)


@njit(cache=True, fastmath=True)
def _pointwise_unit(x, taps, bias, B, R, nb, nr, unit, panel, offs, out):
    """One unit of :func:`pointwise` (``panel`` empty: the tiles read ``x`` in place)."""
    K = x.shape[2]
    Cog = taps.shape[1]
    n, blk, r0, rs = unit_block(unit, nb, nr, R, Cog)
    r1 = r0 + rs
    j0 = blk * B
    j1 = min(x.shape[3], j0 + B)
    has_bias = bias.shape[0] > 0
    stride = panel.shape[0] // K
    for g in range(x.shape[1]):
        o = out[n, g, r0:r1]
        if has_bias:  # the rows start as the bias and the tiles add: a pass adding it
            # after them ran unvectorised, as long as a product on few input channels
            for co in range(r1 - r0):
                row = o[co, j0:j1]  # a view from 0: the loop vectorises (copy_row)
                b = bias[g * Cog + r0 + co]
                for j in range(row.shape[0]):
                    row[j] = b
        if stride > 0:
            for k in range(K):
                offs[k] = k * stride - j0
                src = x[n, g, k, j0:j1]
                dst = panel[k * stride:k * stride + (j1 - j0)]
                for j in range(j1 - j0):
                    dst[j] = src[j]
            gemm_indirect_cols(taps[g, r0:r1], panel, offs, o, j0, j1, has_bias)
        elif has_bias:
            gemm_tiled_cols_add(taps[g, r0:r1], x[n, g], o, j0, j1)
        elif nb == 1:
            gemm_tiled(taps[g, r0:r1], x[n, g], o)
        else:
            gemm_tiled_cols(taps[g, r0:r1], x[n, g], o, j0, j1)


#: :func:`pointwise` on the calling thread (small calls: no parallel region).
pointwise_serial = serial_twin(pointwise)


#: Planes from which :func:`subsample` and :func:`scatter_strided` take a plane a unit (fewer:
#: a row a unit, so that every thread has work).
PHASE_PLANES = 16


def subsample(x, r0, c0, sh, sw, out):
    """``out[n, c, i, j] = x[n, c, r0 + i*sh, c0 + j*sw]`` for ``out (N, C, Ho, Wo)``: one
    stride phase of a batch of planes, on every thread (NumPy's strided copy runs on one).
    :func:`scatter_strided` writes one back; both are :func:`_phase_planes`."""
    _phase_planes(x, r0, c0, sh, sw, out, True)


def scatter_strided(src, r0, c0, sh, sw, dst):
    """``dst[n, c, r0 + i*sh, c0 + j*sw] = src[n, c, i, j]`` for ``src (N, C, Hs, Ws)``: one
    stride phase written into a batch of planes (:func:`_phase_planes`)."""
    _phase_planes(dst, r0, c0, sh, sw, src, False)


@njit(parallel=True, cache=True)
def _phase_planes(planes, r0, c0, sh, sw, phase, take):
    """Between ``planes (N, C, H, W)`` and one stride phase of them, ``phase (N, C, Hp, Wp)``
    (``phase[n, c, i, j]`` is ``planes[n, c, r0 + i*sh, c0 + j*sw]``): ``take`` copies the
    phase out, otherwise writes it back.

    A unit is a plane (a row where there are fewer than :data:`PHASE_PLANES` planes), the rows
    found by counting, not dividing, and each row copied through unsigned offsets with the
    stride a literal where it is 1-3: a row a unit, with three divisions a row and a signed
    strided index (numba's wraparound check kept it scalar), took 0.42 ms to take 390k values
    of 456 planes 95 x 18 (one column in two); now 0.12."""
    N, C, Hp = phase.shape[0], phase.shape[1], phase.shape[2]
    count = N * C
    by_rows = count < PHASE_PLANES
    units = count * Hp if by_rows else count
    for unit in prange(units):
        k = np.int64(unit)  # the parallel index may be unsigned: keep the arithmetic signed
        q, i0, i1 = k, 0, Hp
        if by_rows:
            q, i0, i1 = k // Hp, k % Hp, k % Hp + 1
        n, c = q // C, q % C
        for i in range(i0, i1):
            _phase_copy(planes[n, c, r0 + i * sh], c0, sw, phase[n, c, i], take)


@njit(cache=True, inline="always")
def _phase_copy(row, c0, sw, phase, take):
    """``phase[j] = row[c0 + j*sw]`` (``take``) or the reverse, for ``j < len(phase)``:
    unsigned offsets, the stride a constant where it is 1-3 (see :func:`subsample`)."""
    u = np.uint64
    if sw == 1:
        _strided_copy(row, u(c0), u(1), phase, take)
    elif sw == 2:
        _strided_copy(row, u(c0), u(2), phase, take)
    elif sw == 3:
        _strided_copy(row, u(c0), u(3), phase, take)
    else:
        _strided_copy(row, u(c0), u(sw), phase, take)


@njit(cache=True, inline="always")
def _strided_copy(row, start, step, phase, take):
    """:func:`_phase_copy`'s loops, inlined (numba's IR) where it calls them, so that a
    constant ``step`` reaches LLVM as one and the loop vectorises."""
    m = np.uint64(phase.shape[0])
    if take:
        for j in range(m):
            phase[j] = row[start + step * j]
    else:
        for j in range(m):
            row[start + step * j] = phase[j]


@njit(parallel=True, cache=True)
def pointwise_few(x, w, bias, sh, sw, pt, pl, R, out):
    """A 1x1 convolution with few channels per group, summed in place: ``out[n, g*Cog + o,
    i, j] = bias[g*Cog + o] + sum_c w[g*Cog + o, c] * x[n, g*Cig + c, i*sh - pt, j*sw - pl]``
    for ``x (N, C_in, H, W)``, ``w (C_out, Cig)``, ``out (N, C_out, Ho, Wo)``, ``bias`` ``C_out``
    entries or none (zero), ``G = C_in / Cig`` groups of ``Cog = C_out / G`` outputs (a
    depthwise one: ``Cig = 1``, ``Cog`` its multiplier). Outputs whose tap lies in the padding
    are the bias alone, as torch's direct convolution skips such taps. Units of one output
    plane's ``R`` rows; each output row is the bias plus one product row per input channel,
    added in order, along the row (vectorised where the stride is 1). No fastmath: an inf or
    NaN goes where torch's goes, and the bias (or zero) comes first, so a sum of ``-0.0`` is
    ``0.0`` as in torch's sums."""
    N, C_in, H, W = x.shape
    C_out, Cig = w.shape
    Ho, Wo = out.shape[2], out.shape[3]
    Cog = C_out // (C_in // Cig)
    nr = (Ho + R - 1) // R
    has_bias = bias.shape[0] > 0
    zero = typed_zero(out)
    # the output columns whose tap is inside the input
    lo = min(Wo, (pl + sw - 1) // sw)
    hi = max(lo, min(Wo, (W - 1 + pl) // sw + 1))
    base = lo * sw - pl
    for unit in prange(N * C_out * nr):
        plane, r = unit // nr, unit % nr
        n, co = plane // C_out, plane % C_out
        c0 = (co // Cog) * Cig
        b = bias[co] if has_bias else zero
        dst = out[n, co]
        i0, i1 = r * R, min(Ho, r * R + R)
        if sh == 1 and sw == 1 and pl == 0 and Wo == W and i0 >= pt and i1 - pt <= H:
            # whole rows, one after another: one flat loop over them per input channel
            flat_dst = dst[i0:i1].reshape(-1)
            for c in range(Cig):
                a = w[co, c]
                flat_src = x[n, c0 + c, i0 - pt: i1 - pt].reshape(-1)
                if c == 0:
                    for j in range(flat_dst.shape[0]):
                        flat_dst[j] = b + a * flat_src[j]
                else:
                    for j in range(flat_dst.shape[0]):
                        flat_dst[j] += a * flat_src[j]
            continue
        for i in range(i0, i1):
            ih = i * sh - pt
            row = dst[i]
            if ih < 0 or ih >= H:
                for j in range(Wo):
                    row[j] = b
                continue
            for j in range(lo):
                row[j] = b
            for j in range(hi, Wo):
                row[j] = b
            inner = row[lo:hi]
            for c in range(Cig):
                a = w[co, c]
                if sw == 1:  # row views: a loop that vectorises (2-D indexing did not)
                    part = x[n, c0 + c, ih, base: base + hi - lo]
                    if c == 0:
                        for j in range(hi - lo):
                            inner[j] = b + a * part[j]
                    else:
                        for j in range(hi - lo):
                            inner[j] += a * part[j]
                else:
                    src = x[n, c0 + c, ih]
                    if c == 0:
                        for j in range(hi - lo):
                            inner[j] = b + a * src[base + j * sw]
                    else:
                        for j in range(hi - lo):
                            inner[j] += a * src[base + j * sw]


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def pointwise_few_weight_grad(x, gy, out):
    """The weight gradient of :func:`pointwise_few`: ``out[co, c] = sum over images and
    pixels of gy[n, co] * x[n, g*Cig + c]`` for ``x (N, C_in, L)`` (the pixels the 1x1 taps
    read), ``gy (N, C_out, L)``, ``out (C_out, Cig)``: one dot product per weight, a unit
    each. ``reassoc`` lets the sums vectorise (partial sums per lane); without the no-NaN and
    no-inf flags an inf or NaN still reaches its weight."""
    N, C_out, L = gy.shape
    Cig = out.shape[1]
    Cog = C_out // (x.shape[1] // Cig)
    for unit in prange(C_out * Cig):
        co, c = unit // Cig, unit % Cig
        ci = (co // Cog) * Cig + c
        total = typed_zero(out)
        for n in range(N):
            a = gy[n, co]
            b = x[n, ci]
            for j in range(L):
                total += a[j] * b[j]
        out[co, c] = total


@njit(parallel=True, cache=True, fastmath=True)
def pointwise_weight_grad_tiled(x, gy, B, acc):
    """:func:`pointwise_weight_grad` on the register-tiled GEMM, for units of few columns:
    ``acc[t, g]`` (``acc (threads, G, C_in/g, C_out/g)``, overwritten: the gradient
    transposed) receives thread ``t``'s sum of ``x[n, g][:, blk] @ gy[n, g][:, blk].T``, the
    unit's columns of ``gy`` transposed into scratch first (``C_out/g`` values per column
    against ``C_in/g * C_out/g`` multiply-adds), a square block of a vector's lanes at a time
    in registers (:func:`convlayers.kernels.simd.transpose_block`; element by element, the
    scattered stores took as long as the product on 12x12 maps: 0.49-0.84x the time on 6 of
    8 MobileNet-type layers, none slower). The dot products of :func:`pointwise_weight_grad`
    run along the unit's columns: 9 on a 3x3 map. ``gy`` is C-contiguous."""
    N, G, L = x.shape[0], x.shape[1], x.shape[3]
    Cog = gy.shape[2]
    nb = (L + B - 1) // B
    tbuf = np.empty((acc.shape[0], B * Cog), dtype=x.dtype)
    rows = np.arange(B, dtype=np.int64) * Cog  # column j of a unit -> its row of the scratch
    gyf = gy.reshape(gy.size)
    acc[:] = 0
    for unit in prange(N * nb):
        t = numba.get_thread_id()
        n, _, j0, cols = unit_block(unit, 1, nb, B, L)
        tf = tbuf[t]
        for g in range(G):
            transpose_block(gyf, (n * G + g) * Cog * L + j0, L, Cog, cols, tf, rows, 0)
            gemm_tiled_add(x[n, g][:, j0:j0 + cols], tf[: cols * Cog].reshape(cols, Cog),
                           acc[t, g])


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
        n, _, j0, cols = unit_block(unit, 1, nb, B, L)
        for g in range(G):
            gemm_nt_cols_add(gy[n, g], x[n, g], acc[t, g], j0, j0 + cols)
