"""Numba kernel of the ``dot`` forward: each output a dot product along the input channels.

The GEMM strategies put output channels (``direct``) or output positions (``implicit``,
``lowered``) along their vectors. With few output channels per group and many input channels
on a small map, neither fills them: ``direct`` runs 5 channels on 16 lanes, the implicit GEMM
computes ``(kw-1)*dw // sw`` dropped positions per row (a 7x7 kernel of dilation 3 on a 9x9
map: 27 computed for 9 kept), and both multiply every tap that lies in the zero padding.

Here the vectors run along the *input* channels. Each image's group is copied channels-last,
``(H*W + 1, Cp)`` with ``Cp`` the group's channels rounded up to whole vectors (zeros past
them) and one row of zeros after the last pixel; the weights likewise, ``(C_out, kh*kw, Cp)``.
A register tile (:func:`_emit_dot_tile`) of ``rows`` output positions by ``cols`` output
channels keeps ``rows * cols`` vectors of partial sums over every tap and channel vector,
each step one load per position and per channel and ``rows * cols`` fused multiply-adds, and
reduces them across lanes once at the end. Taps outside the input are skipped: the tile runs
only the kernel rows and columns some of its positions read inside the input, and a position
whose tap lies in the padding reads the zero row instead (so a weight times the padding is a
zero times the weight, as in the GEMM strategies; the engine's weight check sends a
non-finite weight with padding elsewhere).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from convlayers.kernels._bounds import typed_zero, unit_parts
from convlayers.kernels.simd import VECTOR_BYTES, transpose_block

__all__ = ["SPEC_FIELDS", "dot_forward", "padded_channels"]

#: Fields of a tile's spec (an int64 array): the kernel rows ``a0 .. a1`` and columns ``b0 ..
#: b1`` it runs, the element steps of one kernel row and column in the input copy, the step
#: of one kernel row in a channel's weights, the vectors per pixel, the elements of one output
#: channel's weights, the zero row's offset, the first output channel and how many are real.
SPEC_FIELDS = 12
#: Fields per position in a tile's position table: the offset of the position's first tap,
#: then the kernel rows ``alo .. ahi`` and columns ``blo .. bhi`` it reads inside the input.
_POSITION_FIELDS = 5


def padded_channels(channels: int, itemsize: int) -> int:
    """``channels`` rounded up to whole vectors of ``itemsize``-byte elements."""
    lanes = VECTOR_BYTES // itemsize
    return -(-channels // lanes) * lanes


def _emit_dot_tile(context: Any, builder: Any, signature: Any, args: Any, rows: int,
                   cols: int) -> Any:
    """``sums[i*cols + j] = sum over taps (a, b) and channels k of x[pos_i(a, b) + k] *
    w[(co0 + j)*kcp + a*wa + b*Cp + k]`` for ``rows`` positions and ``cols`` channels, where
    ``pos_i(a, b)`` is ``base_i + a*xa + b*xb`` when ``alo_i <= a < ahi_i`` and ``blo_i <= b <
    bhi_i``, else the zero row; channels past ``qn`` repeat the last real one (their sums are
    dropped). The partial sums stay in registers over the taps ``a0 .. a1`` by ``b0 .. b1``."""
    lanes = VECTOR_BYTES // context.get_abi_sizeof(context.get_value_type(signature.args[0].dtype))
    xa_, wa_, sa_, pa_, ma_ = (context.make_array(t)(context, builder, a)
                               for t, a in zip(signature.args, args, strict=True))
    flt = context.get_value_type(signature.args[0].dtype)
    vec = ir.VectorType(flt, lanes)
    vptr = vec.as_pointer()
    intp = context.get_value_type(types.intp)
    i32 = ir.IntType(32)
    itemsize = context.get_abi_sizeof(flt)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                         f"llvm.fma.v{lanes}{'f32' if itemsize == 4 else 'f64'}")

    def const(value: int) -> Any:
        return ir.Constant(intp, value)

    def field(array: Any, k: int) -> Any:
        return builder.load(builder.gep(array.data, [const(k)]))

    a0, a1, b0, b1, xa, xb, wa, nvec, kcp, zoff, co0, qn = (field(sa_, k)
                                                            for k in range(SPEC_FIELDS))
    cp = builder.mul(nvec, const(lanes))
    last = builder.sub(qn, const(1))
    w_bases = [builder.mul(builder.add(co0, builder.select(
        builder.icmp_signed("<", const(j), qn), const(j), last)), kcp) for j in range(cols)]
    table = [[field(pa_, _POSITION_FIELDS * i + f) for f in range(_POSITION_FIELDS)]
             for i in range(rows)]
    zero = ir.Constant(vec, [0.0] * lanes)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(cols)] for _ in range(rows)]
    with cgutils.for_range(builder, builder.sub(a1, a0)) as row_loop:
        a = builder.add(a0, row_loop.index)
        x_row, w_row = builder.mul(a, xa), builder.mul(a, wa)
        row_in = [builder.and_(builder.icmp_signed(">=", a, t[1]), builder.icmp_signed("<", a, t[2]))
                  for t in table]
        with cgutils.for_range(builder, builder.sub(b1, b0)) as col_loop:
            b = builder.add(b0, col_loop.index)
            x_tap = builder.add(x_row, builder.mul(b, xb))
            w_tap = builder.add(w_row, builder.mul(b, cp))
            x_ptrs = []
            for t, inside in zip(table, row_in, strict=True):
                ok = builder.and_(inside, builder.and_(builder.icmp_signed(">=", b, t[3]),
                                                       builder.icmp_signed("<", b, t[4])))
                x_ptrs.append(builder.gep(xa_.data, [builder.select(
                    ok, builder.add(t[0], x_tap), zoff)]))
            w_ptrs = [builder.gep(wa_.data, [builder.add(base, w_tap)]) for base in w_bases]
            with cgutils.for_range(builder, nvec) as vec_loop:
                k = builder.mul(vec_loop.index, const(lanes))
                ws = [builder.load(builder.bitcast(builder.gep(p, [k]), vptr), align=itemsize)
                      for p in w_ptrs]
                for i, p in enumerate(x_ptrs):
                    xv = builder.load(builder.bitcast(builder.gep(p, [k]), vptr), align=itemsize)
                    for j in range(cols):
                        builder.store(builder.call(fma, [xv, ws[j], builder.load(accs[i][j])]),
                                      accs[i][j])
    for i in range(rows):
        for j in range(cols):
            value = builder.load(accs[i][j])
            width = lanes
            while width > 1:  # halves added: a tree across the lanes
                width //= 2
                low = builder.shuffle_vector(value, value, ir.Constant(
                    ir.VectorType(i32, width), list(range(width))))
                high = builder.shuffle_vector(value, value, ir.Constant(
                    ir.VectorType(i32, width), list(range(width, 2 * width))))
                value = builder.fadd(low, high)
            total = builder.extract_element(value, ir.Constant(i32, 0))
            builder.store(total, builder.gep(ma_.data, [const(i * cols + j)]))
    return context.get_dummy_value()


def _make_dot_tile(rows: int, cols: int) -> Any:
    """The intrinsic ``tile(x, w, spec, pos, sums)`` of :func:`_emit_dot_tile`."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return _emit_dot_tile(context, builder, signature, args, rows, cols)

    def typer(typingctx: Any, x: Any, w: Any, spec: Any, pos: Any, sums: Any) -> Any:
        floats = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                     and a.dtype == x.dtype and a.dtype in (types.float32, types.float64)
                     for a in (x, w, sums))
        ints = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                   and a.dtype == types.int64 for a in (spec, pos))
        return (types.void(x, w, spec, pos, sums), codegen) if floats and ints else None

    typer.__name__ = f"dot_tile_{rows}x{cols}"
    return intrinsic(typer)


#: 4 positions by 4 channels (16 sums; 8 loads a step for 16 multiply-adds), and 8 by 2 for
#: the last one or two channels of a group. (6 by 4 ran no faster on the layers it serves.)
_tile_square, _tile_tall = _make_dot_tile(4, 4), _make_dot_tile(8, 2)
#: Positions of the taller tile: the position table's rows.
_MOST_ROWS = 8


@njit(cache=True, fastmath=True, inline="always")
def _channels_last(src, base, stride, channels, count, dst, at, cp, places):
    """``dst[at + q*cp + c] = src[base + c*stride + q]`` for ``q < count``, ``c <
    channels``, and zeros in ``channels .. cp``: a vector of channels by a vector of positions
    at a time, transposed in registers (masked parts at the ends): a value at a time, the
    channels read a plane apart each, 224 -> 15 7x7 stride 3 on 5x224x22x22 took 1.45x this
    kernel's time (0.82-0.90x on 64-413 input channels, the same on 262 -> 32 6x6)."""
    transpose_block(src, base, stride, channels, count, dst, places, at)
    if channels < cp:
        for q in range(count):
            d = dst[at + q * cp + channels: at + (q + 1) * cp]
            for c in range(d.size):
                d[c] = 0


@njit(parallel=True, cache=True, fastmath=True)
def dot_forward(x, w, bias, sh, sw, dh, dw, pt, pl, Wo, PB, xbuf, wbuf, out):
    """``out (N, C_out, Ho*Wo)`` = the convolution of ``x (N, C_in, H, W)`` by ``w (C_out,
    C_in/g, kh, kw)`` (+ ``bias``, ``C_out`` entries or none) with zero padding ``pt`` above
    and ``pl`` left (the other sides follow from ``out``'s size), in units of ``PB``
    consecutive output positions of one group, the images' positions one after another (a
    tile may span two images: maps of a few positions fill it).

    ``xbuf`` (``N * G * (H*W + 1) * Cp`` elements) and ``wbuf`` (``C_out * kh*kw * Cp``) are
    the caller's scratch for the channels-last copies, ``Cp`` the channels of a group rounded
    up to whole vectors (:func:`padded_channels`)."""
    N, C_in, H, W = x.shape
    C_out, Cig, kh, kw = w.shape
    G = C_in // Cig
    Cog = C_out // G
    K = kh * kw
    Cp = wbuf.size // (C_out * K)
    pixels = H * W + 1
    in_rows = N * G * H
    xf, wf = x.reshape(x.size), w.reshape(w.size)
    places = np.arange(max(W, K), dtype=np.int64) * Cp  # a pixel's (a tap's) row of a copy
    for r in prange(in_rows + C_out):  # the copies: a row of the input or an output channel
        if r < in_rows:  # pixel j of the row to xbuf[at + j*Cp : ... + Cig], its channels
            n, g, h = unit_parts(r, G, H)
            at = ((n * G + g) * pixels + h * W) * Cp
            _channels_last(xf, ((n * C_in + g * Cig) * H + h) * W, H * W, Cig, W, xbuf, at,
                           Cp, places)
            if h == H - 1:
                d = xbuf[((n * G + g) * pixels + H * W) * Cp: ((n * G + g) * pixels + pixels) * Cp]
                for c in range(Cp):
                    d[c] = 0
        else:  # tap t of the channel to wbuf[(co*K + t)*Cp : ... + Cig]
            co = r - in_rows
            _channels_last(wf, co * Cig * K, K, Cig, K, wbuf, co * K * Cp, Cp, places)

    P = out.shape[2]
    NP = N * P
    nb = (NP + PB - 1) // PB
    has_bias = bias.shape[0] > 0
    zero = typed_zero(out)
    nvec = Cp * out.itemsize // VECTOR_BYTES
    for unit in prange(G * nb):
        g = unit // nb
        blk = unit - g * nb
        wg = wbuf[g * Cog * K * Cp: (g + 1) * Cog * K * Cp]
        spec = np.empty(SPEC_FIELDS, dtype=np.int64)
        pos = np.empty(_POSITION_FIELDS * _MOST_ROWS, dtype=np.int64)
        sums = np.empty(16, dtype=out.dtype)
        spec[4] = dh * W * Cp
        spec[5] = dw * Cp
        spec[6] = kw * Cp
        spec[7] = nvec
        spec[8] = K * Cp
        spec[9] = (g * pixels + H * W) * Cp  # image 0's zero row
        p_lo = blk * PB
        p_hi = min(NP, p_lo + PB)
        co = 0
        while co < Cog:
            left = Cog - co
            square = left >= 3
            rows = 4 if square else 8
            cols = 4 if square else 2
            q = min(left, cols)
            spec[10] = co
            spec[11] = q
            for p0 in range(p_lo, p_hi, rows):
                m = min(rows, p_hi - p0)
                a0, a1, b0, b1 = kh, 0, kw, 0
                for i in range(rows):
                    t = pos[_POSITION_FIELDS * i: _POSITION_FIELDS * (i + 1)]
                    t[1] = t[2] = t[3] = t[4] = 0
                    t[0] = 0
                    if i >= m:
                        continue
                    n = (p0 + i) // P
                    p = p0 + i - n * P
                    oh = p // Wo
                    ih = oh * sh - pt
                    iw = (p - oh * Wo) * sw - pl
                    alo = max(0, -(ih // dh))
                    ahi = min(kh, (H - 1 - ih) // dh + 1)
                    blo = max(0, -(iw // dw))
                    bhi = min(kw, (W - 1 - iw) // dw + 1)
                    if alo >= ahi or blo >= bhi:
                        continue
                    t[0] = ((n * G + g) * pixels + ih * W + iw) * Cp
                    t[1], t[2], t[3], t[4] = alo, ahi, blo, bhi
                    a0, a1 = min(a0, alo), max(a1, ahi)
                    b0, b1 = min(b0, blo), max(b1, bhi)
                spec[0], spec[1], spec[2], spec[3] = a0, a1, b0, b1
                if square:
                    _tile_square(xbuf, wg, spec, pos, sums)
                else:
                    _tile_tall(xbuf, wg, spec, pos, sums)
                for i in range(m):
                    n = (p0 + i) // P
                    p = p0 + i - n * P
                    for j in range(q):
                        c = g * Cog + co + j
                        out[n, c, p] = sums[i * cols + j] + (bias[c] if has_bias else zero)
            co += q

