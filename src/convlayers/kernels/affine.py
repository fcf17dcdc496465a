"""Numba kernel for a per-channel affine map in place, optionally clipped: inference BatchNorm
with the ReLU or ReLU6 after it fused into the same pass.

NumPy broadcasting a ``(1, C, 1, 1)`` scale over ``(N, C, H, W)`` runs its inner loop along
one row (7 elements on a 7x7 map) and needs a second pass for the activation; this kernel
walks each plane once, as one flat loop.
"""

from __future__ import annotations

from numba import njit, prange

__all__ = ["affine_inplace"]


@njit(parallel=True, cache=True)  # no fastmath: a NaN must stay NaN through the clip
def affine_inplace(x, alpha, beta, clip, lo, hi):
    """``x[n, c, :] = alpha[c] * x[n, c, :] + beta[c]``, then clipped to ``[lo, hi]`` when
    ``clip`` (``hi`` may be ``inf``), for ``x (N, C, L)``."""
    N, C, L = x.shape[0], x.shape[1], x.shape[2]
    for q in prange(N * C):
        n = q // C
        c = q - n * C
        a, b = alpha[c], beta[c]
        row = x[n, c]
        if clip:
            for i in range(L):
                v = a * row[i] + b
                if v < lo:
                    v = lo
                elif v > hi:
                    v = hi
                row[i] = v
        else:
            for i in range(L):
                row[i] = a * row[i] + b
