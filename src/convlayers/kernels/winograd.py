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

from convlayers.kernels._bounds import unit_block
from convlayers.kernels._winograd_tiles import (
    _input_block,
    _input_block_flat,
    _input_grad_block,
    _output_block_flat,
    _output_grad_block,
)
from convlayers.kernels.queue import claim, new_queue
from convlayers.kernels.simd import gemm_tiled, gemm_tiled_add
from convlayers.kernels.values import nonfinite_in

__all__ = ["backward_fused", "backward_scratch", "forward_fused", "forward_scratch",
           "weight_grad_transform", "weight_transform"]


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
# of the forward are handed out to the first free thread (:mod:`convlayers.kernels.queue`), so a
# core slowed by a neighbour takes fewer; each thread owns its scratch (``get_thread_id``). The
# backward keeps numba's static split: each thread adds its units' weight gradients into an
# accumulator of its own, and units that went to whichever thread was free would change the
# order of those sums from one call to the next (the result would not repeat bit for bit).


def forward_scratch(c_in: int, out_hw: tuple[int, int], R: int, B: int) -> tuple[int, int]:
    """Elements per thread of :func:`forward_fused`'s two large scratch arrays (the input
    transforms of a unit, ``16 x C_in x`` its tiles, and its 16 products): the caller's, so
    that they stay in pages already mapped from call to call (allocated in the kernel, a
    4x256x28x28 layer's took 20 ms a call against 13.7 with glibc keeping every allocation on
    its heap: on this kind of virtual machine a fresh page costs microseconds)."""
    th, tw = (out_hw[0] + 1) // 2, (out_hw[1] + 1) // 2
    tiles = min(R, th) * (tw + 1)
    return 16 * c_in * tiles, 16 * B * tiles


@njit(parallel=True, cache=True, fastmath=True)
def forward_fused(x, u, bias, pt, pl, R, B, nt, out, bad, vbuf, mbuf):
    """The whole Winograd forward: ``out (N, C_out, Ho, Wo)`` from ``x (N, C_in, H, W)`` and
    ``u (16, groups, C_out/g, C_in/g)`` (+ ``bias``, possibly empty), in units of ``R`` tile
    rows by ``B`` output channels (of every group) of one image, with scratch for ``nt``
    threads (numba's current thread count; ``vbuf`` and ``mbuf`` are the caller's, ``nt`` rows
    of :func:`forward_scratch`'s sizes at least). ``bad[t]`` (``nt`` flags, zeroed by the
    caller) is set when thread ``t`` wrote an inf or NaN."""
    N, C = x.shape[0], x.shape[1]
    G, Cog, Cig = u.shape[1], u.shape[2], u.shape[3]
    Ho, Wo = out.shape[2], out.shape[3]
    TH, TW = (Ho + 1) // 2, (Wo + 1) // 2
    R = min(R, TH)
    nb = (TH + R - 1) // R
    ncb = (Cog + B - 1) // B
    S = TW + 1  # tile rows of the transforms have one spare column (see _input_block_flat)
    L = R * S
    ebuf = np.empty((nt, (R + 1) * 2 * S + 2), dtype=x.dtype)
    obuf = np.empty((nt, (R + 1) * 2 * S + 2), dtype=x.dtype)
    hbuf = np.empty((nt, 2, 4, (R + 1) * S), dtype=x.dtype)
    sbuf = np.empty((nt, 8, L), dtype=x.dtype)
    ybuf = np.empty((nt, 2, 2 * L), dtype=x.dtype)
    queue = new_queue()
    for _ in prange(nt):
        while True:
            unit = claim(queue)
            if unit >= N * nb * ncb:
                break
            t = numba.get_thread_id()
            n, blk, co0, cos = unit_block(unit, nb, ncb, B, Cog)
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


def backward_scratch(c_out_g: int, out_hw: tuple[int, int], R: int, B: int) -> tuple[int, int]:
    """Elements per thread of :func:`backward_fused`'s scratch: the input transforms and their
    gradients (``16 x B x`` a unit's tiles each) in one array, the output gradient's transforms
    and their transpose in the other (the caller's, as :func:`forward_scratch`'s)."""
    th, tw = (out_hw[0] + 1) // 2, (out_hw[1] + 1) // 2
    tiles = min(R, th) * tw
    return 2 * 16 * B * tiles, 17 * c_out_g * tiles


@njit(parallel=True, cache=True, fastmath=True)
def backward_fused(x, gy, ut, pt, pl, R, B, gx, gut, bad, vbuf, mbuf):
    """Both gradients of :func:`forward_fused`'s convolution in units of ``B`` input channels of
    one group of one image (each input plane has one owner; the unit's blocks of ``R`` tile rows
    go in order, so their overlapping input rows never race): ``gx (N, C_in, H, W)`` is
    *overwritten*; ``gut (threads, 16, groups, C_in/g, C_out/g)`` receives each thread's ``sum
    V dM^T`` (``dU^T``; the caller sums over threads). ``ut`` is ``U^T``, ``(16, groups, C_in/g,
    C_out/g)``. ``bad[t]`` (zeroed by the caller) is set when thread ``t`` wrote an inf or NaN
    into ``gx``. ``vbuf`` and ``mbuf``: the caller's scratch, a row per thread of
    :func:`backward_scratch`'s sizes at least."""
    N, H, W = x.shape[0], x.shape[2], x.shape[3]
    G, Cig, Cog = ut.shape[1], ut.shape[2], ut.shape[3]
    Ho, Wo = gy.shape[2], gy.shape[3]
    TH, TW = (Ho + 1) // 2, (Wo + 1) // 2
    R = min(R, TH)
    nb = (TH + R - 1) // R
    ncb = (Cig + B - 1) // B
    L = R * TW
    nt = gut.shape[0]
    dv0, t0 = 16 * B * L, 16 * Cog * L  # where the gradients and the transpose start
    pbuf = np.empty((nt, 2 * R + 2, 2 * TW + 2), dtype=x.dtype)
    qbuf = np.empty((nt, 4, 2 * TW + 2), dtype=x.dtype)
    gut[:] = 0
    for unit in prange(N * G * ncb):
        t = numba.get_thread_id()
        n, g, ci0, cis = unit_block(unit, G, ncb, B, Cig)
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
            dv = vbuf[t, dv0: dv0 + 16 * cis * lb].reshape(16, cis, lb)
            dm = mbuf[t, : 16 * Cog * lb].reshape(16, Cog, lb)
            dmt = mbuf[t, t0: t0 + lb * Cog].reshape(lb, Cog)
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
                if nonfinite_in(gxs[c, r]):
                    bad[t] = True
