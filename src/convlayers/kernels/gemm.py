"""A dot-product matrix-multiply loop in plain numba, inside the callers' parallel regions.

``acc += a[:, j0:j1] @ b[:, j0:j1].T`` with both operands read along their rows (the 1x1 weight
gradient: output gradient by input, summed over a block of pixels). Plain products ``u @ v`` go
through the register tiles of :mod:`convlayers.kernels.simd`. No BLAS: each hand-over between
OpenBLAS's threads and numba's costs milliseconds on 2 cores. ``inline="always"`` makes each
call site a specialised copy.
"""

from __future__ import annotations

from numba import njit

from convlayers.kernels._bounds import typed_zero

__all__ = ["gemm_nt_cols_add"]


@njit(cache=True, fastmath=True, inline="always")
def gemm_nt_cols_add(a, b, acc, j0, j1):
    """``acc += a[:, j0:j1] @ b[:, j0:j1].T`` for ``a (P, L)``, ``b (Q, L)``, ``acc (P, Q)``."""
    P = a.shape[0]
    Q = b.shape[0]
    zero = typed_zero(a)
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
