"""Numba kernels for depthwise 2-D convolution (``groups == C_in``), forward and backward.

All three read the *unpadded* input ``x`` ``(N, C_in, H, W)`` with the top/left zero padding
``(pt, pl)``: taps that fall outside the image are skipped by bounds (each kernel row checks
its input row, each kernel column clips the range of output columns), so nobody copies the
input into a padded buffer. They ``prange`` over planes and keep the innermost loop along an
output row (contiguous for stride 1, so it vectorises). Output channel ``co`` reads input
channel ``co // mult`` (``mult = C_out / C_in``, PyTorch's channel multiplier). The forward
starts each output row from the bias (or zero), then adds the taps in row-major order.

Importing compiles nothing; the first call per dtype compiles and ``cache=True`` keeps the
machine code on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["depthwise_forward", "depthwise_input_grad", "depthwise_weight_grad"]


@njit(cache=True, inline="always")
def _cols(off, sw, W, Wo):
    """Output columns ``[lo, hi)`` whose tap ``ow*sw + off`` lies inside ``0 .. W-1``."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    last = W - 1 - off
    hi = 0 if last < 0 else min(Wo, last // sw + 1)
    return lo, max(lo, hi)


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_forward(x, w, bias, sh, sw, dh, dw, pt, pl, out):
    """``out[n, co] = bias[co] + sum_{a,b} w[co, a, b] * x[n, co // mult, oh*sh + a*dh - pt,
    ow*sw + b*dw - pl]`` (zero outside the image); ``bias`` may be empty."""
    N, C_in, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    C_out, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    mult = C_out // C_in
    has_bias = bias.shape[0] > 0
    zero = np.zeros(1, dtype=out.dtype)[0]
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
                    lo, hi = _cols(off, sw, W, Wo)
                    if sw == 1:
                        for ow in range(lo, hi):
                            orow[ow] += wv * xrow[ow + off]
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
                        lo, hi = _cols(off, sw, W, Wo)
                        if sw == 1:
                            for ow in range(lo, hi):
                                xrow[ow + off] += wv * grow[ow]
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
    zero = np.zeros(1, dtype=gy.dtype)[0]
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
                    lo, hi = _cols(off, sw, W, Wo)
                    acc = zero  # sums in the input's dtype, rows added in float64
                    if sw == 1:
                        for ow in range(lo, hi):
                            acc += grow[ow] * xrow[ow + off]
                    else:
                        for ow in range(lo, hi):
                            acc += grow[ow] * xrow[ow * sw + off]
                    part[n, co, a, b] += acc
    return part
