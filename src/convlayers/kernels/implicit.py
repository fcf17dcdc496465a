"""Numba kernel of the implicit-GEMM 2-D convolution: no im2col, the GEMM reads the input.

The lowered convolution (:mod:`convlayers.kernels.conv`) copies every window into columns,
``C_in/g * kh * kw`` values per output position, and then multiplies; with few output channels
that copy costs more than the product. Here the unit's input rows are copied once, zero-padded
and split by stride phase, into a flat slab ``xq``, and the product reads its right operand
straight from the slab: row ``k`` (tap ``(c, a, b)``) of the virtual ``K x R*Wq`` operand is
``xq[offs[k] : offs[k] + R*Wq]``, a window of the slab (:func:`convlayers.kernels.simd.gemm_indirect`).

Why a window works: output ``(r, ow)`` of the slab, tap ``(a, b)``, reads padded input row
``r*sh + a*dh`` and column ``ow*sw + b*dw``. Stored by phase, row ``i`` of the slab as phase
``i % sh``, row ``i // sh``, and column ``j`` as phase ``j % sw``, column ``j // sw``, that is
phase plane ``((a*dh) % sh, (b*dw) % sw)`` at row ``r + (a*dh)//sh``, column ``ow + (b*dw)//sw``:
for every tap, the outputs of a slab are one run of consecutive elements when each phase row is
``Wq = Wo + (kw-1)*dw // sw`` long and output position ``(r, ow)`` is numbered ``r*Wq + ow``.
The ``Wq - Wo`` extra positions per row are computed and dropped. Only the phase planes some
tap reads are stored. *Column planes* drop none: a plane per kernel column ``b`` (and row phase)
holds input column ``ow*sw + b*dw`` at ``ow``, rows ``Wo`` long, for ``kw`` copies of each pixel
(:func:`slab_layout`); the cost model in :mod:`convlayers.functional.plan` prices both layouts
against im2col's copy (``plan.column_planes``).

A forward unit is (image, group, slab of ``R`` output rows, block of ``B`` output channels), as
in the lowered forward; each thread has its own slab and product scratch. The weight gradient
(:func:`implicit_weight_grad`) reads the same windows as the *left* operand:
``acc (K, C_out/g) += windows @ gy_slab^T``, the output gradient's slab transposed with zeros
at the dropped positions, summed per thread over units of (image, group, slab).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from convlayers.kernels._bounds import (
    slab_unit,
    store_rows,
    store_rows_spaced,
    typed_zero,
    unit_parts,
)
from convlayers.kernels._twin import serial_twin
from convlayers.kernels._typed import TRUE
from convlayers.kernels.conv import OWNED_ROWS, owned_scratch
from convlayers.kernels.queue import claim, new_queue
from convlayers.kernels.simd import (
    gemm_indirect_left_add,
    gemm_indirect_part,
    transpose_block,
)

__all__ = ["channels_last_weight_grad", "forward_scratch", "implicit_forward", "implicit_weight_grad",
           "phase_taps", "phase_taps_parallel", "slab_layout"]


@njit(cache=True)
def slab_layout(Cig, kh, kw, sh, sw, dh, dw, Hq, Wq, cols):
    """``(offs, rows, shifts)`` of a unit's slab: the start of each tap's window
    (``Cig*kh*kw`` entries, ``(c*kh + a)*kw + b``) and, for each of a channel's ``P =
    rows.size`` planes (plane ``p`` of channel ``c`` at ``(c*P + p)*Hq*Wq``), the input it
    holds: its row ``iq``, column ``j`` is padded input row ``iq*sh + rows[p]``, column
    ``j*sw + shifts[p]``.

    Phase planes (``cols`` false): one per stride phase ``(py, px)`` some tap reads, shift
    ``px``, rows ``Wq = Wo + (kw-1)*dw // sw`` long; tap ``(a, b)`` reads its phase's plane from
    row ``(a*dh) // sh``, column ``(b*dw) // sw``. Column planes (``cols``): one per kernel
    column ``b`` and row phase, shift ``b*dw``, rows ``Wq = Wo`` long; tap ``(a, b)`` reads its
    plane from row ``(a*dh) // sh``, column 0, so no window drops a position."""
    keys = kw * sh if cols else sh * sw
    slot = np.full(keys, -1, dtype=np.int64)
    rows = np.empty(keys, dtype=np.int64)
    shifts = np.empty(keys, dtype=np.int64)
    planes = 0
    for a in range(kh):
        for b in range(kw):
            py = (a * dh) % sh
            key = b * sh + py if cols else py * sw + (b * dw) % sw
            if slot[key] < 0:
                slot[key] = planes
                rows[planes] = py
                shifts[planes] = b * dw if cols else (b * dw) % sw
                planes += 1
    offs = np.empty(Cig * kh * kw, dtype=np.int64)
    for c in range(Cig):
        for a in range(kh):
            for b in range(kw):
                py = (a * dh) % sh
                key = b * sh + py if cols else py * sw + (b * dw) % sw
                column = 0 if cols else (b * dw) // sw
                offs[(c * kh + a) * kw + b] = ((c * planes + slot[key]) * Hq * Wq
                                               + ((a * dh) // sh) * Wq + column)
    return offs, rows[:planes].copy(), shifts[:planes].copy()


@njit(parallel=True, cache=True)
def phase_taps_parallel(w4, index, lengths, out):
    """The taps of every stride phase of an input gradient, from the weights ``w4 (G, C_out/g,
    C_in/g, kh*kw)`` in one pass: phase ``p`` reads the ``lengths[p]`` taps listed next in
    ``index`` and fills the next ``G * C_in/g * C_out/g * lengths[p]`` elements of the flat
    ``out`` as ``(G, C_in/g, C_out/g * lengths[p])``. Each (group, input channel) pair, a
    thread's unit, reads each output channel's taps, a cache line or two, once for all
    phases. :func:`phase_taps` is its serial twin (small weights: a parallel region costs more
    than their copy)."""
    G, Cog, Cig, K = w4.shape
    wf = w4.reshape(w4.size)
    for pair in prange(G * Cig):
        g = pair // Cig
        ci = pair - g * Cig
        start = 0
        first = 0
        for p in range(lengths.shape[0]):
            L = lengths[p]
            at = start + pair * Cog * L
            for co in range(Cog):
                src = ((g * Cog + co) * Cig + ci) * K
                for t in range(L):
                    out[at + t] = wf[src + index[first + t]]
                at += L
            start += G * Cig * Cog * L
            first += L


phase_taps = serial_twin(phase_taps_parallel)


@njit(cache=True, fastmath=True)
def _fill_planes(xn, c0, C, sh, sw, ih0, pl, Hq, Wq, rows, shifts, xq):
    """Channels ``c0 .. c0 + C`` of ``xn (C_in, H, W)`` into the planes of a slab
    (:func:`slab_layout`'s ``rows`` and ``shifts``), input rows from ``ih0`` (negative: top
    padding) and columns from ``-pl``, zero outside the input; the rest of ``xq`` is zero.

    All of ``xq`` is zeroed first (a memset), then each plane row's inside columns are copied,
    channel after channel: zeroing the padding of each row, a few elements each, cost more
    than the copy on small maps (0.43-0.55x the time on 14x14-22x22 maps of 259-334
    channels). The loops index the flat arrays with unsigned offsets (no view to build, no
    negative-index wraparound per element)."""
    H, W = xn.shape[1], xn.shape[2]
    planes = rows.shape[0]
    xf = xn.reshape(xn.size)
    for j in range(xq.shape[0]):
        xq[j] = 0
    ostep = np.uint64(planes * Hq * Wq)
    istep = np.uint64(H * W)
    for p in range(planes):
        # columns j whose input column j*sw + shift - pl lies inside 0 .. W-1
        first = pl - shifts[p]
        lo = 0 if first <= 0 else (first + sw - 1) // sw
        hi = min(Wq, (W - 1 + first) // sw + 1) if W - 1 + first >= 0 else 0
        count = hi - lo
        if count <= 0:
            continue
        for iq in range(Hq):
            ih = ih0 + iq * sh + rows[p]
            if ih < 0 or ih >= H:
                continue
            o = np.uint64((p * Hq + iq) * Wq + lo)
            i = np.uint64((c0 * H + ih) * W + lo * sw - first)
            if sw == 1:  # rows that vectorise
                for _c in range(C):
                    for j in range(count):
                        xq[o + np.uint64(j)] = xf[i + np.uint64(j)]
                    o += ostep
                    i += istep
            else:
                for _c in range(C):
                    for j in range(count):
                        xq[o + np.uint64(j)] = xf[i + np.uint64(j * sw)]
                    o += ostep
                    i += istep


@njit(cache=True, inline="always")
def _phase_scratch(x, nt, Cig, kh, kw, sh, sw, dh, dw, R, Wo, cols):
    """``(Hq, Wq, offs, rows, shifts, xbuf)``: the slab planes' rows and row length for slabs
    of ``R`` output rows by ``Wo``, their layout (:func:`slab_layout`, column planes when
    ``cols``) and a slab (plus the tail the last windows read) per thread for ``nt`` threads."""
    Hq = R + ((kh - 1) * dh) // sh
    Wq = Wo if cols else Wo + ((kw - 1) * dw) // sw
    offs, rows, shifts = slab_layout(Cig, kh, kw, sh, sw, dh, dw, Hq, Wq, cols)
    xbuf = np.empty((nt, Cig * rows.shape[0] * Hq * Wq + Wq), dtype=x.dtype)
    return Hq, Wq, offs, rows, shifts, xbuf


def forward_scratch(c_chunk: int, kernel: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int], rows: int, block: int,
                    wo: int, columns: bool = False) -> tuple[int, int]:
    """Elements per thread of :func:`implicit_forward`'s two scratch arrays: the slab (a chunk
    of ``c_chunk`` input channels' phase planes for ``rows`` output rows, or their column
    planes when ``columns``, plus the tail the last windows read) and the product (``block``
    output channels by the slab's positions)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    hq = rows + (kh - 1) * dh // sh
    if columns:
        slots = kw * len({(a * dh) % sh for a in range(kh)})
        return c_chunk * slots * hq * wo + wo, block * rows * wo
    wq = wo + (kw - 1) * dw // sw
    slots = len({((a * dh) % sh, (b * dw) % sw) for a in range(kh) for b in range(kw)})
    return c_chunk * slots * hq * wq + wq, block * rows * wq


@njit(parallel=True, cache=True, fastmath=True)
def implicit_forward(x, taps, bias, kh, kw, sh, sw, dh, dw, pt, pl, Ho, Wo, R, B, Cq, cols, xbuf,
                     obuf, out, o0, orow, ocol):
    """The convolution of ``x (N, C_in, H, W)`` by ``taps (G, C_out/g, C_in/g*kh*kw)`` (+
    ``bias``, ``C_out`` entries or none) with zero padding ``pt`` above and ``pl`` left
    (negative: rows or columns dropped; the other sides follow from ``Ho x Wo``), output
    ``(oh, ow)`` of channel ``c`` stored at ``out[n, c, o0 + oh*orow + ow*ocol]``: ``(0, Wo,
    1)`` for a plain ``(N, C_out, Ho*Wo)`` output, or every ``s``-th row and column of a larger
    map (one stride phase of an input gradient, :mod:`convlayers.functional._engine_implicit`,
    written in place). Units of ``R`` output rows by ``B`` output channels of one image and group,
    handed out in order to the first free thread (:mod:`convlayers.kernels.queue`); the
    scratch ``xbuf`` and ``obuf`` (a row per thread, sizes from :func:`forward_scratch`) is the
    caller's, so a compiled plan keeps it in its arena.

    The input channels of a group come in chunks of ``Cq`` (the last may hold fewer): a unit
    fills its slab with one chunk at a time and adds the product of the chunk's columns of
    ``taps``, read in place, to the last, so a slab of many channels need not shrink to a row
    or two. The sums run in the same order whatever the chunks. ``cols``: the slab holds
    column planes (:func:`slab_layout`, rows ``Wo`` long: no position dropped, ``kw`` planes
    a channel copied) instead of phase planes."""
    N, C_in = x.shape[0], x.shape[1]
    G, Cog = taps.shape[0], taps.shape[1]
    Cig = C_in // G
    Q = (Cig + Cq - 1) // Cq
    K1 = kh * kw
    Hq = R + ((kh - 1) * dh) // sh
    Wq = Wo if cols else Wo + ((kw - 1) * dw) // sw
    offs, planes, shifts = slab_layout(Cig, kh, kw, sh, sw, dh, dw, Hq, Wq, cols)
    chunk_step = Cq * planes.shape[0] * Hq * Wq  # a chunk's channels start at the slab's start
    for k in range(offs.size):
        offs[k] -= (k // (Cq * K1)) * chunk_step
    nr = (Ho + R - 1) // R
    nb = (Cog + B - 1) // B
    units = N * G * nr * nb
    if xbuf.shape[0] == 1:  # one thread: no parallel region, no queue (2-3 us of a small call)
        for unit in range(units):
            _forward_unit(x, taps, bias, sh, sw, pt, pl, Wo, R, B, xbuf[0], obuf[0], out, unit,
                          Q, Cq, Cig, Ho, Hq, Wq, offs, planes, shifts, o0, orow, ocol)
        return
    queue = new_queue()
    for _ in prange(xbuf.shape[0]):
        while True:
            unit = claim(queue)
            if unit >= units:
                break
            t = numba.get_thread_id()
            _forward_unit(x, taps, bias, sh, sw, pt, pl, Wo, R, B, xbuf[t], obuf[t], out, unit,
                          Q, Cq, Cig, Ho, Hq, Wq, offs, planes, shifts, o0, orow, ocol)


@njit(cache=True, fastmath=True, inline="always")
def _forward_unit(x, taps, bias, sh, sw, pt, pl, Wo, R, B, xq, ob, out, unit, Q, Cq, Cig, Ho,
                  Hq, Wq, offs, planes, shifts, o0, orow, ocol):
    """One unit of :func:`implicit_forward` (image, group, slab of rows, block of channels) in
    one thread's scratch ``xq``, ``ob``. (At most 30 arguments: past that CPython calls
    through a tuple, which numba cannot inline.)"""
    G, Cog = taps.shape[0], taps.shape[1]
    K1 = taps.shape[2] // Cig
    nr = (Ho + R - 1) // R
    nb = (Cog + B - 1) // B
    n, g, oh0, rows, co0, cos = slab_unit(unit, G, nr, nb, R, Ho, B, Cog)
    o = ob[: cos * rows * Wq].reshape(cos, rows * Wq)
    for q in range(Q):
        c0 = q * Cq
        C = min(Cq, Cig - c0)
        _fill_planes(x[n], g * Cig + c0, C, sh, sw, oh0 * sh - pt, pl, Hq, Wq, planes, shifts,
                     xq)
        gemm_indirect_part(taps[g, co0: co0 + cos], xq, offs, o, c0 * K1, (c0 + C) * K1, q > 0)
    for co in range(cos):
        c = g * Cog + co0 + co
        b = bias[c] if bias.shape[0] > 0 else typed_zero(out)
        if ocol == 1:  # contiguous stores, a loop that vectorises
            store_rows(out[n, c, o0 + oh0 * orow:], o[co], rows, Wo, Wq, b, orow)
        else:
            store_rows_spaced(out[n, c, o0 + oh0 * orow:], o[co], rows, Wo, Wq, b, orow, ocol)


@njit(parallel=True, cache=True, fastmath=True)
def implicit_weight_grad(x, gy, G, kh, kw, sh, sw, dh, dw, pt, pl, Wo, R, CB, cols, nt, acc, gw):
    """Weight gradient of :func:`implicit_forward`: ``acc[t, g] (C_in/g*kh*kw, C_out/g)``
    (zeroed here) receives thread ``t``'s sum of ``windows @ gy_slab^T`` over its units
    (image, group, slab of ``R`` output rows, block of ``CB`` input channels: its rows of the
    gradient); the caller sums over threads. ``gy`` is ``(N, C_out, Ho*Wo)``; ``nt`` threads'
    scratch. With no entry in ``acc`` (``acc.shape[0] == 0``; the caller's promise that no
    two units share rows: one image in one slab, the input channels in blocks) each unit
    writes its columns of ``gw (G, C_out/g, C_in/g*kh*kw)`` itself, in chunks of
    :data:`convlayers.kernels.conv.OWNED_ROWS` rows of its product transposed while in cache,
    as :func:`convlayers.kernels.conv.lowered_weight_grad` does; ``gw`` is not touched
    otherwise. ``cols``: the slab holds column planes (:func:`slab_layout`: the product's
    inner dimension is the slab's positions, none dropped)."""
    N, C_in = x.shape[0], x.shape[1]
    Cog = acc.shape[3]
    owned = acc.shape[0] == 0
    Cig = C_in // G
    K1 = kh * kw
    Ho = gy.shape[2] // Wo
    Hq, Wq, offs, planes, shifts, xbuf = _phase_scratch(x, nt, CB, kh, kw, sh, sw, dh, dw, R,
                                                        Wo, cols)
    nr = (Ho + R - 1) // R
    nb = (Cig + CB - 1) // CB
    tbuf = np.empty((nt, R * Wq * Cog), dtype=x.dtype)
    if owned:
        K = Cig * K1
        dbuf, gwf, table = owned_scratch(gw, nt)
    else:
        acc[:] = 0
    for unit in prange(N * G * nr * nb):
        t = numba.get_thread_id()
        blk = unit % nb
        n, g, r = unit_parts(unit // nb, G, nr)
        c0 = blk * CB
        C = min(CB, Cig - c0)
        oh0 = r * R
        rows = min(R, Ho - oh0)
        xq = xbuf[t]
        _fill_planes(x[n], g * Cig + c0, C, sh, sw, oh0 * sh - pt, pl, Hq, Wq, planes, shifts,
                     xq)
        gyt = tbuf[t, : rows * Wq * Cog].reshape(rows * Wq, Cog)
        for i in range(rows):
            for ow in range(Wo):  # read strided, write contiguous
                row = gyt[i * Wq + ow]
                for co in range(Cog):
                    row[co] = gy[n, g * Cog + co, (oh0 + i) * Wo + ow]
            for ow in range(Wo, Wq):
                row = gyt[i * Wq + ow]
                for co in range(Cog):
                    row[co] = 0
        if not owned:
            gemm_indirect_left_add(xq, offs[: C * K1], gyt, acc[t, g, c0 * K1: (c0 + C) * K1])
            continue
        for r0 in range(0, C * K1, OWNED_ROWS):  # this unit's columns of gw, whole
            r1 = min(C * K1, r0 + OWNED_ROWS)
            part = dbuf[t, : (r1 - r0) * Cog].reshape(r1 - r0, Cog)
            part[:] = 0
            gemm_indirect_left_add(xq, offs[r0:r1], gyt, part)
            transpose_block(dbuf[t], 0, Cog, r1 - r0, Cog, gwf, table,
                            (g * Cog) * K + c0 * K1 + r0)


@njit(parallel=True, cache=True, fastmath=True)
def channels_last_weight_grad(x, gy, G, kh, kw, sh, sw, dh, dw, pt, pl, Wo, NB, TB, acc):
    """Weight gradient of :func:`implicit_forward` for few output channels: ``acc[t, g, tap]
    (C_out/g, C_in/g)`` (zeroed here) receives thread ``t``'s sum over its units of ``gy_n @
    windows``, for units of (image, group, block of ``TB`` taps), ``NB`` images at a time; the
    caller sums over threads.

    :func:`implicit_weight_grad` makes the output channels its product's columns: fewer than a
    register tile's run masked or one-vector tiles. Here the images are first copied
    channels-last and zero-padded, ``(Hp, Wp, C_in/g)`` each, so that for tap ``(a, b)`` the
    input channels seen by output position ``p = (oh, ow)`` are one run, ``C_in/g`` long,
    starting at ``((oh*sh + a*dh)*Wp + ow*sw + b*dw) * C_in/g``: the right operand of an
    indirect product whose rows are the positions and whose columns are the input channels,
    with ``gy``'s rows (output channels, positions contiguous) on the left."""
    N = x.shape[0]
    nt, Cog, Cig = acc.shape[0], acc.shape[3], acc.shape[4]
    kk = kh * kw
    P = gy.shape[2]
    Ho = P // Wo
    Hp = (Ho - 1) * sh + (kh - 1) * dh + 1
    Wp = (Wo - 1) * sw + (kw - 1) * dw + 1
    nb = (kk + TB - 1) // TB
    plane = Hp * Wp * Cig
    xbuf = np.empty(NB * G * plane, dtype=x.dtype)
    obuf = np.empty((nt, P), dtype=np.int64)
    acc[:] = 0
    for n0 in range(0, N, NB):
        images = min(NB, N - n0)
        for row in prange(images * G * Hp):  # the copies, a padded row a unit
            i, g, r = unit_parts(row, G, Hp)
            _fill_channels_last_row(x[n0 + i], g * Cig, Cig, r, pt, pl, Wp,
                                    xbuf[((i * G + g) * Hp + r) * Wp * Cig:])
        for unit in prange(images * G * nb):
            t = numba.get_thread_id()
            i, g, blk = unit_parts(unit, G, nb)
            xq = xbuf[(i * G + g) * plane: (i * G + g + 1) * plane]
            offs = obuf[t]
            u = gy[n0 + i, g * Cog: (g + 1) * Cog]
            for tap in range(blk * TB, min(kk, blk * TB + TB)):
                a = tap // kw
                shift = (a * dh * Wp + (tap - a * kw) * dw) * Cig
                for oh in range(Ho):
                    start = oh * sh * Wp * Cig + shift
                    for ow in range(Wo):
                        offs[oh * Wo + ow] = start + ow * sw * Cig
                gemm_indirect_part(u, xq, offs, acc[t, g, tap], P - P, P, TRUE)


@njit(cache=True, fastmath=True)
def _fill_channels_last_row(xn, c0, C, r, pt, pl, Wp, d):
    """``d[j*C + c] = xn[c0 + c, r - pt, j - pl]`` (zero outside the input) for ``j < Wp``,
    ``c < C``: row ``r`` of a zero-padded channels-last copy."""
    H, W = xn.shape[1], xn.shape[2]
    ih = r - pt
    if ih < 0 or ih >= H:
        for k in range(Wp * C):
            d[k] = 0
        return
    for j in range(Wp):
        iw = j - pl
        if iw < 0 or iw >= W:
            for c in range(C):
                d[j * C + c] = 0
        else:
            for c in range(C):
                d[j * C + c] = xn[c0 + c, ih, iw]
