"""Numba kernels for depthwise 2-D convolution (``groups == C_in``), forward and backward.

Three families, chosen by :mod:`convlayers.functional._engine` from the geometry:

- *flat* (stride 1, width kept, e.g. 3x3 padding 1): every tap is one loop straight over the
  planes in flat form, with column masks for the taps that would cross a row edge;
- *planar* (other small planes): a zero-padded polyphase copy of each plane, then the same
  flat loops;
- *row* (the rest: large planes, whose rows are long): the loops below.

The row kernels read the *unpadded* input ``x`` ``(N, C_in, H, W)`` with the top/left zero
padding ``(pt, pl)``: taps that fall outside the image are skipped by bounds (each kernel row
checks its input row, each kernel column clips the range of output columns), so nobody copies
the input into a padded buffer. They ``prange`` over planes and keep the innermost loop along an
output row (contiguous for stride 1, so it vectorises). Output channel ``co`` reads input
channel ``co // mult`` (``mult = C_out / C_in``, PyTorch's channel multiplier). The forward
starts each output row from the bias (or zero), then adds the taps in row-major order.

Inner loops index slices from 0 rather than ``row[i + off]`` with a possibly negative ``off``:
numba must then wrap negative indices, and that check alone kept LLVM from vectorising (3-4x).

Importing compiles nothing; the first call per dtype compiles and ``cache=True`` keeps the
machine code on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "depthwise_forward",
    "depthwise_input_grad",
    "depthwise_weight_grad",
    "flat_backward",
    "flat_forward",
    "flat_masks",
    "planar_backward",
    "planar_forward",
    "planar_geometry",
]


@njit(cache=True, inline="always")
def _cols(off, sw, W, Wo):
    """Output columns ``[lo, hi)`` whose tap ``ow*sw + off`` lies inside ``0 .. W-1``."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    last = W - 1 - off
    hi = 0 if last < 0 else min(Wo, last // sw + 1)
    return lo, max(lo, hi)


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_forward(x, w, bias, sh, sw, dh, dw, pt, pl, out):
    """``out[n, co] = bias[co] + sum_{a,b} w[co, a, b] * x[n, co // mult, oh*sh + a*dh - pt,
    ow*sw + b*dw - pl]`` (zero outside the image); ``bias`` may be empty."""
    N, C_in, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    C_out, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    mult = C_out // C_in
    has_bias = bias.shape[0] > 0
    zero = np.zeros(1, dtype=out.dtype)[0]
    for q in prange(N * C_out):
        n = q // C_out
        co = q - n * C_out
        ci = co // mult
        wc = w[co]
        b0 = bias[co] if has_bias else zero
        xpl = x[n, ci]
        for oh in range(Ho):
            orow = out[n, co, oh]
            for ow in range(Wo):
                orow[ow] = b0
            for a in range(kh):
                ih = oh * sh + a * dh - pt
                if ih < 0 or ih >= H:
                    continue
                xrow = xpl[ih]
                for b in range(kw):
                    wv = wc[a, b]
                    off = b * dw - pl
                    lo, hi = _cols(off, sw, W, Wo)
                    if sw == 1:  # slices keep the indices non-negative, so this vectorises
                        o_s, x_s = orow[lo:hi], xrow[lo + off: hi + off]
                        for t in range(hi - lo):
                            o_s[t] += wv * x_s[t]
                    else:
                        for ow in range(lo, hi):
                            orow[ow] += wv * xrow[ow * sw + off]


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_input_grad(gy, w, sh, sw, dh, dw, pt, pl, gx):
    """Gradient with respect to the unpadded input, written into ``gx`` (any initial value)."""
    N, C_in, H, W = gx.shape[0], gx.shape[1], gx.shape[2], gx.shape[3]
    C_out, Ho, Wo = gy.shape[1], gy.shape[2], gy.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    mult = C_out // C_in
    for q in prange(N * C_in):
        n = q // C_in
        ci = q - n * C_in
        gpl = gx[n, ci]
        gpl[:] = 0
        for m in range(mult):
            co = ci * mult + m
            wc = w[co]
            for oh in range(Ho):
                grow = gy[n, co, oh]
                for a in range(kh):
                    ih = oh * sh + a * dh - pt
                    if ih < 0 or ih >= H:
                        continue
                    xrow = gpl[ih]
                    for b in range(kw):
                        wv = wc[a, b]
                        off = b * dw - pl
                        lo, hi = _cols(off, sw, W, Wo)
                        if sw == 1:
                            x_s, g_s = xrow[lo + off: hi + off], grow[lo:hi]
                            for t in range(hi - lo):
                                x_s[t] += wv * g_s[t]
                        else:
                            for ow in range(lo, hi):
                                xrow[ow * sw + off] += wv * grow[ow]


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_weight_grad(x, gy, kh, kw, sh, sw, dh, dw, pt, pl):
    """Per-(image, output channel) weight gradients ``(N, C_out, kh, kw)``, float64 sums."""
    N, C_in, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    C_out, Ho, Wo = gy.shape[1], gy.shape[2], gy.shape[3]
    mult = C_out // C_in
    part = np.zeros((N, C_out, kh, kw), dtype=np.float64)
    zero = np.zeros(1, dtype=gy.dtype)[0]
    for q in prange(N * C_out):
        n = q // C_out
        co = q - n * C_out
        ci = co // mult
        for oh in range(Ho):
            grow = gy[n, co, oh]
            for a in range(kh):
                ih = oh * sh + a * dh - pt
                if ih < 0 or ih >= H:
                    continue
                xrow = x[n, ci, ih]
                for b in range(kw):
                    off = b * dw - pl
                    lo, hi = _cols(off, sw, W, Wo)
                    acc = zero  # sums in the input's dtype, rows added in float64
                    if sw == 1:
                        g_s, x_s = grow[lo:hi], xrow[lo + off: hi + off]
                        for t in range(hi - lo):
                            acc += g_s[t] * x_s[t]
                    else:
                        for ow in range(lo, hi):
                            acc += grow[ow] * xrow[ow * sw + off]
                    part[n, co, a, b] += acc
    return part


# ----------------------------------------------------------------------------- planar kernels
#
# Rows of small feature maps (28, 14 or 7 pixels) are too short to vectorise: the loops above
# run mostly in their scalar remainder. The planar kernels lay one zero-padded plane out flat
# with row stride ``S`` and run each tap over the whole plane as one loop: output pixel
# ``(r, c)`` sits at ``r * S + c`` and reads tap ``(a, b)`` at a fixed offset. Flat positions
# with ``c >= Wo`` straddle a row edge and are simply never copied out, and the loop length is
# rounded up to a multiple of 64 so the vector body does all the work.
#
# Strides use the polyphase split: the padded plane becomes ``sh * sw`` phase planes,
# ``P[p, q][r, c] = padded[r*sh + p, c*sw + q]``, so tap ``(a, b)`` reads phase
# ``(a*dh % sh, b*dw % sw)`` at shift ``(a*dh // sh, b*dw // sw)`` and every tap is again a
# stride-1 flat loop over the output plane: no wasted arithmetic, no strided loads. The input
# gradient scatters the same way into phase planes (``G[off + i] += w * gy[i]``), and the
# weight gradient is one dot product per tap. Each parallel chunk of planes owns its scratch.

_ROUND = 64


def planar_geometry(out_hw, kernel, stride, dilation):
    """``(rows, S, length, block)`` of the planar kernels for an ``out_hw`` output.

    Each phase plane is ``rows x S`` (``rows * S`` flat, inside a ``block``-long slot), the
    flat loops run over ``length`` positions (the output plane, rounded up to 64)."""
    (ho, wo), (kh, kw), (sh, sw), (dh, dw) = out_hw, kernel, stride, dilation
    reach_r, reach_c = (kh - 1) * dh // sh, (kw - 1) * dw // sw
    S = wo + reach_c
    rows = ho + reach_r
    length = -(-((ho - 1) * S + wo) // _ROUND) * _ROUND
    return rows, S, length, max(rows * S, length + reach_r * S + reach_c)


@njit(cache=True, inline="always")
def _first(lo, pad, step, phase):
    """The first index ``j >= lo`` with ``(j + pad) % step == phase``."""
    return lo + (phase - (lo + pad)) % step


@njit(cache=True, inline="always")
def _split(src, pt, pl, sh, sw, rows, S, block, dst):
    """``dst`` := the phase planes of ``src`` zero-padded by ``(pt, pl)`` (see above); input
    pixels outside every phase plane are never read and are dropped."""
    dst[:] = 0
    H, W = src.shape[0], src.shape[1]
    for i in range(max(0, -pt), H):
        r, p = (i + pt) // sh, (i + pt) % sh
        if r >= rows:
            break
        row = src[i]
        if sw == 2:  # both column phases in one pass, with a literal stride (3x faster)
            _split_row2(row, pl, dst, p * 2 * block + r * S, block, S)
            continue
        for q in range(sw):
            j0 = _first(max(0, -pl), pl, sw, q)
            c0 = (j0 + pl) // sw  # phase column of j0; each further j (step sw) is one more
            base = (p * sw + q) * block + r * S + c0
            count = min(S - c0, (W - j0 + sw - 1) // sw)  # columns past S are dropped
            if sw == 1:
                for t in range(count):
                    dst[base + t] = row[j0 + t]
            else:
                for t in range(count):
                    dst[base + t] = row[j0 + t * sw]


@njit(cache=True, inline="always")
def _split_row2(row, pl, dst, base, block, S):
    """One input row into its two column phases (stride 2): ``base`` is phase 0's row start,
    phase 1's is one ``block`` further."""
    j0 = max(0, -pl)
    q0 = (j0 + pl) % 2
    c0, c1 = (j0 + pl) // 2, (j0 + 1 + pl) // 2
    n0 = max(0, min(S - c0, (row.shape[0] - j0 + 1) // 2))
    n1 = max(0, min(S - c1, (row.shape[0] - j0) // 2))
    d0 = dst[base + q0 * block + c0:]
    d1 = dst[base + (1 - q0) * block + c1:]
    even, odd = row[j0:], row[j0 + 1:]
    both = min(n0, n1)
    for t in range(both):
        d0[t] = even[2 * t]
        d1[t] = odd[2 * t]
    for t in range(both, n0):
        d0[t] = even[2 * t]
    for t in range(both, n1):
        d1[t] = odd[2 * t]


@njit(cache=True, inline="always")
def _merge(src, pt, pl, sh, sw, rows, S, block, dst):
    """The inverse of :func:`_split`: ``dst`` (an input-sized plane) := the phase planes'
    values at each input pixel, zero where a pixel lies outside them."""
    H, W = dst.shape[0], dst.shape[1]
    for i in range(H):
        row = dst[i]
        row[:] = 0
        r, p = (i + pt) // sh, (i + pt) % sh
        if i + pt < 0 or r >= rows:
            continue
        for q in range(sw):
            j0 = _first(max(0, -pl), pl, sw, q)
            c0 = (j0 + pl) // sw
            base = (p * sw + q) * block + r * S + c0
            count = min(S - c0, (W - j0 + sw - 1) // sw)
            if sw == 1:
                for t in range(count):
                    row[j0 + t] = src[base + t]
            else:
                for t in range(count):
                    row[j0 + t * sw] = src[base + t]


@njit(cache=True, inline="always")
def _flat(src, S, dst):
    """``dst`` := ``src`` (an output-sized plane) laid out flat with row stride ``S``."""
    dst[:] = 0
    for i in range(src.shape[0]):
        base = i * S
        for j in range(src.shape[1]):
            dst[base + j] = src[i, j]


@njit(cache=True, inline="always")
def _unflat(src, S, dst):
    for i in range(dst.shape[0]):
        base = i * S
        row = dst[i]
        for j in range(dst.shape[1]):
            row[j] = src[base + j]


@njit(cache=True, inline="always")
def _tap(a, b, sh, sw, dh, dw, S, block):
    """Flat offset of tap ``(a, b)``: its phase plane's slot plus its shift inside it."""
    return ((a * dh % sh) * sw + b * dw % sw) * block + (a * dh // sh) * S + b * dw // sw


@njit(cache=True, fastmath=True)
def _taps_into(acc, src, wc, sh, sw, dh, dw, S, block, length):
    """``acc[i] += sum over taps (a, b) of wc[a, b] * src[_tap(a, b) + i]``, four taps per pass
    over ``acc``: one tap per pass loaded and stored ``acc`` for every multiply-add, which
    bounded the loop by the store port (4 taps per pass ran about 2x faster)."""
    kh, kw = wc.shape[0], wc.shape[1]
    T = kh * kw
    t = 0
    while t + 4 <= T:
        a0, b0 = t // kw, t % kw
        a1, b1 = (t + 1) // kw, (t + 1) % kw
        a2, b2 = (t + 2) // kw, (t + 2) % kw
        a3, b3 = (t + 3) // kw, (t + 3) % kw
        w0, w1, w2, w3 = wc[a0, b0], wc[a1, b1], wc[a2, b2], wc[a3, b3]
        s0 = src[_tap(a0, b0, sh, sw, dh, dw, S, block):]
        s1 = src[_tap(a1, b1, sh, sw, dh, dw, S, block):]
        s2 = src[_tap(a2, b2, sh, sw, dh, dw, S, block):]
        s3 = src[_tap(a3, b3, sh, sw, dh, dw, S, block):]
        for i in range(length):
            acc[i] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i]
        t += 4
    while t < T:
        a0, b0 = t // kw, t % kw
        w0 = wc[a0, b0]
        s0 = src[_tap(a0, b0, sh, sw, dh, dw, S, block):]
        for i in range(length):
            acc[i] += w0 * s0[i]
        t += 1


@njit(parallel=True, cache=True, fastmath=True)
def planar_forward(x, w, bias, sh, sw, dh, dw, pt, pl, rows, S, length, block, parts, out):
    """Same contract as :func:`depthwise_forward`, one padded plane at a time (see above)."""
    N, C_in = x.shape[0], x.shape[1]
    C_out = out.shape[1]
    mult = C_out // C_in
    has_bias = bias.shape[0] > 0
    zero = np.zeros(1, dtype=out.dtype)[0]
    planes = N * C_in
    step = (planes + parts - 1) // parts
    for part in prange(parts):
        src = np.empty(sh * sw * block, dtype=x.dtype)
        acc = np.empty(length, dtype=out.dtype)
        for q in range(part * step, min(planes, (part + 1) * step)):
            n = q // C_in
            ci = q - n * C_in
            _split(x[n, ci], pt, pl, sh, sw, rows, S, block, src)
            for m in range(mult):
                co = ci * mult + m
                acc[:] = bias[co] if has_bias else zero
                _taps_into(acc, src, w[co], sh, sw, dh, dw, S, block, length)
                _unflat(acc, S, out[n, co])


@njit(parallel=True, cache=True, fastmath=True)
def planar_backward(x, gy, w, sh, sw, dh, dw, pt, pl, rows, S, length, block, parts,
                    need_gx, need_gw, gx):
    """Both gradients of :func:`planar_forward` in one pass over each plane.

    ``gx`` (the input's shape) receives the input gradient when ``need_gx``; the return value is
    the per-image weight gradient ``(N, C_out, kh, kw)`` in float64 (each plane's dot products in
    the input dtype), zeros unless ``need_gw``. Without ``need_gw`` only the shape of ``x`` is
    read, so ``x`` may be ``gx`` itself."""
    N, C_in = x.shape[0], x.shape[1]
    C_out = gy.shape[1]
    kh, kw = w.shape[1], w.shape[2]
    mult = C_out // C_in
    planes = N * C_in
    step = (planes + parts - 1) // parts
    part_gw = np.zeros((N, C_out, kh, kw), dtype=np.float64)
    for part in prange(parts):
        src = np.empty(sh * sw * block, dtype=x.dtype)
        grad = np.empty(sh * sw * block, dtype=x.dtype)
        flat = np.empty(length, dtype=x.dtype)
        for q in range(part * step, min(planes, (part + 1) * step)):
            n = q // C_in
            ci = q - n * C_in
            if need_gw:
                _split(x[n, ci], pt, pl, sh, sw, rows, S, block, src)
            if need_gx:
                grad[:] = 0
            for m in range(mult):
                co = ci * mult + m
                _flat(gy[n, co], S, flat)
                for a in range(kh):
                    for b in range(kw):
                        off = _tap(a, b, sh, sw, dh, dw, S, block)
                        if need_gw:
                            shifted = src[off: off + length]
                            s = flat[0] * 0
                            for i in range(length):
                                s += flat[i] * shifted[i]
                            part_gw[n, co, a, b] = s
                        if need_gx:
                            wv = w[co, a, b]
                            target = grad[off: off + length]
                            for i in range(length):
                                target[i] += wv * flat[i]
            if need_gx:
                _merge(grad, pt, pl, sh, sw, rows, S, block, gx[n, ci])
    return part_gw


# ----------------------------------------------------------------------------- flat kernels
#
# The commonest depthwise layer keeps the width (stride 1, ``pl + pr = (kw - 1) * dw``, e.g.
# 3x3 with padding 1). Input and output planes then share the row stride ``W``, and tap
# ``(a, b)`` is one flat loop straight over the planes: ``out[i] += w * x[i + off]`` with
# ``off = (a*dh - pt) * W + b*dw - pl``, over the rows whose input row exists. Pixels whose tap
# column falls off the row would read the neighbouring row's end; a per-column mask selects
# zero for them instead (a select, not a multiply, so an inf or NaN there cannot leak). No
# copies, no scratch: these are the fastest kernels for planes of any size with short rows.


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
    zero = np.zeros(1, dtype=out.dtype)[0]
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
    zero = np.zeros(1, dtype=gy.dtype)[0]
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
