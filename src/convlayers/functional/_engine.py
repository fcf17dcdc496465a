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

- depthwise (``C_in/groups == 1``, any channel multiplier): direct numba kernels
  (:mod:`convlayers.kernels.depthwise`), forward and both gradients;
- 1x1 kernels: one batched ``np.matmul`` of ``(g, C_out/g, C_in/g)`` weights with the images
  viewed as ``(N, g, C_in/g, H*W)``, no copy at stride 1;
- the rest: im2col into a reused column buffer, a chunk of images at a time
  (:mod:`convlayers.kernels.conv`), then one GEMM per image and group; the input gradient is
  the transposed GEMM followed by col2im, the weight gradient ``grad @ cols^T``.

Chunks hold whole images while their columns fit :data:`CHUNK_BYTES` and the scratch cap;
images with more than :data:`SLAB_COLUMNS` output positions are lowered in slabs of output
rows. The slab size depends on the geometry only, so the forward result is the same bit for bit
whatever the cap; the scratch is at most one slab (or image) beyond the cap.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from convlayers import config
from convlayers.functional._common import offset_slices, window_offsets


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
    from convlayers.kernels import conv, depthwise  # noqa: F401  (lazy: numba loads here)

    config.apply_numba_threads()
    return kernels


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
    xp: np.ndarray,
    weight: np.ndarray,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    out_shape: tuple[int, ...],
) -> np.ndarray:
    """Cross-correlate a padded batch ``(N, C_in, *S)`` with ``weight``; no bias."""
    if _fast(xp, weight):
        out4 = _correlate_fast(_as_4d(xp), _as_4d(weight), _pair(stride, 1), _pair(dilation, 1),
                               groups, _pair(out_shape, 1))
        return out4.reshape(xp.shape[0], weight.shape[0], *out_shape)
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
            window = xc[(..., *offset_slices(offset, out_shape, stride, dilation))]
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
            target = (..., *offset_slices(offset, out_shape, stride, dilation))
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
            window = xc[(..., *offset_slices(offset, out_shape, stride, dilation))]
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


def _correlate_fast(xp: np.ndarray, w: np.ndarray, stride: tuple[int, int],
                    dilation: tuple[int, int], groups: int, out_shape: tuple[int, int]) -> np.ndarray:
    k = _kernels()
    n, c_in = xp.shape[:2]
    c_out, c_in_g, kh, kw = w.shape
    ho, wo = out_shape
    if c_in_g == 1:
        out = np.empty((n, c_out, ho, wo), dtype=xp.dtype)
        k.depthwise.depthwise_forward(xp, w.reshape(c_out, kh, kw), *stride, *dilation, out)
        return out
    taps = w.reshape(groups, c_out // groups, c_in_g * kh * kw)
    out = np.empty((n, groups, c_out // groups, ho * wo), dtype=xp.dtype)
    if kh == kw == 1:
        xs = _subsampled(xp, stride, out_shape).reshape(n, groups, c_in_g, ho * wo)
        return np.matmul(taps, xs, out=out)
    buf = None
    for images, r0, rows in _slabs(n, c_in, kh * kw, ho, wo, xp.itemsize):
        nb, length = images.stop - images.start, rows * wo
        if buf is None or buf.size < nb * c_in * kh * kw * length:
            buf = np.empty(nb * c_in * kh * kw * length, dtype=xp.dtype)
        cols = buf[: nb * c_in * kh * kw * length].reshape(nb, c_in * kh * kw, length)
        k.conv.im2col(xp[images], kh, kw, *stride, *dilation, r0, wo, cols)
        cols4 = cols.reshape(nb, groups, c_in_g * kh * kw, length)
        if rows == ho:
            np.matmul(taps, cols4, out=out[images])
        else:
            out[images, :, :, r0 * wo : r0 * wo + length] = np.matmul(taps, cols4)
    return out


def _input_grad_fast(gy: np.ndarray, w: np.ndarray, padded: tuple[int, int], stride: tuple[int, int],
                     dilation: tuple[int, int], groups: int) -> np.ndarray:
    k = _kernels()
    n, c_out, ho, wo = gy.shape
    _, c_in_g, kh, kw = w.shape
    c_in = c_in_g * groups
    if c_in_g == 1 and c_out == groups:  # plain depthwise; a multiplier takes the GEMM path
        gxp = np.zeros((n, c_in, *padded), dtype=gy.dtype)
        k.depthwise.depthwise_input_grad(gy, w.reshape(c_out, kh, kw), *stride, *dilation, gxp)
        return gxp
    taps_t = w.reshape(groups, c_out // groups, c_in_g * kh * kw).swapaxes(1, 2)
    gyg = gy.reshape(n, groups, c_out // groups, ho * wo)
    if kh == kw == 1:
        part = np.matmul(taps_t, gyg).reshape(n, c_in, ho, wo)
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
    if c_in_g == 1:
        part = k.depthwise.depthwise_weight_grad(xp, gy, kh, kw, *stride, *dilation)
        return part.sum(axis=0).astype(xp.dtype).reshape(c_out, 1, kh, kw)
    gyg = gy.reshape(n, groups, c_out_g, ho * wo)
    if kh == kw == 1:
        xs = _subsampled(xp, stride, (ho, wo)).reshape(n, groups, c_in_g, ho * wo)
        return np.matmul(gyg, xs.swapaxes(-1, -2)).sum(axis=0).reshape(c_out, c_in_g, 1, 1)
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
