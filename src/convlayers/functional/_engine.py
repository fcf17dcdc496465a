"""The NumPy engine behind every convolution: one GEMM per kernel offset.

For each kernel offset the padded input is sliced with the stride (a view), and the weights of
that offset, a ``(groups, out/groups, in/groups)`` matrix, multiply it through ``np.matmul``.
Summing over the offsets gives the convolution; no im2col buffer is built, so scratch memory is
one slice at a time (and batches are processed in chunks under :func:`config.scratch_bytes`).

The two backward products use the same loop: the input gradient scatters each offset's
``W_k^T @ grad`` back onto the slice it came from (this is also the transposed convolution),
and the weight gradient is ``grad @ slice^T`` per offset. Inputs here are already validated and
padded; the public functions in ``conv.py`` and ``conv_transpose.py`` do that.

Fast paths (1-D and 2-D, float32/float64; everything else takes the loop above):

- 3x3 stride-1 with enough channels per group (:data:`WINOGRAD_MIN_CHANNELS`): Winograd
  F(2x2,3x3) (:mod:`convlayers.kernels.winograd`) in one numba parallel region (transforms and
  the 16 products of a block of tile rows per unit, the products by the register-tiled GEMM of
  :mod:`convlayers.kernels.simd`: no BLAS, no hand-over between thread pools), forward with the
  bias fused, and
  both gradients from one input transform and one output-gradient transform per unit
  (:func:`correlate_backward`; one image per unit, so with fewer images than threads the
  older per-plane transforms and ``np.matmul`` serve it);
- depthwise (``C_in/groups == 1``, any channel multiplier): direct numba kernels
  (:mod:`convlayers.kernels.depthwise`), forward and both gradients (in one pass): stride 1
  with the width kept (3x3 padding 1, ...) straight over the planes as flat loops
  (:data:`FLAT_PIXELS`); other small planes (:data:`PLANAR_BYTES`) through a zero-padded
  polyphase copy, one plane at a time; the rest row by row;
- 1x1 kernels: the same micro-kernel over blocks of pixel columns
  (:func:`convlayers.kernels.conv.pointwise`, one parallel region, no BLAS) with the images
  viewed as ``(N, g, C_in/g, H*W)`` (no copy at stride 1); the input gradient is the same
  kernel with the weights transposed, the weight gradient per-thread ``grad @ x^T`` sums
  (:func:`convlayers.kernels.conv.pointwise_weight_grad`);
- ungrouped convolutions whose one-image column buffer is small (:data:`FUSED_COLUMN_BYTES`),
  with at least as many images as threads: im2col and the GEMM of one image per unit in one
  parallel region, by the same micro-kernel; their backward likewise
  (:func:`convlayers.kernels.conv.lowered_backward`: per image its columns, the weight gradient
  ``cols @ grad^T`` accumulated per thread, ``W^T @ grad`` and col2im into that image's input
  gradient);
- the rest: im2col into a reused column buffer, a chunk of images at a time
  (:mod:`convlayers.kernels.conv`), then one GEMM per image and group; the input gradient is
  the transposed GEMM followed by col2im, the weight gradient ``grad @ cols^T``.

With ``pairs`` given, :func:`correlate` and :func:`correlate_backward` take the *unpadded*
input: the depthwise, Winograd and im2col kernels read the zero borders by bounds.

Chunks hold whole images while their columns fit :data:`CHUNK_BYTES` and the scratch cap;
images with more than :data:`SLAB_COLUMNS` output positions are lowered in slabs of output
rows. The slab size depends on the geometry only, so the forward result is the same bit for bit
whatever the cap; the scratch is at most one slab (or image) beyond the cap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from convlayers import config
from convlayers.functional._common import Pairs, offset_slices, pad_pairs, window_offsets


def _batch_chunks(n: int, bytes_per_item: int) -> Iterator[slice]:
    """Slices of the batch axis so that one chunk's scratch stays under the configured cap."""
    step = max(1, config.scratch_bytes() // max(bytes_per_item, 1))
    for start in range(0, max(n, 1), step):
        yield slice(start, min(start + step, n))


#: Target size of one chunk's column buffer. Each chunk alternates numba threads and BLAS threads,
#: and every hand-over between the two pools costs (much more on a busy machine), so chunks are
#: large: measured on 2 cores, 1-image chunks were 10x slower than 8-image ones on 64->64 3x3.
CHUNK_BYTES = 64 * 2**20
#: Images with more output positions than this are lowered in slabs of output rows.
SLAB_COLUMNS = 1 << 16


def _fast(*arrays: np.ndarray) -> bool:
    """Whether the compiled 1-D/2-D paths serve arrays of this rank, dtype and size."""
    a = arrays[0]
    return a.ndim in (3, 4) and a.dtype in (np.float32, np.float64) and all(x.size for x in arrays)


def _kernels() -> Any:
    from convlayers import kernels
    from convlayers.kernels import conv, depthwise, winograd  # noqa: F401  (lazy: numba loads here)

    config.apply_numba_threads()
    return kernels


def _numba_threads() -> int:
    """Threads of numba's pool the kernels run with (after :func:`_kernels`)."""
    import numba

    return int(numba.get_num_threads())


#: Convolutions with fewer multiply-adds than this run on one thread: waking the other threads
#: of the OpenMP pool (asleep under ``OMP_WAIT_POLICY=PASSIVE``) costs ~40 us, more than such a
#: layer gains from them (measured: a 7x7 depthwise layer of 960 channels, 0.4 M multiply-adds,
#: 147 us on one thread, 182 us on two).
SERIAL_MACS = 2_000_000


@contextmanager
def _threads_for(macs: int, serial_below: int | None = None) -> Iterator[None]:
    """Run the kernels inside on one thread when the work is small: under ``serial_below``
    operations (default :data:`SERIAL_MACS`)."""
    if macs >= (SERIAL_MACS if serial_below is None else serial_below):
        yield
        return
    import numba

    _kernels()  # loads numba and applies the thread setting first
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(saved)


@contextmanager
def _dynamic_units() -> Iterator[None]:
    """Hand out the units of the fused kernels one at a time (numba's ``prange`` otherwise
    splits them into one static chunk per thread, and a core slowed by a neighbour holds up
    the call)."""
    import numba

    saved = numba.set_parallel_chunksize(1)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(saved)


def _index(*trailing: slice) -> Any:
    """``(..., *trailing)``: an index on the trailing axes (typed loosely for mypy)."""
    return (Ellipsis, *trailing)


def _pads(pairs: Pairs) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` zero padding of the 2-D view of a 1-D or 2-D problem."""
    if len(pairs) == 1:
        return (0, 0, *pairs[0])
    return (*pairs[0], *pairs[1])


def _as_4d(a: np.ndarray) -> np.ndarray:
    """A 1-D problem ``(N, C, L)`` as 2-D ``(N, C, 1, L)``; contiguous for the kernels."""
    return np.ascontiguousarray(a if a.ndim == 4 else a[:, :, None, :])


def _pair(t: tuple[int, ...], one: int) -> tuple[int, int]:
    return (t[0], t[1]) if len(t) == 2 else (one, t[0])


def _grouped_taps(weight: np.ndarray, groups: int) -> np.ndarray:
    """Weights ``(C_out, C_in/g, *K)`` as ``(g, C_out/g, C_in/g, prod(K))``."""
    c_out, c_in_g = weight.shape[:2]
    return weight.reshape(groups, c_out // groups, c_in_g, -1)


def correlate(
    x: np.ndarray,
    weight: np.ndarray,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    out_shape: tuple[int, ...],
    pairs: Pairs | None = None,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Cross-correlate a batch ``(N, C_in, *S)`` with ``weight``, plus ``bias`` when given.

    ``pairs`` is the implicit zero padding ``(before, after)`` per spatial axis (``None``: the
    input is already padded). The 2-D fast paths read the borders by bounds and add the bias
    in their epilogue; the NumPy loop pads (a copy) and adds the bias afterwards.
    """
    pairs = pairs if pairs is not None else ((0, 0),) * (x.ndim - 2)
    if _fast(x, weight):
        macs = x.shape[0] * weight.size * int(np.prod(out_shape))
        with _threads_for(macs):
            out4 = _correlate_fast(_as_4d(x), _as_4d(weight), _pair(stride, 1),
                                   _pair(dilation, 1), groups, _pair(out_shape, 1), _pads(pairs),
                                   bias)
        return out4.reshape(x.shape[0], weight.shape[0], *out_shape)
    out = _correlate_numpy(pad_pairs(x, pairs), weight, stride, dilation, groups, out_shape)
    if bias is not None:
        out += bias.reshape((1, -1) + (1,) * len(out_shape))
    return out


def _correlate_numpy(
    xp: np.ndarray,
    weight: np.ndarray,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    out_shape: tuple[int, ...],
) -> np.ndarray:
    """The general loop: one GEMM per kernel offset over the padded input, no bias."""
    n, c_in = xp.shape[:2]
    c_out, c_in_g = weight.shape[:2]
    kernel = weight.shape[2:]
    length = int(np.prod(out_shape))
    taps = _grouped_taps(weight, groups)
    out = np.zeros((n, groups, c_out // groups, length), dtype=xp.dtype)
    xg = xp.reshape(n, groups, c_in_g, *xp.shape[2:])
    item = xp.itemsize * c_in * length
    for chunk in _batch_chunks(n, item):
        xc, oc = xg[chunk], out[chunk]
        rows = oc.shape[0]
        for t, offset in enumerate(window_offsets(kernel)):
            window = xc[_index(*offset_slices(offset, out_shape, stride, dilation))]
            window = window.reshape(rows, groups, c_in_g, length)
            if c_in_g == 1:  # depthwise: an outer product, cheaper as a broadcast multiply
                oc += taps[None, :, :, 0, t, None] * window
            else:
                oc += np.matmul(taps[:, :, :, t], window)
    return out.reshape(n, c_out, *out_shape)


def correlate_input_grad(
    grad: np.ndarray,
    weight: np.ndarray,
    padded_shape: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    """Gradient of :func:`correlate` with respect to its padded input ``(N, C_in, *padded)``."""
    if _fast(grad, weight):
        gx4 = _input_grad_fast(_as_4d(grad), _as_4d(weight), _pair(padded_shape, 1),
                               _pair(stride, 1), _pair(dilation, 1), groups)
        return gx4.reshape(grad.shape[0], -1, *padded_shape)
    n = grad.shape[0]
    c_out, c_in_g = weight.shape[:2]
    kernel = weight.shape[2:]
    out_shape = grad.shape[2:]
    length = int(np.prod(out_shape))
    taps_t = _grouped_taps(weight, groups).swapaxes(1, 2)  # (g, C_in/g, C_out/g, K)
    gy = grad.reshape(n, groups, c_out // groups, length)
    gx = np.zeros((n, groups, c_in_g, *padded_shape), dtype=grad.dtype)
    item = grad.itemsize * groups * c_in_g * length
    for chunk in _batch_chunks(n, item):
        gyc, gxc = gy[chunk], gx[chunk]
        rows = gyc.shape[0]
        for t, offset in enumerate(window_offsets(kernel)):
            if c_in_g == 1 and taps_t.shape[2] == 1:
                part = taps_t[None, :, :, 0, t, None] * gyc
            else:
                part = np.matmul(taps_t[:, :, :, t], gyc)
            target = _index(*offset_slices(offset, out_shape, stride, dilation))
            gxc[target] += part.reshape(rows, groups, c_in_g, *out_shape)
    return gx.reshape(n, groups * c_in_g, *padded_shape)


def correlate_weight_grad(
    xp: np.ndarray,
    grad: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    """Gradient of :func:`correlate` with respect to ``weight`` ``(C_out, C_in/g, *K)``."""
    if _fast(xp, grad):
        gw4 = _weight_grad_fast(_as_4d(xp), _as_4d(grad), _pair(kernel, 1), _pair(stride, 1),
                                _pair(dilation, 1), groups)
        return gw4.reshape(grad.shape[1], xp.shape[1] // groups, *kernel)
    n, c_in = xp.shape[:2]
    c_out = grad.shape[1]
    c_in_g, c_out_g = c_in // groups, c_out // groups
    out_shape = grad.shape[2:]
    length = int(np.prod(out_shape))
    gy = grad.reshape(n, groups, c_out_g, length)
    xg = xp.reshape(n, groups, c_in_g, *xp.shape[2:])
    acc_dtype = np.float64 if xp.dtype == np.float64 else np.float32
    gw = np.zeros((groups, c_out_g, c_in_g, int(np.prod(kernel))), dtype=acc_dtype)
    item = xp.itemsize * c_in * length
    for chunk in _batch_chunks(n, item):
        xc, gyc = xg[chunk], gy[chunk]
        rows = xc.shape[0]
        for t, offset in enumerate(window_offsets(kernel)):
            window = xc[_index(*offset_slices(offset, out_shape, stride, dilation))]
            window = window.reshape(rows, groups, c_in_g, length)
            if c_in_g == 1 and c_out_g == 1:
                gw[:, 0, 0, t] += np.einsum("ngl,ngl->g", gyc[:, :, 0], window[:, :, 0])
            else:
                gw[:, :, :, t] += np.matmul(gyc, window.swapaxes(-1, -2)).sum(axis=0)
    return gw.reshape(c_out, c_in_g, *kernel).astype(xp.dtype, copy=False)


# ----------------------------------------------------------------------------- 2-D fast paths

def _slabs(n: int, c: int, taps: int, ho: int, wo: int, itemsize: int) -> Iterator[tuple[slice, int, int]]:
    """``(images, first output row, rows)`` of each chunk of the lowering.

    The unit is a slab of output rows whose size depends on the geometry only (a whole image
    up to :data:`SLAB_COLUMNS` output positions), so every GEMM has the same operands whatever
    the cap: the cap decides only how many whole-image units go into one chunk.
    """
    rows = ho if ho * wo <= SLAB_COLUMNS else max(1, -(-SLAB_COLUMNS // wo))
    if rows < ho:
        for i in range(n):
            for r in range(0, ho, rows):
                yield slice(i, i + 1), r, min(rows, ho - r)
        return
    step = max(1, min(config.scratch_bytes(), CHUNK_BYTES) // (c * taps * ho * wo * itemsize))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n)), 0, ho


def _subsampled(xp: np.ndarray, stride: tuple[int, int], out_shape: tuple[int, int]) -> np.ndarray:
    """The pixels a 1x1 kernel reads: every ``stride``-th, ``out_shape`` of them."""
    if stride == (1, 1) and xp.shape[2:] == out_shape:
        return xp
    return np.ascontiguousarray(xp[:, :, : stride[0] * out_shape[0] : stride[0],
                                   : stride[1] * out_shape[1] : stride[1]])


#: The planar depthwise kernels serve planes whose padded copy takes at most this many bytes
#: (their four scratch planes then stay in a core's L2); larger planes have rows long enough
#: for the row kernels to vectorise.
PLANAR_BYTES = 128 * 1024


def _planar(out_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
            dilation: tuple[int, int], itemsize: int) -> tuple[int, int, int, int] | None:
    """The planar kernels' geometry ``(rows, S, length, block)``, or None where the row kernels
    serve."""
    from convlayers.kernels.depthwise import planar_geometry

    ho, wo = out_shape
    geometry = planar_geometry((ho, wo), kernel, stride, dilation)
    return geometry if stride[0] * stride[1] * geometry[3] * itemsize <= PLANAR_BYTES else None


#: The flat depthwise kernels' column masks take ``kw * Ho * W`` bytes; past this many output
#: pixels per plane the row kernels serve (their rows are long enough by then).
FLAT_PIXELS = 1 << 18


def _flat_ok(x_shape: tuple[int, ...], out_shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether the flat depthwise kernels serve: stride 1, the width kept, planes not huge."""
    return (tuple(stride) == (1, 1) and out_shape[1] == x_shape[3]
            and out_shape[0] * out_shape[1] <= FLAT_PIXELS)


def _planar_parts(planes: int) -> int:
    """Parallel units of the planar kernels: a few per thread, so a busy core can be helped."""
    return max(1, min(planes, 8 * _numba_threads()))


def _bias_arg(bias: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """The bias as the kernels take it: an empty array when there is none."""
    return np.empty(0, dtype=dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)


def _correlate_fast(x: np.ndarray, w: np.ndarray, stride: tuple[int, int],
                    dilation: tuple[int, int], groups: int, out_shape: tuple[int, int],
                    pads: tuple[int, int, int, int], bias: np.ndarray | None) -> np.ndarray:
    k = _kernels()
    n, c_in = x.shape[:2]
    c_out, c_in_g, kh, kw = w.shape
    ho, wo = out_shape
    pt, _, pl, _ = pads
    if c_in_g == 1:
        out = np.empty((n, c_out, ho, wo), dtype=x.dtype)
        wd = np.ascontiguousarray(w.reshape(c_out, kh, kw))
        if _flat_ok(x.shape, out_shape, stride):
            h, width = x.shape[2:]
            masks = k.depthwise.flat_masks(out_shape, width, kw, dilation[1], pl)
            k.depthwise.flat_forward(np.ascontiguousarray(x).reshape(n, c_in, h * width), wd,
                                     _bias_arg(bias, x.dtype), width, *dilation, pt, pl, masks,
                                     _planar_parts(n * c_out), out.reshape(n, c_out, ho * wo))
        elif (planar := _planar(out_shape, (kh, kw), stride, dilation, x.itemsize)) is not None:
            k.depthwise.planar_forward(x, wd, _bias_arg(bias, x.dtype), *stride, *dilation, pt, pl,
                                       *planar, _planar_parts(n * c_in), out)
        else:
            k.depthwise.depthwise_forward(x, wd, _bias_arg(bias, x.dtype), *stride, *dilation,
                                          pt, pl, out)
        return out
    if _winograd_ok(w.shape, stride, dilation):
        return _winograd_forward(x, w, bias, pt, pl, groups, out_shape)
    taps = w.reshape(groups, c_out // groups, c_in_g * kh * kw)
    out = np.empty((n, groups, c_out // groups, ho * wo), dtype=x.dtype)
    if kh == kw == 1:
        xp = pad_pairs(x, ((pads[0], pads[1]), (pads[2], pads[3])))
        xs = _subsampled(xp, stride, out_shape).reshape(n, groups, c_in_g, ho * wo)
        _pointwise(xs, np.ascontiguousarray(taps), _bias_arg(bias, x.dtype), out)
        return out.reshape(n, c_out, ho, wo)
    if _lowered_fused_ok(n, c_in * kh * kw, ho * wo, groups, x.itemsize):
        k.conv.lowered_fused(x, np.ascontiguousarray(taps[0]), _bias_arg(bias, x.dtype), kh, kw,
                             *stride, *dilation, pt, pl, wo, _numba_threads(),
                             out.reshape(n, c_out, ho * wo))
        return out.reshape(n, c_out, ho, wo)
    buf = None
    for images, r0, rows in _slabs(n, c_in, kh * kw, ho, wo, x.itemsize):
        nb, length = images.stop - images.start, rows * wo
        if buf is None or buf.size < nb * c_in * kh * kw * length:
            buf = np.empty(nb * c_in * kh * kw * length, dtype=x.dtype)
        cols = buf[: nb * c_in * kh * kw * length].reshape(nb, c_in * kh * kw, length)
        k.conv.im2col_pad(x[images], kh, kw, *stride, *dilation, pt, pl, r0, wo, cols)
        cols4 = cols.reshape(nb, groups, c_in_g * kh * kw, length)
        if rows == ho:
            np.matmul(taps, cols4, out=out[images])
        else:
            out[images, :, :, r0 * wo : r0 * wo + length] = np.matmul(taps, cols4)
    if bias is not None:
        out += bias.reshape(1, groups, c_out // groups, 1)
    return out


#: The fused lowering (:func:`convlayers.kernels.conv.lowered_fused`: im2col of one image and its
#: GEMM by the numba micro-kernel in one parallel region, no BLAS) serves ungrouped convolutions
#: whose one-image column buffer is at most this many bytes, with at least as many images as
#: threads.
FUSED_COLUMN_BYTES = 4 * 2**20


#: Bytes of the right-hand operand one unit of the 1x1 kernels reads (a block of pixel columns of
#: one image, all its input channels; with the output gradient too for the weight gradient): it
#: stays in the core's L2 cache while every output row block streams through it.
POINTWISE_BLOCK_BYTES = 256 * 2**10


def _pointwise_block(k_rows: int, length: int, itemsize: int) -> int:
    """Pixel columns per unit of the 1x1 kernels (a multiple of 16, at least 64)."""
    cols = POINTWISE_BLOCK_BYTES // max(1, k_rows * itemsize)
    return int(min(length, max(64, cols // 16 * 16)))


def _pointwise(xs: np.ndarray, taps: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
    """``out[n, g] = taps[g] @ xs[n, g]`` (+ bias) by :func:`convlayers.kernels.conv.pointwise`:
    ``xs (N, G, K, L)`` and ``taps (G, P, K)`` C-contiguous, ``out (N, G, P, L)``."""
    k = _kernels()
    length = xs.shape[3]
    block = _pointwise_block(xs.shape[2], length, xs.itemsize)
    rows = _pointwise_rows(taps.shape[1], xs.shape[0] * -(-length // block))
    with _dynamic_units():
        k.conv.pointwise(np.ascontiguousarray(xs), taps, bias, block, rows, out)


def _pointwise_rows(c_out_g: int, column_units: int) -> int:
    """Output rows per unit of the 1x1 kernel: all of them, unless there are fewer column units
    than twice the threads; then the rows are split too (multiples of 8, the register tiles'
    bands, at least 16)."""
    want = 2 * _numba_threads()
    if column_units >= want:
        return c_out_g
    parts = -(-want // column_units)
    rows = max(16, -(-c_out_g // parts))
    return min(c_out_g, -(-rows // 8) * 8)


def _lowered_backward(x: np.ndarray, gy: np.ndarray, w: np.ndarray, stride: tuple[int, int],
                      dilation: tuple[int, int], pt: int, pl: int) -> tuple[np.ndarray, np.ndarray]:
    """Both gradients of an ungrouped lowered convolution in one parallel region
    (:func:`convlayers.kernels.conv.lowered_backward`): per image its columns, the transposed
    weight gradient accumulated per thread, and the input gradient by ``W^T @ grad`` and col2im.
    ``x``, ``gy`` and ``w`` are C-contiguous 4-D."""
    k = _kernels()
    n = x.shape[0]
    c_out, c_in, kh, kw = w.shape
    ho, wo = gy.shape[2:]
    threads = _numba_threads()
    taps_t = np.ascontiguousarray(w.reshape(c_out, c_in * kh * kw).T)
    gx = np.empty_like(x)
    acc = np.empty((threads, c_in * kh * kw, c_out), dtype=x.dtype)
    used = np.zeros(threads, dtype=np.bool_)
    with _dynamic_units():
        k.conv.lowered_backward(x, gy.reshape(n, c_out, ho * wo), taps_t, kh, kw, *stride,
                                *dilation, pt, pl, wo, gx, acc, used)
    gw = acc[used].sum(axis=0)
    return gx, np.ascontiguousarray(gw.T).reshape(c_out, c_in, kh, kw)


def _lowered_fused_ok(n: int, rows: int, length: int, groups: int, itemsize: int) -> bool:
    return groups == 1 and n >= _numba_threads() and rows * length * itemsize <= FUSED_COLUMN_BYTES


# ----------------------------------------------------------------------------- Winograd F(2x2,3x3)

#: Winograd serves 3x3 stride-1 convolutions with at least this many input channels per group
#: (and output channels per group for the backward pass): below it the GEMMs are too thin to pay
#: for the transforms (measured on 2 cores: see docs/benchmarks.md).
WINOGRAD_MIN_CHANNELS = 16
#: Images with more tiles than this are transformed in slabs of tile rows, one image at a time.
WINOGRAD_SLAB_TILES = 1 << 12
#: Smaller images go by units of ``ceil(WINOGRAD_UNIT_TILES / tiles)`` whole images, side by
#: side in the GEMMs' columns: wide GEMMs (N about 3000) ran 1.3x faster than one image's 784
#: columns on 2 cores. The unit depends on the geometry only, so results do not depend on the
#: scratch cap; the scratch is one unit (``16*(C_in + C_out)*tiles*itemsize``, a few tens of MiB
#: at most), however small the cap.
WINOGRAD_UNIT_TILES = 3136
#: Tiles per unit of the fused forward (:func:`convlayers.kernels.winograd.forward_fused`): the
#: unit's transforms (``16*(C_in + C_out)*tiles*itemsize``, under 1 MiB for 64 channels) stay in
#: the core's cache from the input transform to the output transform.
WINOGRAD_BLOCK_TILES = 224
#: The same for the fused backward (three transforms per unit: input, output gradient, dV).
WINOGRAD_BLOCK_TILES_BWD = 112

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def _winograd_ok(wshape: tuple[int, ...], stride: tuple[int, int], dilation: tuple[int, int],
                 backward: bool = False) -> bool:
    c_out, c_in_g, kh, kw = wshape
    if (kh, kw) != (3, 3) or stride != (1, 1) or dilation != (1, 1):
        return False
    return c_in_g >= WINOGRAD_MIN_CHANNELS and (not backward or c_out >= WINOGRAD_MIN_CHANNELS)


def _winograd_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """``U = G g G^T`` per (output, input) channel pair, as ``(16, groups, C_out/g, C_in/g)``."""
    c_out, c_in_g = w.shape[:2]
    u = np.einsum("ia,ocab,jb->ijoc", _G, w.astype(np.float64), _G)
    return np.ascontiguousarray(u.reshape(16, groups, c_out // groups, c_in_g), dtype=w.dtype)


def _winograd_units(n: int, th: int, tw: int) -> Iterator[tuple[slice, int, int]]:
    """``(images, first tile row, tile rows)`` of each unit (geometry only, see above)."""
    rows = th if th * tw <= WINOGRAD_SLAB_TILES else max(1, WINOGRAD_SLAB_TILES // tw)
    if rows < th:
        for i in range(n):
            for r in range(0, th, rows):
                yield slice(i, i + 1), r, min(rows, th - r)
        return
    step = max(1, -(-WINOGRAD_UNIT_TILES // (th * tw)))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n)), 0, th


def _winograd_rows(tw: int, tiles: int) -> int:
    """Tile rows per fused unit: about ``tiles`` tiles (geometry only)."""
    return max(1, -(-tiles // tw))


def _winograd_forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, pt: int, pl: int,
                      groups: int, out_shape: tuple[int, int]) -> np.ndarray:
    """Transforms and the 16 products of each block of tile rows in one parallel region."""
    k = _kernels()
    n = x.shape[0]
    c_out = w.shape[0]
    ho, wo = out_shape
    u = _winograd_weights(w, groups)
    out = np.empty((n, c_out, ho, wo), dtype=x.dtype)
    rows = _winograd_rows(-(-wo // 2), WINOGRAD_BLOCK_TILES)
    with _dynamic_units():
        k.winograd.forward_fused(x, u, _bias_arg(bias, x.dtype), pt, pl, rows, _numba_threads(),
                                 out)
    return out


def _winograd_backward(x: np.ndarray, gy: np.ndarray, w: np.ndarray, pt: int, pl: int,
                       groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Both gradients of :func:`_winograd_forward`'s convolution from one input transform and
    one output-gradient transform per unit: ``dV = U^T dM`` and ``dU = sum dM V^T``."""
    k = _kernels()
    n, c_in = x.shape[:2]
    c_out, c_in_g = w.shape[:2]
    c_out_g = c_out // groups
    ho, wo = gy.shape[2:]
    th, tw = -(-ho // 2), -(-wo // 2)
    ut = np.ascontiguousarray(_winograd_weights(w, groups).swapaxes(-1, -2))
    threads = _numba_threads()
    if n >= threads:  # one image per unit: every thread gets work
        gx = np.empty_like(x)
        gut = np.empty((threads, 16, groups, c_out_g, c_in_g), dtype=x.dtype)
        rows = _winograd_rows(tw, WINOGRAD_BLOCK_TILES_BWD)
        with _dynamic_units():
            k.winograd.backward_fused(x, gy, ut, pt, pl, rows, gx, gut)
        gu4 = gut.sum(axis=0, dtype=np.float64).reshape(4, 4, c_out, c_in_g)
        gw = np.einsum("ia,ijoc,jb->ocab", _G, gu4, _G)
        return gx, gw.astype(x.dtype)
    gx = np.zeros_like(x)
    gu = np.zeros((16, groups, c_out_g, c_in_g), dtype=x.dtype)
    for images, t0, rows in _winograd_units(n, th, tw):
        length = (images.stop - images.start) * rows * tw
        v = np.empty((16, c_in, length), dtype=x.dtype)
        dm = np.empty((16, c_out, length), dtype=x.dtype)
        k.winograd.input_transform(x[images], pt, pl, t0, rows, tw, v)
        k.winograd.output_grad_transform(gy[images], t0, rows, tw, dm)
        dmg = dm.reshape(16, groups, c_out_g, length)
        dv = np.matmul(ut, dmg)
        k.winograd.input_grad_transform(dv.reshape(16, c_in, length), pt, pl, t0, rows, tw,
                                        gx[images])
        gu += np.matmul(dmg, v.reshape(16, groups, c_in_g, length).swapaxes(-1, -2))
    gw = np.einsum("ia,ijoc,jb->ocab", _G, gu.reshape(4, 4, c_out, c_in_g).astype(np.float64), _G)
    return gx, gw.astype(x.dtype)


def correlate_backward(
    x: np.ndarray,
    grad: np.ndarray,
    weight: np.ndarray,
    pairs: Pairs,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(grad_input, grad_weight)`` of :func:`correlate` with zero padding ``pairs``, for the
    unpadded input ``x``. Winograd and depthwise read the borders by bounds; the other paths
    pad, lower, and crop."""
    if _fast(x, grad, weight):
        x4, g4, w4 = _as_4d(x), _as_4d(grad), _as_4d(weight)
        st, dl, pads = _pair(stride, 1), _pair(dilation, 1), _pads(pairs)
        _, c_in_g, kh, kw = w4.shape
        if _winograd_ok(w4.shape, st, dl, backward=True):
            gx4, gw4 = _winograd_backward(x4, g4, w4, pads[0], pads[2], groups)
            return gx4.reshape(x.shape), gw4.reshape(weight.shape)
        if c_in_g == 1 and (grads := _depthwise_backward(x4, g4, w4, st, dl, pads[0],
                                                         pads[2])) is not None:
            return grads[0].reshape(x.shape), grads[1].reshape(weight.shape)
        ho, wo = g4.shape[2:]
        _kernels()  # applies the thread setting, which the check below reads
        if (groups == 1 and kh * kw > 1
                and _lowered_fused_ok(x4.shape[0], c_in_g * kh * kw, ho * wo, 1, x.itemsize)):
            gx4, gw4 = _lowered_backward(x4, g4, w4, st, dl, pads[0], pads[2])
            return gx4.reshape(x.shape), gw4.reshape(weight.shape)
    xp = pad_pairs(x, pairs)
    gxp = correlate_input_grad(grad, weight, xp.shape[2:], stride, dilation, groups)
    inner = tuple(slice(lo, lo + size) for (lo, _), size in zip(pairs, x.shape[2:], strict=True))
    gx = np.ascontiguousarray(gxp[_index(*inner)])
    gw = correlate_weight_grad(xp, grad, tuple(weight.shape[2:]), stride, dilation, groups)
    return gx, gw


def _depthwise_backward(x: np.ndarray, gy: np.ndarray, w: np.ndarray, stride: tuple[int, int],
                        dilation: tuple[int, int], pt: int, pl: int,
                        ) -> tuple[np.ndarray, np.ndarray] | None:
    """Both gradients of a depthwise convolution of the unpadded ``x`` by the flat, planar or
    (without a channel multiplier) row kernels; None where none of them serves."""
    k = _kernels()
    n, c_in, h, width = x.shape
    c_out, _, kh, kw = w.shape
    ho = gy.shape[2]
    wd = np.ascontiguousarray(w.reshape(c_out, kh, kw))
    gx = np.empty(x.shape, dtype=x.dtype)
    if _flat_ok(x.shape, gy.shape[2:], stride):
        part = k.depthwise.flat_backward(
            np.ascontiguousarray(x).reshape(n, c_in, h * width),
            np.ascontiguousarray(gy).reshape(n, c_out, ho * width), wd, width, *dilation, pt, pl,
            k.depthwise.flat_masks((ho, width), width, kw, dilation[1], pl),
            _planar_parts(n * c_in), True, True, gx.reshape(n, c_in, h * width))
    elif (planar := _planar(gy.shape[2:], (kh, kw), stride, dilation, x.itemsize)) is not None:
        part = k.depthwise.planar_backward(x, gy, wd, *stride, *dilation, pt, pl, *planar,
                                           _planar_parts(n * c_in), True, True, gx)
    elif c_out == c_in:
        k.depthwise.depthwise_input_grad(gy, wd, *stride, *dilation, pt, pl, gx)
        part = k.depthwise.depthwise_weight_grad(x, gy, kh, kw, *stride, *dilation, pt, pl)
    else:
        return None
    return gx, part.sum(axis=0).astype(x.dtype).reshape(c_out, 1, kh, kw)


def _input_grad_fast(gy: np.ndarray, w: np.ndarray, padded: tuple[int, int], stride: tuple[int, int],
                     dilation: tuple[int, int], groups: int) -> np.ndarray:
    k = _kernels()
    n, c_out, ho, wo = gy.shape
    _, c_in_g, kh, kw = w.shape
    c_in = c_in_g * groups
    planar = _planar((ho, wo), (kh, kw), stride, dilation, gy.itemsize)
    if c_in_g == 1 and planar is not None:
        gxp = np.empty((n, c_in, *padded), dtype=gy.dtype)
        k.depthwise.planar_backward(gxp, gy, np.ascontiguousarray(w.reshape(c_out, kh, kw)),
                                    *stride, *dilation, 0, 0, *planar, _planar_parts(n * c_in),
                                    True, False, gxp)
        return gxp
    if c_in_g == 1 and c_out == groups:  # plain depthwise; a multiplier takes the GEMM path
        gxp = np.zeros((n, c_in, *padded), dtype=gy.dtype)
        k.depthwise.depthwise_input_grad(gy, np.ascontiguousarray(w.reshape(c_out, kh, kw)),
                                         *stride, *dilation, 0, 0, gxp)
        return gxp
    taps_t = w.reshape(groups, c_out // groups, c_in_g * kh * kw).swapaxes(1, 2)
    gyg = gy.reshape(n, groups, c_out // groups, ho * wo)
    if kh == kw == 1:
        part = np.empty((n, groups, c_in_g, ho * wo), dtype=gy.dtype)
        _pointwise(gyg, np.ascontiguousarray(taps_t), np.empty(0, dtype=gy.dtype), part)
        part = part.reshape(n, c_in, ho, wo)
        if stride == (1, 1) and padded == (ho, wo):
            return part
        gxp = np.zeros((n, c_in, *padded), dtype=gy.dtype)
        gxp[:, :, : stride[0] * ho : stride[0], : stride[1] * wo : stride[1]] = part
        return gxp
    gxp = np.zeros((n, c_in, *padded), dtype=gy.dtype)
    for images, r0, rows in _slabs(n, c_in, kh * kw, ho, wo, gy.itemsize):
        length = rows * wo
        cols = np.matmul(taps_t, gyg[images, :, :, r0 * wo : r0 * wo + length])
        cols = np.ascontiguousarray(cols).reshape(-1, c_in * kh * kw, length)
        k.conv.col2im(cols, kh, kw, *stride, *dilation, r0, wo, gxp[images])
    return gxp


def _weight_grad_fast(xp: np.ndarray, gy: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                      dilation: tuple[int, int], groups: int) -> np.ndarray:
    k = _kernels()
    n, c_in = xp.shape[:2]
    c_out, ho, wo = gy.shape[1:]
    kh, kw = kernel
    c_in_g, c_out_g = c_in // groups, c_out // groups
    planar = _planar((ho, wo), kernel, stride, dilation, xp.itemsize)
    if c_in_g == 1 and planar is not None:
        part = k.depthwise.planar_backward(xp, gy, np.zeros((c_out, kh, kw), dtype=xp.dtype),
                                           *stride, *dilation, 0, 0, *planar,
                                           _planar_parts(n * c_in), False, True,
                                           np.empty((0, 0, 0, 0), dtype=xp.dtype))
        return part.sum(axis=0).astype(xp.dtype).reshape(c_out, 1, kh, kw)
    if c_in_g == 1:
        part = k.depthwise.depthwise_weight_grad(xp, gy, kh, kw, *stride, *dilation, 0, 0)
        return part.sum(axis=0).astype(xp.dtype).reshape(c_out, 1, kh, kw)
    gyg = gy.reshape(n, groups, c_out_g, ho * wo)
    if kh == kw == 1:
        xs = _subsampled(xp, stride, (ho, wo)).reshape(n, groups, c_in_g, ho * wo)
        threads = _numba_threads()
        acc = np.empty((threads, groups, c_out_g, c_in_g), dtype=xp.dtype)
        block = _pointwise_block(c_in_g + c_out_g, ho * wo, xp.itemsize)
        with _dynamic_units():
            k.conv.pointwise_weight_grad(np.ascontiguousarray(xs), np.ascontiguousarray(gyg),
                                         block, acc)
        return acc.sum(axis=0).reshape(c_out, c_in_g, 1, 1)
    gw = np.zeros((groups, c_out_g, c_in_g * kh * kw), dtype=xp.dtype)
    buf = None
    for images, r0, rows in _slabs(n, c_in, kh * kw, ho, wo, xp.itemsize):
        nb, length = images.stop - images.start, rows * wo
        if buf is None or buf.size < nb * c_in * kh * kw * length:
            buf = np.empty(nb * c_in * kh * kw * length, dtype=xp.dtype)
        cols = buf[: nb * c_in * kh * kw * length].reshape(nb, c_in * kh * kw, length)
        k.conv.im2col(xp[images], kh, kw, *stride, *dilation, r0, wo, cols)
        cols4 = cols.reshape(nb, groups, c_in_g * kh * kw, length)
        g = gyg[images, :, :, r0 * wo : r0 * wo + length]
        gw += np.matmul(g, cols4.swapaxes(-1, -2)).sum(axis=0)
    return gw.reshape(c_out, c_in_g, kh, kw)
