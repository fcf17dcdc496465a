"""Slow, literal versions of the 2-D ops: one output element at a time, written to be read.

These loops are what the fast functions compute, spelled out the way a course teaches them:
find the window, multiply or compare, write one number. They are a second oracle in the tests
and what ``convlayers explain`` walks through. Arguments are already-normalised ints or pairs;
no validation beyond what the loops need, and no speed.

Examples
--------
>>> image = np.arange(1.0, 17.0).reshape(4, 4)
>>> correlate2d_simple(image, np.array([[1.0, 0.0, -1.0]] * 3))
array([[-6., -6.],
       [-6., -6.]])
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "conv2d",
    "conv_transpose2d",
    "correlate2d_simple",
    "max_pool2d",
]

Pair = tuple[int, int]


def correlate2d_simple(
    image: np.ndarray, kernel: np.ndarray, padding: int = 0, stride: int = 1
) -> np.ndarray:
    """Slide ``kernel`` over a 2-D ``image`` (zero padding), no flip: the textbook loop."""
    if padding:
        image = np.pad(image, padding)
    kh, kw = kernel.shape
    out_h = (image.shape[0] - kh) // stride + 1
    out_w = (image.shape[1] - kw) // stride + 1
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            top, left = i * stride, j * stride
            out[i, j] = np.sum(image[top : top + kh, left : left + kw] * kernel)
    return out


def conv2d(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: Pair = (1, 1),
    padding: Pair = (0, 0), dilation: Pair = (1, 1), groups: int = 1,
) -> np.ndarray:
    """``(N, C, H, W)`` convolution (cross-correlation) with every argument, one element at a time."""
    n, _, h, w = x.shape
    c_out, c_in_g, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, c_out, out_h, out_w), dtype=np.float64)
    c_out_g = c_out // groups
    for b in range(n):
        for o in range(c_out):
            group = o // c_out_g
            for i in range(out_h):
                for j in range(out_w):
                    total = 0.0 if bias is None else float(bias[o])
                    for c in range(c_in_g):
                        for u in range(kh):
                            for v in range(kw):
                                row = i * stride[0] + u * dilation[0]
                                col = j * stride[1] + v * dilation[1]
                                total += xp[b, group * c_in_g + c, row, col] * weight[o, c, u, v]
                    out[b, o, i, j] = total
    return out.astype(x.dtype)


def conv_transpose2d(
    x: np.ndarray, weight: np.ndarray, stride: Pair = (1, 1), padding: Pair = (0, 0),
    output_padding: Pair = (0, 0), dilation: Pair = (1, 1), groups: int = 1,
) -> np.ndarray:
    """Transposed convolution as a scatter: each input element paints a scaled kernel."""
    n, c_in, h, w = x.shape
    _, c_out_g, kh, kw = weight.shape
    full_h = (h - 1) * stride[0] + dilation[0] * (kh - 1) + 1 + output_padding[0]
    full_w = (w - 1) * stride[1] + dilation[1] * (kw - 1) + 1 + output_padding[1]
    full = np.zeros((n, c_out_g * groups, full_h, full_w), dtype=np.float64)
    c_in_g = c_in // groups
    for b in range(n):
        for c in range(c_in):
            group = c // c_in_g
            for i in range(h):
                for j in range(w):
                    for o in range(c_out_g):
                        for u in range(kh):
                            for v in range(kw):
                                row = i * stride[0] + u * dilation[0]
                                col = j * stride[1] + v * dilation[1]
                                full[b, group * c_out_g + o, row, col] += x[b, c, i, j] * weight[c, o, u, v]
    out = full[:, :, padding[0] : full_h - padding[0], padding[1] : full_w - padding[1]]
    return out.astype(x.dtype)


def _pool_windows(size: int, kernel: int, stride: int, padding: int, dilation: int,
                  ceil_mode: bool) -> list[int]:
    """Start of every window along one axis (in unpadded coordinates), PyTorch's rule."""
    span = dilation * (kernel - 1) + 1
    rounder = math.ceil if ceil_mode else math.floor
    out = rounder((size + 2 * padding - span) / stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return [o * stride - padding for o in range(out)]


def max_pool2d(
    x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair = (0, 0), dilation: Pair = (1, 1),
    ceil_mode: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling with PyTorch's rules; returns values and flat per-plane indices."""
    n, c, h, w = x.shape
    rows = _pool_windows(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    cols = _pool_windows(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    out = np.empty((n, c, len(rows), len(cols)), dtype=x.dtype)
    idx = np.empty(out.shape, dtype=np.int64)
    for b in range(n):
        for ch in range(c):
            for i, top in enumerate(rows):
                for j, left in enumerate(cols):
                    best, where = -np.inf, -1
                    for u in range(kernel[0]):
                        for v in range(kernel[1]):
                            r, q = top + u * dilation[0], left + v * dilation[1]
                            if not (0 <= r < h and 0 <= q < w):
                                continue  # padding never wins
                            value = x[b, ch, r, q]
                            if where < 0:  # the first tap inside the input
                                where = r * w + q
                            if value > best or np.isnan(value):  # first max, last NaN
                                best, where = value, r * w + q
                    out[b, ch, i, j], idx[b, ch, i, j] = best, where
    return out, idx


def avg_pool2d(
    x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair = (0, 0), ceil_mode: bool = False,
    count_include_pad: bool = True, divisor_override: int | None = None,
) -> np.ndarray:
    """Average pooling with PyTorch's divisor rules, one window at a time."""
    n, c, h, w = x.shape
    rows = _pool_windows(h, kernel[0], stride[0], padding[0], 1, ceil_mode)
    cols = _pool_windows(w, kernel[1], stride[1], padding[1], 1, ceil_mode)
    out = np.empty((n, c, len(rows), len(cols)), dtype=x.dtype)
    for b in range(n):
        for ch in range(c):
            for i, top in enumerate(rows):
                for j, left in enumerate(cols):
                    bottom = min(top + kernel[0], h + padding[0])
                    right = min(left + kernel[1], w + padding[1])
                    padded_area = (bottom - top) * (right - left)
                    r0, r1, q0, q1 = max(top, 0), min(bottom, h), max(left, 0), min(right, w)
                    total = x[b, ch, r0:r1, q0:q1].sum()
                    if divisor_override is not None:
                        divisor = divisor_override
                    elif count_include_pad:
                        divisor = padded_area
                    else:
                        divisor = (r1 - r0) * (q1 - q0)
                    out[b, ch, i, j] = total / divisor
    return out


def adaptive_avg_pool2d(x: np.ndarray, output_size: Pair) -> np.ndarray:
    """Adaptive average pooling: cell ``o`` averages ``[floor(o*L/O), ceil((o+1)*L/O))``."""
    n, c, h, w = x.shape
    oh, ow = output_size
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    for i in range(oh):
        r0, r1 = (i * h) // oh, math.ceil((i + 1) * h / oh)
        for j in range(ow):
            q0, q1 = (j * w) // ow, math.ceil((j + 1) * w / ow)
            out[:, :, i, j] = x[:, :, r0:r1, q0:q1].mean(axis=(2, 3))
    return out
