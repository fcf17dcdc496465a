"""The NumPy engine behind every convolution: one GEMM per kernel offset.

For each kernel offset the padded input is sliced with the stride (a view), and the weights of
that offset, a ``(groups, out/groups, in/groups)`` matrix, multiply it through ``np.matmul``.
Summing over the offsets gives the convolution; no im2col buffer is built, so scratch memory is
one slice at a time (and batches are processed in chunks under :func:`config.scratch_bytes`).

The two backward products use the same loop: the input gradient scatters each offset's
``W_k^T @ grad`` back onto the slice it came from (this is also the transposed convolution),
and the weight gradient is ``grad @ slice^T`` per offset. Inputs here are already validated and
padded; the public functions in ``conv.py`` and ``conv_transpose.py`` do that.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from convlayers import config
from convlayers.functional._common import offset_slices, window_offsets


def _batch_chunks(n: int, bytes_per_item: int) -> Iterator[slice]:
    """Slices of the batch axis so that one chunk's scratch stays under the configured cap."""
    step = max(1, config.scratch_bytes() // max(bytes_per_item, 1))
    for start in range(0, max(n, 1), step):
        yield slice(start, min(start + step, n))


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
