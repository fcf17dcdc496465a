"""Channels-last depthwise forward for small feature maps, in blocks of eight channels.

On a 6x6 or 3x3 map a plane is 36 or 9 outputs: the plane kernels
(:mod:`convlayers.kernels.depthwise_planar`, :mod:`convlayers.kernels.depthwise`) spend their
time on per-plane set-up and loops too short to vectorise, and ran 2-7x torch's time on the
last stages of MobileNet-type networks. Here a unit is one image's block of ``LANES`` channels
(oneDNN's ``nChw8c`` layout, per block): the block is copied zero-padded into a per-thread
``(Hp, Wp, LANES)`` scratch, every output pixel of the block accumulates its taps as
multiply-adds of ``LANES`` lanes in registers (one vector on AVX2), and the ``(Ho, Wo, LANES)``
result goes back to the planes. A tile sums the kernel rows that reach the input from one of
its pixels' rows only (:func:`_tile_taps`), as torch's direct kernels skip the padding's
rows: 211 channels of 9x11x11 by 7x7 taps at dilation 2 and padding 6 sum 69% of them, and
took 0.24 ms against 0.30 (torch 0.20-0.21). The scratch of a unit is a few KiB, so it stays in L1.

The multiply-adds run in register tiles (:func:`_pixels_tile`, LLVM vector code as in
:mod:`convlayers.kernels.simd`): ``PIXELS`` output pixels, consecutive in row-major order (a
tile may run over into the next row), by one vector of lanes, the accumulators held in
registers over all ``kh*kw`` taps, each tap one weight vector load and one input vector load
per pixel; a block's last few pixels take the smallest of the tiles of 4, 2 or 1 pixels that
holds them. Tiles of one row's (or one column's) pixels computed 8 pixels for 2 on a 2x2
output (4x the work: 64 channels of 10x10, 5x5 stride 3, ran 0.36-0.42 ns a tap and output
lane against 0.09-0.14 at stride 1). Accumulating in the scratch instead loaded and stored
every accumulator at every tap (three memory operations per multiply-add).

The copies into and out of the block are transposes: a vector of lanes' planes at a time,
a vector of positions each, transposed in registers
(:func:`convlayers.kernels.simd.transpose_block`) and stored a pixel (or a lane's plane)
per vector, the ragged ends (a last few planes or positions) under masks. One element at a
time they took most of the kernel's time on small maps.

The tiles' taps are one loop over a table of their offsets in the block
(:func:`_kernel_taps`), not loops over the kernel's rows and columns, so that LLVM keeps the
tile's pixels' addresses in registers (:func:`_tile_emitter`).

No channel multiplier. :func:`depthwise_channels_last_backward` computes both gradients on
the same blocks (plain loops over the lanes, not register tiles: its accumulators are the
weight gradient's and the input gradient's blocks).
Importing compiles nothing; the first call per dtype compiles and ``cache=True`` keeps the
machine code on disk.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from convlayers.kernels.simd import VECTOR_BYTES, transpose_block

__all__ = ["LANES", "PIXELS", "channels_last_shapes", "depthwise_channels_last",
           "depthwise_channels_last_backward"]

#: Channels of one block (a compile-time constant of the kernels: their lane loops unroll).
LANES = 64
#: Output pixels of one register tile (one accumulator vector each).
PIXELS = 8


def _tile_emitter(pixels: int) -> Any:
    """The code generator of a register tile of ``pixels`` output pixels (see
    :func:`_pixels_tile`)."""

    def emit(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        """``ob[q, v0 : v0 + n] = bias[c0 + v0 :] + sum over taps t of wt[t, c0 + v0 :] *
        xb[pix[q] + taps[t] + v0 :]`` for the output pixels ``q = p0 .. p0 + npx`` (``npx <=
        pixels``; ``ob``, ``xb`` flat, ``wt`` as ``(kh*kw, C + L)``, ``pix[q]`` pixel ``q``'s
        tap ``(0, 0)`` in ``xb``, ``taps[t]`` tap ``t``'s offset from it), ``n`` the lanes of
        one vector. Pixels past ``npx`` compute the last real one again and are not stored.

        The taps are one loop over the offsets read from ``taps``, not loops over the kernel's
        rows and columns: with the column offset an induction variable, LLVM unrolled the
        column loop and strength-reduced every (pixel, unrolled column) address into a pointer
        of its own, 32 of them, spilled, a stack load before every multiply-add (1.3 G
        multiply-adds a second from L1, 40% of the machine's peak). A loaded offset cannot be
        strength-reduced: the pixels' addresses stay ``pixels`` registers."""
        xt, wtt, bt, ot, pt_, tt = signature.args[:6]
        xa, wa, ba, oa, pa, ta = (context.make_array(t)(context, builder, a)
                                  for t, a in zip((xt, wtt, bt, ot, pt_, tt), args[:6],
                                                  strict=True))
        p0, npx, c0, v0 = args[6:10]
        itemsize = context.get_abi_sizeof(context.get_value_type(xt.dtype))
        lanes = VECTOR_BYTES // itemsize
        vec = ir.VectorType(ir.FloatType() if itemsize == 4 else ir.DoubleType(), lanes)
        vptr = vec.as_pointer()
        intp = context.get_value_type(types.intp)
        name = f"v{lanes}{'f32' if itemsize == 4 else 'f64'}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fma.{name}")

        def const(value: int) -> Any:
            return ir.Constant(intp, value)

        def load(arr: Any, offset: Any) -> Any:
            return builder.load(builder.bitcast(builder.gep(arr.data, [offset]), vptr),
                                align=itemsize)

        xs1 = builder.sdiv(cgutils.unpack_tuple(builder, xa.strides)[1], const(itemsize))
        ws0 = builder.sdiv(cgutils.unpack_tuple(builder, wa.strides)[0], const(itemsize))
        ntaps = cgutils.unpack_tuple(builder, ta.shape)[0]
        last = builder.sub(npx, const(1))
        qs = [builder.add(p0, builder.select(builder.icmp_signed("<", const(p), npx), const(p),
                                             last)) for p in range(pixels)]
        lane0 = builder.add(c0, v0)
        accs = [cgutils.alloca_once(builder, vec) for _ in range(pixels)]
        start = load(ba, lane0)
        for acc in accs:
            builder.store(start, acc)
        x_pixels = [builder.add(builder.load(builder.gep(pa.data, [q])), v0) for q in qs]
        with cgutils.for_range(builder, ntaps) as taps:
            t = taps.index
            w = load(wa, builder.add(builder.mul(t, ws0), lane0))
            shift = builder.load(builder.gep(ta.data, [t]))
            for p in range(pixels):
                x = load(xa, builder.add(shift, x_pixels[p]))
                builder.store(builder.call(fma, [w, x, builder.load(accs[p])]), accs[p])
        for p in range(pixels):
            with builder.if_then(builder.icmp_signed("<", const(p), npx)):
                at = builder.add(builder.mul(qs[p], xs1), v0)  # ob's pixels are LANES apart too
                builder.store(builder.load(accs[p]),
                              builder.bitcast(builder.gep(oa.data, [at]), vptr), align=itemsize)
        return context.get_dummy_value()

    return emit


def _tile_intrinsic(pixels: int) -> Any:
    emit = _tile_emitter(pixels)

    def typer(typingctx: Any, xb: Any, wt: Any, bias: Any, ob: Any, pix: Any, taps: Any,
              p0: Any, npx: Any, c0: Any, v0: Any) -> Any:
        if not all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == xb.dtype
                   and a.dtype in (types.float32, types.float64) for a in (xb, wt, bias, ob)):
            return None
        if (xb.ndim, wt.ndim, bias.ndim, ob.ndim) != (3, 2, 1, 3):
            return None
        if not all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.int64
                   for a in (pix, taps)):
            return None
        return types.void(xb, wt, bias, ob, pix, taps, *([types.intp] * 4)), emit

    typer.__name__ = f"_pixels_tile{pixels}"
    return intrinsic(typer)


#: Register tiles of 8, 4, 2 and 1 output pixels (C-contiguous float arrays of one dtype:
#: 3-D scratch and result block, 2-D taps, 1-D bias; int64 pixel and tap offsets): a block's pixels in
#: tiles of :data:`PIXELS`, its last few in the smallest tile that holds them.
_pixels_tile = _tile_intrinsic(PIXELS)
_pixels_tile4 = _tile_intrinsic(4)
_pixels_tile2 = _tile_intrinsic(2)
_pixels_tile1 = _tile_intrinsic(1)


def channels_last_shapes(threads, c, in_hw, pad, out_hw, kernel, stride, dilation):
    """``(padded, result, lanes)``: the shapes of the per-thread scratch of
    :func:`depthwise_channels_last`, ``(threads, Hp, Wp, LANES)`` and ``(threads, Ho, Wo,
    LANES)``, and how many channels the taps and bias take: ``c + LANES``, the channels
    repeated (a block of planes that starts at channel ``c0`` reads ``c0 .. c0 + LANES``).

    The padded block holds the rows and columns some tap reads and the whole input map
    ``in_hw`` at ``pad = (top, left)``: a stride that does not end on the map's last row or
    column leaves up to ``stride - 1`` rows or columns no tap reads, and copying them too keeps
    every copy a transpose of whole planes. Cropped, the copy ran one element at a time on maps
    narrower than a vector (1.1-1.7 ns an element against 0.2-0.3: 220 images of 64 channels,
    10x10, 5x5 stride 3, spent 2.2 ms of 2.5 in it)."""
    (h, w), (pt, pl), (ho, wo), (kh, kw), (sh, sw), (dh, dw) = (in_hw, pad, out_hw, kernel,
                                                                stride, dilation)
    hp = max((ho - 1) * sh + (kh - 1) * dh + 1, h + pt)
    wp = max((wo - 1) * sw + (kw - 1) * dw + 1, w + pl)
    return (threads, hp, wp, LANES), (threads, ho, wo, LANES), c + LANES


@njit(cache=True, inline="always")
def _pixel_places(H, W, Wp, pt, pl):
    """Each input pixel's element offset in a padded block (``Wp`` pixels a row, the map ``pt``
    rows down and ``pl`` columns in, :data:`LANES` channels a pixel)."""
    places = np.empty(H * W, dtype=np.int64)
    for p in range(H * W):
        places[p] = ((p // W + pt) * Wp + p % W + pl) * LANES
    return places


@njit(cache=True, inline="always")
def _output_taps(Ho, Wo, Wp, sh, sw):
    """Each output pixel's tap ``(0, 0)`` in a padded block (``Wp`` pixels a row,
    :data:`LANES` channels a pixel), pixels in row-major order."""
    offs = np.empty(Ho * Wo, dtype=np.int64)
    for q in range(Ho * Wo):
        offs[q] = ((q // Wo) * sh * Wp + (q % Wo) * sw) * LANES
    return offs


@njit(cache=True, inline="always")
def _kernel_taps(kh, kw, Wp, dh, dw):
    """Each tap's offset from its output pixel's tap ``(0, 0)`` in a padded block (``Wp``
    pixels a row, :data:`LANES` channels a pixel), taps in row-major order."""
    offs = np.empty(kh * kw, dtype=np.int64)
    for t in range(kh * kw):
        offs[t] = ((t // kw) * dh * Wp + (t % kw) * dw) * LANES
    return offs


@njit(cache=True, inline="always")
def _kernel_rows(Ho, H, pt, sh, kh, dh):
    """``(Ho, 2)``: for each output row, the kernel rows ``lo .. hi`` whose taps read a row
    of the input (the others read only the block's zero padding), ``lo >= hi`` where none
    does."""
    rows = np.empty((Ho, 2), dtype=np.int64)
    for y in range(Ho):
        top = pt - y * sh  # kernel rows reach the input's first row from here
        rows[y, 0] = max(0, -((-top) // dh))
        rows[y, 1] = min(kh, (top + H - 1) // dh + 1) if top + H - 1 >= 0 else 0
    return rows


@njit(cache=True, inline="always")
def _tile_taps(kernel_rows, q0, count, Wo, kw):
    """``(t0, t1)``: the taps (row-major) of the kernel rows that read the input for some
    pixel of the tile ``q0 .. q0 + count`` (row-major output pixels, ``Wo`` a row); the rows
    reaching the input start lower and end higher for earlier output rows
    (:func:`_kernel_rows`), so its first and last rows bound them. Empty (``t0 == t1``)
    where every tap reads padding: the tile is its bias."""
    lo = kernel_rows[(q0 + count - 1) // Wo, 0]
    hi = kernel_rows[q0 // Wo, 1]
    if lo >= hi:
        return 0, 0
    return lo * kw, hi * kw


@njit(cache=True, fastmath=True, inline="always")
def _planes_into_block(src, base, count, lanes, offs, dst):
    """Lanes ``0 .. lanes`` of a block, channels-last: position ``q`` of plane ``lane``
    (``src[base + lane*count + q]``, C-contiguous planes of ``count`` positions) to
    ``dst[offs[q] + lane]`` (:func:`convlayers.kernels.simd.transpose_block`)."""
    transpose_block(src, base, count, lanes, count, dst, offs, 0)


@njit(cache=True, fastmath=True, inline="always")
def _block_into_planes(src, count, lanes, lane_offs, dst, base):
    """The way back: position ``q``'s lane ``lane`` of a C-contiguous ``(count, LANES)`` block
    (``src[q*LANES + lane]``) to ``dst[base + lane_offs[lane] + q]``."""
    transpose_block(src, 0, LANES, count, lanes, dst, lane_offs, base)


@njit(cache=True, inline="always")
def _thread_planes(planes, threads, part, step):
    """``(first, stop)``: the planes of part ``part`` of ``threads``, whole vectors of ``step``
    planes each (the last part ends at ``planes``), as even as whole vectors allow."""
    vectors = -(-planes // step)
    first = min(planes, part * vectors // threads * step)
    stop = min(planes, (part + 1) * vectors // threads * step)
    return first, stop


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_channels_last(x, wt, bias, sh, sw, dh, dw, pt, pl, threads, xt, ot, out):
    """``out (N, C, Ho, Wo)`` = the depthwise convolution of ``x (N, C, H, W)`` by ``wt (kh,
    kw, C + LANES)`` plus ``bias (C + LANES,)`` (the channels repeated: index ``j`` holds
    channel ``j % C``), zero padding ``pt >= 0`` above and ``pl >= 0`` left (the other sides
    follow from ``out``), in the per-thread scratch ``xt`` and ``ot`` (shapes from
    :func:`channels_last_shapes`); ``x`` and ``out`` C-contiguous.

    The ``N*C`` planes (images and channels flattened) are split into ``threads`` parts of
    whole vectors, as even as those allow (:func:`_thread_planes`), each part run in blocks of
    up to ``LANES`` consecutive planes; a block may run over from one image into the next: its
    lane ``l`` is channel ``(p0 + l) % C``, and its taps start at ``wt[:, :, p0 % C]``. Blocks
    of one image's channels left ``C % 16`` lanes to scalar copies and computed a whole vector
    for them (23 channels: 7 of 23 lanes copied one element at a time, 32 lanes computed), and
    their count split unevenly (4 images of 100 channels: 8 blocks, 200 channels a thread,
    but as blocks of 64 planes, 256 against 144)."""
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    Wp = xt.shape[2]
    step = VECTOR_BYTES // x.itemsize
    planes = N * C
    # zeroed once: every block writes the same interior (real lanes), so the padding stays
    # zero; lanes past a block's planes keep another block's values, computed, never stored
    xt[:] = 0
    P = Ho * Wo
    pixel_offs = _pixel_places(H, W, Wp, pt, pl)
    lane_offs = np.arange(LANES, dtype=np.int64) * P  # lane -> its output plane
    tap_offs = _output_taps(Ho, Wo, Wp, sh, sw)
    kernel_offs = _kernel_taps(wt.shape[0], wt.shape[1], Wp, dh, dw)
    kernel_rows = _kernel_rows(Ho, H, pt, sh, wt.shape[0], dh)
    flat_wt = wt.reshape(wt.shape[0] * wt.shape[1], wt.shape[2])
    for part in prange(threads):
        t = numba.get_thread_id()
        first, stop = _thread_planes(planes, threads, part, step)
        xb, ob = xt[t], ot[t]
        for p0 in range(first, stop, LANES):
            _channels_last_block(x, flat_wt, bias, kernel_offs, kernel_rows, wt.shape[1], p0,
                                 min(LANES, stop - p0), pixel_offs, lane_offs, tap_offs, xb,
                                 ob, out)


@njit(cache=True, fastmath=True, inline="always")
def _channels_last_block(x, wt, bias, kernel_offs, kernel_rows, kw, p0, lanes, pixel_offs,
                         lane_offs, tap_offs, xb, ob, out):
    """Planes ``p0 .. p0 + lanes`` of :func:`depthwise_channels_last`, in the block scratch
    ``xb (Hp, Wp, LANES)`` and ``ob (Ho, Wo, LANES)``; the stride and padding are in the
    offsets (``pixel_offs``: each input pixel's place in the block, ``tap_offs``: each output
    pixel's tap ``(0, 0)``, ``kernel_offs``: each tap's offset from it; ``wt`` as ``(kh*kw, C
    + LANES)``)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Ho, Wo = out.shape[2], out.shape[3]
    HW, P = H * W, Ho * Wo
    step = VECTOR_BYTES // x.itemsize
    c0 = p0 % C
    # the planes' positions a vector at a time, transposed in registers
    _planes_into_block(x.reshape(x.size), p0 * HW, HW, lanes, pixel_offs, xb.reshape(xb.size))
    # the output pixels in row-major order, PIXELS a tile across rows, the last few in the
    # smallest tile that holds them; each tile sums the kernel rows that read the input for
    # one of its pixels' rows (the others read only zeros)
    full = P - P % PIXELS
    for q0 in range(0, full, PIXELS):
        t0, t1 = _tile_taps(kernel_rows, q0, PIXELS, Wo, kw)
        for v0 in range(0, lanes, step):
            _pixels_tile(xb, wt[t0:t1], bias, ob, tap_offs, kernel_offs[t0:t1], q0, PIXELS, c0,
                         v0)
    rest = P - full
    if rest:
        t0, t1 = _tile_taps(kernel_rows, full, rest, Wo, kw)
        tw, to = wt[t0:t1], kernel_offs[t0:t1]
        for v0 in range(0, lanes, step):
            if rest > 4:
                _pixels_tile(xb, tw, bias, ob, tap_offs, to, full, rest, c0, v0)
            elif rest > 2:
                _pixels_tile4(xb, tw, bias, ob, tap_offs, to, full, rest, c0, v0)
            elif rest == 2:
                _pixels_tile2(xb, tw, bias, ob, tap_offs, to, full, rest, c0, v0)
            else:
                _pixels_tile1(xb, tw, bias, ob, tap_offs, to, full, rest, c0, v0)
    # back to the planes: a vector of pixels by a vector of lanes at a time
    _block_into_planes(ob.reshape(ob.size), P, lanes, lane_offs, out.reshape(out.size),
                       p0 * P)


@njit(parallel=True, cache=True, fastmath=True)
def depthwise_channels_last_backward(x, gy, wt, sh, sw, dh, dw, pt, pl, xt, gt, gxt, ht, gx, gw):
    """Both gradients of :func:`depthwise_channels_last` (no bias): ``gx (N, C, H, W)`` and
    thread ``t``'s part of the weight gradient ``gw[t] (kh, kw, C + LANES)`` (zeroed here;
    the caller sums over threads and folds index ``j`` onto channel ``j % C``), for ``gy (N,
    C, Ho, Wo)`` and taps ``wt (kh, kw, C + LANES)`` (the channels repeated); per-thread
    scratch ``xt`` and ``gxt`` ``(threads, Hp, Wp, LANES)``, ``gt`` ``(threads, Ho, Wo,
    LANES)`` and ``ht`` ``(threads, H, W, LANES)``.

    The planes are split as the forward's, each thread's part in blocks of up to ``LANES``
    planes (a static split: each thread's weight-gradient sums keep their order, so the
    results repeat bit for bit). The input block goes
    zero-padded into ``xt[t]`` and the output gradient into ``gt[t]`` (transposed in registers
    where whole vectors fit, as the forward's copies); then, tap by tap, every output pixel
    adds ``x * gy`` into the tap's weight gradient and ``w * gy`` into the input gradient's
    padded block ``gxt[t]``, a vector of lanes at a time (the tap's weights and accumulators
    stay put over the pixels); the block's inside goes through ``ht[t]`` back to the planes
    of ``gx``. On maps of 3x3 to 12x12 the plane kernels' loops are 3-12 elements long: they
    ran 3-11x torch's time at batch 32 on MobileNetV2's layers; this kernel 0.85-1.8x."""
    N, C, H, W = x.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
    kh, kw = wt.shape[0], wt.shape[1]
    Wp = xt.shape[2]
    planes = N * C
    threads = xt.shape[0]
    step = VECTOR_BYTES // x.itemsize
    gw[:] = 0
    xt[:] = 0
    HW, P = H * W, Ho * Wo
    pixel_offs = _pixel_places(H, W, Wp, pt, pl)
    grad_offs = np.arange(P, dtype=np.int64) * LANES  # output pixel -> its place in the block
    lane_offs = np.arange(LANES, dtype=np.int64) * HW  # lane -> its input plane
    for part in prange(threads):
        t = numba.get_thread_id()
        first, stop = _thread_planes(planes, threads, part, step)
        xb, gb, gxb, hb, acc = xt[t], gt[t], gxt[t], ht[t], gw[t]
        for p0 in range(first, stop, LANES):
            c0 = p0 % C
            lanes = min(LANES, stop - p0)
            x0, y0 = p0 * HW, p0 * P
            _planes_into_block(x.reshape(x.size), x0, HW, lanes, pixel_offs,
                               xb.reshape(xb.size))
            _planes_into_block(gy.reshape(gy.size), y0, P, lanes, grad_offs,
                               gb.reshape(gb.size))
            # past the block's planes: zero gradients (those lanes' taps fold onto real
            # channels; an inf another block left there makes 0 * inf, which the caller's
            # check of the weight gradient sees)
            gb[:, :, lanes:] = 0
            gxb[:] = 0
            for a in range(kh):
                for b in range(kw):
                    av, wv = acc[a, b, c0:c0 + LANES], wt[a, b, c0:c0 + LANES]
                    for oy in range(Ho):
                        iy = oy * sh + a * dh
                        xrow, gxrow, grow = xb[iy], gxb[iy], gb[oy]
                        for ox in range(Wo):
                            ix = ox * sw + b * dw
                            for lane in range(LANES):
                                av[lane] += xrow[ix, lane] * grow[ox, lane]
                            for lane in range(LANES):
                                gxrow[ix, lane] += wv[lane] * grow[ox, lane]
            # the block's inside as (H, W, LANES), then back to the planes
            for iy in range(H):
                for j in range(W):
                    hb[iy, j, :] = gxb[iy + pt, j + pl, :]
            _block_into_planes(hb.reshape(hb.size), HW, lanes, lane_offs, gx.reshape(gx.size),
                               x0)
