"""Channels-last depthwise forward for small feature maps.

On a 6x6 or 3x3 map a plane is 36 or 9 outputs: the plane kernels
(:mod:`convlayers.kernels.depthwise_planar`, :mod:`convlayers.kernels.depthwise`) spend their
time on per-plane set-up and loops too short to vectorise, and ran 2-7x torch's time on the
last stages of MobileNet-type networks. Laid out channels-last, every tap is one multiply-add
over all channels of an output pixel, a loop as long as the channel count (hundreds), which
vectorises: the images are transposed into a zero-padded ``(N, Hp, Wp, C)`` copy, each output
pixel's channels accumulate in place (three taps per pass, so the accumulator is loaded and
stored once per three multiply-adds), and the result is transposed back. The two transposes are
a few passes over data that every tap reads ``kh*kw`` times.

Forward only (no channel multiplier); the engine keeps the plane kernels for the gradients.
Importing compiles nothing; the first call per dtype compiles and ``cache=True`` keeps the
machine code on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["depthwise_channels_last"]


@njit(cache=True, fastmath=True)
def _taps(acc, xn, wt, y0, x0, dh, dw):
    """``acc[c] += sum over taps (a, b) of wt[a, b, c] * xn[y0 + a*dh, x0 + b*dw, c]``."""
    kh, kw = wt.shape[0], wt.shape[1]
    T = kh * kw
    C = acc.shape[0]
    t = 0
    while t + 3 <= T:
        a0, b0 = t // kw, t % kw
        a1, b1 = (t + 1) // kw, (t + 1) % kw
        a2, b2 = (t + 2) // kw, (t + 2) % kw
        w0, w1, w2 = wt[a0, b0], wt[a1, b1], wt[a2, b2]
        s0 = xn[y0 + a0 * dh, x0 + b0 * dw]
        s1 = xn[y0 + a1 * dh, x0 + b1 * dw]
        s2 = xn[y0 + a2 * dh, x0 + b2 * dw]
        for c in range(C):
            acc[c] += w0[c] * s0[c] + w1[c] * s1[c] + w2[c] * s2[c]
        t += 3
    while t < T:
        a0, b0 = t // kw, t % kw
        w0 = wt[a0, b0]
        s0 = xn[y0 + a0 * dh, x0 + b0 * dw]
        for c in range(C):
            acc[c] += w0[c] * s0[c]
        t += 1


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_channels_last(x, wt, bias, sh, sw, dh, dw, pt, pl, out):
    """``out (N, C, Ho, Wo)`` = the depthwise convolution of ``x (N, C, H, W)`` by ``wt (kh,
    kw, C)`` (+ ``bias``, ``C`` entries or none), zero padding ``pt`` above and ``pl`` left (the
    other sides follow from ``out``)."""
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    kh, kw = wt.shape[0], wt.shape[1]
    Hp = max(H + pt, (Ho - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(W + pl, (Wo - 1) * sw + (kw - 1) * dw + 1)
    xt = np.empty((N, Hp, Wp, C), dtype=x.dtype)
    ot = np.empty((N, Ho, Wo, C), dtype=x.dtype)
    has_bias = bias.shape[0] > 0
    for unit in prange(N * Hp):  # the padded channels-last copy, one padded row a unit
        n, r = unit // Hp, unit % Hp
        dst = xt[n, r]
        for j in range(Wp):
            px = dst[j]
            for c in range(C):
                px[c] = 0
        iy = r - pt
        if 0 <= iy < H:
            for c in range(C):
                src = x[n, c, iy]
                for j in range(max(0, -pl), min(W, Wp - pl)):
                    dst[j + pl, c] = src[j]
    for unit in prange(N * Ho):  # the taps, one output row a unit
        n, oy = unit // Ho, unit % Ho
        xn = xt[n]
        for ox in range(Wo):
            acc = ot[n, oy, ox]
            for c in range(C):
                acc[c] = bias[c] if has_bias else 0
            _taps(acc, xn, wt, oy * sh, ox * sw, dh, dw)
    for unit in prange(N * C):  # back to planes
        n, c = unit // C, unit % C
        plane = out[n, c]
        src = ot[n]
        for oy in range(Ho):
            row = plane[oy]
            pix = src[oy]
            for ox in range(Wo):
                row[ox] = pix[ox, c]
