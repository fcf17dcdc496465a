"""Numba kernels for training-mode batch normalization: statistics, forward and backward in a
few passes per channel.

NumPy's ``x.var(axis=(0, 2, 3))`` and the backward's broadcast expressions each make several
full-size temporaries; training MobileNetV2 spent about 40% of a step there. These kernels read
each channel's planes directly (``x`` viewed as ``(N, C, L)``): two passes for the mean and
the biased variance (accumulated in float64: the two-pass form keeps its accuracy), one pass
for the output, and two for the backward. Channels run in parallel. Only ``reassoc`` and
``contract`` are allowed to LLVM, so sums vectorise while NaN and infinity propagate as in
NumPy.
"""

from __future__ import annotations

from numba import njit, prange

__all__ = ["channel_statistics", "normalize_backward", "normalize_forward"]

_FAST = {"reassoc", "contract"}


@njit(parallel=True, cache=True, fastmath=_FAST)
def channel_statistics(x, mean, var):
    """``mean[c]`` and biased ``var[c]`` over axes 0 and 2 of ``x (N, C, L)`` (float64 out)."""
    N, C, L = x.shape[0], x.shape[1], x.shape[2]
    count = N * L
    for c in prange(C):
        total = 0.0
        for n in range(N):
            row = x[n, c]
            for i in range(L):
                total += row[i]
        m = total / count
        squares = 0.0
        for n in range(N):
            row = x[n, c]
            for i in range(L):
                d = row[i] - m
                squares += d * d
        mean[c] = m
        var[c] = squares / count


@njit(parallel=True, cache=True, fastmath=_FAST)
def normalize_forward(x, shift, scale, bias, out):
    """``out[n, c] = (x[n, c] - shift[c]) * scale[c] + bias[c]`` for ``x (N, C, L)``."""
    N, C, L = x.shape[0], x.shape[1], x.shape[2]
    for q in prange(N * C):
        n = q // C
        c = q - n * C
        m, s, b = shift[c], scale[c], bias[c]
        row, dst = x[n, c], out[n, c]
        for i in range(L):
            dst[i] = (row[i] - m) * s + b


@njit(parallel=True, cache=True, fastmath=_FAST)
def normalize_backward(g, x, mean, invstd, weight, gx, gw, gb):
    """Training-mode gradients: ``gw[c] = sum(g * xhat)``, ``gb[c] = sum(g)`` and
    ``gx = weight*invstd * (g - gb/M - xhat * gw/M)`` with ``xhat = (x - mean) * invstd``,
    ``M = N*L``; sums in float64."""
    N, C, L = x.shape[0], x.shape[1], x.shape[2]
    count = N * L
    for c in prange(C):
        m, inv = mean[c], invstd[c]
        sum_g = 0.0
        sum_gx = 0.0
        for n in range(N):
            grow, xrow = g[n, c], x[n, c]
            for i in range(L):
                sum_g += grow[i]
                sum_gx += grow[i] * (xrow[i] - m)
        sum_gx *= inv
        gw[c] = sum_gx
        gb[c] = sum_g
        k = weight[c] * inv
        mean_g = sum_g / count
        slope = sum_gx * inv / count
        for n in range(N):
            grow, xrow, dst = g[n, c], x[n, c], gx[n, c]
            for i in range(L):
                dst[i] = k * (grow[i] - mean_g - (xrow[i] - m) * slope)
