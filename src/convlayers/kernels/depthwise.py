"""Numba kernels for depthwise 2-D convolution (``groups == C_in``), forward and backward.

All three work on the *padded* input ``xp`` ``(N, C_in, Hp, Wp)`` that the engine receives,
``prange`` over planes, and keep the innermost loop along an output row (contiguous for
stride 1, so it vectorises). Output channel ``co`` reads input channel ``co // mult``
(``mult = C_out / C_in``, PyTorch's channel multiplier). Taps are summed in row-major order
starting from zero, as the NumPy engine does; the bias is added by the caller.

Importing compiles nothing; the first call per dtype compiles and ``cache=True`` keeps the
machine code on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["depthwise_forward", "depthwise_input_grad", "depthwise_weight_grad"]


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_forward(xp, w, sh, sw, dh, dw, out):
    """``out[n, co] = sum_{a,b} w[co, a, b] * xp[n, co // mult, oh*sh + a*dh, ow*sw + b*dw]``."""
    N, C_in = xp.shape[0], xp.shape[1]
    C_out, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    mult = C_out // C_in
    for q in prange(N * C_out):
        n = q // C_out
        co = q - n * C_out
        ci = co // mult
        wc = w[co]
        for oh in range(Ho):
            orow = out[n, co, oh]
            orow[:] = 0
            for a in range(kh):
                xrow = xp[n, ci, oh * sh + a * dh]
                for b in range(kw):
                    wv = wc[a, b]
                    off = b * dw
                    for ow in range(Wo):
                        orow[ow] += wv * xrow[ow * sw + off]


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_input_grad(gy, w, sh, sw, dh, dw, gxp):
    """Gradient with respect to the padded input, into ``gxp`` (which starts at zero)."""
    N, C_in = gxp.shape[0], gxp.shape[1]
    C_out, Ho, Wo = gy.shape[1], gy.shape[2], gy.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    mult = C_out // C_in
    for q in prange(N * C_in):
        n = q // C_in
        ci = q - n * C_in
        for m in range(mult):
            co = ci * mult + m
            wc = w[co]
            for oh in range(Ho):
                grow = gy[n, co, oh]
                for a in range(kh):
                    xrow = gxp[n, ci, oh * sh + a * dh]
                    for b in range(kw):
                        wv = wc[a, b]
                        off = b * dw
                        for ow in range(Wo):
                            xrow[ow * sw + off] += wv * grow[ow]


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_weight_grad(xp, gy, kh, kw, sh, sw, dh, dw):
    """Per-(image, output channel) weight gradients ``(N, C_out, kh, kw)``, float64 sums."""
    N, C_in = xp.shape[0], xp.shape[1]
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
                xrow = xp[n, ci, oh * sh + a * dh]
                for b in range(kw):
                    off = b * dw
                    acc = zero  # sums in the input's dtype, rows added in float64
                    for ow in range(Wo):
                        acc += grow[ow] * xrow[ow * sw + off]
                    part[n, co, a, b] += acc
    return part
