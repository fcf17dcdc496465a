"""numba kernels of a plan's channels-last (NHWC) segments: each writes into a buffer it is given
(the depthwise and stem kernels list their border pixels' taps in scratch of their own, one per
thread).

In NHWC a pixel's channels are one contiguous row, so a depthwise convolution adds, tap by tap,
a row of channels times a row of taps: whole vectors of channels at every pixel, whatever the
map's width (the NCHW kernels' rows are the map's rows: 7 elements on a 7x7 map). Convolutions
of one group, 1x1 included, are in :mod:`convlayers.inference.conv_last`.

This is the layout ONNX Runtime (NCHWc) and XNNPACK (NHWC) run CNNs in. The plan converts at
the ends of a segment only (:mod:`convlayers.inference.layout`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from convlayers.inference.kernels import _activate
from convlayers.kernels._bounds import inside_range
from convlayers.kernels.simd import (
    RUN_PIXELS,
    TAP_VECTORS,
    VECTOR_BYTES,
    taps_broadcast,
    taps_broadcast_run,
    taps_row,
    taps_vector,
    transpose_block,
)

__all__ = ["dense_to_channels_last", "depthwise", "global_avg_pool", "to_channels_first"]


@njit(cache=True, fastmath=True, inline="always")
def _finish_row(row, bias, res_row, has_res, act):
    """``row = act(row + bias (+ res_row))`` in place, all 1-D of the same length."""
    if has_res:
        for k in range(row.size):
            row[k] = row[k] + bias[k] + res_row[k]
    else:
        for k in range(row.size):
            row[k] += bias[k]
    _activate(row, act)


@njit(parallel=True, cache=True, fastmath=True)
def depthwise(x, taps, bias, sh, sw, dh, dw, pt, pl, res, has_res, act, cb, threads, out):
    """``out = act(depthwise(x, taps) + bias (+ res))`` for ``x (N, H, W, C)``,
    ``taps (kh, kw, C)``, ``out, res (N, Ho, Wo, C)``; zero padding ``pt`` rows above and ``pl``
    columns left (the rest implied by the shapes). Units: one output row by ``cb`` channels,
    each run by :func:`depthwise_row`, split evenly between ``threads`` threads in order."""
    n_img, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    xf, tf, of, rf = x.reshape(x.size), taps.reshape(taps.size), out.reshape(out.size), res.reshape(res.size)
    nb = (c + cb - 1) // cb
    kh, kw = taps.shape[0], taps.shape[1]
    inner_offs, inner_taps = inner_tap_offsets(kh, kw, dh, dw, w, c)
    units = n_img * ho * nb
    parts = max(1, min(threads, units))
    for t in prange(parts):  # each of ``threads`` threads an even share of the units, in order
        lists = np.empty(row_lists_size(wo, kh, kw), np.int64)
        for unit in range(units * t // parts, units * (t + 1) // parts):
            r, blk = unit // nb, unit % nb
            n, oy = r // ho, r % ho
            c0 = blk * cb
            depthwise_row(xf, n * h * w * c, h, w, c, oy * sh - pt, tf, kh, kw, dh, dw, sw, pl,
                          bias, rf, has_res, act, of, (n * ho + oy) * wo * c, wo, c0,
                          min(c, c0 + cb), inner_offs, inner_taps, lists)


@njit(cache=True, inline="always")
def window_taps(y0, x0, kh, kw, dh, dw, h, w, planes, plane_step, pixel_step, offs, tap):
    """List the taps of the window whose top-left tap is at row ``y0``, column ``x0`` that lie
    inside an ``h x w`` map (the others read zero padding), in row-major order over ``planes``
    planes of the map: ``offs[m]`` the tap's element offset from the map's start (``ci *
    plane_step + (iy*w + ix) * pixel_step``), ``tap[m]`` its number ``(ci*kh + i)*kw + j``.
    Returns how many there are. Channels-last maps are one plane of ``pixel_step = C``; NCHW
    input planes are ``plane_step = H*W`` apart with ``pixel_step = 1``."""
    m = 0
    for ci in range(planes):
        for i in range(kh):
            iy = y0 + i * dh
            if iy < 0 or iy >= h:
                continue
            for j in range(kw):
                ix = x0 + j * dw
                if 0 <= ix < w:
                    offs[m] = ci * plane_step + (iy * w + ix) * pixel_step
                    tap[m] = (ci * kh + i) * kw + j
                    m += 1
    return m


@njit(cache=True, inline="always")
def row_lists_size(wo, kh, kw):
    """Elements of :func:`depthwise_row`'s ``lists`` for rows of ``wo`` pixels and a ``kh x kw``
    kernel: a count and two lists of taps per pixel."""
    return wo * (2 * kh * kw + 1)


@njit(cache=True)
def inner_tap_offsets(kh, kw, dh, dw, w, c):
    """A window inside a map of ``w`` columns and ``c`` channels: each tap's offset from the
    window's first element, and the taps' numbers (:func:`depthwise_row`'s inner lists)."""
    inner_offs = np.empty(kh * kw, np.int64)
    inner_taps = np.arange(kh * kw).astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            inner_offs[i * kw + j] = (i * dh * w + j * dw) * c
    return inner_offs, inner_taps


@njit(cache=True, fastmath=True)
def depthwise_row(xf, x0, h, w, c, y0, tf, kh, kw, dh, dw, sw, pl, bias, rf, has_res, act,
                  of, o0, wo, c0, c1, inner_offs, inner_taps, lists):
    """Channels ``c0 .. c1`` of one output row of a channels-last depthwise convolution:
    ``of[o0 + ox*c + k] = act(sum of taps + bias[k] (+ rf[same]))`` for ``ox < wo``, the map's
    ``h`` rows of ``w`` pixels starting at ``xf[x0]``, the window's top row ``y0`` (rows
    outside ``0 .. h`` are padding, as are columns outside ``0 .. w``; ``pl`` columns left).

    3x3 and 5x5 kernels of stride 1 or 2 (column dilation 1) run the pixels whose windows lie
    inside the map as one run per row and vector of channels: the tap vectors stay in
    registers, four pixels sum at a time and load the input columns they share once
    (:data:`convlayers.kernels.simd.taps_row`). Every other pixel lists its taps inside the
    map (offsets from the map's start), then each vector of its channels sums those taps in
    a register and is finished and stored once (:data:`convlayers.kernels.simd.taps_vector`).
    Loops written in numba instead kept the sum in memory or ran short channel counts in
    scalar code (4-8 GMAC/s).

    ``lists``: the caller's int64 scratch of at least :func:`row_lists_size` elements, where
    the border pixels' tap lists go (one per thread, kept across its rows: three arrays made
    per row cost MobileNetV2's fused blocks 5% of their time at batch 16, their first block
    18%)."""
    nt = kh * kw
    one = VECTOR_BYTES // xf.itemsize  # elements of a vector
    lanes = TAP_VECTORS * one
    lo, hi = inside_range(wo, w, kw, sw, pl, dw)
    row = dh * w * c
    # simd's row kernels serve the pixels whose windows are inside, for these kernels
    rows_kernel = dw == 1 and kh == kw and (kh == 3 or kh == 5) and (sw == 1 or sw == 2)
    rows_inside = y0 >= 0 and y0 + (kh - 1) * dh < h
    # each pixel's taps inside the map: offsets from the map's start (border pixels)
    counts = lists[:wo]
    offs = lists[wo:wo + wo * nt].reshape((wo, nt))
    tap = lists[wo + wo * nt:wo + 2 * wo * nt].reshape((wo, nt))
    for ox in range(wo):
        if rows_inside and lo <= ox < hi:
            counts[ox] = 0  # served by the inner lists
        else:
            counts[ox] = window_taps(y0, ox * sw - pl, kh, kw, dh, dw, h, w, 1, 0, c, offs[ox],
                                     tap[ox])
    # the run of pixels whose windows are inside: a vector of channels along the whole run
    # at a time (the tap vectors in registers, shared input columns loaded once)
    run = rows_inside and rows_kernel and hi > lo
    if run:
        at0 = x0 + (y0 * w + lo * sw - pl) * c
        for k in range(c0, c1, one):
            taps_row(xf, at0, row, tf, c, bias, rf, k, has_res, act, of, o0 + lo * c, hi - lo,
                     c1 - k, kh, sw)
    # the other pixels: each its list of taps, a block of channels along the row at a time
    # (the block's input rows stay in L1 while every pixel of the row reads them)
    for k in range(c0, c1, lanes):
        for ox in range(wo):
            if run and lo <= ox < hi:
                continue
            out_at = o0 + ox * c
            if rows_inside and lo <= ox < hi:
                at, m, o_list, t_list = x0 + (y0 * w + ox * sw - pl) * c, nt, inner_offs, inner_taps
            else:
                at, m, o_list, t_list = x0, counts[ox], offs[ox], tap[ox]
            taps_vector(xf, at, of, t_list, m, tf, c, bias, rf, k, has_res, act, o_list,
                        out_at, c1 - k)
    if act > 2:
        for ox in range(wo):
            out_at = o0 + ox * c
            _activate(of[out_at + c0:out_at + c1], act)


@njit(parallel=True, cache=True, fastmath=True)
def dense_to_channels_last(x, taps, kh, kw, bias, sh, sw, dh, dw, pt, pl, act, threads, out):
    """``out = act(conv(x, taps) + bias)`` for an NCHW input ``x (N, C_in, H, W)`` of few
    channels (a network's stem), ``taps (C_in*kh*kw, C_out)`` (row ``(ci*kh + i)*kw + j``),
    into a channels-last ``out (N, Ho, Wo, C_out)``; zero padding ``pt`` above, ``pl`` left.

    Each output pixel lists its taps inside the map (NCHW offsets), then every vector of output
    channels sums input value times weight row over them in registers
    (:data:`convlayers.kernels.simd.taps_broadcast`): no im2col, and no conversion after.
    Runs of :data:`~convlayers.kernels.simd.RUN_PIXELS` pixels whose windows lie inside the map
    share one list and each weight vector
    (:func:`~convlayers.kernels.simd.taps_broadcast_run`): MobileNetV2's 3 -> 32 stem at batch
    1 took 0.30 ms a pixel at a time, 0.15 in runs."""
    n_img, c_in, h, w = x.shape
    ho, wo, c_out = out.shape[1], out.shape[2], out.shape[3]
    nt = taps.shape[0]
    xf, tf, of = x.reshape(x.size), taps.reshape(taps.size), out.reshape(out.size)
    lanes = VECTOR_BYTES // x.itemsize
    wide = TAP_VECTORS * lanes
    inner_offs = np.empty(nt, np.int64)
    inner_taps = np.arange(nt).astype(np.int64)
    for ci in range(c_in):
        for i in range(kh):
            for j in range(kw):
                inner_offs[(ci * kh + i) * kw + j] = ci * h * w + i * dh * w + j * dw
    lo, hi = inside_range(wo, w, kw, sw, pl, dw)
    units = n_img * ho
    parts = max(1, min(threads, units))
    for t in prange(parts):  # each of ``threads`` threads an even share of the rows, in order
        offs = np.empty(nt, np.int64)  # a border pixel's taps (kept across the thread's rows)
        tap = np.empty(nt, np.int64)
        for r in range(units * t // parts, units * (t + 1) // parts):
            n, oy = r // ho, r % ho
            y0 = oy * sh - pt
            rows_inside = y0 >= 0 and y0 + (kh - 1) * dh < h
            ox = 0
            while ox < wo:
                x0 = ox * sw - pl
                out_at = ((n * ho + oy) * wo + ox) * c_out
                if rows_inside and lo <= ox and ox + RUN_PIXELS <= hi:  # a run of inside windows
                    at = n * c_in * h * w + y0 * w + x0
                    for k in range(0, c_out, wide):
                        taps_broadcast_run(xf, at, of, inner_taps, nt, tf, c_out, bias, k, act,
                                           inner_offs, out_at, c_out - k, sw)
                    if act > 2:
                        _activate(of[out_at:out_at + RUN_PIXELS * c_out], act)
                    ox += RUN_PIXELS
                    continue
                if rows_inside and lo <= ox < hi:
                    at, m, o_list, t_list = n * c_in * h * w + y0 * w + x0, nt, inner_offs, inner_taps
                else:
                    at, o_list, t_list = n * c_in * h * w, offs, tap
                    m = window_taps(y0, x0, kh, kw, dh, dw, h, w, c_in, h * w, 1, offs, tap)
                for k in range(0, c_out, wide):
                    taps_broadcast(xf, at, of, t_list, m, tf, c_out, bias, of, k, False, act,
                                   o_list, out_at, c_out - k)
                if act > 2:
                    _activate(of[out_at:out_at + c_out], act)
                ox += 1


def depthwise_channel_block(channels: int, rows: int, threads: int) -> int:
    """Channels per unit of :func:`depthwise`: all of them when there are at least four output
    rows per thread, else blocks of 64 or more (a multiple of 16) that make about four units per
    thread."""
    if rows >= 4 * threads:
        return channels
    blocks = -(-4 * threads // rows)
    return min(channels, max(64, -(-channels // blocks + 15) // 16 * 16))


@njit(parallel=True, cache=True)
def to_channels_first(x, out):
    """``out (N, C, H, W) = x (N, H, W, C)`` transposed; units of one image row. From 8
    channels, a vector of pixels by a vector of channels at a time, transposed in registers
    (:func:`convlayers.kernels.simd.transpose_block`): a store
    per value, each on another cache line, ran 2-4x as long."""
    n_img, h, w, c = x.shape
    xf = np.ascontiguousarray(x).reshape(x.size)
    of = out.reshape(out.size)
    planes = np.arange(c, dtype=np.int64) * (h * w)  # each channel's plane in an image of out
    for unit in prange(n_img * h):
        n, y = unit // h, unit % h
        if c < 8:
            for ix in range(w):
                src = x[n, y, ix]
                for ch in range(c):
                    out[n, ch, y, ix] = src[ch]
            continue
        transpose_block(xf, (n * h + y) * w * c, c, w, c, of, planes, (n * c * h + y) * w)


@njit(parallel=True, cache=True)
def global_avg_pool(x, out):
    """``out[n, c] = mean(x[n, :, c])`` for ``x (N, H*W, C)``, ``out (N, C)``; float64 sums,
    pixel by pixel, in a row of every channel's sums: the adds run along vectors of channels
    (each channel's sum still in pixel order). A sum per channel at a time was one chain of
    dependent scalar adds, strided: 50 us for MobileNetV2's 1280 channels of 7x7."""
    n_img, pixels, c = x.shape
    for n in prange(n_img):
        sums = np.zeros(c, np.float64)
        for p in range(pixels):
            row = x[n, p]
            for ch in range(c):
                sums[ch] += row[ch]
        for ch in range(c):
            out[n, ch] = sums[ch] / pixels
