"""Max and average pooling in 1-D to 3-D, forward and backward, with PyTorch's rules.

One loop over kernel offsets does the work: each offset contributes a strided view of the
padded input (no copies), reduced with ``maximum`` or a sum. PyTorch's details are kept:
padding of at most half the kernel that never wins a max, ``ceil_mode`` dropping a last window
that would start in the padding, NaN propagating, the first maximum winning a tie (the last NaN
when there are several), indices flat per plane, and ``count_include_pad`` /
``divisor_override`` for averages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from convlayers import config, shapes
from convlayers._validate import IntOrTuple, as_int, float_array, nonnegative_tuple, positive_tuple
from convlayers.functional._common import (
    batched,
    offset_slices,
    pad_pairs,
    trailing,
    unbatch,
    window_offsets,
)

__all__ = [
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "avg_pool_backward",
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool_backward",
]


@dataclass(frozen=True)
class PoolSpec:
    """Normalised pooling hyper-parameters for one call."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def pairs(self) -> tuple[tuple[int, int], ...]:
        """(before, after) padding that makes every window lie inside the padded array."""
        return tuple(
            (p, max(0, (o - 1) * s + d * (k - 1) + 1 - p - i))
            for k, s, p, d, i, o in zip(self.kernel, self.stride, self.padding, self.dilation,
                                        self.in_shape, self.out_shape, strict=True)
        )

    def tap_coords(self, axis: int) -> np.ndarray:
        """Unpadded input coordinate read by output ``o`` at tap ``j``: ``o*s - p + j*d``."""
        o = np.arange(self.out_shape[axis])[:, None]
        j = np.arange(self.kernel[axis])[None, :]
        return o * self.stride[axis] - self.padding[axis] + j * self.dilation[axis]


def pool_spec(
    x: np.ndarray, kernel_size: IntOrTuple, stride: IntOrTuple | None, padding: IntOrTuple,
    dilation: IntOrTuple, ceil_mode: bool,
) -> PoolSpec:
    """Validate pooling arguments against a batched input ``(N, C, *spatial)``."""
    n = x.ndim - 2
    kernel = positive_tuple(kernel_size, n, "kernel_size")
    stride_t = kernel if stride is None or stride == () else positive_tuple(stride, n, "stride")
    padding_t = nonnegative_tuple(padding, n, "padding")
    dilation_t = positive_tuple(dilation, n, "dilation")
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    for k, p in zip(kernel, padding_t, strict=True):
        if p > k // 2:
            raise ValueError(
                f"padding should be at most half of kernel_size, got padding={padding_t} "
                f"and kernel_size={kernel}"
            )
    out = tuple(
        shapes.pool_output_size(i, k, s, p, d, bool(ceil_mode))
        for i, k, s, p, d in zip(x.shape[2:], kernel, stride_t, padding_t, dilation_t, strict=True)
    )
    return PoolSpec(kernel, stride_t, padding_t, dilation_t, tuple(x.shape[2:]), out)


def _broadcast_axes(parts: list[np.ndarray]) -> np.ndarray:
    """Sum per-axis 1-D arrays into one array over the output grid (outer sum)."""
    n = len(parts)
    total = np.zeros((1,) * n, dtype=np.int64)
    for axis, part in enumerate(parts):
        total = total + part.reshape((1,) * axis + (-1,) + (1,) * (n - axis - 1))
    return total


def _plane_strides(in_shape: tuple[int, ...]) -> list[int]:
    return [int(np.prod(in_shape[a + 1 :])) for a in range(len(in_shape))]


def _fast(x: np.ndarray, spec: PoolSpec) -> bool:
    """Whether the compiled 1-D/2-D kernels (``convlayers.kernels.pooling``) serve this call."""
    return (len(spec.kernel) in (1, 2) and x.dtype in (np.float32, np.float64) and x.size > 0
            and all(o > 0 for o in spec.out_shape))


def _as_2d(spec: PoolSpec) -> tuple[tuple[int, ...], ...]:
    """``(kernel, stride, padding, dilation, in_shape, out_shape)`` with 1-D as ``H == 1``."""
    fields = (spec.kernel, spec.stride, spec.padding, spec.dilation, spec.in_shape, spec.out_shape)
    if len(spec.kernel) == 2:
        return fields
    return tuple((pre, *f) for pre, f in zip((1, 1, 0, 1, 1, 1), fields, strict=True))


def _kernels() -> Any:
    from convlayers.kernels import pooling as kernels

    config.apply_numba_threads()
    return kernels


def _planes(a: np.ndarray, plane: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(a).reshape((-1, *plane))


def _max_pool_fast(x: np.ndarray, spec: PoolSpec, with_indices: bool) -> tuple[np.ndarray, np.ndarray | None]:
    k, s, p, d, i, o = _as_2d(spec)
    kern = _kernels()
    xs = _planes(x, i)
    out = np.empty((xs.shape[0], *o), dtype=x.dtype)
    shape = x.shape[:2] + spec.out_shape
    if not with_indices:
        kern.max_pool2d(xs, *k, *s, *p, *d, out)
        return out.reshape(shape), None
    index = np.empty(out.shape, dtype=np.int64)
    kern.max_pool2d_indices(xs, *k, *s, *p, *d, out, index)
    return out.reshape(shape), index.reshape(shape)


def _max_pool(x: np.ndarray, spec: PoolSpec, with_indices: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if _fast(x, spec):
        return _max_pool_fast(x, spec, with_indices)
    xp = pad_pairs(x, spec.pairs(), value=-np.inf)
    strides = _plane_strides(spec.in_shape)
    coords = [spec.tap_coords(a) for a in range(len(spec.kernel))]
    best = np.full(x.shape[:2] + spec.out_shape, -np.inf, dtype=x.dtype)
    index = None
    if with_indices:
        # PyTorch starts each window's index at its first tap inside the input
        first: list[np.ndarray] = []
        for c, stride in zip(coords, strides, strict=True):
            inside = (c >= 0) & (c < np.array(spec.in_shape)[len(first)])
            first.append(c[np.arange(c.shape[0]), inside.argmax(axis=1)] * stride)
        index = np.broadcast_to(_broadcast_axes(first), best.shape).copy()
    for offset in window_offsets(spec.kernel):
        view = xp[trailing(offset_slices(offset, spec.out_shape, spec.stride, spec.dilation))]
        if index is None:
            np.maximum(best, view, out=best)
            continue
        update = (view > best) | np.isnan(view)
        np.copyto(best, view, where=update)
        tap = _broadcast_axes([c[:, j] * s for c, j, s in zip(coords, offset, strides, strict=True)])
        np.copyto(index, np.broadcast_to(tap, index.shape), where=update)
    return best, index


def _divisor(spec: PoolSpec, count_include_pad: bool, divisor_override: int | None) -> np.ndarray | int:
    if divisor_override is not None:
        return divisor_override
    sizes = []
    for a in range(len(spec.kernel)):
        start = np.arange(spec.out_shape[a]) * spec.stride[a] - spec.padding[a]
        end = np.minimum(start + spec.kernel[a], spec.in_shape[a] + spec.padding[a])
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, spec.in_shape[a])
        sizes.append(end - start)
    grid = sizes[0]
    for s in sizes[1:]:
        grid = np.multiply.outer(grid, s)
    return grid


def _check_divisor(divisor_override: Any) -> int | None:
    if divisor_override is None:
        return None
    value = as_int(divisor_override, "divisor_override")
    if value == 0:
        raise ValueError("divisor_override must be a non-zero integer, got 0")
    return value


def _max_pool_nd(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None, padding: IntOrTuple,
    dilation: IntOrTuple, ceil_mode: bool, return_indices: bool, n: int,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    x, unbatched = batched(input, n)
    spec = pool_spec(x, kernel_size, stride, padding, dilation, ceil_mode)
    out, index = _max_pool(x, spec, bool(return_indices))
    if index is not None:
        return unbatch(out, unbatched), unbatch(index, unbatched)
    return unbatch(out, unbatched)


def _avg_pool_nd(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None, padding: IntOrTuple,
    ceil_mode: bool, count_include_pad: bool, divisor_override: int | None, n: int,
) -> np.ndarray:
    x, unbatched = batched(input, n)
    spec = pool_spec(x, kernel_size, stride, padding, 1, ceil_mode)
    divisor = _divisor(spec, bool(count_include_pad), _check_divisor(divisor_override))
    if _fast(x, spec):
        k, s, p, _, i, o = _as_2d(spec)
        div = np.ascontiguousarray(np.broadcast_to(np.asarray(divisor, dtype=x.dtype), o))
        xs = _planes(x, i)
        out = np.empty((xs.shape[0], *o), dtype=x.dtype)
        _kernels().avg_pool2d(xs, *k, *s, *p, div, out)
        return unbatch(out.reshape(x.shape[:2] + spec.out_shape), unbatched)
    xp = pad_pairs(x, spec.pairs())
    total = np.zeros(x.shape[:2] + spec.out_shape, dtype=x.dtype)
    for offset in window_offsets(spec.kernel):
        total += xp[trailing(offset_slices(offset, spec.out_shape, spec.stride, spec.dilation))]
    return unbatch(total / np.asarray(divisor, dtype=x.dtype), unbatched)


_MAX_DOC = """
    Parameters
    ----------
    input : ndarray
        ``(N, C, {axes})`` or unbatched ``(C, {axes})``, float32 or float64.
    kernel_size : int or tuple of int
        Window size.
    stride : int or tuple of int, optional
        Step between windows; ``None`` (default) means ``kernel_size``.
    padding : int or tuple of int
        Implicit ``-inf`` padding, at most half the kernel size; it never wins.
    dilation : int or tuple of int
        Spacing between the window's taps.
    ceil_mode : bool
        Round the output size up; a last window starting in the padding is dropped.
    return_indices : bool
        Also return the argmax of each window, flat within its ``({axes})`` plane, int64.

    Returns
    -------
    ndarray or (ndarray, ndarray)
        ``(N, C, {oaxes})`` with ``out = floor((in + 2p - d(k-1) - 1)/s) + 1`` per axis
        (ceil with ``ceil_mode``), and the indices when asked for.
"""

_AVG_DOC = """
    Parameters
    ----------
    input : ndarray
        ``(N, C, {axes})`` or unbatched ``(C, {axes})``, float32 or float64.
    kernel_size, stride, padding, ceil_mode
        As for max pooling (``stride=None`` means the kernel size); padding is zeros.
    count_include_pad : bool
        Divide by the window size including zero padding (default, PyTorch's) or only by the
        number of input elements in the window. Windows reaching past the padding in
        ``ceil_mode`` never count the part outside.
    divisor_override : int, optional
        Divide every window sum by this instead.

    Returns
    -------
    ndarray
        ``(N, C, {oaxes})``.
"""


def max_pool1d(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1, ceil_mode: bool = False, return_indices: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """1-D max pooling, as ``torch.nn.functional.max_pool1d``.
    {doc}
    Examples
    --------
    >>> max_pool1d(np.array([[[1.0, 3.0, 2.0, 5.0, 4.0]]]), 2, ceil_mode=True)
    array([[[3., 5., 4.]]])
    """
    return _max_pool_nd(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 1)


def max_pool2d(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1, ceil_mode: bool = False, return_indices: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.
    {doc}
    Examples
    --------
    The seed's 4x4 example: each 2x2 block keeps its largest value.

    >>> x = np.array([[1, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16]], float)
    >>> max_pool2d(x[None], 2)
    array([[[ 4.,  8.],
            [12., 16.]]])
    >>> max_pool2d(x[None], 2, return_indices=True)[1]
    array([[[ 5,  7],
            [13, 15]]])
    """
    return _max_pool_nd(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 2)


def max_pool3d(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1, ceil_mode: bool = False, return_indices: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """3-D max pooling, as ``torch.nn.functional.max_pool3d``.
    {doc}
    Examples
    --------
    >>> max_pool3d(np.arange(8.0).reshape(1, 2, 2, 2), 2)
    array([[[[7.]]]])
    """
    return _max_pool_nd(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 3)


def avg_pool1d(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0,
    ceil_mode: bool = False, count_include_pad: bool = True,
) -> np.ndarray:
    """1-D average pooling, as ``torch.nn.functional.avg_pool1d``.
    {doc}
    Examples
    --------
    >>> avg_pool1d(np.array([[[1.0, 3.0, 2.0, 6.0]]]), 2)
    array([[[2., 4.]]])
    """
    return _avg_pool_nd(input, kernel_size, stride, padding, ceil_mode, count_include_pad, None, 1)


def avg_pool2d(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0,
    ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
) -> np.ndarray:
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``.
    {doc}
    Examples
    --------
    The seed's 4x4 example: each 2x2 block becomes its mean.

    >>> x = np.array([[1, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16]], float)
    >>> avg_pool2d(x[None], 2)
    array([[[ 2.5,  6.5],
            [10.5, 14.5]]])
    """
    return _avg_pool_nd(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override, 2)


def avg_pool3d(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0,
    ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
) -> np.ndarray:
    """3-D average pooling, as ``torch.nn.functional.avg_pool3d``.
    {doc}
    Examples
    --------
    >>> avg_pool3d(np.arange(8.0).reshape(1, 2, 2, 2), 2)
    array([[[[3.5]]]])
    """
    return _avg_pool_nd(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override, 3)


def _fill_docs(template: str, *functions: Any) -> None:
    for fn, axes in zip(functions, ("L", "H, W", "D, H, W"), strict=True):
        fn.__doc__ = (fn.__doc__ or "").format(
            doc=template.format(axes=axes, oaxes=axes.replace(",", "_out,") + "_out"))


_fill_docs(_MAX_DOC, max_pool1d, max_pool2d, max_pool3d)
_fill_docs(_AVG_DOC, avg_pool1d, avg_pool2d, avg_pool3d)


def scatter_to_argmax(
    grad_output: np.ndarray, indices: np.ndarray, input: np.ndarray, spatial_dims: int
) -> np.ndarray:
    """Add each output gradient onto the input element its flat index points at, per plane."""
    plane = int(np.prod(input.shape[input.ndim - spatial_dims :]))
    n_planes = int(np.prod(input.shape[: input.ndim - spatial_dims]))
    idx = np.asarray(indices)
    if idx.shape != grad_output.shape:
        raise ValueError(f"indices must have the shape of grad_output {grad_output.shape}, got {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be an integer array, got dtype {idx.dtype}")
    if grad_output.dtype == input.dtype and grad_output.size:
        gy = np.ascontiguousarray(grad_output).reshape(n_planes, -1)
        gx = np.empty((n_planes, plane), dtype=input.dtype)  # zeroed plane by plane in the kernel
        bad = _kernels().scatter_add_planes(gy, _planes(idx.astype(np.int64, copy=False),
                                                        (gy.shape[1],)), gx)
        if bad:
            raise ValueError(f"indices must lie in [0, {plane}) (a flat position in the input plane)")
        return gx.reshape(input.shape)
    if idx.size and (idx.min() < 0 or idx.max() >= plane):
        raise ValueError(f"indices must lie in [0, {plane}) (a flat position in the input plane)")
    lead = grad_output.shape[: grad_output.ndim - spatial_dims]
    base = (np.arange(n_planes, dtype=np.int64) * plane).reshape(lead + (1,) * spatial_dims)
    flat = (idx + base).ravel()
    summed = np.bincount(flat, weights=grad_output.ravel(), minlength=n_planes * plane)
    return summed.reshape(input.shape).astype(input.dtype, copy=False)


def max_pool_backward(
    grad_output: Any, input: Any, indices: Any, spatial_dims: int = 2
) -> np.ndarray:
    """Gradient of max pooling: each output gradient goes to its window's argmax.

    ``indices`` are the ones returned by ``max_pool*d(..., return_indices=True)``, flat within
    each plane of the last ``spatial_dims`` axes (1, 2 or 3 for ``max_pool1d/2d/3d``). Where
    windows overlap, the gradients of several outputs add up on the same input element.

    Examples
    --------
    >>> x = np.array([[[1.0, 3.0, 2.0]]])
    >>> y, idx = max_pool1d(x, 2, stride=1, return_indices=True)
    >>> max_pool_backward(np.ones_like(y), x, idx, spatial_dims=1)
    array([[[0., 2., 0.]]])
    """
    x = float_array(input, "input")
    gy = float_array(grad_output, "grad_output")
    sd = as_int(spatial_dims, "spatial_dims")
    if sd not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {sd}")
    if x.ndim not in (sd + 1, sd + 2):
        raise ValueError(f"input must have {sd + 1} or {sd + 2} dimensions, got shape {x.shape}")
    if gy.ndim != x.ndim or gy.shape[: x.ndim - sd] != x.shape[: x.ndim - sd]:
        raise ValueError(
            f"grad_output {gy.shape} must match input {x.shape} on all but the spatial axes"
        )
    return scatter_to_argmax(gy, np.asarray(indices), x, sd)


def avg_pool_backward(
    grad_output: Any, input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True,
    divisor_override: int | None = None, spatial_dims: int | None = None,
) -> np.ndarray:
    """Gradient of average pooling: each window's share of its output's gradient.

    Each output gradient, divided by its window's divisor, is added to every element of the
    window: one strided add per kernel offset. The number of spatial axes is
    ``spatial_dims``, else the length of a tuple ``kernel_size``, else ``input.ndim - 2``
    (so pass ``spatial_dims`` for unbatched input with an int ``kernel_size``).

    Examples
    --------
    >>> avg_pool_backward(np.ones((1, 1, 2)), np.zeros((1, 1, 4)), 2)
    array([[[0.5, 0.5, 0.5, 0.5]]])
    >>> avg_pool_backward(np.ones((1, 1, 2)), np.zeros((1, 2, 4)), 2, spatial_dims=2)  # unbatched
    array([[[0.25, 0.25, 0.25, 0.25],
            [0.25, 0.25, 0.25, 0.25]]])
    """
    raw = float_array(input, "input")
    if spatial_dims is not None:
        n = as_int(spatial_dims, "spatial_dims")
    else:
        n = len(kernel_size) if isinstance(kernel_size, (tuple, list)) else raw.ndim - 2
    x, unbatched = batched(raw, n)
    gy, _ = batched(grad_output, n, "grad_output")
    spec = pool_spec(x, kernel_size, stride, padding, 1, ceil_mode)
    if gy.shape != x.shape[:2] + spec.out_shape:
        raise ValueError(f"grad_output must have shape {x.shape[:2] + spec.out_shape}, got {gy.shape}")
    divisor = _divisor(spec, bool(count_include_pad), _check_divisor(divisor_override))
    if _fast(x, spec) and gy.dtype == x.dtype:
        k, s, p, _, i, o = _as_2d(spec)
        div = np.ascontiguousarray(np.broadcast_to(np.asarray(divisor, dtype=x.dtype), o))
        gx = np.empty((x.shape[0] * x.shape[1], *i), dtype=x.dtype)  # zeroed in the kernel
        _kernels().avg_pool2d_backward(_planes(gy, o), *k, *s, *p, div, gx)
        return unbatch(gx.reshape(x.shape), unbatched)
    share = gy / np.asarray(divisor, dtype=x.dtype)
    pairs = spec.pairs()
    gxp = np.zeros(x.shape[:2] + tuple(i + a + b for i, (a, b) in zip(spec.in_shape, pairs, strict=True)),
                   dtype=x.dtype)
    for offset in window_offsets(spec.kernel):
        gxp[trailing(offset_slices(offset, spec.out_shape, spec.stride, spec.dilation))] += share
    inner = tuple(slice(p, p + i) for p, i in zip(spec.padding, spec.in_shape, strict=True))
    return unbatch(np.ascontiguousarray(gxp[trailing(inner)]), unbatched)
