"""numba kernels of a plan's channels-last (NHWC) segments: each writes into a buffer it is given.

In NHWC a pixel's channels are one contiguous row, so

* a 1x1 convolution of a whole batch is one GEMM ``X (N*H*W, C_in) @ W (C_in, C_out)`` on the
  register tiles of :mod:`convlayers.kernels.simd`: its rows are pixels (batch folded in, so a
  7x7 map at batch 1 has 49 rows instead of 49 columns, the tiles' wide side along the
  channels), and the bias, residual and activation run on each unit's block while it is in
  cache;
* a depthwise convolution adds, tap by tap, a row of channels times a row of taps: whole
  vectors of channels at every pixel, whatever the map's width (the NCHW kernels' rows are the
  map's rows: 7 elements on a 7x7 map).

This is the layout ONNX Runtime (NCHWc) and XNNPACK (NHWC) run mobile networks in. The plan
converts at the ends of a segment only (:mod:`convlayers.inference.layout`).
"""

from __future__ import annotations

from numba import njit, prange

from convlayers.inference.kernels import _activate
from convlayers.kernels.simd import gemm_tiled_cols

__all__ = ["depthwise", "global_avg_pool", "pointwise", "pointwise_units", "to_channels_first",
           "to_channels_last"]


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
def pointwise(x, wt, bias, res, has_res, act, rows, cols, out):
    """``out = act(x @ wt + bias (+ res))`` for ``x (P, C_in)``, ``wt (C_in, C_out)``,
    ``out, res (P, C_out)`` (``res`` read only when ``has_res``), in units of ``rows`` pixels by
    ``cols`` channels, each finished while in cache."""
    p_all, c_all = out.shape
    nr = (p_all + rows - 1) // rows
    nc = (c_all + cols - 1) // cols
    for unit in prange(nr * nc):
        r0 = (unit // nc) * rows
        r1 = min(p_all, r0 + rows)
        c0 = (unit % nc) * cols
        c1 = min(c_all, c0 + cols)
        block = out[r0:r1]
        gemm_tiled_cols(x[r0:r1], wt, block, c0, c1)
        b = bias[c0:c1]
        for p in range(r1 - r0):
            _finish_row(block[p, c0:c1], b, res[r0 + p, c0:c1], has_res, act)


def pointwise_units(pixels: int, channels: int, threads: int) -> tuple[int, int]:
    """``(rows, cols)`` of :func:`pointwise`'s units: all channels up to 256 (else blocks of 192,
    the tiles' column block), and pixel bands (multiples of the tiles' 8 rows, at most 512) cut
    so that there are about four units per thread."""
    cols = channels if channels <= 256 else 192
    col_blocks = -(-channels // cols)
    bands = max(1, -(-4 * threads // col_blocks))
    rows = -(-pixels // bands)
    return min(512, max(8, -(-rows // 8) * 8)), cols


@njit(parallel=True, cache=True, fastmath=True)
def depthwise(x, taps, bias, sh, sw, dh, dw, pt, pl, res, has_res, act, cb, out):
    """``out = act(depthwise(x, taps) + bias (+ res))`` for ``x (N, H, W, C)``,
    ``taps (kh, kw, C)``, ``out, res (N, Ho, Wo, C)``; zero padding ``pt`` rows above and ``pl``
    columns left (the rest implied by the shapes). Units: one output row by ``cb`` channels."""
    n_img, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    kh, kw = taps.shape[0], taps.shape[1]
    nb = (c + cb - 1) // cb
    for unit in prange(n_img * ho * nb):
        row, blk = unit // nb, unit % nb
        n, oy = row // ho, row % ho
        c0 = blk * cb
        c1 = min(c, c0 + cb)
        b = bias[c0:c1]
        for ox in range(wo):
            o = out[n, oy, ox, c0:c1]
            for k in range(c1 - c0):
                o[k] = 0
            for i in range(kh):
                iy = oy * sh - pt + i * dh
                if iy < 0 or iy >= h:
                    continue
                for j in range(kw):
                    ix = ox * sw - pl + j * dw
                    if ix < 0 or ix >= w:
                        continue
                    xr = x[n, iy, ix, c0:c1]
                    t = taps[i, j, c0:c1]
                    for k in range(c1 - c0):
                        o[k] += xr[k] * t[k]
            _finish_row(o, b, res[n, oy, ox, c0:c1], has_res, act)


def depthwise_channel_block(channels: int, rows: int, threads: int) -> int:
    """Channels per unit of :func:`depthwise`: all of them when there are at least four output
    rows per thread, else blocks of 64 or more (a multiple of 16) that make about four units per
    thread."""
    if rows >= 4 * threads:
        return channels
    blocks = -(-4 * threads // rows)
    return min(channels, max(64, -(-channels // blocks + 15) // 16 * 16))


@njit(parallel=True, cache=True)
def to_channels_last(x, out):
    """``out (N, H, W, C) = x (N, C, H, W)`` transposed; units of one image row."""
    n_img, c, h, w = x.shape
    for unit in prange(n_img * h):
        n, y = unit // h, unit % h
        for ch in range(c):
            src = x[n, ch, y]
            for ix in range(w):
                out[n, y, ix, ch] = src[ix]


@njit(parallel=True, cache=True)
def to_channels_first(x, out):
    """``out (N, C, H, W) = x (N, H, W, C)`` transposed; units of one image row."""
    n_img, h, w, c = x.shape
    for unit in prange(n_img * h):
        n, y = unit // h, unit % h
        for ix in range(w):
            src = x[n, y, ix]
            for ch in range(c):
                out[n, ch, y, ix] = src[ch]


@njit(parallel=True, cache=True)
def global_avg_pool(x, out):
    """``out[n, c] = mean(x[n, :, c])`` for ``x (N, H*W, C)``, ``out (N, C)``; float64 sums."""
    n_img, pixels, c = x.shape
    for n in prange(n_img):
        for ch in range(c):
            s = 0.0
            for p in range(pixels):
                s += x[n, p, ch]
            out[n, ch] = s / pixels
