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
    runs = _runs(pl, sw, S, W)
    i = max(0, -pt)
    r, p = (i + pt) // sh, (i + pt) % sh
    while i < H and r < rows:
        if (row_phases >> p) & 1:
            _phase_row(src[i], pl, sw, col_phases, dst, p * sw * block + r * S, block, S, runs,
                       True)
        i += 1
        p += 1
        if p == sh:
            p, r = 0, r + 1


@njit(cache=True, inline="always")
def _run(pl, sw, q, S, W):
    """``(j, c, n)``: phase ``q``'s first input column ``j`` (of a row ``W`` wide, padded by
    ``pl``), its column ``c`` in the phase plane, and how many columns (step ``sw``) land
    inside the plane's ``S``."""
    j = _first(max(0, -pl), pl, sw, q)
    c = (j + pl) // sw
    return j, c, max(0, min(S - c, (W - j + sw - 1) // sw))


@njit(cache=True, inline="always")
def _runs(pl, sw, S, W):
    """:func:`_run` of column phases 0, 1 and 2 (as one tuple), the same for every row: the
    row loops divide nothing."""
    j0, c0, n0 = _run(pl, sw, 0, S, W)
    j1, c1, n1 = _run(pl, sw, 1 % sw, S, W)
    j2, c2, n2 = _run(pl, sw, 2 % sw, S, W)
    return (j0, c0, n0, j1, c1, n1, j2, c2, n2)


@njit(cache=True, inline="always")
def _phase_row(row, pl, sw, col_phases, plane, base, block, S, runs, split):
    """Between one input row and its column phases' rows in ``plane`` (phase ``q``'s row at
    ``base + q * block``): ``split`` copies the row's pixels into the phases, otherwise the
    row := the phases' values (zero where no phase holds a pixel). ``runs`` is :func:`_runs`.

    Every index is unsigned and every stride a literal where it can be (strides 1-3 with all
    their phases read): numba keeps a negative-index wraparound select in loops over signed
    indices, and those loops ran scalar (a stride-2 copy of 1024 columns: 0.36 against 0.065
    ns a value, views from the first column 0.19)."""
    u = np.uint64
    W = row.shape[0]
    j0, c0, n0, j1, c1, n1, j2, c2, n2 = runs
    if not split:
        for k in range(u(W)):
            row[k] = 0
    if sw == 1:
        s, d = u(j0), u(base + c0)
        if split:
            for t in range(u(n0)):
                plane[d + t] = row[s + t]
        else:
            for t in range(u(n0)):
                row[s + t] = plane[d + t]
    elif sw == 2 and col_phases == 3:
        s0, s1 = u(j0), u(j1)
        d0, d1 = u(base + c0), u(base + block + c1)
        both, two = u(min(n0, n1)), u(2)
        first = (d0, d1) if j0 < j1 else (d1, d0)  # the phases in the row's column order
        if split:
            moved = _split_2(plane, row, u(min(j0, j1)), first, both)
            for t in range(moved, both):
                plane[d0 + t] = row[s0 + two * t]
                plane[d1 + t] = row[s1 + two * t]
        else:
            moved = _merge_2(plane, row, u(min(j0, j1)), first, both)
            for t in range(moved, both):
                row[s0 + two * t] = plane[d0 + t]
                row[s1 + two * t] = plane[d1 + t]
        _strided(row, plane, s0, d0, two, both, u(n0), split)
        _strided(row, plane, s1, d1, two, both, u(n1), split)
    elif sw == 3 and col_phases == 7:
        s0, s1, s2 = u(j0), u(j1), u(j2)
        d0, d1, d2 = u(base + c0), u(base + block + c1), u(base + 2 * block + c2)
        every, three = u(min(n0, n1, n2)), u(3)
        jm = min(j0, j1, j2)  # the phases in the row's column order: jm, jm + 1, jm + 2
        first = (d0 if j0 == jm else (d1 if j1 == jm else d2),
                 d0 if j0 == jm + 1 else (d1 if j1 == jm + 1 else d2),
                 d0 if j0 == jm + 2 else (d1 if j1 == jm + 2 else d2))
        if split:
            moved = _split_3(plane, row, u(jm), first, every)
            for t in range(moved, every):
                plane[d0 + t] = row[s0 + three * t]
                plane[d1 + t] = row[s1 + three * t]
                plane[d2 + t] = row[s2 + three * t]
        else:
            moved = _merge_3(plane, row, u(jm), first, every)
            for t in range(moved, every):
                row[s0 + three * t] = plane[d0 + t]
                row[s1 + three * t] = plane[d1 + t]
                row[s2 + three * t] = plane[d2 + t]
        _strided(row, plane, s0, d0, three, every, u(n0), split)
        _strided(row, plane, s1, d1, three, every, u(n1), split)
        _strided(row, plane, s2, d2, three, every, u(n2), split)
    else:  # some phases only, or a stride past 3: a strided loop a phase
        for q in range(sw):
            if (col_phases >> q) & 1:
                if q < 3:  # from the runs: no division a row
                    j, c, n = runs[3 * q], runs[3 * q + 1], runs[3 * q + 2]
                else:
                    j, c, n = _run(pl, sw, q, S, W)
                _strided(row, plane, u(j), u(base + q * block + c), u(sw), u(0), u(n), split)


def _phase_vectors(factor: int, split: bool) -> Any:
    """The intrinsic ``moved = phases(plane, row, s, dests, n)``: between ``row[s + factor*t
    + q]`` and ``plane[dests[q] + t]`` (``q < factor``) for ``t`` below ``n`` rounded down to
    whole vectors, which it returns; ``split`` copies row -> plane, else plane -> row.

    Each step loads (or stores) ``factor`` vectors of the row as one wide vector and splits it
    (or builds it) with one shuffle per phase: no scalar strided loads, and none of the
    run-time overlap checks LLVM puts before each vectorised loop (on rows of 28 columns, a
    loop of two phases spent 0.34 ns a value, 0.1 on long rows)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        plane_t, row_t = signature.args[0], signature.args[1]
        plane = context.make_array(plane_t)(context, builder, args[0])
        row = context.make_array(row_t)(context, builder, args[1])
        start, n = args[2], args[4]
        dests = cgutils.unpack_tuple(builder, args[3])
        scalar = context.get_value_type(plane_t.dtype)
        itemsize = context.get_abi_sizeof(scalar)
        lanes = VECTOR_BYTES // itemsize
        vec, wide = ir.VectorType(scalar, lanes), ir.VectorType(scalar, lanes * factor)
        intp, i32 = context.get_value_type(types.intp), ir.IntType(32)
        steps = builder.udiv(n, ir.Constant(intp, lanes))

        def pointer(arr: Any, index: Any, kind: Any) -> Any:
            return builder.bitcast(builder.gep(arr.data, [index]), kind.as_pointer())

        with cgutils.for_range(builder, steps) as loop:
            t = builder.mul(loop.index, ir.Constant(intp, lanes))
            at_row = pointer(row, builder.add(start, builder.mul(t, ir.Constant(intp, factor))),
                             wide)
            if split:
                values = builder.load(at_row, align=itemsize)
                for q, d in enumerate(dests):
                    picked = builder.shuffle_vector(values, ir.Constant(wide, None), ir.Constant(
                        ir.VectorType(i32, lanes), [q + factor * i for i in range(lanes)]))
                    builder.store(picked, pointer(plane, builder.add(d, t), vec),
                                  align=itemsize)
            else:
                parts = [builder.load(pointer(plane, builder.add(d, t), vec), align=itemsize)
                         for d in dests]
                joined = parts[0]  # the phases end to end: lanes * factor
                for part in parts[1:]:
                    width = joined.type.count
                    if width > lanes:  # shuffles take operands of one type: pad the part
                        part = builder.shuffle_vector(part, ir.Constant(vec, None), ir.Constant(
                            ir.VectorType(i32, width), [min(i, lanes - 1) for i in range(width)]))
                    joined = builder.shuffle_vector(joined, part, ir.Constant(
                        ir.VectorType(i32, width + lanes), list(range(width + lanes))))
                order = [(i % factor) * lanes + i // factor for i in range(lanes * factor)]
                values = builder.shuffle_vector(joined, ir.Constant(wide, None),
                                                ir.Constant(ir.VectorType(i32, lanes * factor),
                                                            order))
                builder.store(values, at_row, align=itemsize)
        return builder.mul(steps, ir.Constant(intp, lanes))

    def typer(typingctx: Any, plane: Any, row: Any, start: Any, dests: Any, n: Any) -> Any:
        arrays = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                     and a.dtype == plane.dtype and a.dtype in (types.float32, types.float64)
                     for a in (plane, row))
        tupled = isinstance(dests, types.UniTuple) and dests.count == factor
        if not (arrays and tupled and isinstance(dests.dtype, types.Integer)):
            return None
        return types.uint64(plane, row, types.uint64, dests, types.uint64), codegen

    typer.__name__ = f"phases_{factor}_{'split' if split else 'merge'}"
    return intrinsic(typer)


_split_2, _merge_2 = _phase_vectors(2, True), _phase_vectors(2, False)
_split_3, _merge_3 = _phase_vectors(3, True), _phase_vectors(3, False)


@njit(cache=True, inline="always")
def _strided(row, plane, s, d, step, lo, hi, split):
    """``plane[d + t]`` <-> ``row[s + step * t]`` for ``lo <= t < hi`` (unsigned)."""
    if split:
        for t in range(lo, hi):
            plane[d + t] = row[s + step * t]
    else:
        for t in range(lo, hi):
            row[s + step * t] = plane[d + t]


@njit(cache=True, inline="always")
def _merge(src, pt, pl, sh, sw, rows, S, block, dst):
    """The inverse of :func:`_split`: ``dst`` (an input-sized plane) := the phase planes'
    values at each input pixel, zero where a pixel lies outside them."""
    H, W = dst.shape[0], dst.shape[1]
    every = (1 << sw) - 1
    runs = _runs(pl, sw, S, W)
    for i in range(H):
        r, p = (i + pt) // sh, (i + pt) % sh
        if i + pt < 0 or r >= rows:
            dst[i, :] = 0
        else:
            _phase_row(dst[i], pl, sw, every, src, p * sw * block + r * S, block, S, runs,
                       False)


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
