"""Channels-last depthwise forward for small feature maps, in blocks of eight channels.

On a 6x6 or 3x3 map a plane is 36 or 9 outputs: the plane kernels
(:mod:`convlayers.kernels.depthwise_planar`, :mod:`convlayers.kernels.depthwise`) spend their
time on per-plane set-up and loops too short to vectorise, and ran 2-7x torch's time on the
last stages of MobileNet-type networks. Here a unit is one image's block of ``LANES`` channels
(oneDNN's ``nChw8c`` layout, per block): the block is copied zero-padded into a per-thread
``(Hp, Wp, LANES)`` scratch, every output pixel of the block accumulates ``kh*kw`` taps as
multiply-adds of ``LANES`` lanes in registers (one vector on AVX2), and the ``(Ho, Wo, LANES)``
result goes back to the planes. The scratch of a unit is a few KiB, so it stays in L1.

Forward only (no channel multiplier); the engine keeps the plane kernels for the gradients.
Importing compiles nothing; the first call per dtype compiles and ``cache=True`` keeps the
machine code on disk.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

__all__ = ["LANES", "channels_last_shapes", "depthwise_channels_last"]

#: Channels of one block (a compile-time constant of the kernels: their lane loops unroll).
LANES = 64


def channels_last_shapes(threads, c, out_hw, kernel, stride, dilation):
    """``(padded, result, lanes)``: the shapes of the per-thread scratch of
    :func:`depthwise_channels_last`, ``(threads, Hp, Wp, LANES)`` (the padded rows and columns
    some tap reads: nothing past them is copied) and ``(threads, Ho, Wo, LANES)``, and how many
    channels the padded taps and bias take (``c`` rounded up to a block)."""
    (ho, wo), (kh, kw), (sh, sw), (dh, dw) = out_hw, kernel, stride, dilation
    hp = (ho - 1) * sh + (kh - 1) * dh + 1
    wp = (wo - 1) * sw + (kw - 1) * dw + 1
    return (threads, hp, wp, LANES), (threads, ho, wo, LANES), -(-c // LANES) * LANES


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_channels_last(x, wt, bias, sh, sw, dh, dw, pt, pl, xt, ot, out):
    """``out (N, C, Ho, Wo)`` = the depthwise convolution of ``x (N, C, H, W)`` by ``wt (kh,
    kw, Cb)`` plus ``bias (Cb,)`` (``Cb``: ``C`` rounded up to a block, zeros past ``C``), zero
    padding ``pt >= 0`` above and ``pl >= 0`` left (the other sides follow from ``out``), in
    the per-thread scratch ``xt`` and ``ot`` (shapes from :func:`channels_last_shapes`)."""
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    kh, kw = wt.shape[0], wt.shape[1]
    Hp, Wp = xt.shape[1], xt.shape[2]
    nb = (C + LANES - 1) // LANES
    zero = np.zeros(1, dtype=out.dtype)[0]
    for unit in prange(N * nb):
        t = numba.get_thread_id()
        n, cb = unit // nb, unit % nb
        c0 = cb * LANES
        lanes = min(LANES, C - c0)
        xb, ob = xt[t], ot[t]
        for r in range(Hp):
            row = xb[r]
            for j in range(Wp):
                px = row[j]
                for lane in range(LANES):
                    px[lane] = zero
        # row by row, every lane of a row before the next row: the row's pixels (Wp x LANES)
        # stay in L1 while their lanes are written one at a time (lane by lane over the whole
        # block evicted each line 16 times when the block outgrew L1: 15x15 maps, 57 KiB)
        for iy in range(min(H, max(0, Hp - pt))):
            dst = xb[iy + pt]
            for lane in range(lanes):
                src = x[n, c0 + lane, iy]
                for j in range(min(W, max(0, Wp - pl))):
                    dst[j + pl, lane] = src[j]
        b = bias[c0:c0 + LANES]
        for oy in range(Ho):
            for ox in range(Wo):
                acc = ob[oy, ox]
                for lane in range(LANES):
                    acc[lane] = b[lane]
                for a in range(kh):
                    srow = xb[oy * sh + a * dh]
                    wrow = wt[a]
                    for bb in range(kw):
                        s = srow[ox * sw + bb * dw]
                        wv = wrow[bb, c0:c0 + LANES]
                        for lane in range(LANES):
                            acc[lane] += wv[lane] * s[lane]
        for lane in range(lanes):
            plane = out[n, c0 + lane]
            for oy in range(Ho):
                row = plane[oy]
                src = ob[oy]
                for ox in range(Wo):
                    row[ox] = src[ox, lane]
