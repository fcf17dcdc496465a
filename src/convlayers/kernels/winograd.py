"""Numba kernels of Winograd F(2x2, 3x3) (Lavin & Gray, 2016) for 3x3 stride-1 convolutions.

A 2x2 output tile is ``Y = A^T [(G g G^T) * (B^T d B)] A`` where ``d`` is the 4x4 input patch
the tile reads (tiles overlap by two pixels) and ``g`` the 3x3 kernel. The 16 elementwise
products become 16 GEMMs over channels once the transforms are laid out as ``(16, channels,
tiles)``. ``B^T``/``A^T`` hold only 0 and +-1, so both transforms are additions.

Padding is read by bounds: each block's rows are copied into zero-bordered scratch, so the
caller never pads the input. The backward kernel is the exact adjoint (``dM = A dY A^T``;
``dd = B dV B^T`` added onto the overlapping patches): ``dV = U^T dM`` gives the input gradient
and ``dU = dM V^T`` the weight gradient, sharing one input transform and one output-gradient
transform.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from convlayers.kernels.simd import gemm_tiled, gemm_tiled_add

__all__ = ["backward_fused", "forward_fused", "weight_grad_transform", "weight_transform"]


# ----------------------------------------------------------------------------- weights
#
# ``U = G g G^T`` with ``G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]``, and its
# adjoint ``dg = G^T dU G``, per (output, input) channel pair, in float64.


@njit(cache=True, inline="always")
def _g_rows(a, b, c):
    """``G @ (a, b, c)``."""
    return a, 0.5 * (a + b + c), 0.5 * (a - b + c), c


@njit(cache=True, inline="always")
def _gt_rows(d0, d1, d2, d3):
    """``G^T @ (d0, d1, d2, d3)``."""
    return d0 + 0.5 * (d1 + d2), 0.5 * (d1 - d2), 0.5 * (d1 + d2) + d3


@njit(parallel=True, cache=True)
def weight_transform(w, u):
    """``u (16, C_out*C_in/g)`` := ``G g G^T`` of each 3x3 kernel of ``w (C_out*C_in/g, 9)``
    (element ``4*i + j`` of the 4x4 result at ``u[4*i + j]``), summed in float64, a block of
    kernels at a time (the 16 results of one kernel land 16 planes apart: written one by one
    they took 4 ms for 256x256 channels, in runs of a block 0.5 ms)."""
    Q = w.shape[0]
    blk = 128
    for q0 in prange((Q + blk - 1) // blk):
        lo = q0 * blk
        n = min(blk, Q - lo)
        t = np.empty((16, blk))
        for q in range(n):
            g = w[lo + q]
            a0, a1, a2, a3 = _g_rows(np.float64(g[0]), np.float64(g[3]), np.float64(g[6]))
            b0, b1, b2, b3 = _g_rows(np.float64(g[1]), np.float64(g[4]), np.float64(g[7]))
            c0, c1, c2, c3 = _g_rows(np.float64(g[2]), np.float64(g[5]), np.float64(g[8]))
            t[0, q], t[1, q], t[2, q], t[3, q] = _g_rows(a0, b0, c0)
            t[4, q], t[5, q], t[6, q], t[7, q] = _g_rows(a1, b1, c1)
            t[8, q], t[9, q], t[10, q], t[11, q] = _g_rows(a2, b2, c2)
            t[12, q], t[13, q], t[14, q], t[15, q] = _g_rows(a3, b3, c3)
        for k in range(16):
            dst = u[k, lo: lo + n]
            src = t[k]
            for q in range(n):
                dst[q] = src[q]


@njit(parallel=True, cache=True)
def weight_grad_transform(du, gw):
    """``gw (C_out, C_in/g, 3, 3)`` := ``G^T dU G`` of ``du (16, C_out, C_in/g)`` (float64)."""
    Co, Ci = gw.shape[0], gw.shape[1]
    for o in prange(Co):
        for c in range(Ci):
            # columns j of G^T dU: (s0, s1, s2) per j
            a0, a1, a2 = _gt_rows(du[0, o, c], du[4, o, c], du[8, o, c], du[12, o, c])
            b0, b1, b2 = _gt_rows(du[1, o, c], du[5, o, c], du[9, o, c], du[13, o, c])
            c0, c1, c2 = _gt_rows(du[2, o, c], du[6, o, c], du[10, o, c], du[14, o, c])
            d0, d1, d2 = _gt_rows(du[3, o, c], du[7, o, c], du[11, o, c], du[15, o, c])
            gw[o, c, 0, 0], gw[o, c, 0, 1], gw[o, c, 0, 2] = _gt_rows(a0, b0, c0, d0)
            gw[o, c, 1, 0], gw[o, c, 1, 1], gw[o, c, 1, 2] = _gt_rows(a1, b1, c1, d1)
            gw[o, c, 2, 0], gw[o, c, 2, 1], gw[o, c, 2, 2] = _gt_rows(a2, b2, c2, d2)


# ----------------------------------------------------------------------------- fused, blocked
#
# The kernels below run a whole Winograd convolution in one parallel region: each unit of work is
# a block of tile rows of one image (forward: and a block of output channels; backward: a block
# of input channels of one group), whose transforms (16 x channels x block tiles, a few hundred
# KiB) stay in the core's cache between the input transform, the 16 products and the output
# transform. The products are the register-tiled GEMM of :mod:`convlayers.kernels.simd`, so no
# BLAS call and no hand-over between thread pools happens inside the convolution. Units
# are handed out one at a time (``parallel_chunksize(1)``) so a core slowed by a neighbour takes
# fewer (the engine sets it: a ``with`` inside would make the kernels uncachable); each thread
# owns its scratch (``get_thread_id``).


@njit(cache=True, fastmath=True)
def _input_block(xn, pt, pl, th0, rows, TW, v, plane, t1):
    """``V = B^T d B`` of tile rows ``th0 .. th0 + rows`` of one image ``xn (C, H, W)`` into
    ``v (16, C, >= rows*TW)`` (column ``th*TW + tw``): tile ``(th0 + th, tw)`` reads padded rows
    ``2*(th0 + th) .. + 3`` (input rows shifted by the top padding ``pt``)."""
    C, H, W = xn.shape
    P, Q = 2 * rows + 2, 2 * TW + 2
    top = pt - 2 * th0
    c_lo, c_hi = max(0, -pl), min(W, Q - pl)
    for c in range(C):
        src = xn[c]
        for pr in range(P):
            prow = plane[pr]
            for j in range(Q):
                prow[j] = 0
            ir = pr - top
            if 0 <= ir < H:
                s_row, d_row = src[ir, c_lo:c_hi], prow[c_lo + pl: c_hi + pl]
                for cc in range(c_hi - c_lo):  # slices from 0: no index wraparound check
                    d_row[cc] = s_row[cc]
        for th in range(rows):
            r = 2 * th
            for j in range(Q):
                d0 = plane[r, j]
                d1 = plane[r + 1, j]
                d2 = plane[r + 2, j]
                d3 = plane[r + 3, j]
                t1[0, j] = d0 - d2
                t1[1, j] = d1 + d2
                t1[2, j] = d2 - d1
                t1[3, j] = d1 - d3
            base = th * TW
            for i in range(4):
                row = t1[i]
                o0, o1, o2, o3 = v[4 * i, c], v[4 * i + 1, c], v[4 * i + 2, c], v[4 * i + 3, c]
                for tw in range(TW):
                    s = 2 * tw
                    a0, a1, a2, a3 = row[s], row[s + 1], row[s + 2], row[s + 3]
                    o0[base + tw] = a0 - a2
                    o1[base + tw] = a1 + a2
                    o2[base + tw] = a2 - a1
                    o3[base + tw] = a1 - a3


@njit(cache=True, fastmath=True)
def _input_block_flat(xn, pt, pl, th0, rows, TW, v, even, odd, h_even, h_odd):
    """:func:`_input_block` laid out for long loops: tile row ``th`` of ``v (16, C, rows*S)``
    (``S = TW + 1``) at columns ``th*S .. th*S + TW``, the last column of each row unused.

    The even and odd rows of the zero-padded plane go to separate buffers of row stride
    ``Q = 2*S``, so the horizontal transform of all rows is one loop whose tile ``m`` reads
    ``buffer[2m .. 2m+3]``, and the vertical one another whose tile ``l`` reads rows ``l`` and
    ``l + S`` of the even and odd results: loops of hundreds of elements that LLVM
    vectorises, where the per-tile-row loops of :func:`_input_block` (28 tiles on a 56-pixel
    map) ran in their scalar remainder (measured: the transform took 2/3 of a 64-channel
    forward). The sums are the same as :func:`_input_block`'s, in another order."""
    C, H, W = xn.shape
    S = TW + 1
    Q = 2 * S
    P = 2 * rows + 2
    half = rows + 1
    top = pt - 2 * th0
    c_lo, c_hi = max(0, -pl), min(W, Q - pl)
    n_h = half * S
    n_v = rows * S
    for c in range(C):
        src = xn[c]
        even[:] = 0
        odd[:] = 0
        for pr in range(max(0, top), min(P, top + H)):
            base = (pr // 2) * Q + pl
            # slices from 0: numba's index wraparound check kept the copy scalar (5x slower)
            s_row = src[pr - top, c_lo:c_hi]
            d_row = even[base + c_lo: base + c_hi] if pr % 2 == 0 else odd[base + c_lo: base + c_hi]
            for cc in range(c_hi - c_lo):
                d_row[cc] = s_row[cc]
        for buf, h in ((even, h_even), (odd, h_odd)):
            h0, h1, h2, h3 = h[0], h[1], h[2], h[3]
            for t in range(n_h):
                a0, a1, a2, a3 = buf[2 * t], buf[2 * t + 1], buf[2 * t + 2], buf[2 * t + 3]
                h0[t] = a0 - a2
                h1[t] = a1 + a2
                h2[t] = a2 - a1
                h3[t] = a1 - a3
        for k in range(4):
            e_lo, o_lo = h_even[k, :n_v], h_odd[k, :n_v]
            e_hi, o_hi = h_even[k, S: S + n_v], h_odd[k, S: S + n_v]
            v0, v1, v2, v3 = v[k, c], v[4 + k, c], v[8 + k, c], v[12 + k, c]
            for t in range(n_v):
                d0, d1, d2, d3 = e_lo[t], o_lo[t], e_hi[t], o_hi[t]
                v0[t] = d0 - d2
                v1[t] = d1 + d2
                v2[t] = d2 - d1
                v3[t] = d1 - d3


@njit(cache=True, fastmath={"reassoc", "contract"})
def _any_nonfinite(a):
    """Whether ``a`` (1-D) holds an inf or NaN: ``sum(a * 0)`` is NaN exactly then. Compiled
    without fastmath's no-NaN/no-inf flags, which would fold ``a * 0`` to zero; ``reassoc``
    lets the sum vectorise."""
    zero = np.zeros(1, dtype=a.dtype)[0]
    s = zero
    for i in range(a.shape[0]):
        s += a[i] * zero
    return s != s


@njit(cache=True, fastmath=True)
def _output_block_flat(m, bias, th0, rows, TW, outn, sums, pairs):
    """``Y = A^T M A`` of one block (``m (16, C_out, >= rows*S)``, the layout of
    :func:`_input_block_flat`: tile row ``th`` at columns ``th*S ..``, ``S = TW + 1``) into
    ``outn``, plus the bias, as flat loops over the whole block: the column sums ``A^T`` into
    ``sums (8, >= rows*S)``, the row sums of each output-row parity into ``pairs (2, >=
    2*rows*S)`` (tile ``l`` at ``2l, 2l + 1``, so each output row is one run of ``pairs``),
    then one contiguous copy per output row. Returns whether any output was inf or NaN (the
    engine then recomputes the call by another strategy: the transforms can turn an inf into
    NaN, or overflow, where a direct sum does not)."""
    C, Ho, Wo = outn.shape
    bad = False
    S = TW + 1
    n_v = rows * S
    has_bias = bias.shape[0] > 0
    zero = np.zeros(1, dtype=outn.dtype)[0]
    for c in range(C):
        b = bias[c] if has_bias else zero
        for k in range(4):
            m0, m1 = m[k, c, :n_v], m[4 + k, c, :n_v]
            m2, m3 = m[8 + k, c, :n_v], m[12 + k, c, :n_v]
            s0, s1 = sums[k, :n_v], sums[4 + k, :n_v]
            for t in range(n_v):
                s0[t] = m0[t] + m1[t] + m2[t]
                s1[t] = m1[t] - m2[t] - m3[t]
        for h in range(2):
            a0, a1 = sums[4 * h, :n_v], sums[4 * h + 1, :n_v]
            a2, a3 = sums[4 * h + 2, :n_v], sums[4 * h + 3, :n_v]
            y = pairs[h, : 2 * n_v]
            for t in range(n_v):
                y[2 * t] = a0[t] + a1[t] + a2[t] + b
                y[2 * t + 1] = a1[t] - a2[t] - a3[t] + b
            for th in range(rows):
                r = 2 * (th0 + th) + h
                if r >= Ho:
                    break
                src, dst = y[th * 2 * S: th * 2 * S + Wo], outn[c, r]
                for j in range(Wo):
                    dst[j] = src[j]
                if _any_nonfinite(src):
                    bad = True
    return bad


@njit(cache=True, fastmath=True)
def _output_grad_block(gyn, th0, rows, TW, dm):
    """The adjoint of the output transform, ``dM = A dY A^T``, of one block of ``gyn (C_out,
    Ho, Wo)`` into ``dm (16, C_out, >= rows*TW)``.

    Four loops over the full tiles of a tile row, each writing four rows of ``dm``: one loop
    writing all sixteen did not vectorise and ran 50x slower (measured on Zen 5)."""
    C, Ho, Wo = gyn.shape
    nf = Wo // 2
    zrow = np.zeros(Wo, dtype=gyn.dtype)
    zero = zrow[0]
    for c in range(C):
        g = gyn[c]
        for th in range(rows):
            base = th * TW
            r0 = 2 * (th0 + th)
            g0 = g[r0]
            g1 = g[r0 + 1] if r0 + 1 < Ho else zrow
            e0, e1, e2, e3 = (dm[0, c, base : base + TW], dm[1, c, base : base + TW],
                              dm[2, c, base : base + TW], dm[3, c, base : base + TW])
            for tw in range(nf):
                p, qq = g0[2 * tw], g0[2 * tw + 1]
                e0[tw] = p
                e1[tw] = p + qq
                e2[tw] = p - qq
                e3[tw] = -qq
            e0, e1, e2, e3 = (dm[4, c, base : base + TW], dm[5, c, base : base + TW],
                              dm[6, c, base : base + TW], dm[7, c, base : base + TW])
            for tw in range(nf):
                u10 = g0[2 * tw] + g1[2 * tw]
                u11 = g0[2 * tw + 1] + g1[2 * tw + 1]
                e0[tw] = u10
                e1[tw] = u10 + u11
                e2[tw] = u10 - u11
                e3[tw] = -u11
            e0, e1, e2, e3 = (dm[8, c, base : base + TW], dm[9, c, base : base + TW],
                              dm[10, c, base : base + TW], dm[11, c, base : base + TW])
            for tw in range(nf):
                u20 = g0[2 * tw] - g1[2 * tw]
                u21 = g0[2 * tw + 1] - g1[2 * tw + 1]
                e0[tw] = u20
                e1[tw] = u20 + u21
                e2[tw] = u20 - u21
                e3[tw] = -u21
            e0, e1, e2, e3 = (dm[12, c, base : base + TW], dm[13, c, base : base + TW],
                              dm[14, c, base : base + TW], dm[15, c, base : base + TW])
            for tw in range(nf):
                r, s = g1[2 * tw], g1[2 * tw + 1]
                e0[tw] = -r
                e1[tw] = -r - s
                e2[tw] = s - r
                e3[tw] = s
            if nf < TW:  # odd width: the last tile's right column is outside
                t = base + nf
                p, r = g0[2 * nf], g1[2 * nf]
                u10, u20 = p + r, p - r
                dm[0, c, t] = p
                dm[1, c, t] = p
                dm[2, c, t] = p
                dm[3, c, t] = zero
                dm[4, c, t] = u10
                dm[5, c, t] = u10
                dm[6, c, t] = u10
                dm[7, c, t] = zero
                dm[8, c, t] = u20
                dm[9, c, t] = u20
                dm[10, c, t] = u20
                dm[11, c, t] = zero
                dm[12, c, t] = -r
                dm[13, c, t] = -r
                dm[14, c, t] = -r
                dm[15, c, t] = zero


@njit(cache=True, fastmath=True)
def _input_grad_block(dv, pt, pl, th0, rows, TW, gxn, plane, t1):
    """The adjoint of :func:`_input_block`, ``B dV B^T`` of one block, *added* into the
    unpadded ``gxn (C, H, W)`` (blocks of tile rows overlap by two input rows)."""
    C, H, W = gxn.shape
    P, Q = 2 * rows + 2, 2 * TW + 2
    top = pt - 2 * th0
    c_lo, c_hi = max(0, -pl), min(W, Q - pl)
    for c in range(C):
        for pr in range(P):
            for j in range(Q):
                plane[pr, j] = 0
        for th in range(rows):
            base = th * TW
            # Columns 2k and 2k+1 of a row of t1 gather tile k and tile k-1 (no overlapping
            # read-modify-writes, so the loop vectorises); then each plane row in its own loop.
            for i in range(4):
                e0 = dv[4 * i, c, base : base + TW]
                e1 = dv[4 * i + 1, c, base : base + TW]
                e2 = dv[4 * i + 2, c, base : base + TW]
                e3 = dv[4 * i + 3, c, base : base + TW]
                row = t1[i]
                row[0] = e0[0]
                row[1] = e1[0] - e2[0] + e3[0]
                for k in range(TW - 1):
                    row[2 * k + 2] = e0[k + 1] + (e1[k] + e2[k] - e0[k])
                    row[2 * k + 3] = (e1[k + 1] - e2[k + 1] + e3[k + 1]) - e3[k]
                row[2 * TW] = e1[TW - 1] + e2[TW - 1] - e0[TW - 1]
                row[2 * TW + 1] = -e3[TW - 1]
            r = 2 * th
            w0, w1, w2, w3 = t1[0], t1[1], t1[2], t1[3]
            prow = plane[r]
            for j in range(Q):
                prow[j] += w0[j]
            prow = plane[r + 1]
            for j in range(Q):
                prow[j] += w1[j] - w2[j] + w3[j]
            prow = plane[r + 2]
            for j in range(Q):
                prow[j] += w1[j] + w2[j] - w0[j]
            prow = plane[r + 3]
            for j in range(Q):
                prow[j] -= w3[j]
        for pr in range(max(0, top), min(P, top + H)):
            dst = gxn[c, pr - top]
            src = plane[pr]
            for cc in range(c_lo, c_hi):
                dst[cc] += src[cc + pl]


@njit(parallel=True, cache=True, fastmath=True)
def forward_fused(x, u, bias, pt, pl, R, B, nt, out, bad):
    """The whole Winograd forward: ``out (N, C_out, Ho, Wo)`` from ``x (N, C_in, H, W)`` and
    ``u (16, groups, C_out/g, C_in/g)`` (+ ``bias``, possibly empty), in units of ``R`` tile
    rows by ``B`` output channels (of every group) of one image, with scratch for ``nt``
    threads (numba's current thread count). ``bad[t]`` (``nt`` flags, zeroed by the caller) is
    set when thread ``t`` wrote an inf or NaN."""
    N, C = x.shape[0], x.shape[1]
    G, Cog, Cig = u.shape[1], u.shape[2], u.shape[3]
    Ho, Wo = out.shape[2], out.shape[3]
    TH, TW = (Ho + 1) // 2, (Wo + 1) // 2
    R = min(R, TH)
    nb = (TH + R - 1) // R
    ncb = (Cog + B - 1) // B
    S = TW + 1  # tile rows of the transforms have one spare column (see _input_block_flat)
    L = R * S
    vbuf = np.empty((nt, 16 * C * L), dtype=x.dtype)
    mbuf = np.empty((nt, 16 * B * L), dtype=x.dtype)
    ebuf = np.empty((nt, (R + 1) * 2 * S + 2), dtype=x.dtype)
    obuf = np.empty((nt, (R + 1) * 2 * S + 2), dtype=x.dtype)
    hbuf = np.empty((nt, 2, 4, (R + 1) * S), dtype=x.dtype)
    sbuf = np.empty((nt, 8, L), dtype=x.dtype)
    ybuf = np.empty((nt, 2, 2 * L), dtype=x.dtype)
    for unit in prange(N * nb * ncb):
        t = numba.get_thread_id()
        n = unit // (nb * ncb)
        rest = unit - n * (nb * ncb)
        blk = rest // ncb
        co0 = (rest - blk * ncb) * B
        cos = min(B, Cog - co0)
        th0 = blk * R
        rows = min(R, TH - th0)
        lb = rows * S
        v = vbuf[t, : 16 * C * lb].reshape(16, C, lb)
        v4 = vbuf[t, : 16 * C * lb].reshape(16, G, Cig, lb)
        m = mbuf[t, : 16 * cos * lb].reshape(16, cos, lb)
        _input_block_flat(x[n], pt, pl, th0, rows, TW, v, ebuf[t], obuf[t], hbuf[t, 0],
                          hbuf[t, 1])
        for g in range(G):
            for e in range(16):
                gemm_tiled(u[e, g, co0: co0 + cos], v4[e, g], m[e])
            c0 = g * Cog + co0
            if _output_block_flat(m, bias[c0: c0 + cos], th0, rows, TW, out[n, c0: c0 + cos],
                                  sbuf[t], ybuf[t]):
                bad[t] = True


@njit(parallel=True, cache=True, fastmath=True)
def backward_fused(x, gy, ut, pt, pl, R, B, gx, gut, bad):
    """Both gradients of :func:`forward_fused`'s convolution in units of ``B`` input channels of
    one group of one image (each input plane has one owner; the unit's blocks of ``R`` tile rows
    go in order, so their overlapping input rows never race): ``gx (N, C_in, H, W)`` is
    *overwritten*; ``gut (threads, 16, groups, C_in/g, C_out/g)`` receives each thread's ``sum
    V dM^T`` (``dU^T``; the caller sums over threads). ``ut`` is ``U^T``, ``(16, groups, C_in/g,
    C_out/g)``. ``bad[t]`` (zeroed by the caller) is set when thread ``t`` wrote an inf or NaN
    into ``gx``."""
    N, H, W = x.shape[0], x.shape[2], x.shape[3]
    G, Cig, Cog = ut.shape[1], ut.shape[2], ut.shape[3]
    Ho, Wo = gy.shape[2], gy.shape[3]
    TH, TW = (Ho + 1) // 2, (Wo + 1) // 2
    R = min(R, TH)
    nb = (TH + R - 1) // R
    ncb = (Cig + B - 1) // B
    L = R * TW
    nt = gut.shape[0]
    vbuf = np.empty((nt, 16 * B * L), dtype=x.dtype)
    dvbuf = np.empty((nt, 16 * B * L), dtype=x.dtype)
    mbuf = np.empty((nt, 16 * Cog * L), dtype=x.dtype)
    tbuf = np.empty((nt, L * Cog), dtype=x.dtype)
    pbuf = np.empty((nt, 2 * R + 2, 2 * TW + 2), dtype=x.dtype)
    qbuf = np.empty((nt, 4, 2 * TW + 2), dtype=x.dtype)
    gut[:] = 0
    for unit in prange(N * G * ncb):
        t = numba.get_thread_id()
        n = unit // (G * ncb)
        rest = unit - n * (G * ncb)
        g = rest // ncb
        ci0 = (rest - g * ncb) * B
        cis = min(B, Cig - ci0)
        c0 = g * Cig + ci0
        xs = x[n, c0: c0 + cis]
        gxs = gx[n, c0: c0 + cis]
        gys = gy[n, g * Cog: (g + 1) * Cog]
        for c in range(cis):
            for r in range(H):
                for j in range(W):
                    gxs[c, r, j] = 0
        for b in range(nb):
            th0 = b * R
            rows = min(R, TH - th0)
            lb = rows * TW
            v = vbuf[t, : 16 * cis * lb].reshape(16, cis, lb)
            dv = dvbuf[t, : 16 * cis * lb].reshape(16, cis, lb)
            dm = mbuf[t, : 16 * Cog * lb].reshape(16, Cog, lb)
            dmt = tbuf[t, : lb * Cog].reshape(lb, Cog)
            _input_block(xs, pt, pl, th0, rows, TW, v, pbuf[t], qbuf[t])
            _output_grad_block(gys, th0, rows, TW, dm)
            for e in range(16):
                gemm_tiled(ut[e, g, ci0: ci0 + cis], dm[e], dv[e])
                de = dm[e]
                for j in range(lb):  # strided reads, contiguous writes
                    row = dmt[j]
                    for co in range(Cog):
                        row[co] = de[co, j]
                gemm_tiled_add(v[e], dmt, gut[t, e, g, ci0: ci0 + cis])
            _input_grad_block(dv, pt, pl, th0, rows, TW, gxs, pbuf[t], qbuf[t])
        for c in range(cis):
            for r in range(H):
                if _any_nonfinite(gxs[c, r]):
                    bad[t] = True
