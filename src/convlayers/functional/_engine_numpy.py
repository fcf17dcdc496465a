"""The engine's ``numpy`` strategy: one GEMM (``np.matmul``) per kernel offset, for any dimension.

For each kernel offset, the input slice with the stride (a view) times that offset's
``(groups, C_out/g, C_in/g)`` weights is added into the matching box of outputs; the input
gradient scatters ``W_k^T @ grad`` back onto the slice, the weight gradient sums
``grad @ slice^T``. Nothing is padded, so a tap that lies in the padding is never multiplied,
and batches go in chunks under :func:`convlayers.config.scratch_bytes`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from convlayers import config
from convlayers.functional._common import Pairs, window_offsets
from convlayers.functional._engine_shared import _quiet


def _batch_chunks(n: int, bytes_per_item: int) -> Iterator[slice]:
    """Slices of the batch axis so that one chunk's scratch stays under the configured cap."""
    step = max(1, config.scratch_bytes() // max(bytes_per_item, 1))
    for start in range(0, max(n, 1), step):
        yield slice(start, min(start + step, n))


def _index(*trailing: slice) -> Any:
    """``(..., *trailing)``: an index on the trailing axes (typed loosely for mypy)."""
    return (Ellipsis, *trailing)


def _grouped_taps(weight: np.ndarray, groups: int) -> np.ndarray:
    """Weights ``(C_out, C_in/g, *K)`` as ``(g, C_out/g, C_in/g, prod(K))``."""
    c_out, c_in_g = weight.shape[:2]
    return weight.reshape(groups, c_out // groups, c_in_g, -1)


def _boxes(kernel: tuple[int, ...], in_shape: tuple[int, ...], out_shape: tuple[int, ...],
           stride: tuple[int, ...], dilation: tuple[int, ...], pairs: Pairs | None,
           ) -> Iterator[tuple[int, tuple[slice, ...], tuple[slice, ...], tuple[int, ...]]]:
    """For each kernel offset whose tap lies inside the input for some output: ``(tap index,
    output box, input slices, box shape)``; outputs whose tap lies in the padding are left out."""
    pads = [p[0] for p in pairs] if pairs is not None else [0] * len(kernel)
    for t, offset in enumerate(window_offsets(kernel)):
        outs, ins, shape = [], [], []
        for j, size, o_n, s, d, p in zip(offset, in_shape, out_shape, stride, dilation, pads,
                                         strict=True):
            off = j * d - p  # input index of output o: o*s + off
            lo = 0 if off >= 0 else -(off // s)  # ceil(-off / s)
            hi = min(o_n, (size - 1 - off) // s + 1) if size - 1 - off >= 0 else 0
            if hi <= lo:
                break
            outs.append(slice(lo, hi))
            ins.append(slice(lo * s + off, (hi - 1) * s + off + 1, s))
            shape.append(hi - lo)
        else:
            yield t, tuple(outs), tuple(ins), tuple(shape)


@_quiet
def _numpy_forward(x: np.ndarray, weight: np.ndarray, stride: tuple[int, ...],
                   dilation: tuple[int, ...], groups: int, out_shape: tuple[int, ...],
                   pairs: Pairs | None) -> np.ndarray:
    """The ``numpy`` strategy's forward, no bias."""
    n, c_in = x.shape[:2]
    c_out, c_in_g = weight.shape[:2]
    taps = _grouped_taps(weight, groups)
    out = np.zeros((n, groups, c_out // groups, *out_shape), dtype=x.dtype)
    xg = x.reshape(n, groups, c_in_g, *x.shape[2:])
    item = x.itemsize * c_in * int(np.prod(out_shape))
    for chunk in _batch_chunks(n, item):
        xc, oc = xg[chunk], out[chunk]
        rows = oc.shape[0]
        for t, o_box, i_box, shape in _boxes(tuple(weight.shape[2:]), x.shape[2:], out_shape,
                                             stride, dilation, pairs):
            length = int(np.prod(shape))
            window = xc[_index(*i_box)].reshape(rows, groups, c_in_g, length)
            if c_in_g == 1:  # depthwise: an outer product, cheaper as a broadcast multiply
                part = taps[None, :, :, 0, t, None] * window
            else:
                part = np.matmul(taps[:, :, :, t], window)
            oc[_index(*o_box)] += part.reshape(rows, groups, c_out // groups, *shape)
    return out.reshape(n, c_out, *out_shape)


@_quiet
def _numpy_input_grad(grad: np.ndarray, weight: np.ndarray, in_shape: tuple[int, ...],
                      stride: tuple[int, ...], dilation: tuple[int, ...], groups: int,
                      pairs: Pairs | None) -> np.ndarray:
    """The ``numpy`` strategy's input gradient, for an input of ``in_shape`` with ``pairs``."""
    n = grad.shape[0]
    c_out, c_in_g = weight.shape[:2]
    out_shape = grad.shape[2:]
    taps_t = _grouped_taps(weight, groups).swapaxes(1, 2)  # (g, C_in/g, C_out/g, K)
    gy = grad.reshape(n, groups, c_out // groups, *out_shape)
    gx = np.zeros((n, groups, c_in_g, *in_shape), dtype=grad.dtype)
    item = grad.itemsize * groups * c_in_g * int(np.prod(out_shape))
    for chunk in _batch_chunks(n, item):
        gyc, gxc = gy[chunk], gx[chunk]
        rows = gyc.shape[0]
        for t, o_box, i_box, shape in _boxes(tuple(weight.shape[2:]), in_shape, out_shape,
                                             stride, dilation, pairs):
            length = int(np.prod(shape))
            g_box = gyc[_index(*o_box)].reshape(rows, groups, c_out // groups, length)
            if c_in_g == 1 and taps_t.shape[2] == 1:
                part = taps_t[None, :, :, 0, t, None] * g_box
            else:
                part = np.matmul(taps_t[:, :, :, t], g_box)
            gxc[_index(*i_box)] += part.reshape(rows, groups, c_in_g, *shape)
    return gx.reshape(n, groups * c_in_g, *in_shape)


@_quiet
def _numpy_weight_grad(x: np.ndarray, grad: np.ndarray, kernel: tuple[int, ...],
                       stride: tuple[int, ...], dilation: tuple[int, ...], groups: int,
                       pairs: Pairs | None) -> np.ndarray:
    """The ``numpy`` strategy's weight gradient ``(C_out, C_in/g, *K)``."""
    n, c_in = x.shape[:2]
    c_out = grad.shape[1]
    c_in_g, c_out_g = c_in // groups, c_out // groups
    out_shape = grad.shape[2:]
    gy = grad.reshape(n, groups, c_out_g, *out_shape)
    xg = x.reshape(n, groups, c_in_g, *x.shape[2:])
    acc_dtype = np.float64 if x.dtype == np.float64 else np.float32
    gw = np.zeros((groups, c_out_g, c_in_g, int(np.prod(kernel))), dtype=acc_dtype)
    item = x.itemsize * c_in * int(np.prod(out_shape))
    for chunk in _batch_chunks(n, item):
        xc, gyc = xg[chunk], gy[chunk]
        rows = xc.shape[0]
        for t, o_box, i_box, shape in _boxes(kernel, x.shape[2:], out_shape, stride, dilation,
                                             pairs):
            length = int(np.prod(shape))
            window = xc[_index(*i_box)].reshape(rows, groups, c_in_g, length)
            g_box = gyc[_index(*o_box)].reshape(rows, groups, c_out_g, length)
            if c_in_g == 1 and c_out_g == 1:
                gw[:, 0, 0, t] += np.einsum("ngl,ngl->g", g_box[:, :, 0], window[:, :, 0])
            else:
                gw[:, :, :, t] += np.matmul(g_box, window.swapaxes(-1, -2)).sum(axis=0)
    return gw.reshape(c_out, c_in_g, *kernel).astype(x.dtype, copy=False)
