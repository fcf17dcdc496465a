"""Channels-last depthwise forward for small feature maps, in blocks of eight channels.

On a 6x6 or 3x3 map a plane is 36 or 9 outputs: the plane kernels
(:mod:`convlayers.kernels.depthwise_planar`, :mod:`convlayers.kernels.depthwise`) spend their
time on per-plane set-up and loops too short to vectorise, and ran 2-7x torch's time on the
last stages of MobileNet-type networks. Here a unit is one image's block of ``LANES`` channels
(oneDNN's ``nChw8c`` layout, per block): the block is copied zero-padded into a per-thread
``(Hp, Wp, LANES)`` scratch, every output pixel of the block accumulates ``kh*kw`` taps as
multiply-adds of ``LANES`` lanes in registers (one vector on AVX2), and the ``(Ho, Wo, LANES)``
result goes back to the planes. The scratch of a unit is a few KiB, so it stays in L1.

The multiply-adds run in register tiles (:func:`_pixels_tile`, LLVM vector code as in
:mod:`convlayers.kernels.simd`): ``PIXELS`` output pixels of one row (of one column when the
map is narrower than it is tall, so few pixels are computed twice) by one vector of lanes,
the accumulators held in registers over all ``kh*kw`` taps, each tap one weight vector load
and one input vector load per pixel. Accumulating in the scratch instead loaded and stored
every accumulator at every tap (three memory operations per multiply-add).

The copies into and out of the block are transposes: a vector of lanes' planes at a time,
a vector of positions each, transposed in registers
(:func:`convlayers.kernels.simd.transpose_vectors`) and stored a pixel (or a lane's plane)
per vector. One element at a time they took most of the kernel's time on small maps.

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

from convlayers.kernels.simd import VECTOR_BYTES, transpose_vectors

__all__ = ["LANES", "PIXELS", "channels_last_shapes", "depthwise_channels_last",
           "depthwise_channels_last_backward"]

#: Channels of one block (a compile-time constant of the kernels: their lane loops unroll).
LANES = 64
#: Output pixels of one register tile (one accumulator vector each).
PIXELS = 8


def _emit_pixels_tile(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    """``ob[y_p, x_p, v0 : v0 + n] = bias[c0 + v0 :] + sum over taps (a, b) of
    wt[a, b, c0 + v0 :] * xb[y_p*sh + a*dh, x_p*sw + b*dw, v0 :]`` for the pixels ``p < npx``
    (``npx <= PIXELS``) at ``(y_p, x_p) = (oy, ox0 + p)``, or ``(oy + p, ox0)`` when ``down``
    (a column of a narrow map); ``n`` the lanes of one vector; C-contiguous ``xb (Hp, Wp, L)``,
    ``wt (kh, kw, Cb)``, ``bias (Cb,)``, ``ob (Ho, Wo, L)``. Pixels past ``npx`` compute the
    last real one again and are not stored."""
    xt, wtt, bt, ot = signature.args[:4]
    xa, wa, ba, oa = (context.make_array(t)(context, builder, a)
                      for t, a in zip((xt, wtt, bt, ot), args[:4], strict=True))
    oy, ox0, npx, c0, v0, sh, sw, dh, dw, down = args[4:14]
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

    def strides(arr: Any) -> list[Any]:  # in elements
        return [builder.sdiv(s, const(itemsize)) for s in cgutils.unpack_tuple(builder,
                                                                             arr.strides)]

    def load(arr: Any, offset: Any) -> Any:
        return builder.load(builder.bitcast(builder.gep(arr.data, [offset]), vptr), align=itemsize)

    xs0, xs1, _ = strides(xa)
    ws0, ws1, _ = strides(wa)
    os0, os1, _ = strides(oa)
    kh, kw = cgutils.unpack_tuple(builder, wa.shape)[:2]
    last = builder.sub(npx, const(1))
    steps = [builder.select(builder.icmp_signed("<", const(p), npx), const(p), last)
             for p in range(PIXELS)]
    is_down = builder.icmp_signed("!=", down, const(0))
    ys = [builder.select(is_down, builder.add(oy, step), oy) for step in steps]
    xs = [builder.select(is_down, ox0, builder.add(ox0, step)) for step in steps]
    lane0 = builder.add(c0, v0)
    accs = [cgutils.alloca_once(builder, vec) for _ in range(PIXELS)]
    start = load(ba, lane0)
    for acc in accs:
        builder.store(start, acc)
    # pixel p's input at tap (0, 0), in elements of the scratch
    x_pixels = [builder.add(builder.add(builder.mul(builder.mul(y, sh), xs0),
                                        builder.mul(builder.mul(x, sw), xs1)), v0)
                for y, x in zip(ys, xs, strict=True)]
    with cgutils.for_range(builder, kh) as rows:
        a = rows.index
        x_row = builder.mul(builder.mul(a, dh), xs0)
        w_row = builder.add(builder.mul(a, ws0), lane0)
        with cgutils.for_range(builder, kw) as taps:
            b = taps.index
            w = load(wa, builder.add(w_row, builder.mul(b, ws1)))
            shift = builder.add(x_row, builder.mul(builder.mul(b, dw), xs1))
            for p in range(PIXELS):
                x = load(xa, builder.add(shift, x_pixels[p]))
                builder.store(builder.call(fma, [w, x, builder.load(accs[p])]), accs[p])
    for p in range(PIXELS):
        with builder.if_then(builder.icmp_signed("<", const(p), npx)):
            at = builder.add(builder.add(builder.mul(ys[p], os0), builder.mul(xs[p], os1)), v0)
            builder.store(builder.load(accs[p]),
                          builder.bitcast(builder.gep(oa.data, [at]), vptr), align=itemsize)
    return context.get_dummy_value()


@intrinsic
def _pixels_tile(typingctx: Any, xb: Any, wt: Any, bias: Any, ob: Any, oy: Any, ox0: Any,
                 npx: Any, c0: Any, v0: Any, sh: Any, sw: Any, dh: Any, dw: Any,
                 down: Any) -> Any:
    """The register tile of :func:`_emit_pixels_tile` (C-contiguous float arrays of one
    dtype: 3-D scratch and taps, 1-D bias)."""
    arrays = (xb, wt, bias, ob)
    if not all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == xb.dtype
               and a.dtype in (types.float32, types.float64) for a in arrays):
        return None
    if (xb.ndim, wt.ndim, bias.ndim, ob.ndim) != (3, 3, 1, 3):
        return None
    return types.void(xb, wt, bias, ob, *([types.intp] * 10)), _emit_pixels_tile


def channels_last_shapes(threads, c, out_hw, kernel, stride, dilation):
    """``(padded, result, lanes)``: the shapes of the per-thread scratch of
    :func:`depthwise_channels_last`, ``(threads, Hp, Wp, LANES)`` (the padded rows and columns
    some tap reads: nothing past them is copied) and ``(threads, Ho, Wo, LANES)``, and how many
    channels the taps and bias take: ``c + LANES``, the channels repeated (a block of planes
    that starts at channel ``c0`` reads ``c0 .. c0 + LANES``)."""
    (ho, wo), (kh, kw), (sh, sw), (dh, dw) = out_hw, kernel, stride, dilation
    hp = (ho - 1) * sh + (kh - 1) * dh + 1
    wp = (wo - 1) * sw + (kw - 1) * dw + 1
    return (threads, hp, wp, LANES), (threads, ho, wo, LANES), c + LANES


@njit(cache=True, inline="always")
def _pixel_places(H, W, Wp, pt, pl):
    """Each input pixel's element offset in a padded block (``Wp`` pixels a row, the map ``pt``
    rows down and ``pl`` columns in, :data:`LANES` channels a pixel)."""
    places = np.empty(H * W, dtype=np.int64)
    for p in range(H * W):
        places[p] = ((p // W + pt) * Wp + p % W + pl) * LANES
    return places


@njit(cache=True, fastmath=True, inline="always")
def _planes_into_block(src, base, count, lanes, offs, dst):
    """Lanes ``0 .. lanes`` of a block, channels-last: position ``q`` of plane ``lane``
    (``src[base + lane*count + q]``, C-contiguous planes of ``count`` positions) to
    ``dst[offs[q] + lane]``; a vector of lanes by a vector of positions at a time through
    :func:`convlayers.kernels.simd.transpose_vectors`, the ragged ends one element at a time."""
    step = VECTOR_BYTES // src.itemsize
    full = lanes - lanes % step
    for l0 in range(0, full, step):
        for q0 in range(0, count - count % step, step):
            transpose_vectors(src, base + l0 * count + q0, count, dst, offs, q0, l0)
        for q in range(count - count % step, count):
            for lane in range(l0, l0 + step):
                dst[offs[q] + lane] = src[base + lane * count + q]
    for lane in range(full, lanes):
        for q in range(count):
            dst[offs[q] + lane] = src[base + lane * count + q]


@njit(cache=True, fastmath=True, inline="always")
def _block_into_planes(src, count, lanes, lane_offs, dst, base):
    """The way back: position ``q``'s lane ``lane`` of a C-contiguous ``(count, LANES)`` block
    (``src[q*LANES + lane]``) to ``dst[base + lane_offs[lane] + q]``, as
    :func:`_planes_into_block`."""
    step = VECTOR_BYTES // src.itemsize
    full = lanes - lanes % step
    for l0 in range(0, full, step):
        for q0 in range(0, count - count % step, step):
            transpose_vectors(src, q0 * LANES + l0, LANES, dst, lane_offs, l0, base + q0)
    for lane in range(lanes):
        for q in range(count - count % step if lane < full else 0, count):
            dst[base + lane_offs[lane] + q] = src[q * LANES + lane]


@njit(cache=True, fastmath=True, inline="always")
def _cropped_into_block(x, p0, lanes, pt, pl, offs, xb):
    """Planes ``p0 .. p0+lanes`` of ``x`` (images and channels flattened) into the padded
    block ``xb (Hp, Wp, LANES)`` when the block crops the map (the input rows and columns
    past it, which no tap reads, are left out: a stride that does not end on the map's last
    row or column): each kept row's positions a vector at a time, transposed in registers as
    :func:`_planes_into_block` does (``offs``: :func:`_pixel_places` of the whole map), the
    row's ragged end one element at a time. Copied one element at a time, lane by lane, the
    copy took most of the layer: 470 channels of 114x29 at stride 3 ran 6.0 ms where torch
    took 0.9."""
    H, W = x.shape[2], x.shape[3]
    Hp, Wp = xb.shape[0], xb.shape[1]
    rows, cols = min(H, max(0, Hp - pt)), min(W, max(0, Wp - pl))
    src, dst = x.reshape(x.size), xb.reshape(xb.size)
    HW = H * W
    base = p0 * HW
    step = VECTOR_BYTES // x.itemsize
    full = lanes - lanes % step
    ends = cols - cols % step
    for l0 in range(0, full, step):
        for iy in range(rows):
            q_row = iy * W
            for x0 in range(0, ends, step):
                transpose_vectors(src, base + l0 * HW + q_row + x0, HW, dst, offs, q_row + x0,
                                  l0)
            for ix in range(ends, cols):
                for lane in range(l0, l0 + step):
                    dst[offs[q_row + ix] + lane] = src[base + lane * HW + q_row + ix]
    for lane in range(full, lanes):
        for iy in range(rows):
            for ix in range(cols):
                q = iy * W + ix
                dst[offs[q] + lane] = src[base + lane * HW + q]


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
    Hp, Wp = xt.shape[1], xt.shape[2]
    step = VECTOR_BYTES // x.itemsize
    # the orientation whose tiles compute fewer pixels (a tile's missing pixels repeat one)
    down = Wo * -(-Ho // PIXELS) < Ho * -(-Wo // PIXELS)
    planes = N * C
    # zeroed once: every block writes the same interior (real lanes), so the padding stays
    # zero; lanes past a block's planes keep another block's values, computed, never stored
    xt[:] = 0
    P = Ho * Wo
    # every input pixel lands in the block (none cropped): copied through the transposes
    whole = H + pt <= Hp and W + pl <= Wp
    pixel_offs = _pixel_places(H, W, Wp, pt, pl)
    lane_offs = np.arange(LANES, dtype=np.int64) * P  # lane -> its output plane
    for part in prange(threads):
        t = numba.get_thread_id()
        first, stop = _thread_planes(planes, threads, part, step)
        xb, ob = xt[t], ot[t]
        for p0 in range(first, stop, LANES):
            _channels_last_block(x, wt, bias, sh, sw, dh, dw, pt, pl, p0,
                                 min(LANES, stop - p0), whole, down, pixel_offs, lane_offs, xb,
                                 ob, out)


@njit(cache=True, fastmath=True, inline="always")
def _channels_last_block(x, wt, bias, sh, sw, dh, dw, pt, pl, p0, lanes, whole, down,
                         pixel_offs, lane_offs, xb, ob, out):
    """Planes ``p0 .. p0 + lanes`` of :func:`depthwise_channels_last`, in the block scratch
    ``xb (Hp, Wp, LANES)`` and ``ob (Ho, Wo, LANES)``."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Ho, Wo = out.shape[2], out.shape[3]
    HW, P = H * W, Ho * Wo
    step = VECTOR_BYTES // x.itemsize
    c0 = p0 % C
    if whole:  # the planes' positions a vector at a time, transposed in registers
        _planes_into_block(x.reshape(x.size), p0 * HW, HW, lanes, pixel_offs,
                           xb.reshape(xb.size))
    else:
        _cropped_into_block(x, p0, lanes, pt, pl, pixel_offs, xb)
    if down:  # narrow maps: tiles run down the columns
        for ox in range(Wo):
            for oy0 in range(0, Ho, PIXELS):
                npx = min(PIXELS, Ho - oy0)
                for v0 in range(0, lanes, step):
                    _pixels_tile(xb, wt, bias, ob, oy0, ox, npx, c0, v0, sh, sw, dh, dw, 1)
    else:
        for oy in range(Ho):
            for ox0 in range(0, Wo, PIXELS):
                npx = min(PIXELS, Wo - ox0)
                for v0 in range(0, lanes, step):
                    _pixels_tile(xb, wt, bias, ob, oy, ox0, npx, c0, v0, sh, sw, dh, dw, 0)
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
    Hp, Wp = xt.shape[1], xt.shape[2]
    planes = N * C
    threads = xt.shape[0]
    step = VECTOR_BYTES // x.itemsize
    gw[:] = 0
    xt[:] = 0
    rows, cols = min(H, max(0, Hp - pt)), min(W, max(0, Wp - pl))
    whole = H + pt <= Hp and W + pl <= Wp
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
            if whole:
                _planes_into_block(x.reshape(x.size), x0, HW, lanes, pixel_offs,
                                   xb.reshape(xb.size))
            else:
                _cropped_into_block(x, p0, lanes, pt, pl, pixel_offs, xb)
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
            # the block's inside (zeros where cropped) as (H, W, LANES), then back to the planes
            for iy in range(H):
                for j in range(W):
                    if iy < rows and j < cols:
                        hb[iy, j, :] = gxb[iy + pt, j + pl, :]
                    else:
                        hb[iy, j, :] = 0
            _block_into_planes(hb.reshape(hb.size), HW, lanes, lane_offs, gx.reshape(gx.size),
                               x0)
