"""Planar depthwise kernels: small planes, zero-padded and laid out flat, a tap a loop.

Rows of small feature maps (28, 14 or 7 pixels) are too short to vectorise: the row kernels
(:mod:`convlayers.kernels.depthwise`) run mostly in their scalar remainder. The planar kernels
lay one zero-padded plane out flat with row stride ``S`` and run each tap over the whole plane
as one loop: output pixel ``(r, c)`` sits at ``r * S + c`` and reads tap ``(a, b)`` at a fixed
offset. Flat positions with ``c >= Wo`` straddle a row edge and are simply never copied out,
and the loop length is rounded up to a multiple of 64 so the vector body does all the work.

Strides use the polyphase split: the padded plane becomes ``sh * sw`` phase planes,
``P[p, q][r, c] = padded[r*sh + p, c*sw + q]``, so tap ``(a, b)`` reads phase
``(a*dh % sh, b*dw % sw)`` at shift ``(a*dh // sh, b*dw // sw)`` and every tap is again a
stride-1 flat loop over the output plane: no wasted arithmetic, no strided loads. The input
gradient scatters the same way into phase planes (``G[off + i] += w * gy[i]``), and the
weight gradient is one dot product per tap. Each parallel chunk of planes owns its scratch.

Importing compiles nothing; the first call per dtype compiles and ``cache=True`` keeps the
machine code on disk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from convlayers.kernels._bounds import copy_row, typed_zero
from convlayers.kernels.simd import VECTOR_BYTES

__all__ = ["planar_backward", "planar_forward", "planar_geometry"]

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
def _phases(k, d, s):
    """Bit ``p`` set when some tap ``a < k`` (dilation ``d``) reads phase ``p`` of stride ``s``:
    with a dilation that is a multiple of the stride every tap reads phase 0 only."""
    used = 0
    for a in range(k):
        used |= 1 << (a * d % s)
    return used


@njit(cache=True, inline="always")
def _split(src, pt, pl, sh, sw, rows, S, block, dst, kh, kw, dh, dw):
    """``dst`` := the phase planes of ``src`` zero-padded by ``(pt, pl)`` (see above), only
    those a ``kh x kw`` kernel of dilation ``(dh, dw)`` reads (the others are left as they
    were); input pixels outside every phase plane are never read and are dropped."""
    row_phases, col_phases = _phases(kh, dh, sh), _phases(kw, dw, sw)
    for p in range(sh):
        for q in range(sw):
            if (row_phases >> p) & 1 and (col_phases >> q) & 1:
                dst[(p * sw + q) * block:(p * sw + q + 1) * block] = 0
    H, W = src.shape[0], src.shape[1]
    for i in range(max(0, -pt), H):
        r, p = (i + pt) // sh, (i + pt) % sh
        if r >= rows:
            break
        if not (row_phases >> p) & 1:
            continue
        row = src[i]
        if sw == 2 and col_phases == 3:  # both column phases in one pass, with a literal
            _split_row2(row, pl, dst, p * 2 * block + r * S, block, S)  # stride (3x faster)
            continue
        for q in range(sw):
            if not (col_phases >> q) & 1:
                continue
            j0 = _first(max(0, -pl), pl, sw, q)
            c0 = (j0 + pl) // sw  # phase column of j0; each further j (step sw) is one more
            base = (p * sw + q) * block + r * S + c0
            count = min(S - c0, (W - j0 + sw - 1) // sw)  # columns past S are dropped
            d, r0 = dst[base:], row[j0:]  # views: indices from 0 vectorise (see _unflat)
            if sw == 1:
                for t in range(count):
                    d[t] = r0[t]
            else:
                for t in range(count):
                    d[t] = r0[t * sw]


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
            s0, r0 = src[base:], row[j0:]
            if sw == 1:
                for t in range(count):
                    r0[t] = s0[t]
            else:
                for t in range(count):
                    r0[t * sw] = s0[t]


@njit(cache=True, inline="always")
def _flat(src, S, dst):
    """``dst`` := ``src`` (an output-sized plane) laid out flat with row stride ``S``."""
    dst[:] = 0
    for i in range(src.shape[0]):
        copy_row(dst[i * S: i * S + src.shape[1]], src[i])


@njit(cache=True, inline="always")
def _unflat(src, S, dst):
    """``dst`` (an output-sized plane) := ``src`` laid out flat with row stride ``S``. Every
    copy loop here reads through a view that starts at the row (``src[i * S:]``), so its index
    runs from 0: with ``src[i * S + j]`` numba's wraparound of negative indices stayed in the
    loop and kept it scalar (3.6 us a 56x56 plane against 0.4 us)."""
    for i in range(dst.shape[0]):
        copy_row(dst[i], src[i * S:])


@njit(cache=True, inline="always")
def _tap(a, b, sh, sw, dh, dw, S, block):
    """Flat offset of tap ``(a, b)``: its phase plane's slot plus its shift inside it."""
    return ((a * dh % sh) * sw + b * dw % sw) * block + (a * dh // sh) * S + b * dw // sw


def _flat_tile(vectors: int) -> Any:
    """The intrinsic ``tile(acc, src, offs, ws, i0, start)``: ``acc[i0 + i] = start + sum over
    taps t of ws[t] * src[offs[t] + i0 + i]`` for ``i`` over ``vectors`` vectors, every
    accumulator in a register for all the taps (C-contiguous 1-D float arrays of one dtype,
    ``offs`` int64)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        acc_t = signature.args[0]
        acc, src, offs, ws = (context.make_array(t)(context, builder, a)
                              for t, a in zip(signature.args[:4], args[:4], strict=True))
        i0, start = args[4], args[5]
        itemsize = context.get_abi_sizeof(context.get_value_type(acc_t.dtype))
        lanes = VECTOR_BYTES // itemsize
        vec = ir.VectorType(context.get_value_type(acc_t.dtype), lanes)
        intp, i32 = context.get_value_type(types.intp), ir.IntType(32)
        name = f"v{lanes}{'f32' if itemsize == 4 else 'f64'}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fma.{name}")
        zeros = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)

        def splat(value: Any) -> Any:
            one = builder.insert_element(ir.Constant(vec, None), value, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, ir.Constant(vec, None), zeros)

        def at(arr: Any, offset: Any, v: int) -> Any:
            ptr = builder.gep(arr.data, [builder.add(offset, ir.Constant(intp, v * lanes))])
            return builder.bitcast(ptr, vec.as_pointer())

        accs = [cgutils.alloca_once(builder, vec) for _ in range(vectors)]
        first = splat(start)
        for a in accs:
            builder.store(first, a)
        taps = cgutils.unpack_tuple(builder, offs.shape)[0]
        with cgutils.for_range(builder, taps) as loop:
            t = loop.index
            w = splat(builder.load(builder.gep(ws.data, [t])))
            base = builder.add(builder.load(builder.gep(offs.data, [t])), i0)
            for v, a in enumerate(accs):
                x = builder.load(at(src, base, v), align=itemsize)
                builder.store(builder.call(fma, [w, x, builder.load(a)]), a)
        for v, a in enumerate(accs):
            builder.store(builder.load(a), at(acc, i0, v), align=itemsize)
        return context.get_dummy_value()

    def typer(typingctx: Any, acc: Any, src: Any, offs: Any, ws: Any, i0: Any,
              start: Any) -> Any:
        floats = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                     and a.dtype == acc.dtype and a.dtype in (types.float32, types.float64)
                     for a in (acc, src, ws))
        index = (isinstance(offs, types.Array) and offs.ndim == 1 and offs.layout == "C"
                 and offs.dtype == types.int64)
        if not (floats and index):
            return None
        return types.void(acc, src, offs, ws, types.intp, acc.dtype), codegen

    typer.__name__ = f"flat_tile_{vectors}"
    return intrinsic(typer)


#: Vectors of the flat tiles: 8 accumulators keep both FMA units busy; 4 for a last 64.
_tile_8, _tile_4 = _flat_tile(8), _flat_tile(4)


@njit(cache=True, fastmath=True)
def _taps_into(acc, src, offs, ws, start, length):
    """``acc[i] = start + sum over taps t of ws[t] * src[offs[t] + i]`` for ``i < length`` (a
    multiple of 64), in register tiles of 8 then 4 vectors: the accumulators stay in registers
    for every tap, one load per multiply-add. Looping the taps over ``acc`` loaded and stored
    it at every pass (four taps a pass: 1.5 memory operations per multiply-add)."""
    lanes = VECTOR_BYTES // acc.itemsize
    i0 = 0
    while i0 + 8 * lanes <= length:
        _tile_8(acc, src, offs, ws, i0, start)
        i0 += 8 * lanes
    while i0 + 4 * lanes <= length:
        _tile_4(acc, src, offs, ws, i0, start)
        i0 += 4 * lanes
    for i in range(i0, length):  # none while vectors are at most 16 lanes
        total = start
        for t in range(offs.shape[0]):
            total += ws[t] * src[offs[t] + i]
        acc[i] = total


@njit(cache=True)
def _tap_offsets(kh, kw, sh, sw, dh, dw, S, block):
    """The flat offsets of the taps, ``(a, b)`` in row-major order (see :func:`_tap`)."""
    offs = np.empty(kh * kw, dtype=np.int64)
    for a in range(kh):
        for b in range(kw):
            offs[a * kw + b] = _tap(a, b, sh, sw, dh, dw, S, block)
    return offs


@njit(parallel=True, cache=True, fastmath=True)
def planar_forward(x, w, bias, sh, sw, dh, dw, pt, pl, rows, S, length, block, parts, out):
    """Same contract as :func:`depthwise_forward`, one padded plane at a time (see above)."""
    N, C_in = x.shape[0], x.shape[1]
    C_out = out.shape[1]
    mult = C_out // C_in
    has_bias = bias.shape[0] > 0
    zero = typed_zero(out)
    planes = N * C_in
    step = (planes + parts - 1) // parts
    kh, kw = w.shape[1], w.shape[2]
    offs = _tap_offsets(kh, kw, sh, sw, dh, dw, S, block)
    taps = w.reshape(C_out, kh * kw)
    for part in prange(parts):
        src = np.empty(sh * sw * block, dtype=x.dtype)
        acc = np.empty(length, dtype=out.dtype)
        for q in range(part * step, min(planes, (part + 1) * step)):
            n = q // C_in
            ci = q - n * C_in
            _split(x[n, ci], pt, pl, sh, sw, rows, S, block, src, kh, kw, dh, dw)
            for m in range(mult):
                co = ci * mult + m
                _taps_into(acc, src, offs, taps[co], bias[co] if has_bias else zero, length)
                _unflat(acc, S, out[n, co])


@njit(cache=True, fastmath=True)
def _tap_dots(flat, src, toffs, length, out):
    """``out[t] = sum over i < length of flat[i] * src[toffs[t] + i]``, four taps a pass: each
    ``flat`` vector loaded once for four multiply-adds (a tap a pass loaded two per one)."""
    T = toffs.shape[0]
    zero = flat[0] * 0
    t = 0
    while t + 4 <= T:
        v0, v1 = src[toffs[t]:], src[toffs[t + 1]:]
        v2, v3 = src[toffs[t + 2]:], src[toffs[t + 3]:]
        s0 = s1 = s2 = s3 = zero
        for i in range(length):
            f = flat[i]
            s0 += f * v0[i]
            s1 += f * v1[i]
            s2 += f * v2[i]
            s3 += f * v3[i]
        out[t], out[t + 1], out[t + 2], out[t + 3] = s0, s1, s2, s3
        t += 4
    while t < T:
        v0 = src[toffs[t]:]
        s0 = zero
        for i in range(length):
            s0 += flat[i] * v0[i]
        out[t] = s0
        t += 1


@njit(cache=True)
def _gather_layout(kh, kw, sh, sw, dh, dw, S, mult, E, M):
    """The input gradient as a gather, per phase plane: ``(order, offs, starts)``.

    Entry ``k`` (``starts[p] <= k < starts[p + 1]`` for phase plane ``p``, by multiplier ``m``
    then tap) is tap ``t = order[k] % (kh*kw)`` of multiplier ``m = order[k] // (kh*kw)``:
    phase plane ``p``'s gradient at ``j`` sums ``w[m, t] * flat_m[j - shift_t]``, read at
    ``offs[k] + j`` in the flat output gradients (``mult`` slots of ``E``, each ``M`` zeros
    before its plane)."""
    T = kh * kw
    P = sh * sw
    order = np.empty(mult * T, dtype=np.int64)
    offs = np.empty(mult * T, dtype=np.int64)
    starts = np.zeros(P + 1, dtype=np.int64)
    k = 0
    for p in range(P):
        starts[p] = k
        for m in range(mult):
            for a in range(kh):
                for b in range(kw):
                    if (a * dh % sh) * sw + b * dw % sw != p:
                        continue
                    order[k] = m * T + a * kw + b
                    offs[k] = m * E + M - ((a * dh // sh) * S + b * dw // sw)
                    k += 1
    starts[P] = k
    return order, offs, starts


@njit(parallel=True, cache=True, fastmath=True)
def planar_backward(x, gy, w, sh, sw, dh, dw, pt, pl, rows, S, length, block, parts,
                    need_gx, need_gw, gx):
    """Both gradients of :func:`planar_forward` in one pass over each plane.

    ``gx`` (the input's shape) receives the input gradient when ``need_gx``; the return value is
    the per-image weight gradient ``(N, C_out, kh, kw)`` in float64 (each plane's dot products in
    the input dtype), zeros unless ``need_gw``. Without ``need_gw`` only the shape of ``x`` is
    read, so ``x`` may be ``gx`` itself.

    The input gradient is a gather in register tiles (:func:`_taps_into`): each phase plane's
    position ``j`` sums ``w * gy`` over the taps of that phase, reading the output gradient laid
    out flat at ``j`` minus the tap's shift, with zeros before and after it. Scattering each
    tap over the plane loaded and stored the gradient at every multiply-add."""
    N, C_in = x.shape[0], x.shape[1]
    C_out = gy.shape[1]
    kh, kw = w.shape[1], w.shape[2]
    T = kh * kw
    mult = C_out // C_in
    planes = N * C_in
    step = (planes + parts - 1) // parts
    P = sh * sw
    M = ((kh - 1) * dh // sh) * S + (kw - 1) * dw // sw  # the largest shift
    span = -(-(rows * S) // 64) * 64  # a phase plane's positions, in whole tiles
    E = M + max(span, length) + 64
    order, offs, starts = _gather_layout(kh, kw, sh, sw, dh, dw, S, mult, E, M)
    toffs = _tap_offsets(kh, kw, sh, sw, dh, dw, S, block)
    taps = w.reshape(C_out, T)
    ws = np.empty((C_in, mult * T), dtype=x.dtype)  # each channel's weights in gather order
    for ci in range(C_in):
        for k in range(mult * T):
            ws[ci, k] = taps[ci * mult + order[k] // T, order[k] % T]
    zero = typed_zero(x)
    part_gw = np.zeros((N, C_out, kh, kw), dtype=np.float64)
    for part in prange(parts):
        src = np.empty(sh * sw * block, dtype=x.dtype)
        grad = np.empty(P * block + span, dtype=x.dtype)
        flats = np.zeros(mult * E, dtype=x.dtype)  # the zeros around each plane stay zero
        for q in range(part * step, min(planes, (part + 1) * step)):
            n = q // C_in
            ci = q - n * C_in
            if need_gw:
                _split(x[n, ci], pt, pl, sh, sw, rows, S, block, src, kh, kw, dh, dw)
            for m in range(mult):
                co = ci * mult + m
                flat = flats[m * E + M: m * E + M + length]
                _flat(gy[n, co], S, flat)
                if need_gw:
                    _tap_dots(flat, src, toffs, length, part_gw[n, co].reshape(T))
            if need_gx:
                for p in range(P):
                    k0, k1 = starts[p], starts[p + 1]
                    if k0 == k1:  # no tap reads this phase: _merge reads its zeros
                        grad[p * block: (p + 1) * block] = 0
                        continue
                    _taps_into(grad[p * block: p * block + span], flats, offs[k0:k1],
                               ws[ci, k0:k1], zero, span)
                _merge(grad, pt, pl, sh, sw, rows, S, block, gx[n, ci])
    return part_gw
