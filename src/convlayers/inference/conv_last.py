"""Dense convolutions of a plan's channels-last (NHWC) segments: a direct convolution whose
register tiles keep their accumulators across every tap (:func:`convlayers.kernels.simd.conv_band`).

In NHWC a tap of a window is, for each output pixel, one contiguous row of input channels, so a
``kh x kw`` convolution is a sum over taps of GEMMs ``X_t (pixels, C_in) @ W_t (C_in, C_out)``
whose left rows are read in place from a zero-padded copy of the input (offsets, not copies:
no im2col matrix). A tile of 8 pixels by 48 output channels (AVX-512) runs through all taps
and a slab of input channels before it stores anything; the bias, residual and activation
finish each unit's block while it is in cache. This is the indirect GEMM of XNNPACK, and the
shape of ONNX Runtime's NCHWc direct convolution (its blocks of channels are our vectors).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from convlayers.inference.channels_last import _finish_row
from convlayers.kernels.queue import claim, new_queue
from convlayers.kernels.simd import (
    CONV_ROWS,
    NC,
    VECTOR_BYTES,
    band_pixels,
    conv_band_taps,
    conv_band_taps_onto,
    conv_rows,
    conv_slab,
    conv_strip,
    interleave3,
    transpose_block,
)

__all__ = ["MAX_BAND_TILES", "OUT_BLOCK_BYTES", "UNIT_COST", "WIDE_SLACK", "dense",
           "dense_blocks", "dense_units", "inside_runs", "max_pool", "pack_rows_transposed",
           "pad_channels_last",
           "pad_to_channels_last", "pixel_offsets", "row_taps", "rows_to_channels_first",
           "tap_offsets", "tap_ranges", "window_taps"]


@njit(parallel=True, cache=True)
def pad_channels_last(x, pt, pl, out):
    """``out (N, Hp, Wp, C)``: ``x (N, H, W, C)`` at row ``pt``, column ``pl``, zeros around."""
    n_img, h, w = x.shape[0], x.shape[1], x.shape[2]
    hp = out.shape[1]
    for unit in prange(n_img * hp):
        n, y = unit // hp, unit % hp
        row = out[n, y]
        iy = y - pt
        if iy < 0 or iy >= h:
            row[:, :] = 0
            continue
        row[:pl, :] = 0
        row[pl + w:, :] = 0
        row[pl:pl + w, :] = x[n, iy]


#: Input channels from which :func:`pad_to_channels_last` copies by in-register transposes
#: (fewer leave most of each transposed vector's lanes masked off).
TRANSPOSED_CHANNELS = 8


@njit(parallel=True, cache=True)
def pad_to_channels_last(x, pt, pl, out):
    """``out (N, Hp, Wp, C)``: the NCHW ``x (N, C, H, W)`` transposed to channels-last at row
    ``pt``, column ``pl``, zeros around (a stem's input: the image as it comes)."""
    n_img, c, h, w = x.shape
    hp = out.shape[1]
    xf = np.ascontiguousarray(x).reshape(x.size)
    columns = np.arange(w, dtype=np.int64) * c  # each pixel's place in a row of out
    for unit in prange(n_img * hp):
        n, y = unit // hp, unit % hp
        row = out[n, y]
        iy = y - pt
        if iy < 0 or iy >= h:
            row[:, :] = 0
            continue
        row[:pl, :] = 0
        row[pl + w:, :] = 0
        # flat indices: a 2-D store per element, after zeroing the whole row, took 3x longer
        # (ResNet's stem, 3 x 224 x 224: 109 us, now 38)
        flat = row.reshape(row.size)
        if c >= TRANSPOSED_CHANNELS:  # blocks of vectors transposed in registers
            transpose_block(xf, (n * c * h + iy) * w, h * w, c, w, flat, columns, pl * c)
            continue
        if c == 3:  # an RGB image: a vector of pixels at a time, by shuffles of whole
            # vectors (3 x 224 x 224: 28 us, against 70 for a store per value)
            r, g, b = x[n, 0, iy], x[n, 1, iy], x[n, 2, iy]
            at = pl * 3
            lanes = VECTOR_BYTES // flat.itemsize
            end = w - w % lanes
            for ix in range(0, end, lanes):
                interleave3(r, g, b, ix, flat, at + 3 * ix)
            for ix in range(end, w):
                flat[at + 3 * ix] = r[ix]
                flat[at + 3 * ix + 1] = g[ix]
                flat[at + 3 * ix + 2] = b[ix]
            continue
        for ch in range(c):
            src = x[n, ch, iy]
            for ix in range(w):
                flat[(pl + ix) * c + ch] = src[ix]


def pixel_offsets(n: int, ho: int, wo: int, hp: int, wp: int, c: int, sh: int,
                  sw: int) -> np.ndarray:
    """Each output pixel's window start in a flat ``(n, hp, wp, c)`` input (int64, ``n*ho*wo``)."""
    img = np.arange(n, dtype=np.int64)[:, None, None] * (hp * wp * c)
    rows = np.arange(ho, dtype=np.int64)[None, :, None] * (sh * wp * c)
    cols = np.arange(wo, dtype=np.int64)[None, None, :] * (sw * c)
    return np.ascontiguousarray((img + rows + cols).reshape(-1))


def tap_offsets(kh: int, kw: int, dh: int, dw: int, wp: int, c: int) -> np.ndarray:
    """Tap ``i*kw + j``'s offset from a window's start in a flat input of ``wp`` columns, ``c``
    channels (int64)."""
    i = np.arange(kh, dtype=np.int64)[:, None] * (dh * wp * c)
    j = np.arange(kw, dtype=np.int64)[None, :] * (dw * c)
    return np.ascontiguousarray((i + j).reshape(-1))


def window_taps(kh: int, kw: int, dh: int, dw: int, wp: int, c: int) -> np.ndarray:
    """The taps :func:`dense` sums for a ``kh x kw`` window: where columns are not dilated
    (``dw == 1``) a kernel row's taps are one run of ``kw*c`` values of the padded input, so
    each kernel row is one tap of ``kw*c`` channels (the packed weights' rows are in that
    order) and the tiles' sums run ``kw`` times longer between taps (ResNet's 3 -> 64 7x7
    stem: 7 taps of 21 values, not 49 of 3; 0.90 -> 0.87 ms at batch 1); else
    :func:`tap_offsets`."""
    if dw == 1:
        return tap_offsets(kh, 1, dh, 1, wp, c)
    return tap_offsets(kh, kw, dh, dw, wp, c)


def row_taps(ho: int, h: int, pt: int, sh: int, kh: int, dh: int, per_row: int) -> np.ndarray:
    """``(ho, 2)`` int64: for each output row, the taps ``t0 <= t < t1`` of :func:`dense`
    whose kernel rows read the input, not only the zero padding, with ``per_row`` taps a
    kernel row (``kw``, or 1 where :func:`window_taps` made a row one tap). A row of windows
    at ``y`` reads padded rows ``y*sh + i*dh`` for kernel row ``i``, the input's rows being
    ``pt .. pt+h-1`` of the padded copy. A row whose windows read no input row keeps one
    tap (its sums are zeros either way).

    Leaving those taps out changes no sum: each adds ``0 * w`` (torch's direct
    convolutions skip them too). It spares much where the padding is wide against the map:
    1x344x11x11 -> 49, 7x7, dilation 3, padding 9 reads input on 40% of its kernel rows.
    """
    lo, hi = tap_ranges(ho, h, kh, sh, pt, dh)
    lo = np.minimum(lo, kh - 1)
    hi = np.maximum(hi, lo + 1)
    return np.ascontiguousarray(np.stack([lo, hi], axis=1) * per_row)


def tap_ranges(n_out: int, size: int, k: int, s: int, p: int,
               d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(j0, j1)`` int64 arrays: for each of ``n_out`` outputs along one axis, the taps
    ``j0 <= j < j1`` its window reads inside the input (output ``o`` reads ``o*s - p + j*d``
    at tap ``j``; ``j0 == j1`` when every tap is on the padding). The one formula behind
    :func:`row_taps` and :func:`inside_runs`.

    >>> tap_ranges(4, 4, 3, 1, 1, 1)  # 3 taps, padding 1: the first and last miss one
    (array([1, 0, 0, 0]), array([3, 3, 3, 2]))
    """
    start = np.arange(n_out, dtype=np.int64) * s - p
    j0 = np.clip(-(start // d), 0, k)  # ceil(-start / d)
    j1 = np.maximum(j0, np.clip(-((start - size) // d), 0, k))  # ceil((size - start) / d)
    return j0, j1


@njit(cache=True)
def _band_taps(row_taps, a, e, wo):
    """The taps pixels ``a .. e`` sum between them: from the least first to the greatest last
    of their output rows' (:func:`row_taps`, ``wo`` pixels a row)."""
    ho = row_taps.shape[0]
    t0, t1 = row_taps[(a // wo) % ho, 0], row_taps[(a // wo) % ho, 1]
    for gy in range(a // wo + 1, (e - 1) // wo + 1):
        t0 = min(t0, row_taps[gy % ho, 0])
        t1 = max(t1, row_taps[gy % ho, 1])
    return t0, t1


@njit(parallel=True, cache=True)  # no fastmath: SiLU's exp overflows to inf for v < -88
def dense(xf, w, offs, toffs, row_taps, wo, bias, res, has_res, act, rows, cols, threads, out):
    """``out = act(conv + bias (+ res))`` for a flat padded channels-last input ``xf``, weights
    ``w (kh*kw*C_in, C_out)`` (row ``(i*kw + j)*C_in + ci``) packed by
    :func:`convlayers.kernels.simd.pack_conv_weights`, ``out, res (P, C_out)`` (``res`` read
    only when ``has_res``), in units of ``rows`` pixels by ``cols`` channels (a multiple of
    the packed strips' width), handed out in order to the first free of ``threads`` threads
    (:mod:`convlayers.kernels.queue`). Output pixel ``p`` is in row ``(p // wo) % ho`` of
    its image, whose windows sum the taps ``row_taps[y, 0] .. row_taps[y, 1]`` only
    (:func:`row_taps`, ``ho = row_taps.shape[0]``): each band of a tile's pixels sums the
    taps of all its rows (:func:`_band_taps`), and consecutive bands that sum the same taps
    run in one call. Bands stay whole, as without the ranges: cut at the rows whose taps
    differ, a 9-pixel row ran a tile and a half-empty one, which cost as much as the
    skipped taps saved (1x330x9x9 -> 80, 7x7, padding 3).

    In a unit: blocks of ``NC`` columns, slabs of input channels whose weight panel stays in
    L2 (:func:`convlayers.kernels.simd.conv_slab`), bands of a tile's pixels; a band is
    finished (bias, residual, activation) right after its last slab, while in L1."""
    p_all, c_all = out.shape
    c_in = w.shape[0] // ((c_all + w.shape[1] - 1) // w.shape[1]) // toffs.size
    lanes = VECTOR_BYTES // xf.itemsize
    nr = (p_all + rows - 1) // rows
    nc = (c_all + cols - 1) // cols
    queue = new_queue()
    for _ in prange(threads):
        while True:
            unit = claim(queue)
            if unit >= nr * nc:
                break
            r0 = (unit // nc) * rows
            r1 = min(p_all, r0 + rows)
            j0 = (unit % nc) * cols
            j1 = min(c_all, j0 + cols)
            kc = conv_slab(xf, toffs.size, j1 - j0)
            # blocks of NC columns; a last part of at most two vectors past whole strips is a
            # block of its own, on tall tiles (144 channels: 128 on wide tiles, 16 on 12 x 1)
            tail = (j1 - j0) % w.shape[1]
            split = j1 - tail if 0 < tail <= 2 * lanes and j1 - tail > j0 else j1
            blocks = (split - j0 + NC - 1) // NC
            for block in range(blocks + (1 if split < j1 else 0)):
                c0 = j0 + block * NC if block < blocks else split
                c1 = min(split, c0 + NC) if block < blocks else j1
                b = bias[c0:c1]
                for k0 in range(0, c_in, kc):
                    k1 = min(c_in, k0 + kc)
                    # the last slab's tiles finish their sums in registers (ReLU, ReLU6 or none);
                    # other activations are finished per band, while it is in L1
                    finish = (act | (8 if has_res else 0)) if k1 == c_in and act <= 2 else -1
                    # one call for the unit's rows, unless bands are finished here
                    tall = conv_rows(xf, c1 - c0) if k1 == c_in and finish < 0 else r1 - r0
                    step = band_pixels(c1 - c0, lanes)  # conv_band_taps's bands
                    a = r0
                    while a < r1:  # bands that sum the same taps, in one call
                        e = min(r1, a + step)
                        t0, t1 = _band_taps(row_taps, a, e, wo)
                        while e < r1:
                            u0, u1 = _band_taps(row_taps, e, min(r1, e + step), wo)
                            if u0 != t0 or u1 != t1:
                                break
                            e = min(r1, e + step)
                        for p in range(a, e, tall):
                            band = min(tall, e - p)
                            conv_band_taps(xf, w, out, offs, toffs, t0, t1, p, band, c0, c1,
                                           k0, k1, bias, res, finish)
                            if k1 == c_in and finish < 0:
                                for q in range(p, p + band):
                                    _finish_row(out[q, c0:c1], b, res[q, c0:c1], has_res, act)
                        a = e


def inside_runs(n_out: int, size: int, k: int, s: int, p: int, d: int) -> list[tuple[int, int, int, int]]:
    """Runs ``(o0, o1, j0, j1)`` of consecutive outputs along one axis whose windows have the
    same taps inside the input: output ``o`` reads input ``o*s - p + j*d`` at tap ``j``, inside
    for ``j0 <= j < j1`` (``j0 == j1`` when every tap is on the padding)."""
    runs: list[tuple[int, int, int, int]] = []
    for o, (j0, j1) in enumerate(zip(*(a.tolist() for a in tap_ranges(n_out, size, k, s, p, d)),
                                     strict=True)):
        if runs and runs[-1][1] == o and runs[-1][2:] == (j0, j1):
            runs[-1] = (runs[-1][0], o + 1, j0, j1)
        else:
            runs.append((o, o + 1, j0, j1))
    return runs


@njit(parallel=True, cache=True)
def dense_blocks(xf, w, offs, toffs, kw, blocks, units, bias, threads, out):
    """``out = conv + bias`` (no residual, no activation), each output pixel summing only the
    taps its block's windows read inside the input, not the zero padding: ``offs`` and ``out``
    list the pixels block by block, each ``blocks[b] = (p0, p1, i0, i1, j0, j1)`` pixels that
    sum kernel rows ``i0 .. i1`` by columns ``j0 .. j1`` (``toffs``: every tap,
    :func:`tap_offsets`; each kernel row's columns are a range of them, a part): a class of
    pixels whose windows share those taps, or a few neighbouring pixels (a tile's worth, rows
    by columns of one image) summing the union of theirs. Each unit ``units[u] = (b0, b1, c0,
    c1)`` runs blocks ``b0 .. b1`` by output channels ``c0 .. c1`` (a multiple of the packed
    strips' width) kernel row by kernel row: a row's panel of packed weights stays in L2 while
    every block of the unit sums it (per block of a few pixels, the weights would each come
    from memory again). Each block's sums are stored between its parts and added onto
    (:func:`convlayers.kernels.simd.conv_band_taps_onto`); a block with no tap inside is its
    bias. Units are handed out in order to the first free of ``threads`` threads."""
    c_all = out.shape[1]
    c_in = w.shape[0] // ((c_all + w.shape[1] - 1) // w.shape[1]) // toffs.size
    kh = toffs.size // kw
    queue = new_queue()
    for _ in prange(threads):
        while True:
            u = claim(queue)
            if u >= units.shape[0]:
                break
            b0, b1, j0c, j1c = units[u, 0], units[u, 1], units[u, 2], units[u, 3]
            widest = 1  # the most taps a part of the unit sums: its slabs' panel
            for b in range(b0, b1):
                if blocks[b, 3] <= blocks[b, 2] or blocks[b, 5] <= blocks[b, 4]:
                    for q in range(blocks[b, 0], blocks[b, 1]):
                        out[q, j0c:j1c] = bias[j0c:j1c]
                widest = max(widest, blocks[b, 5] - blocks[b, 4])
            kc = conv_slab(xf, widest, j1c - j0c)
            for c0 in range(j0c, j1c, NC):
                c1 = min(j1c, c0 + NC)
                for i in range(kh):
                    for k0 in range(0, c_in, kc):
                        k1 = min(c_in, k0 + kc)
                        for b in range(b0, b1):
                            p0, p1 = blocks[b, 0], blocks[b, 1]
                            i0, i1, j0, j1 = blocks[b, 2], blocks[b, 3], blocks[b, 4], blocks[b, 5]
                            if i < i0 or i >= i1 or j1 <= j0:
                                continue
                            add = 0 if i == i0 and k0 == 0 else 1
                            finish = 0 if i == i1 - 1 and k1 == c_in else -1
                            conv_band_taps_onto(xf, w, out, offs, toffs, i * kw + j0,
                                                i * kw + j1, p0, p1 - p0, c0, c1, k0, k1, bias,
                                                out, finish, add)


@njit(parallel=True, cache=True)
def pack_rows_transposed(w, out, chunk):
    """``out[q, r] = w[r, q]`` for a C-contiguous ``w (R, K)`` and ``out (K, >= R)`` (its
    columns past ``R`` untouched), in units of ``chunk`` columns of ``w``, a vector's lanes of
    rows by a vector of columns at a time (:func:`convlayers.kernels.simd.transpose_block`):
    a dense convolution's weights ``(C_out, C_in*kh*kw)`` as the rows of one strip, in their
    own column order (the engine's ``direct-planar`` strategy)."""
    r_all, k_all = w.shape
    width = out.shape[1]
    wf = w.reshape(w.size)
    of = out.reshape(out.size)
    table = np.arange(k_all, dtype=np.int64) * width
    for unit in prange((k_all + chunk - 1) // chunk):
        q0 = unit * chunk
        q1 = min(k_all, q0 + chunk)
        transpose_block(wf, q0, k_all, r_all, q1 - q0, of, table[q0:q1], 0)


@njit(parallel=True, cache=True)
def rows_to_channels_first(rows, src, hw, out):
    """``out (N, C, H, W)`` from ``rows (P, C)``, pixel ``p`` of the ``N*H*W`` in NCHW order
    being row ``src[p]`` (``hw = H*W``): :func:`dense_blocks`'s block order back. Each
    thread writes whole planes of one image and channel in order (a loop over the rows wrote
    each row's channels a plane apart: 70 us for 6x229x7x7, 13 this way)."""
    c = rows.shape[1]
    flat = out.reshape(out.shape[0], c, hw)
    for plane in prange(out.shape[0] * c):
        n, ch = plane // c, plane % c
        dst = flat[n, ch]
        for r in range(hw):
            dst[r] = rows[src[n * hw + r], ch]


#: A unit's fixed cost (handing it out, its first loads), in tiles of one strip.
UNIT_COST = 0.25
#: Fraction over the cheapest units' cost within which :func:`dense_units` takes the split
#: that reads the fewest bytes.
WIDE_SLACK = 0.03
#: Pixel rows (in tiles) one unit covers at most.
MAX_BAND_TILES = 43
#: Bytes of a unit's output block at most: with many input channels each slab of them adds
#: onto the whole block, which stays in L2 beside the weight panel (ResNet's 256 -> 512 3x3
#: on 7x7 maps at batch 16: 70 GMAC/s in blocks of 258 pixels by 256 channels, 85 in blocks
#: of 96 by 256).
OUT_BLOCK_BYTES = 128 * 1024
#: A thread's share of a layer's weights above which they do not stay in its L2 cache (2 MiB
#: a core here, beside the bands' inputs and outputs) from one band of pixels to the next:
#: each band of such a layer streams its columns' weights from L3 or memory again.
WEIGHTS_STAY_BYTES = 1024 * 1024


def dense_units(pixels: int, channels: int, threads: int, itemsize: int = 4, *,
                weight_bytes: int) -> tuple[int, int]:
    """``(rows, cols)`` of :func:`dense`'s units: bands of whole tiles of pixels (at most
    :data:`MAX_BAND_TILES`, and :data:`OUT_BLOCK_BYTES` of output) by whole strips of output
    channels (up to all of them while the weights stay in the threads' L2 caches, else at
    most a block of ``NC`` columns; a cap of four strips split AVX2's 96-channel rows in two,
    and the halves' writes to a 12544-pixel output ran 0.79 ms against 0.48 in whole rows).

    Each candidate is costed in tiles of one strip: the units handed out in order to the
    least-loaded thread (the kernel's queue, :mod:`convlayers.kernels.queue`), the most loaded
    thread's work plus :data:`UNIT_COST` per unit it runs. The cheapest wins (ties: fewer units). A
    7x7 map at batch 1 (49 pixels, 9 tiles) by 512 channels (8 strips) splits into 8 units of
    one strip, 4 per thread, where fixed bands of three strips had made 9 units of uneven
    work.

    ``weight_bytes`` (the packed weights' size) tells whether a band's weights stay in cache
    for the next band (:data:`WEIGHTS_STAY_BYTES`). When they do not, and they are the
    larger operand (more output channels than pixels), each band of pixels counts as a read
    of all its columns' weights. ResNet-50's 512 -> 2048 1x1 on 7x7 maps at batch 1 (4 MiB
    of weights) had taken two bands of 30 pixels by 192 channels, each streaming all the
    weights: 0.70-0.74 ms in the compiled model against 0.63-0.67 in one band of all 49
    pixels by 128 channels (1024 -> 2048 at stride 2: 1.44 against 1.21). On larger maps,
    where the inputs are the larger operand, fewer and wider bands ran slower: ResNet-18's
    256 -> 512 3x3 stride 2 at batch 16 (784 pixels), 8.1 ms in bands of 252 pixels by 128
    channels against 7.1 in bands of 132 by 192.

    Examples
    --------
    >>> dense_units(3136, 256, 2, weight_bytes=64 * 256 * 4)  # 64 -> 256 1x1 on 56x56
    (120, 256)
    >>> dense_units(49, 2048, 2, weight_bytes=512 * 2048 * 4)  # 512 -> 2048 1x1 on 7x7
    (54, 128)
    """
    import heapq

    strip = conv_strip() // itemsize
    lanes = VECTOR_BYTES // itemsize
    tile_rows = band_pixels(channels, lanes)
    tiles = -(-pixels // tile_rows)
    strips = -(-channels // strip)
    candidates: list[tuple[float, int, int, int]] = []
    # weights that stay in the threads' L2 caches: a unit may span all the columns (its
    # blocks of NC in turn), so each band's input is read once (ResNet-50's 64 -> 256 1x1s
    # with their residual on 56x56 maps at batch 1: 0.47-0.54 ms in units of all 256
    # channels against 0.60-0.62 in units of 128); larger weights keep units of at most NC
    # columns (512 -> 512 3x3 stride 2 on 784 pixels: 15.5 ms in bands of 36 pixels by all
    # 512 channels, against 14.4 in bands of 132 by 192)
    weights_stay = weight_bytes <= WEIGHTS_STAY_BYTES * threads
    widest = strips if weights_stay else min(strips, max(1, NC // strip))
    for cs in range(1, widest + 1):
        col_units = -(-strips // cs)
        # a unit's work in strips, counted by the vectors its columns fill (96 channels are a
        # strip and a half: costed as two whole strips, 576 -> 96 on 14x14 ran 88 us in two
        # column units of 64 and 32 channels, one thread doing two thirds; 70 us in two
        # bands of all 96)
        col_work = [-(-min(cs * strip, channels - j * cs * strip) // lanes) * lanes / strip
                    for j in range(col_units)]
        most = max(1, min(MAX_BAND_TILES * CONV_ROWS // tile_rows,
                          OUT_BLOCK_BYTES // (tile_rows * cs * strip * itemsize)))
        seen = set()
        for bands in range(1, tiles + 1):
            rt = min(most, -(-tiles // bands))
            if rt in seen:
                continue
            seen.add(rt)
            row_units = -(-tiles // rt)
            if row_units * col_units > 64 * threads and len(seen) > 1:
                break  # finer bands only add units (the first, capped band is always costed)
            loads = [0.0] * threads
            for i in range(row_units):
                rows = min(rt, tiles - i * rt)
                for work in col_work:
                    heapq.heapreplace(loads, loads[0] + rows * work + UNIT_COST)
            candidates.append((max(loads), row_units * col_units, rt, cs))
    # within WIDE_SLACK of the cheapest, the split that reads least: each column unit of a
    # band reads the band's input again, and each thread the weights of the columns its
    # units span (all of them when units span all columns). ResNet-50's 64 -> 256 with its
    # residual on 56x56: 544 us in units of 128 channels, 452-475 in units of all 256; on
    # 14x14 maps the weights are the larger part, and units of half the columns read each
    # weight once. Weights larger than the inputs (more output channels than pixels) and too
    # large to stay in a core's L2 are read again by every band.
    cheapest = min(c[0] for c in candidates)
    streamed = not weights_stay and channels > pixels

    def reads(c: tuple[float, int, int, int]) -> float:
        col_units = -(-strips // c[3])
        passes = -(-tiles // c[2]) if streamed else max(1.0, threads / col_units)
        return channels * passes + col_units * pixels

    best = min((c for c in candidates if c[0] <= cheapest * (1 + WIDE_SLACK)),
               key=lambda c: (reads(c), c[0], c[1]))
    return best[2] * tile_rows, min(channels, best[3] * strip)


@njit(cache=True, inline="always")
def _take(v, top):
    """The running maximum after tap value ``v``: ``v`` when larger or NaN (PyTorch's order)."""
    return v if (v > top) | (v != v) else top


@njit(parallel=True, cache=True)
def max_pool(x, kh, kw, sh, sw, dh, dw, pt, pl, out):
    """``out (N, Ho, Wo, C)``: the maximum of each window of ``x (N, H, W, C)`` (padding
    ``pt`` rows above, ``pl`` columns left, never the maximum), per channel; a tap replaces
    the running maximum when larger or NaN, in PyTorch's order (NaN propagates). A pixel's
    channels are one row, so each tap is a select along a vector of channels.

    A 3x3 window inside the map (ResNet's stem pool) takes its nine taps' rows at once and
    keeps the running maximum in a register along the channels: 0.12 ms for 64 channels of
    112x112 at batch 1, where a pass over the output row per tap took 0.16."""
    n_img, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    for unit in prange(n_img * ho):
        n, oy = unit // ho, unit % ho
        y0 = oy * sh - pt
        rows_inside = kh == 3 and kw == 3 and y0 >= 0 and y0 + 2 * dh < h
        for ox in range(wo):
            top = out[n, oy, ox]
            x0 = ox * sw - pl
            if rows_inside and x0 >= 0 and x0 + 2 * dw < w:
                r0, r1, r2 = x[n, y0], x[n, y0 + dh], x[n, y0 + 2 * dh]
                a0, a1, a2 = r0[x0], r0[x0 + dw], r0[x0 + 2 * dw]
                b0, b1, b2 = r1[x0], r1[x0 + dw], r1[x0 + 2 * dw]
                c0, c1, c2 = r2[x0], r2[x0 + dw], r2[x0 + 2 * dw]
                for k in range(c):
                    m = _take(a2[k], _take(a1[k], a0[k]))
                    m = _take(b2[k], _take(b1[k], _take(b0[k], m)))
                    top[k] = _take(c2[k], _take(c1[k], _take(c0[k], m)))
                continue
            top[:] = -np.inf
            for i in range(kh):
                iy = y0 + i * dh
                if iy < 0 or iy >= h:
                    continue
                for j in range(kw):
                    ix = x0 + j * dw
                    if ix < 0 or ix >= w:
                        continue
                    row = x[n, iy, ix]
                    for k in range(c):
                        top[k] = _take(row[k], top[k])
