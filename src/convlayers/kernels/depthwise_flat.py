"""Flat depthwise kernels: stride 1 with the width kept, each tap one loop over whole planes.

The commonest depthwise layer keeps the width (stride 1, ``pl + pr = (kw - 1) * dw``, e.g.
3x3 with padding 1). Input and output planes then share the row stride ``W``, and tap
``(a, b)`` is one flat loop straight over the planes: ``out[i] += w * x[i + off]`` with
``off = (a*dh - pt) * W + b*dw - pl``, over the rows whose input row exists. Pixels whose tap
column falls off the row would read the neighbouring row's end; a per-column mask selects
zero for them instead (a select, not a multiply, so an inf or NaN there cannot leak). No
copies, no scratch: these are the fastest kernels for planes of any size with short rows.

Importing compiles nothing; the first call per dtype compiles and ``cache=True`` keeps the
machine code on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from convlayers.kernels._bounds import typed_zero

__all__ = ["flat_backward", "flat_forward", "flat_masks"]


def flat_masks(out_hw, width, kernel_w, dw, pl):
    """``(kw, Ho * W)`` uint8: whether output pixel ``i`` reads a real column at tap column b."""
    ho = out_hw[0]
    cols = np.arange(ho * width) % width
    shift = np.arange(kernel_w)[:, None] * dw - pl
    return ((cols + shift >= 0) & (cols + shift < width)).astype(np.uint8)


@njit(cache=True, inline="always")
def _flat_range(a, b, dh, dw, pt, pl, H, W, Ho):
    """Tap ``(a, b)``'s flat offset and the output range ``[lo, hi)`` whose input row exists
    (clipped so ``i + off`` stays inside the input plane)."""
    ra = a * dh - pt
    off = ra * W + b * dw - pl
    lo = max(max(0, -ra) * W, -off)
    hi = min(min(Ho, H - ra) * W, H * W - off)
    return off, lo, max(lo, hi)


@njit(parallel=True, cache=True, fastmath=True)
def flat_forward(x, w, bias, W, dh, dw, pt, pl, masks, parts, out):
    """Same contract as :func:`depthwise_forward` (stride 1, width ``W`` kept), with ``x`` as
    ``(N, C_in, H*W)`` and ``out`` as ``(N, C_out, Ho*W)``; ``masks`` from :func:`flat_masks`."""
    N, C_in, H = x.shape[0], x.shape[1], x.shape[2] // W
    C_out, Ho = out.shape[1], out.shape[2] // W
    kh, kw = w.shape[1], w.shape[2]
    mult = C_out // C_in
    has_bias = bias.shape[0] > 0
    zero = typed_zero(out)
    planes = N * C_out
    step = (planes + parts - 1) // parts
    for part in prange(parts):
        for q in range(part * step, min(planes, (part + 1) * step)):
            n = q // C_out
            co = q - n * C_out
            xs = x[n, co // mult]
            o = out[n, co]
            o[:] = bias[co] if has_bias else zero
            for a in range(kh):
                for b in range(kw):
                    wv = w[co, a, b]
                    off, lo, hi = _flat_range(a, b, dh, dw, pt, pl, H, W, Ho)
                    o_s, x_s = o[lo:hi], xs[lo + off: hi + off]
                    if b * dw == pl:  # the centre column never leaves the row
                        for i in range(hi - lo):
                            o_s[i] += wv * x_s[i]
                    else:
                        keep = masks[b, lo:hi]
                        for i in range(hi - lo):
                            o_s[i] += wv * (x_s[i] if keep[i] else zero)


@njit(parallel=True, cache=True, fastmath=True)
def flat_backward(x, gy, w, W, dh, dw, pt, pl, masks, parts, need_gx, need_gw, gx):
    """Both gradients of :func:`flat_forward` (same flat shapes), one pass per input plane.

    ``gx`` receives the input gradient when ``need_gx`` (scattered: ``gx[i + off] += w * gy[i]``);
    the return value is the per-image weight gradient ``(N, C_out, kh, kw)`` in float64 (each
    plane's dot products in the input dtype), zeros unless ``need_gw``. Without ``need_gw`` only
    the shape of ``x`` is read."""
    N, C_in, H = x.shape[0], x.shape[1], x.shape[2] // W
    C_out, Ho = gy.shape[1], gy.shape[2] // W
    kh, kw = w.shape[1], w.shape[2]
    mult = C_out // C_in
    zero = typed_zero(gy)
    planes = N * C_in
    step = (planes + parts - 1) // parts
    part_gw = np.zeros((N, C_out, kh, kw), dtype=np.float64)
    for part in prange(parts):
        for q in range(part * step, min(planes, (part + 1) * step)):
            n = q // C_in
            ci = q - n * C_in
            if need_gx:
                gx[n, ci, :] = 0
            for m in range(mult):
                co = ci * mult + m
                g = gy[n, co]
                for a in range(kh):
                    for b in range(kw):
                        off, lo, hi = _flat_range(a, b, dh, dw, pt, pl, H, W, Ho)
                        g_s = g[lo:hi]
                        centre = b * dw == pl
                        keep = masks[b, lo:hi]
                        if need_gw:
                            x_s = x[n, ci, lo + off: hi + off]
                            s = zero
                            if centre:
                                for i in range(hi - lo):
                                    s += g_s[i] * x_s[i]
                            else:
                                for i in range(hi - lo):
                                    s += g_s[i] * x_s[i] if keep[i] else zero
                            part_gw[n, co, a, b] = s
                        if need_gx:
                            wv = w[co, a, b]
                            t_s = gx[n, ci, lo + off: hi + off]
                            if centre:
                                for i in range(hi - lo):
                                    t_s[i] += wv * g_s[i]
                            else:
                                for i in range(hi - lo):
                                    t_s[i] += wv * g_s[i] if keep[i] else zero
    return part_gw
