"""Max and average pooling in 1-D to 3-D, forward and backward, with PyTorch's rules.

One loop over kernel offsets does the work: each offset contributes a strided view of the
input to the outputs whose tap lands inside it (no padded copy), reduced with ``maximum`` or a
sum; compiled kernels (``convlayers.kernels.pooling``) serve 1-D and 2-D float pools. PyTorch's
details are kept: padding of at most half the kernel that never wins a max, ``ceil_mode``
dropping a last window that would start in the padding, NaN propagating, the first maximum
winning a tie (the last NaN when there are several), indices flat per plane, and
``count_include_pad`` / ``divisor_override`` for averages. Beyond PyTorch, as ONNX needs:
padding per side (``padding=((top, bottom), (left, right))``), dilated average pooling
(``dilation=``) and max pooling of integer arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from convlayers import config
from convlayers._validate import IntOrTuple
from convlayers.functional import _ready
from convlayers.functional._common import pad_pairs, trailing, unbatch, window_offsets
from convlayers.functional._compiled import _threads_for, loaded_kernels
from convlayers.functional._pool_backward import (
    _planes,
    avg_pool_backward,
    max_pool_backward,
    scatter_to_argmax,
)
from convlayers.functional._pool_spec import (
    PoolPadding,
    PoolSpec,
    check_divisor,
    divide_by_divisor,
    divisor_grid,
    pool_array,
    pool_spec,
)

__all__ = [
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "avg_pool_backward",
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool_backward", "scatter_to_argmax",
]


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
    """``(kernel, stride, padding, dilation, in_shape, out_shape)`` with 1-D as ``H == 1``.
    ``padding`` is the padding before each axis: the kernels skip taps outside the input."""
    fields = (spec.kernel, spec.stride, spec.padding, spec.dilation, spec.in_shape, spec.out_shape)
    if len(spec.kernel) == 2:
        return fields
    return tuple((pre, *f) for pre, f in zip((1, 1, 0, 1, 1, 1), fields, strict=True))


def _lowest(dtype: np.dtype) -> Any:
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _max_pool_fast(x: np.ndarray, spec: PoolSpec, with_indices: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if not with_indices:
        return _max_pool_runner(x.shape, spec)(x), None
    k, s, p, d, i, o = _as_2d(spec)
    kern = loaded_kernels().pooling  # the thread setting: _threads_for below
    xs = _planes(x, i)
    out = np.empty((xs.shape[0], *o), dtype=x.dtype)
    shape = x.shape[:2] + spec.out_shape
    with _threads_for(out.size * k[0] * k[1], config.engine.serial_pool_taps):
        index = np.empty(out.shape, dtype=np.int64)
        kern.max_pool2d_indices(xs, *k, *s, *p, *d, out, index)
    return out.reshape(shape), index.reshape(shape)


def _max_pool_runner(x_shape: tuple[int, ...], spec: PoolSpec) -> Callable[[np.ndarray], np.ndarray]:
    """The compiled max pool of a batch of ``x_shape`` (:func:`_fast`), worked out once: also
    the runner of later calls like it (:mod:`convlayers.functional._ready`)."""
    k, s, p, d, _, _ = _as_2d(spec)
    return _pool_runner(loaded_kernels().pooling.max_pool2d, (*k, *s, *p, *d), x_shape, spec)


def _pool_runner(kernel: Any, arguments: tuple[Any, ...], x_shape: tuple[int, ...],
                 spec: PoolSpec) -> Callable[[np.ndarray], np.ndarray]:
    """``kernel(planes, *arguments, out)`` over the planes of a batch of ``x_shape``; below
    ``config.engine.serial_pool_taps`` taps ``kernel(..., out, True)``, on the calling thread
    (no thread switch, no parallel region), else on the thread setting's threads."""
    k, _, _, _, i, o = _as_2d(spec)
    planes = (x_shape[0] * x_shape[1], *o)
    taps, serial_below = math.prod(planes) * k[0] * k[1], config.engine.serial_pool_taps
    shape = x_shape[:2] + spec.out_shape
    serial = taps < serial_below

    def run(x: np.ndarray) -> np.ndarray:
        out = np.empty(planes, dtype=x.dtype)
        if serial:
            kernel(_planes(x, i), *arguments, out, True)
        else:
            with _threads_for(taps, serial_below):  # applies the thread setting
                kernel(_planes(x, i), *arguments, out)
        return out.reshape(shape)

    return run


def _max_pool(x: np.ndarray, spec: PoolSpec, with_indices: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if _fast(x, spec):
        return _max_pool_fast(x, spec, with_indices)
    best = np.full(x.shape[:2] + spec.out_shape, _lowest(x.dtype), dtype=x.dtype)
    if not with_indices:
        for offset in window_offsets(spec.kernel):
            if (taps := spec.tap_slices(offset)) is not None:
                view = best[trailing(taps[0])]
                np.maximum(view, x[trailing(taps[1])], out=view)
        return best, None
    xp = pad_pairs(x, spec.pairs(), value=_lowest(x.dtype))
    strides = _plane_strides(spec.in_shape)
    coords = [spec.tap_coords(a) for a in range(len(spec.kernel))]
    # PyTorch starts each window's index at its first tap inside the input; a window with no
    # tap inside keeps its first tap at or after 0 (its start moved forward by the dilation)
    first: list[np.ndarray] = []
    for axis, (c, stride) in enumerate(zip(coords, strides, strict=True)):
        inside = (c >= 0) & (c < spec.in_shape[axis])
        start, step = c[:, 0], spec.dilation[axis]
        moved = np.where(start < 0, start + (-start + step - 1) // step * step, start)
        pick = np.where(inside.any(axis=1), c[np.arange(c.shape[0]), inside.argmax(axis=1)], moved)
        first.append(pick * stride)
    index = np.broadcast_to(_broadcast_axes(first), best.shape).copy()
    from convlayers.functional._common import offset_slices

    for offset in window_offsets(spec.kernel):
        view = xp[trailing(offset_slices(offset, spec.out_shape, spec.stride, spec.dilation))]
        update = view > best
        if x.dtype.kind == "f":
            update |= np.isnan(view)
        np.copyto(best, view, where=update)
        tap = _broadcast_axes([c[:, j] * s for c, j, s in zip(coords, offset, strides, strict=True)])
        np.copyto(index, np.broadcast_to(tap, index.shape), where=update)
    return best, index


def _max_pool_nd(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None, padding: PoolPadding,
    dilation: IntOrTuple, ceil_mode: bool, return_indices: bool, n: int,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    with_indices = bool(return_indices)
    key = _ready.key_of("max_pool_indices" if with_indices else "max_pool", (input,), n,
                        kernel_size, stride, padding, dilation, ceil_mode)
    if with_indices:  # a call like an earlier one: its runner (the pair as the call returns it)
        run = _ready.lookup(key) if key is not None else None
        if run is not None:
            pair: tuple[np.ndarray, np.ndarray] = run(input)
            return pair
    else:
        out = _ready.call(key, n, input)
        if out is not None:
            return out
    x, unbatched = pool_array(input, n, allow_int=True)
    spec = pool_spec(x, kernel_size, stride, padding, dilation, ceil_mode)
    out, index = _max_pool(x, spec, with_indices)
    if key is not None and _fast(x, spec):
        runner = (_max_pool_indices_runner(np.shape(input), spec) if with_indices
                  else _max_pool_runner(x.shape, spec))
        _ready.remember(key, runner)
    if index is not None:
        return unbatch(out, unbatched), unbatch(index, unbatched)
    return unbatch(out, unbatched)


def _max_pool_indices_runner(shape: tuple[int, ...], spec: PoolSpec,
                             ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The compiled max pool with its indices of ``shape`` inputs (batched or not, as the
    call gave them), worked out once: the runner of later calls like it
    (:mod:`convlayers.functional._ready`; a small pool's validation and planning took half
    of its call, 1x66x10x10 3x3 stride 2: 17 of 40 us)."""
    k, s, p, d, i, o = _as_2d(spec)
    kern = loaded_kernels().pooling
    final = tuple(shape[:len(shape) - len(spec.out_shape)]) + spec.out_shape

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        planes = _planes(x, i)
        out = np.empty((planes.shape[0], *o), dtype=x.dtype)
        index = np.empty(out.shape, dtype=np.int64)
        with _threads_for(out.size * k[0] * k[1], config.engine.serial_pool_taps):
            kern.max_pool2d_indices(planes, *k, *s, *p, *d, out, index)
        return out.reshape(final), index.reshape(final)

    return run


def _kernel_grid_fits(spec: PoolSpec, dtype: np.dtype) -> bool:
    """The compiled average kernels take a whole divisor grid: only when it fits the scratch."""
    return math.prod(spec.out_shape) * dtype.itemsize <= config.scratch_bytes() // 2


def _avg_pool_nd(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None, padding: PoolPadding,
    ceil_mode: bool, count_include_pad: bool, divisor_override: int | None, n: int,
    dilation: IntOrTuple = 1,
) -> np.ndarray:
    key = _ready.key_of("avg_pool", (input,), n, kernel_size, stride, padding, dilation,
                        ceil_mode, count_include_pad, divisor_override)
    out = _ready.call(key, n, input)  # a call like an earlier one: its runner
    if out is not None:
        return out
    x, unbatched = pool_array(input, n, allow_int=False)
    spec = pool_spec(x, kernel_size, stride, padding, dilation, ceil_mode)
    override = check_divisor(divisor_override)
    include = bool(count_include_pad)
    if _fast(x, spec) and set(spec.dilation) == {1} and _kernel_grid_fits(spec, x.dtype):
        ready = _avg_pool_runner(x.shape, x.dtype, spec, include, override)
        if key is not None:
            _ready.remember(key, ready)
        return unbatch(ready(x), unbatched)
    total = np.zeros(x.shape[:2] + spec.out_shape, dtype=x.dtype)
    for offset in window_offsets(spec.kernel):
        if (taps := spec.tap_slices(offset)) is not None:
            total[trailing(taps[0])] += x[trailing(taps[1])]
    divide_by_divisor(total, spec, include, override)
    return unbatch(total, unbatched)


def _avg_pool_runner(x_shape: tuple[int, ...], dtype: np.dtype, spec: PoolSpec, include: bool,
                     override: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """The compiled average pool of a batch of ``x_shape``, worked out once (as
    :func:`_max_pool_runner`)."""
    k, s, p, _, _, o = _as_2d(spec)
    div = divisor_grid(spec, include, override, dtype).reshape(o)
    return _pool_runner(loaded_kernels().pooling.avg_pool2d, (*k, *s, *p, div), x_shape, spec)


_MAX_DOC = """
    Parameters
    ----------
    input : ndarray
        ``(N, C, {axes})`` or unbatched ``(C, {axes})``: float32, float64 or an integer dtype.
    kernel_size : int or tuple of int
        Window size.
    stride : int or tuple of int, optional
        Step between windows; ``None`` (default) means ``kernel_size``.
    padding : int, tuple of int or tuple of (int, int)
        Implicit ``-inf`` padding, at most half the kernel size; it never wins. Per side, one
        ``(before, after)`` pair per axis (ONNX's ``pads``), each smaller than the window.
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
        As for max pooling (``stride=None`` means the kernel size, padding may be given per
        side); padding is zeros.
    count_include_pad : bool
        Divide by the window size including zero padding (default, PyTorch's) or only by the
        number of input elements in the window. Windows reaching past the padding in
        ``ceil_mode`` never count the part outside.
    divisor_override : int, optional
        Divide every window sum by this instead.
    dilation : int or tuple of int
        Spacing between the window's taps (beyond PyTorch, as ONNX's ``AveragePool``); the
        divisor counts taps.

    Returns
    -------
    ndarray
        ``(N, C, {oaxes})``.
"""


def max_pool1d(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: PoolPadding = 0,
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
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: PoolPadding = 0,
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
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: PoolPadding = 0,
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
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: PoolPadding = 0,
    ceil_mode: bool = False, count_include_pad: bool = True, dilation: IntOrTuple = 1,
) -> np.ndarray:
    """1-D average pooling, as ``torch.nn.functional.avg_pool1d``.
    {doc}
    Examples
    --------
    >>> avg_pool1d(np.array([[[1.0, 3.0, 2.0, 6.0]]]), 2)
    array([[[2., 4.]]])
    """
    return _avg_pool_nd(input, kernel_size, stride, padding, ceil_mode, count_include_pad, None, 1,
                        dilation)


def avg_pool2d(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: PoolPadding = 0,
    ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
    dilation: IntOrTuple = 1,
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
                        divisor_override, 2, dilation)


def avg_pool3d(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: PoolPadding = 0,
    ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
    dilation: IntOrTuple = 1,
) -> np.ndarray:
    """3-D average pooling, as ``torch.nn.functional.avg_pool3d``.
    {doc}
    Examples
    --------
    >>> avg_pool3d(np.arange(8.0).reshape(1, 2, 2, 2), 2)
    array([[[[3.5]]]])
    """
    return _avg_pool_nd(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override, 3, dilation)


def _fill_docs(template: str, *functions: Any) -> None:
    for fn, axes in zip(functions, ("L", "H, W", "D, H, W"), strict=True):
        fn.__doc__ = (fn.__doc__ or "").format(
            doc=template.format(axes=axes, oaxes=axes.replace(",", "_out,") + "_out"))


_fill_docs(_MAX_DOC, max_pool1d, max_pool2d, max_pool3d)
_fill_docs(_AVG_DOC, avg_pool1d, avg_pool2d, avg_pool3d)


