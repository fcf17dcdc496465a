"""Matrix-multiply loops in plain numba, inside the callers' own parallel regions.

OpenBLAS runs its AVX2 kernels on this project's AVX-512 machines, and each hand-over between
its threads and numba's costs milliseconds on 2 cores; these loops run inside the callers'
own parallel regions instead and compile to packed 512-bit FMAs (140-190 GFLOP/s per core
against OpenBLAS's 100). ``inline="always"`` makes each call site a specialised copy. The bulk
of the convolutions' products now goes through the register tiles of
:mod:`convlayers.kernels.simd` (250-290 GFLOP/s), which call :func:`gemm` and
:func:`gemm_add` for their last rows; the column-range and dot-product forms stay here.

The whole-array kernels and the column-range ones (``*_cols``) look alike on purpose: folding
one into the other (a range ``0..L`` and an ``accumulate`` flag) was measured to make the
strided-conv path (W3 of the benchmark) 1.5x slower, so each keeps its own plain loops.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["gemm", "gemm_add", "gemm_cols", "gemm_nt_add", "gemm_nt_cols_add"]


@njit(cache=True, fastmath=True, inline="always")
def gemm(u, v, m):
    """``m = u @ v`` for C-contiguous 2-D ``u (P, K)``, ``v (K, L)``, ``m (P, L)``."""
    P, K = u.shape
    L = v.shape[1]
    K4 = K - K % 4
    p = 0
    while p < P:
        if p + 4 <= P:
            c0, c1, c2, c3 = m[p], m[p + 1], m[p + 2], m[p + 3]
            u0, u1, u2, u3 = u[p], u[p + 1], u[p + 2], u[p + 3]
            for j in range(L):
                c0[j] = 0
                c1[j] = 0
                c2[j] = 0
                c3[j] = 0
            for k in range(0, K4, 4):
                v0, v1, v2, v3 = v[k], v[k + 1], v[k + 2], v[k + 3]
                a00, a01, a02, a03 = u0[k], u0[k + 1], u0[k + 2], u0[k + 3]
                a10, a11, a12, a13 = u1[k], u1[k + 1], u1[k + 2], u1[k + 3]
                a20, a21, a22, a23 = u2[k], u2[k + 1], u2[k + 2], u2[k + 3]
                a30, a31, a32, a33 = u3[k], u3[k + 1], u3[k + 2], u3[k + 3]
                for j in range(L):
                    x0, x1, x2, x3 = v0[j], v1[j], v2[j], v3[j]
                    c0[j] += a00 * x0 + a01 * x1 + a02 * x2 + a03 * x3
                    c1[j] += a10 * x0 + a11 * x1 + a12 * x2 + a13 * x3
                    c2[j] += a20 * x0 + a21 * x1 + a22 * x2 + a23 * x3
                    c3[j] += a30 * x0 + a31 * x1 + a32 * x2 + a33 * x3
            for k in range(K4, K):
                vk = v[k]
                a0, a1, a2, a3 = u0[k], u1[k], u2[k], u3[k]
                for j in range(L):
                    xk = vk[j]
                    c0[j] += a0 * xk
                    c1[j] += a1 * xk
                    c2[j] += a2 * xk
                    c3[j] += a3 * xk
            p += 4
        else:
            c0 = m[p]
            u0 = u[p]
            for j in range(L):
                c0[j] = 0
            for k in range(K):
                vk = v[k]
                a0 = u0[k]
                for j in range(L):
                    c0[j] += a0 * vk[j]
            p += 1


@njit(cache=True, fastmath=True, inline="always")
def gemm_add(u, v, m):
    """``m += u @ v`` for C-contiguous 2-D ``u (P, K)``, ``v (K, L)``, ``m (P, L)`` (:func:`gemm`,
    accumulating)."""
    P, K = u.shape
    L = v.shape[1]
    K4 = K - K % 4
    p = 0
    while p < P:
        if p + 4 <= P:
            c0, c1, c2, c3 = m[p], m[p + 1], m[p + 2], m[p + 3]
            u0, u1, u2, u3 = u[p], u[p + 1], u[p + 2], u[p + 3]
            for k in range(0, K4, 4):
                v0, v1, v2, v3 = v[k], v[k + 1], v[k + 2], v[k + 3]
                a00, a01, a02, a03 = u0[k], u0[k + 1], u0[k + 2], u0[k + 3]
                a10, a11, a12, a13 = u1[k], u1[k + 1], u1[k + 2], u1[k + 3]
                a20, a21, a22, a23 = u2[k], u2[k + 1], u2[k + 2], u2[k + 3]
                a30, a31, a32, a33 = u3[k], u3[k + 1], u3[k + 2], u3[k + 3]
                for j in range(L):
                    x0, x1, x2, x3 = v0[j], v1[j], v2[j], v3[j]
                    c0[j] += a00 * x0 + a01 * x1 + a02 * x2 + a03 * x3
                    c1[j] += a10 * x0 + a11 * x1 + a12 * x2 + a13 * x3
                    c2[j] += a20 * x0 + a21 * x1 + a22 * x2 + a23 * x3
                    c3[j] += a30 * x0 + a31 * x1 + a32 * x2 + a33 * x3
            for k in range(K4, K):
                vk = v[k]
                a0, a1, a2, a3 = u0[k], u1[k], u2[k], u3[k]
                for j in range(L):
                    xk = vk[j]
                    c0[j] += a0 * xk
                    c1[j] += a1 * xk
                    c2[j] += a2 * xk
                    c3[j] += a3 * xk
            p += 4
        else:
            c0 = m[p]
            u0 = u[p]
            for k in range(K):
                vk = v[k]
                a0 = u0[k]
                for j in range(L):
                    c0[j] += a0 * vk[j]
            p += 1


@njit(cache=True, fastmath=True, inline="always")
def gemm_nt_add(a, b, acc):
    """``acc += a @ b.T`` for ``a (P, L)``, ``b (Q, L)``, ``acc (P, Q)`` (dot products along L)."""
    P, L = a.shape
    Q = b.shape[0]
    zero = np.zeros(1, dtype=a.dtype)[0]
    for p in range(0, P, 2):
        two = p + 1 < P
        a0 = a[p]
        a1 = a[p + 1] if two else a[p]
        for q in range(0, Q, 4):
            if q + 4 <= Q:
                b0, b1, b2, b3 = b[q], b[q + 1], b[q + 2], b[q + 3]
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
                for j in range(L):
                    x0, x1 = a0[j], a1[j]
                    y0, y1, y2, y3 = b0[j], b1[j], b2[j], b3[j]
                    s00 += x0 * y0
                    s01 += x0 * y1
                    s02 += x0 * y2
                    s03 += x0 * y3
                    s10 += x1 * y0
                    s11 += x1 * y1
                    s12 += x1 * y2
                    s13 += x1 * y3
                acc[p, q] += s00
                acc[p, q + 1] += s01
                acc[p, q + 2] += s02
                acc[p, q + 3] += s03
                if two:
                    acc[p + 1, q] += s10
                    acc[p + 1, q + 1] += s11
                    acc[p + 1, q + 2] += s12
                    acc[p + 1, q + 3] += s13
            else:
                for qq in range(q, Q):
                    bq = b[qq]
                    s0 = s1 = zero
                    for j in range(L):
                        s0 += a0[j] * bq[j]
                        s1 += a1[j] * bq[j]
                    acc[p, qq] += s0
                    if two:
                        acc[p + 1, qq] += s1


@njit(cache=True, fastmath=True, inline="always")
def gemm_cols(u, v, m, j0, j1):
    """``m[:, j0:j1] = u @ v[:, j0:j1]`` for C-contiguous ``u (P, K)``, ``v (K, L)``,
    ``m (P, L)`` (:func:`gemm` on a range of columns). The rows
    are sliced (contiguous 1-D views) and the loops start at 0: a ``range(j0, j1)`` loop did
    not vectorise (16 GFLOP/s instead of 170 on one core)."""
    P, K = u.shape
    n = j1 - j0
    K4 = K - K % 4
    p = 0
    while p < P:
        if p + 4 <= P:
            c0, c1, c2, c3 = m[p, j0:j1], m[p + 1, j0:j1], m[p + 2, j0:j1], m[p + 3, j0:j1]
            u0, u1, u2, u3 = u[p], u[p + 1], u[p + 2], u[p + 3]
            for j in range(n):
                c0[j] = 0
                c1[j] = 0
                c2[j] = 0
                c3[j] = 0
            for k in range(0, K4, 4):
                v0, v1 = v[k, j0:j1], v[k + 1, j0:j1]
                v2, v3 = v[k + 2, j0:j1], v[k + 3, j0:j1]
                a00, a01, a02, a03 = u0[k], u0[k + 1], u0[k + 2], u0[k + 3]
                a10, a11, a12, a13 = u1[k], u1[k + 1], u1[k + 2], u1[k + 3]
                a20, a21, a22, a23 = u2[k], u2[k + 1], u2[k + 2], u2[k + 3]
                a30, a31, a32, a33 = u3[k], u3[k + 1], u3[k + 2], u3[k + 3]
                for j in range(n):
                    x0, x1, x2, x3 = v0[j], v1[j], v2[j], v3[j]
                    c0[j] += a00 * x0 + a01 * x1 + a02 * x2 + a03 * x3
                    c1[j] += a10 * x0 + a11 * x1 + a12 * x2 + a13 * x3
                    c2[j] += a20 * x0 + a21 * x1 + a22 * x2 + a23 * x3
                    c3[j] += a30 * x0 + a31 * x1 + a32 * x2 + a33 * x3
            for k in range(K4, K):
                vk = v[k, j0:j1]
                a0, a1, a2, a3 = u0[k], u1[k], u2[k], u3[k]
                for j in range(n):
                    xk = vk[j]
                    c0[j] += a0 * xk
                    c1[j] += a1 * xk
                    c2[j] += a2 * xk
                    c3[j] += a3 * xk
            p += 4
        else:
            c0 = m[p, j0:j1]
            u0 = u[p]
            for j in range(n):
                c0[j] = 0
            for k in range(K):
                vk = v[k, j0:j1]
                a0 = u0[k]
                for j in range(n):
                    c0[j] += a0 * vk[j]
            p += 1


@njit(cache=True, fastmath=True, inline="always")
def gemm_nt_cols_add(a, b, acc, j0, j1):
    """``acc += a[:, j0:j1] @ b[:, j0:j1].T`` for ``a (P, L)``, ``b (Q, L)``, ``acc (P, Q)``."""
    P = a.shape[0]
    Q = b.shape[0]
    zero = np.zeros(1, dtype=a.dtype)[0]
    for p in range(0, P, 2):
        two = p + 1 < P
        a0 = a[p, j0:j1]
        a1 = a[p + 1, j0:j1] if two else a0
        for q in range(0, Q, 4):
            if q + 4 <= Q:
                b0, b1 = b[q, j0:j1], b[q + 1, j0:j1]
                b2, b3 = b[q + 2, j0:j1], b[q + 3, j0:j1]
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
                for j in range(j1 - j0):
                    x0, x1 = a0[j], a1[j]
                    y0, y1, y2, y3 = b0[j], b1[j], b2[j], b3[j]
                    s00 += x0 * y0
                    s01 += x0 * y1
                    s02 += x0 * y2
                    s03 += x0 * y3
                    s10 += x1 * y0
                    s11 += x1 * y1
                    s12 += x1 * y2
                    s13 += x1 * y3
                acc[p, q] += s00
                acc[p, q + 1] += s01
                acc[p, q + 2] += s02
                acc[p, q + 3] += s03
                if two:
                    acc[p + 1, q] += s10
                    acc[p + 1, q + 1] += s11
                    acc[p + 1, q + 2] += s12
                    acc[p + 1, q + 3] += s13
            else:
                for qq in range(q, Q):
                    bq = b[qq, j0:j1]
                    s0 = s1 = zero
                    for j in range(j1 - j0):
                        s0 += a0[j] * bq[j]
                        s1 += a1[j] * bq[j]
                    acc[p, qq] += s0
                    if two:
                        acc[p + 1, qq] += s1
