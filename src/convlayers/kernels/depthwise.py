"""Numba kernels for depthwise 2-D convolution (``groups == C_in``), forward and backward.

Three families, chosen by :mod:`convlayers.functional._engine` from the geometry:

- *flat* (stride 1, width kept, e.g. 3x3 padding 1): every tap is one loop straight over the
  planes in flat form, with column masks for the taps that would cross a row edge
  (:mod:`convlayers.kernels.depthwise_flat`);
- *planar* (other small planes): a zero-padded polyphase copy of each plane, then the same
  flat loops (:mod:`convlayers.kernels.depthwise_planar`);
- *row* (the rest: large planes, whose rows are long): the loops below.

This module holds the row kernels and re-exports the other two families, so the engine finds
all three here.

The row kernels read the *unpadded* input ``x`` ``(N, C_in, H, W)`` with the top/left zero
padding ``(pt, pl)``: taps that fall outside the image are skipped by bounds (each kernel row
checks its input row, each kernel column clips the range of output columns), so nobody copies
the input into a padded buffer. They ``prange`` over planes and keep the innermost loop along an
output row (contiguous for stride 1, so it vectorises). Output channel ``co`` reads input
channel ``co // mult`` (``mult = C_out / C_in``, PyTorch's channel multiplier). The forward
starts each output row from the bias (or zero), then adds the taps in row-major order.

Inner loops index slices from 0 rather than ``row[i + off]`` with a possibly negative ``off``:
numba must then wrap negative indices, and that check alone kept LLVM from vectorising (3-4x).

Importing compiles nothing; the first call per dtype compiles and ``cache=True`` keeps the
machine code on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from convlayers.kernels._bounds import tap_cols, typed_zero
from convlayers.kernels.depthwise_flat import flat_backward, flat_forward, flat_masks
from convlayers.kernels.depthwise_planar import planar_backward, planar_forward, planar_geometry

__all__ = [
    "depthwise_forward",
    "depthwise_input_grad",
    "depthwise_weight_grad",
    "flat_backward",
    "flat_forward",
    "flat_masks",
    "planar_backward",
    "planar_forward",
    "planar_geometry",
]


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_forward(x, w, bias, sh, sw, dh, dw, pt, pl, out):
    """``out[n, co] = bias[co] + sum_{a,b} w[co, a, b] * x[n, co // mult, oh*sh + a*dh - pt,
    ow*sw + b*dw - pl]`` (zero outside the image); ``bias`` may be empty."""
    N, C_in, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    C_out, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    mult = C_out // C_in
    has_bias = bias.shape[0] > 0
    zero = typed_zero(out)
    for q in prange(N * C_out):
        n = q // C_out
        co = q - n * C_out
        ci = co // mult
        wc = w[co]
        b0 = bias[co] if has_bias else zero
        xpl = x[n, ci]
        for oh in range(Ho):
            orow = out[n, co, oh]
            for ow in range(Wo):
                orow[ow] = b0
            for a in range(kh):
                ih = oh * sh + a * dh - pt
                if ih < 0 or ih >= H:
                    continue
                xrow = xpl[ih]
                for b in range(kw):
                    wv = wc[a, b]
                    off = b * dw - pl
                    lo, hi = tap_cols(off, sw, W, Wo)
                    if sw == 1:  # slices keep the indices non-negative, so this vectorises
                        o_s, x_s = orow[lo:hi], xrow[lo + off: hi + off]
                        for t in range(hi - lo):
                            o_s[t] += wv * x_s[t]
                    else:
                        for ow in range(lo, hi):
                            orow[ow] += wv * xrow[ow * sw + off]


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_input_grad(gy, w, sh, sw, dh, dw, pt, pl, gx):
    """Gradient with respect to the unpadded input, written into ``gx`` (any initial value)."""
    N, C_in, H, W = gx.shape[0], gx.shape[1], gx.shape[2], gx.shape[3]
    C_out, Ho, Wo = gy.shape[1], gy.shape[2], gy.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    mult = C_out // C_in
    for q in prange(N * C_in):
        n = q // C_in
        ci = q - n * C_in
        gpl = gx[n, ci]
        gpl[:] = 0
        for m in range(mult):
            co = ci * mult + m
            wc = w[co]
            for oh in range(Ho):
                grow = gy[n, co, oh]
                for a in range(kh):
                    ih = oh * sh + a * dh - pt
                    if ih < 0 or ih >= H:
                        continue
                    xrow = gpl[ih]
                    for b in range(kw):
                        wv = wc[a, b]
                        off = b * dw - pl
                        lo, hi = tap_cols(off, sw, W, Wo)
                        if sw == 1:
                            x_s, g_s = xrow[lo + off: hi + off], grow[lo:hi]
                            for t in range(hi - lo):
                                x_s[t] += wv * g_s[t]
                        else:
                            for ow in range(lo, hi):
                                xrow[ow * sw + off] += wv * grow[ow]


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_weight_grad(x, gy, kh, kw, sh, sw, dh, dw, pt, pl):
    """Per-(image, output channel) weight gradients ``(N, C_out, kh, kw)``, float64 sums."""
    N, C_in, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    C_out, Ho, Wo = gy.shape[1], gy.shape[2], gy.shape[3]
    mult = C_out // C_in
    part = np.zeros((N, C_out, kh, kw), dtype=np.float64)
    zero = typed_zero(gy)
    for q in prange(N * C_out):
        n = q // C_out
        co = q - n * C_out
        ci = co // mult
        for oh in range(Ho):
            grow = gy[n, co, oh]
            for a in range(kh):
                ih = oh * sh + a * dh - pt
                if ih < 0 or ih >= H:
                    continue
                xrow = x[n, ci, ih]
                for b in range(kw):
                    off = b * dw - pl
                    lo, hi = tap_cols(off, sw, W, Wo)
                    acc = zero  # sums in the input's dtype, rows added in float64
                    if sw == 1:
                        g_s, x_s = grow[lo:hi], xrow[lo + off: hi + off]
                        for t in range(hi - lo):
                            acc += g_s[t] * x_s[t]
                    else:
                        for ow in range(lo, hi):
                            acc += grow[ow] * xrow[ow * sw + off]
                    part[n, co, a, b] += acc
    return part
