"""Adaptive pooling: choose the output size, the windows follow (PyTorch's rule).

Output cell ``o`` of an axis of length ``L`` pooled to ``O`` covers
``[floor(o*L/O), ceil((o+1)*L/O))``. Windows may differ in size and overlap. Averaging is
separable and linear, so it is a small matrix per axis applied with ``matmul``; the maximum
gathers each window's taps (the last one repeated where a window is shorter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convlayers._validate import as_int
from convlayers.functional._common import batched, unbatch, window_offsets

__all__ = [
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_avg_pool_backward",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
]

OutputSize = int | None | Sequence[int | None]


def _output_size(output_size: OutputSize, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    n = len(in_shape)
    if output_size is None or isinstance(output_size, (int, np.integer)):
        sizes: list[Any] = [output_size] * n
    elif isinstance(output_size, Sequence) and not isinstance(output_size, str):
        sizes = list(output_size)
        if len(sizes) != n:
            raise ValueError(f"output_size must have {n} entries, got {output_size!r}")
    else:
        raise TypeError(f"output_size must be an int, None or a sequence of them, got {output_size!r}")
    result = []
    for size, length in zip(sizes, in_shape, strict=True):
        value = length if size is None else as_int(size, "output_size")
        if value < 1:
            raise ValueError(f"output_size must be >= 1, got {output_size!r}")
        result.append(value)
    return tuple(result)


def _bounds(length: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    o = np.arange(out)
    return (o * length) // out, -((-(o + 1) * length) // out)


def _average_matrix(length: int, out: int, dtype: np.dtype) -> np.ndarray:
    """``(out, length)`` matrix whose row ``o`` averages window ``o``."""
    start, end = _bounds(length, out)
    cols = np.arange(length)
    inside = (cols >= start[:, None]) & (cols < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


def _apply_per_axis(x: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
    """Contract spatial axis ``a`` of ``x`` with ``matrices[a]`` (shape ``(new, old)``)."""
    n = len(matrices)
    for a, m in enumerate(matrices):
        axis = x.ndim - n + a
        x = np.moveaxis(np.matmul(np.moveaxis(x, axis, -1), m.T), -1, axis)
    return np.ascontiguousarray(x)


def _adaptive_avg(input: Any, output_size: OutputSize, n: int) -> np.ndarray:
    x, unbatched = batched(input, n)
    out = _output_size(output_size, x.shape[2:])
    mats = [_average_matrix(i, o, x.dtype) for i, o in zip(x.shape[2:], out, strict=True)]
    return unbatch(_apply_per_axis(x, mats), unbatched)


def _adaptive_max(
    input: Any, output_size: OutputSize, return_indices: bool, n: int
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    x, unbatched = batched(input, n)
    in_shape = x.shape[2:]
    out = _output_size(output_size, in_shape)
    taps, kernel = [], []
    for length, o in zip(in_shape, out, strict=True):
        start, end = _bounds(length, o)
        width = int((end - start).max())
        taps.append(np.minimum(start[:, None] + np.arange(width), end[:, None] - 1))
        kernel.append(width)
    plane_strides = [int(np.prod(in_shape[a + 1 :])) for a in range(n)]
    best = index = None
    for offset in window_offsets(kernel):
        coords = [t[:, j].reshape((1,) * a + (-1,) + (1,) * (n - a - 1))
                  for a, (t, j) in enumerate(zip(taps, offset, strict=True))]
        flat = sum(c * s for c, s in zip(coords, plane_strides, strict=True))
        view = x[(..., *coords)]
        if best is None or index is None:
            best, index = view.copy(), np.broadcast_to(flat, view.shape).astype(np.int64)
            continue
        update = (view > best) | np.isnan(view)
        np.copyto(best, view, where=update)
        np.copyto(index, np.broadcast_to(flat, index.shape), where=update)
    assert best is not None and index is not None
    if return_indices:
        return unbatch(best, unbatched), unbatch(index, unbatched)
    return unbatch(best, unbatched)


def adaptive_avg_pool1d(input: Any, output_size: OutputSize) -> np.ndarray:
    """Adaptive average pooling over ``(N, C, L)``, as ``torch.nn.functional``'s.

    >>> adaptive_avg_pool1d(np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]]), 2)
    array([[[2., 4.]]])
    """
    return _adaptive_avg(input, output_size, 1)


def adaptive_avg_pool2d(input: Any, output_size: OutputSize) -> np.ndarray:
    """Adaptive average pooling over ``(N, C, H, W)``; ``output_size`` entries may be None.

    ``adaptive_avg_pool2d(x, 1)`` is global average pooling, the usual head of a CNN.

    >>> adaptive_avg_pool2d(np.arange(16.0).reshape(1, 4, 4), 1)
    array([[[7.5]]])
    >>> adaptive_avg_pool2d(np.ones((2, 3, 7, 5)), (3, None)).shape
    (2, 3, 3, 5)
    """
    return _adaptive_avg(input, output_size, 2)


def adaptive_avg_pool3d(input: Any, output_size: OutputSize) -> np.ndarray:
    """Adaptive average pooling over ``(N, C, D, H, W)``.

    >>> adaptive_avg_pool3d(np.ones((1, 2, 4, 4, 4)), 2).shape
    (1, 2, 2, 2, 2)
    """
    return _adaptive_avg(input, output_size, 3)


def adaptive_max_pool1d(
    input: Any, output_size: OutputSize, return_indices: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Adaptive max pooling over ``(N, C, L)``, indices flat per plane as in PyTorch.

    >>> adaptive_max_pool1d(np.array([[[1.0, 5.0, 3.0, 4.0, 2.0]]]), 2, return_indices=True)
    (array([[[5., 4.]]]), array([[[1, 3]]]))
    """
    return _adaptive_max(input, output_size, return_indices, 1)


def adaptive_max_pool2d(
    input: Any, output_size: OutputSize, return_indices: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Adaptive max pooling over ``(N, C, H, W)``; use ``max_pool_backward`` for its gradient.

    >>> adaptive_max_pool2d(np.arange(16.0).reshape(1, 4, 4), 1)
    array([[[15.]]])
    """
    return _adaptive_max(input, output_size, return_indices, 2)


def adaptive_max_pool3d(
    input: Any, output_size: OutputSize, return_indices: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Adaptive max pooling over ``(N, C, D, H, W)``.

    >>> adaptive_max_pool3d(np.arange(8.0).reshape(1, 2, 2, 2), 1)
    array([[[[7.]]]])
    """
    return _adaptive_max(input, output_size, return_indices, 3)


def adaptive_avg_pool_backward(grad_output: Any, input: Any, spatial_dims: int = 2) -> np.ndarray:
    """Gradient of adaptive average pooling: the transposed averaging matrices per axis.

    >>> adaptive_avg_pool_backward(np.ones((1, 1, 1)), np.zeros((1, 1, 4)), spatial_dims=1)
    array([[[0.25, 0.25, 0.25, 0.25]]])
    """
    n = as_int(spatial_dims, "spatial_dims")
    if n not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {n}")
    x, unbatched = batched(input, n)
    gy, _ = batched(grad_output, n, "grad_output")
    if gy.shape[:2] != x.shape[:2]:
        raise ValueError(f"grad_output {gy.shape} must match input {x.shape} on N and C")
    mats = [_average_matrix(i, o, x.dtype).T for i, o in zip(x.shape[2:], gy.shape[2:], strict=True)]
    return unbatch(_apply_per_axis(gy.astype(x.dtype, copy=False), mats), unbatched)
