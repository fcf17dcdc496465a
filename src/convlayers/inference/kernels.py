"""numba kernels of compiled plans: each writes into a buffer it is given, allocating nothing.

Activation codes (``ACT``) are passed as integers; each kernel applies the activation to one
finished output row while it is still in L1, after the bias and the residual, so a conv, its
BatchNorm, its activation and a residual add cost one pass over the output.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from convlayers.kernels._bounds import copy_row, tap_cols
from convlayers.kernels.linear import linear_rows

# activation codes shared by the plan and the kernels
ACT = {None: 0, "relu": 1, "relu6": 2, "hardswish": 3, "silu": 4, "sigmoid": 5, "tanh": 6}

#: Elements (or multiply-adds) of work per parallel unit of the per-plane kernels below. One
#: plane per unit made a batch of 32 small maps (1152 channels of 2x2) 36864 units of 4
#: elements, and, when plans still set ``numba.set_parallel_chunksize(1)``, the hand-out cost
#: 9-12 ms per layer, more than the layer.
UNIT_WORK = 8192


@njit(cache=True, inline="always")
def plane_units(planes, work):
    """``(per, units)``: units of ``per`` whole planes, each about :data:`UNIT_WORK` of
    ``work`` per plane (one plane at least), covering ``planes`` planes."""
    per = max(1, UNIT_WORK // max(1, work))
    return per, (planes + per - 1) // per


@njit(cache=True, inline="always", error_model="numpy")
def _sigmoid(v, one):
    """``1 / (1 + exp(-v))`` from ``e = exp(-|v|)`` in (0, 1], which never overflows."""
    e = np.exp(-abs(v))
    return (one if v >= 0 else e) / (one + e)


@njit(cache=True, error_model="numpy")
def _activate(row, act):
    """Apply activation ``act`` to a 1-D row in place (one loop per kind, so each vectorises).

    Compiled on its own without fastmath, whatever its caller: inlined into fastmath kernels
    (no infinities or NaN assumed), SiLU and sigmoid of ``v < -88`` gave NaN where torch gives
    0 (SiLU: -0.0), and SiLU of +inf NaN where torch gives inf."""
    zero, three, six = row.dtype.type(0), row.dtype.type(3), row.dtype.type(6)
    one = row.dtype.type(1)
    if act == 1:
        for i in range(row.size):
            row[i] = max(row[i], zero)
    elif act == 2:
        for i in range(row.size):
            row[i] = min(max(row[i], zero), six)
    elif act == 3:
        for i in range(row.size):
            v = row[i]
            row[i] = v * min(max(v + three, zero), six) / six
    elif act == 4:
        for i in range(row.size):
            v = row[i]
            row[i] = v * _sigmoid(v, one)
    elif act == 5:
        for i in range(row.size):
            row[i] = _sigmoid(row[i], one)
    elif act == 6:
        for i in range(row.size):
            row[i] = np.tanh(row[i])


@njit(cache=True, fastmath=True, inline="always")
def epilogue_row(row, b, r, has_res, act):
    """``row = act(row + b (+ r))`` in place: the end of every convolution's output row
    (``r`` is read only when ``has_res``)."""
    if has_res:
        for k in range(row.size):
            row[k] = row[k] + b + r[k]
    else:
        for k in range(row.size):
            row[k] += b
    _activate(row, act)


@njit(parallel=True, cache=True, fastmath=True)
def epilogue(y, bias, res, has_res, act):
    """``y[n, c, :] = act(y + bias[c] (+ res[n, c, :]))`` in place; ``y``, ``res``: (N, C, L)."""
    n, c, length = y.shape
    per, units = plane_units(n * c, length)
    for u in prange(units):
        for nc in range(u * per, min(n * c, u * per + per)):
            i, ch = nc // c, nc % c
            epilogue_row(y[i, ch], bias[ch], res[i, ch], has_res, act)


@njit(parallel=True, cache=True, fastmath=True)
def activation(x, act, out):
    """``out = act(x)``, both (N, C, L) (a standalone activation nothing could absorb)."""
    n, c, length = x.shape
    per, units = plane_units(n * c, length)
    for u in prange(units):
        for nc in range(u * per, min(n * c, u * per + per)):
            i, ch = nc // c, nc % c
            copy_row(out[i, ch], x[i, ch])
            _activate(out[i, ch], act)


@njit(parallel=True, cache=True, fastmath=True)
def affine(x, scale, shift, act, out):
    """``out = act(x*scale[c] + shift[c])``: an eval BatchNorm with no convolution before it."""
    n, c, length = x.shape
    per, units = plane_units(n * c, length)
    for u in prange(units):
        for nc in range(u * per, min(n * c, u * per + per)):
            i, ch = nc // c, nc % c
            s, t = scale[ch], shift[ch]
            for k in range(length):
                out[i, ch, k] = x[i, ch, k] * s + t
            _activate(out[i, ch], act)


@njit(parallel=True, cache=True, fastmath=True)
def add(a, b, act, out):
    """``out = act(a + b)``, all (N, C, L) (an add no convolution could take into its epilogue)."""
    n, c, length = a.shape
    per, units = plane_units(n * c, length)
    for u in prange(units):
        for nc in range(u * per, min(n * c, u * per + per)):
            i, ch = nc // c, nc % c
            for k in range(length):
                out[i, ch, k] = a[i, ch, k] + b[i, ch, k]
            _activate(out[i, ch], act)


@njit(cache=True, inline="always")
def im2col_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, cols, r_lo, r_hi):
    """Rows ``r_lo .. r_hi`` of the unfolding of one image ``x`` (C, H, W) into ``cols``
    (C*kh*kw, ho*wo), row ``(c*kh + i)*kw + j``; padding reads as 0."""
    h, w = x.shape[1], x.shape[2]
    zero = cols.dtype.type(0)
    for r in range(r_lo, r_hi):
        ch, tap = r // (kh * kw), r % (kh * kw)
        i, j = tap // kw, tap % kw
        off = j * dw - pl
        lo, hi = tap_cols(off, sw, w, wo)
        lo, hi = min(lo, wo), min(hi, wo)
        for oy in range(ho):
            iy = oy * sh - pt + i * dh
            base = oy * wo
            if iy < 0 or iy >= h:
                cols[r, base:base + wo] = zero
                continue
            cols[r, base:base + lo] = zero
            cols[r, base + hi:base + wo] = zero
            if hi <= lo:
                continue
            dst = cols[r, base + lo:base + hi]
            if sw == 1:
                copy_row(dst, x[ch, iy, lo + off:hi + off])
            else:
                seg = x[ch, iy, lo * sw + off:(hi - 1) * sw + off + 1]
                for k in range(hi - lo):
                    dst[k] = seg[k * sw]


@njit(parallel=True, cache=True)
def im2col(x, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, cols):
    """:func:`im2col_rows` over all rows, in parallel (one image, batch 1)."""
    for r in prange(cols.shape[0]):
        im2col_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, cols, r, r + 1)


FLAT_WIDTH = 32  # planes at most this wide take the flat path (rows too short to vectorise)


@njit(parallel=True, cache=True, fastmath=True)
def _depthwise_flat(x, w, bias, dh, dw, pt, pl, res, has_res, act, out):
    """Stride-1 depthwise over small planes: copy each plane into a zero-padded buffer of row
    stride ``wp``; then every tap is one long multiply-add over the flat output (computed at
    row stride ``wp``, the last columns of each row discarded), not one short loop per row."""
    n, c, h, wd = x.shape
    ho, wo = out.shape[2], out.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    hp = max(h + pt, ho + (kh - 1) * dh)
    wp = max(wd + pl, wo + (kw - 1) * dw)
    span = (ho - 1) * wp + wo
    per, units = plane_units(n * c, span * kh * kw)
    for u in prange(units):
        # one padded buffer per unit: every plane writes the same interior, the border stays 0
        padded = np.zeros(hp * wp, out.dtype)
        acc = np.empty(span, out.dtype)
        for nc in range(u * per, min(n * c, u * per + per)):
            b, ch = nc // c, nc % c
            for iy in range(h):
                copy_row(padded[(iy + pt) * wp + pl:(iy + pt) * wp + pl + wd], x[b, ch, iy])
            acc[:] = bias[ch]
            for i in range(kh):
                for j in range(kw):
                    tap = w[ch, i, j]
                    seg = padded[i * dh * wp + j * dw:i * dh * wp + j * dw + span]
                    for q in range(span):
                        acc[q] += tap * seg[q]
            for oy in range(ho):
                row = out[b, ch, oy]
                copy_row(row, acc[oy * wp:oy * wp + wo])
                if has_res:
                    row += res[b, ch, oy]
                _activate(row, act)


@njit(parallel=True, cache=True, fastmath=True)
def depthwise(x, w, bias, sh, sw, dh, dw, pt, pl, res, has_res, act, out):
    """Depthwise conv (N, C, H, W) -> ``out`` (N, C, Ho, Wo) with the epilogue fused.

    ``w`` is (C, kh, kw). Each output row starts at the bias, takes every in-range tap as a
    vectorised multiply-add along the row, then the residual and the activation, in L1. Parallel
    over the N*C planes (a MobileNet layer has 32-1152 of them, plenty for batch 1).
    """
    n, c, h, wd = x.shape
    ho, wo = out.shape[2], out.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    if sh == 1 and sw == 1 and wd <= FLAT_WIDTH:
        _depthwise_flat(x, w, bias, dh, dw, pt, pl, res, has_res, act, out)
        return
    wide = (wo - 1) * sw + 1  # a strided row is computed at stride 1, then every sw-th kept:
    per, units = plane_units(n * c, ho * wide * kh * kw)  # twice the multiply-adds, but
    for u in prange(units):  # vector loads instead of gathers
        tmp = np.empty(wide if sw > 1 else 0, out.dtype)
        for nc in range(u * per, min(n * c, u * per + per)):
            b, ch = nc // c, nc % c
            for oy in range(ho):
                row = out[b, ch, oy]
                acc = row if sw == 1 else tmp
                acc[:] = bias[ch]
                for i in range(kh):
                    iy = oy * sh - pt + i * dh
                    if iy < 0 or iy >= h:
                        continue
                    src = x[b, ch, iy]
                    for j in range(kw):
                        off = j * dw - pl
                        lo, hi = max(0, -off), min(wide, wd - off)
                        if hi <= lo:
                            continue
                        tap = w[ch, i, j]
                        dst = acc[lo:hi]  # 0-based loops over slices: no index wraparound checks,
                        seg = src[lo + off:hi + off]  # so LLVM vectorises them
                        for k in range(hi - lo):
                            dst[k] += tap * seg[k]
                if sw > 1:
                    for k in range(wo):
                        row[k] = tmp[k * sw]
                if has_res:
                    row += res[b, ch, oy]
                _activate(row, act)


@njit(parallel=True, cache=True)
def global_avg_pool(x, out):
    """Mean over the last axis: ``x`` (R, L) -> ``out`` (R,), summed in float64."""
    rows, length = x.shape
    per, units = plane_units(rows, length)
    for u in prange(units):
        for r in range(u * per, min(rows, u * per + per)):
            total = 0.0
            for k in range(length):
                total += x[r, k]
            out[r] = total / length


@njit(cache=True)
def linear(x, w, bias, act, out):
    """``out = act(x @ w.T + bias)`` for ``x (N, F_in)``, ``w (F_out, F_in)``: the dot products
    of :func:`convlayers.kernels.linear.linear_rows` (parallel over blocks of outputs, batch 1
    too), then the activation."""
    linear_rows(x, w, bias, out)
    for i in range(out.shape[0]):
        _activate(out[i], act)
