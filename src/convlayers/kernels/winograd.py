"""Numba transforms of Winograd F(2x2, 3x3) (Lavin & Gray, 2016) for 3x3 stride-1 convolutions.

A 2x2 output tile is ``Y = A^T [(G g G^T) * (B^T d B)] A`` where ``d`` is the 4x4 input patch
the tile reads (tiles overlap by two pixels) and ``g`` the 3x3 kernel. The 16 elementwise
products become 16 GEMMs over channels once the transforms are laid out as
``(16, channels, tiles)`` with the tiles of a unit of images side by side (column
``(n*TH + th)*TW + tw``): the engine runs them through ``np.matmul`` (``U[e] (C_out, C_in) @
V[e] (C_in, tiles)``, batched over groups) and these kernels do everything else. ``B^T``/``A^T``
hold only 0 and +-1, so both transforms are additions.

Padding is read by bounds: each plane is copied once into a zero-bordered scratch plane of
``2*TH + 2`` by ``2*TW + 2`` (``TH, TW`` the tile counts), so the caller never pads the input.
The backward kernels are the exact adjoints (``dM = A dY A^T``; ``dd = B dV B^T`` added onto
the overlapping patches), so the gradients of the Winograd forward come from the same layout:
``dV = U^T dM`` gives the input gradient and ``dU = dM V^T`` the weight gradient, sharing one
input transform and one output-gradient transform.

Every kernel ``prange``\\ s over (image, channel) planes of a chunk; each plane writes only its own
rows of the transform (or its own output plane), so threads never share memory.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["input_grad_transform", "input_transform", "output_grad_transform", "output_transform"]


@njit(cache=True, fastmath=True, inline="always")
def _fill_plane(src, pt, pl, plane):
    """Zero ``plane`` and copy ``src`` (one unpadded image plane) in at offset ``(pt, pl)``."""
    P, Q = plane.shape
    H, W = src.shape
    plane[:] = 0
    for r in range(H):
        pr = r + pt
        if pr < 0 or pr >= P:
            continue
        c_lo = max(0, -pl)
        c_hi = min(W, Q - pl)
        for c in range(c_lo, c_hi):
            plane[pr, c + pl] = src[r, c]


@njit(parallel=True, cache=True, fastmath=True)
def input_transform(x, pt, pl, th0, TH, TW, v):
    """``V = B^T d B`` of tile rows ``th0 .. th0 + TH`` of ``x`` ``(nb, C, H, W)`` into ``v``
    ``(16, C, nb*TH*TW)``.

    Tile ``(th0 + th, tw)`` of image ``n`` reads padded rows ``2*(th0 + th) .. + 3`` (input rows
    shifted up by the top padding ``pt``) and lands in column ``(n*TH + th)*TW + tw``.
    """
    nb, C = x.shape[0], x.shape[1]
    for q in prange(nb * C):
        n = q // C
        c = q - n * C
        plane = np.empty((2 * TH + 2, 2 * TW + 2), dtype=x.dtype)
        _fill_plane(x[n, c], pt - 2 * th0, pl, plane)
        t1 = np.empty((4, 2 * TW + 2), dtype=x.dtype)
        for th in range(TH):
            r = 2 * th
            # rows first (contiguous, vectorises): t1 = B^T d over whole padded rows
            for j in range(2 * TW + 2):
                d0 = plane[r, j]
                d1 = plane[r + 1, j]
                d2 = plane[r + 2, j]
                d3 = plane[r + 3, j]
                t1[0, j] = d0 - d2
                t1[1, j] = d1 + d2
                t1[2, j] = d2 - d1
                t1[3, j] = d1 - d3
            base = (n * TH + th) * TW
            for i in range(4):
                row = t1[i]
                o0 = v[4 * i, c]
                o1 = v[4 * i + 1, c]
                o2 = v[4 * i + 2, c]
                o3 = v[4 * i + 3, c]
                for tw in range(TW):
                    s = 2 * tw
                    a0 = row[s]
                    a1 = row[s + 1]
                    a2 = row[s + 2]
                    a3 = row[s + 3]
                    o0[base + tw] = a0 - a2
                    o1[base + tw] = a1 + a2
                    o2[base + tw] = a2 - a1
                    o3[base + tw] = a1 - a3


@njit(parallel=True, cache=True, fastmath=True)
def output_transform(m, bias, th0, TH, TW, out):
    """``Y = A^T M A`` (+ bias) from ``m`` ``(16, C_out, nb*TH*TW)`` into output rows
    ``2*th0 ..`` of ``out`` ``(nb, C_out, Ho, Wo)``. ``bias`` has ``C_out`` entries or none."""
    nb, C = out.shape[0], out.shape[1]
    Ho, Wo = out.shape[2], out.shape[3]
    has_bias = bias.shape[0] > 0
    zero = np.zeros(1, dtype=out.dtype)[0]
    for q in prange(nb * C):
        n = q // C
        c = q - n * C
        b = bias[c] if has_bias else zero
        mm = m
        for th in range(TH):
            base = (n * TH + th) * TW
            r0 = 2 * (th0 + th)
            if r0 >= Ho:
                break
            orow0 = out[n, c, r0]
            two = r0 + 1 < Ho
            orow1 = out[n, c, r0 + 1] if two else orow0
            for tw in range(TW):
                t = base + tw
                m00, m01, m02, m03 = mm[0, c, t], mm[1, c, t], mm[2, c, t], mm[3, c, t]
                m10, m11, m12, m13 = mm[4, c, t], mm[5, c, t], mm[6, c, t], mm[7, c, t]
                m20, m21, m22, m23 = mm[8, c, t], mm[9, c, t], mm[10, c, t], mm[11, c, t]
                m30, m31, m32, m33 = mm[12, c, t], mm[13, c, t], mm[14, c, t], mm[15, c, t]
                s00 = m00 + m10 + m20
                s01 = m01 + m11 + m21
                s02 = m02 + m12 + m22
                s03 = m03 + m13 + m23
                s10 = m10 - m20 - m30
                s11 = m11 - m21 - m31
                s12 = m12 - m22 - m32
                s13 = m13 - m23 - m33
                col = 2 * tw
                orow0[col] = s00 + s01 + s02 + b
                if two:
                    orow1[col] = s10 + s11 + s12 + b
                if col + 1 < Wo:
                    orow0[col + 1] = s01 - s02 - s03 + b
                    if two:
                        orow1[col + 1] = s11 - s12 - s13 + b


@njit(parallel=True, cache=True, fastmath=True)
def output_grad_transform(gy, th0, TH, TW, dm):
    """Adjoint of :func:`output_transform`: ``dM = A dY A^T`` of tile rows ``th0 ..`` of ``gy``
    into ``dm`` ``(16, C_out, nb*TH*TW)``."""
    nb, C = gy.shape[0], gy.shape[1]
    Ho, Wo = gy.shape[2], gy.shape[3]
    zero = np.zeros(1, dtype=gy.dtype)[0]
    for q in prange(nb * C):
        n = q // C
        c = q - n * C
        d = dm
        for th in range(TH):
            base = (n * TH + th) * TW
            r0 = 2 * (th0 + th)
            two = r0 + 1 < Ho
            for tw in range(TW):
                t = base + tw
                col = 2 * tw
                wide = col + 1 < Wo
                p = gy[n, c, r0, col]
                qq = gy[n, c, r0, col + 1] if wide else zero
                r = gy[n, c, r0 + 1, col] if two else zero
                s = gy[n, c, r0 + 1, col + 1] if (two and wide) else zero
                # u_i = A[i, 0] * dY[0, :] + A[i, 1] * dY[1, :]
                u00, u01 = p, qq
                u10, u11 = p + r, qq + s
                u20, u21 = p - r, qq - s
                u30, u31 = -r, -s
                d[0, c, t] = u00
                d[1, c, t] = u00 + u01
                d[2, c, t] = u00 - u01
                d[3, c, t] = -u01
                d[4, c, t] = u10
                d[5, c, t] = u10 + u11
                d[6, c, t] = u10 - u11
                d[7, c, t] = -u11
                d[8, c, t] = u20
                d[9, c, t] = u20 + u21
                d[10, c, t] = u20 - u21
                d[11, c, t] = -u21
                d[12, c, t] = u30
                d[13, c, t] = u30 + u31
                d[14, c, t] = u30 - u31
                d[15, c, t] = -u31


@njit(parallel=True, cache=True, fastmath=True)
def input_grad_transform(dv, pt, pl, th0, TH, TW, gx):
    """Adjoint of :func:`input_transform`: ``B dV B^T`` of tile rows ``th0 ..`` (``dv``
    ``(16, C, nb*TH*TW)``) added onto their patches, the unpadded part *added* into ``gx``
    ``(nb, C, H, W)`` (slabs of tile rows overlap by two input rows)."""
    nb, C = gx.shape[0], gx.shape[1]
    H, W = gx.shape[2], gx.shape[3]
    top = pt - 2 * th0  # plane row of input row 0
    for q in prange(nb * C):
        n = q // C
        c = q - n * C
        P, Q = 2 * TH + 2, 2 * TW + 2
        plane = np.zeros((P, Q), dtype=gx.dtype)
        t1 = np.empty((4, Q), dtype=gx.dtype)
        for th in range(TH):
            base = (n * TH + th) * TW
            t1[:] = 0
            # columns: for each row i of dV, w_s = sum_j B^T[j, s] dV[i, j], added over tiles
            for i in range(4):
                e0 = dv[4 * i, c]
                e1 = dv[4 * i + 1, c]
                e2 = dv[4 * i + 2, c]
                e3 = dv[4 * i + 3, c]
                row = t1[i]
                for tw in range(TW):
                    t = base + tw
                    a0, a1, a2, a3 = e0[t], e1[t], e2[t], e3[t]
                    s = 2 * tw
                    row[s] += a0
                    row[s + 1] += a1 - a2 + a3
                    row[s + 2] += a1 + a2 - a0
                    row[s + 3] -= a3
            # rows: dd_r = sum_i B^T[i, r] w_i
            r = 2 * th
            for j in range(Q):
                w0, w1, w2, w3 = t1[0, j], t1[1, j], t1[2, j], t1[3, j]
                plane[r, j] += w0
                plane[r + 1, j] += w1 - w2 + w3
                plane[r + 2, j] += w1 + w2 - w0
                plane[r + 3, j] -= w3
        c_lo = max(0, -pl)
        c_hi = min(W, Q - pl)
        for pr in range(max(0, top), min(P, top + H)):
            dst = gx[n, c, pr - top]
            src = plane[pr]
            for cc in range(c_lo, c_hi):
                dst[cc] += src[cc + pl]
