"""The per-block transforms of the fused Winograd kernels (:mod:`convlayers.kernels.winograd`).

Each works on one block of tile rows of one image: the input transform ``V = B^T d B`` (two
layouts: :func:`_input_block` for the backward, :func:`_input_block_flat` for the forward),
the output transform ``Y = A^T M A`` with the bias, and the adjoints of both for the
gradients. Padding is read by bounds through zero-bordered scratch.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from convlayers.kernels._bounds import typed_zero
from convlayers.kernels.values import nonfinite_in


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
                o0, o1 = v[4 * i, c, base:], v[4 * i + 1, c, base:]  # views: indices from 0
                o2, o3 = v[4 * i + 2, c, base:], v[4 * i + 3, c, base:]
                for tw in range(TW):
                    s = 2 * tw
                    a0, a1, a2, a3 = row[s], row[s + 1], row[s + 2], row[s + 3]
                    o0[tw] = a0 - a2
                    o1[tw] = a1 + a2
                    o2[tw] = a2 - a1
                    o3[tw] = a1 - a3


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
    zero = typed_zero(outn)
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
                if nonfinite_in(src):
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
