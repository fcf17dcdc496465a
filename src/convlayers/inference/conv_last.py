"""Dense convolutions of a plan's channels-last (NHWC) segments: a direct convolution whose
register tiles keep their accumulators across every tap (:func:`convlayers.kernels.simd.conv_tiles`).

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
from convlayers.kernels.simd import CONV_ROWS, NC, conv_tiles

__all__ = ["dense", "dense_units", "max_pool", "pad_channels_last", "pad_to_channels_last",
           "pixel_offsets", "tap_offsets"]


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


@njit(parallel=True, cache=True)
def pad_to_channels_last(x, pt, pl, out):
    """``out (N, Hp, Wp, C)``: the NCHW ``x (N, C, H, W)`` transposed to channels-last at row
    ``pt``, column ``pl``, zeros around (a stem's input: the image as it comes)."""
    n_img, c, h, w = x.shape
    hp = out.shape[1]
    for unit in prange(n_img * hp):
        n, y = unit // hp, unit % hp
        row = out[n, y]
        row[:, :] = 0
        iy = y - pt
        if iy < 0 or iy >= h:
            continue
        for ch in range(c):
            src = x[n, ch, iy]
            for ix in range(w):
                row[pl + ix, ch] = src[ix]


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


@njit(parallel=True, cache=True)  # no fastmath: SiLU's exp overflows to inf for v < -88
def dense(xf, w, offs, toffs, bias, res, has_res, act, rows, cols, out):
    """``out = act(conv + bias (+ res))`` for a flat padded channels-last input ``xf``, weights
    ``w (kh*kw*C_in, C_out)`` (row ``(i*kw + j)*C_in + ci``) packed by
    :func:`convlayers.kernels.simd.pack_conv_weights`, ``out, res (P, C_out)`` (``res`` read
    only when ``has_res``), in units of ``rows`` pixels by ``cols`` channels (a multiple of
    the packed strips' width)."""
    p_all, c_all = out.shape
    nr = (p_all + rows - 1) // rows
    nc = (c_all + cols - 1) // cols
    for unit in prange(nr * nc):
        r0 = (unit // nc) * rows
        r1 = min(p_all, r0 + rows)
        c0 = (unit % nc) * cols
        c1 = min(c_all, c0 + cols)
        conv_tiles(xf, w, out, offs, toffs, r0, r1, c0, c1)
        b = bias[c0:c1]
        for p in range(r0, r1):
            _finish_row(out[p, c0:c1], b, res[p, c0:c1], has_res, act)


def dense_units(pixels: int, channels: int, threads: int) -> tuple[int, int]:
    """``(rows, cols)`` of :func:`dense`'s units: all output channels up to 256 (else blocks
    of ``NC``, whole strips), pixel bands (multiples of the tiles' rows, at most 256) cut so that there are
    about four units per thread."""
    cols = channels if channels <= 256 else NC
    col_blocks = -(-channels // cols)
    bands = max(1, -(-4 * threads // col_blocks))
    rows = -(-pixels // bands)
    return min(256, max(CONV_ROWS, -(-rows // CONV_ROWS) * CONV_ROWS)), cols


@njit(parallel=True, cache=True)
def max_pool(x, kh, kw, sh, sw, dh, dw, pt, pl, out):
    """``out (N, Ho, Wo, C)``: the maximum of each window of ``x (N, H, W, C)`` (padding
    ``pt`` rows above, ``pl`` columns left, never the maximum), per channel; a tap replaces
    the running maximum when larger or NaN, in PyTorch's order (NaN propagates). A pixel's
    channels are one row, so each tap is a select along a vector of channels."""
    n_img, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    for unit in prange(n_img * ho):
        n, oy = unit // ho, unit % ho
        for ox in range(wo):
            top = out[n, oy, ox]
            top[:] = -np.inf
            for i in range(kh):
                iy = oy * sh - pt + i * dh
                if iy < 0 or iy >= h:
                    continue
                for j in range(kw):
                    ix = ox * sw - pl + j * dw
                    if ix < 0 or ix >= w:
                        continue
                    row = x[n, iy, ix]
                    for k in range(c):
                        v = row[k]
                        top[k] = v if (v > top[k]) | (v != v) else top[k]
