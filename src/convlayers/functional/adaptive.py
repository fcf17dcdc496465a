"""Adaptive pooling: choose the output size, the windows follow (PyTorch's rule).

Output cell ``o`` of an axis of length ``L`` pooled to ``O`` covers
``[floor(o*L/O), ceil((o+1)*L/O))``. Windows may differ in size and overlap. Both averages
and maxima are separable, so each axis is reduced in turn with a loop over its output cells
(a handful), each step a vectorised reduction over a slice.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from convlayers import config, limits
from convlayers._validate import as_int
from convlayers.functional._common import batched, unbatch
from convlayers.functional._compiled import (
    _numba_threads,
    _threads_for,
    kernels,
    loaded_kernels,
)

__all__ = [
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_avg_pool_backward",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
]

OutputSize = int | None | Sequence[int | None]


def _output_size(output_size: OutputSize, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    n = len(in_shape)
    if type(output_size) is int and output_size >= 1:  # the common case, checked at once
        return (output_size,) * n
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


def _bounds(length: int, out: int) -> list[tuple[int, int]]:
    """Window ``[start, end)`` of each output cell along an axis."""
    return [((o * length) // out, -((-(o + 1) * length) // out)) for o in range(out)]


def _check_passes(x_shape: tuple[int, ...], dtype: np.dtype, out: tuple[int, ...], order: Any,
                  op: str, indices: bool = False) -> None:
    """Check the array after each axis's pass (and the output) against the memory cap, before
    the first is allocated: ``adaptive_avg_pool2d(x, 100000)`` asks for 40 GB. The messages are
    written only when a pass is over the cap (a model pools small maps every call)."""
    passes = list(order)
    shape, largest = list(x_shape), 0
    for a in passes:
        shape[2 + a] = out[a]
        largest = max(largest, math.prod(shape))
    if largest * max(dtype.itemsize, 8 if indices else 0) <= config.max_array_bytes():
        return
    shape = list(x_shape)
    for a in passes:
        shape[2 + a] = out[a]
        now = tuple(shape)
        limits.check_elements(now, dtype, lambda: f"the output of {op} (shape {now} from "  # noqa: B023 (called at once)
                              f"input shape {x_shape}, output_size {out})")
        if indices:
            limits.check_elements(now, np.int64, lambda: f"the indices of {op} (shape {now})")  # noqa: B023


def _avg_axis(x: np.ndarray, axis: int, out: int) -> np.ndarray:
    """Average the windows of one axis: a loop over output cells, not over pixels, each cell
    written straight into the result (no list of parts to concatenate)."""
    shape = list(x.shape)
    shape[axis] = out
    result = np.empty(shape, dtype=x.dtype)
    lead = (slice(None),) * axis
    for o, (a, b) in enumerate(_bounds(x.shape[axis], out)):
        window = x[(*lead, slice(a, b))]
        result[(*lead, slice(o, o + 1))] = window.sum(axis=axis, keepdims=True) / (b - a)
    return result


def _avg_axis_backward(g: np.ndarray, axis: int, length: int) -> np.ndarray:
    shape = list(g.shape)
    shape[axis] = length
    gx = np.zeros(shape, dtype=g.dtype)
    for o, (a, b) in enumerate(_bounds(length, g.shape[axis])):
        share = g[(slice(None),) * axis + (slice(o, o + 1),)] / (b - a)
        gx[(slice(None),) * axis + (slice(a, b),)] += share
    return gx


def _max_axis(
    x: np.ndarray, flat: np.ndarray | None, axis: int, out: int, step: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Max over the windows of one axis, carrying the flat argmax of the axes done so far.

    Per window the first maximum wins, unless there is a NaN: then the last NaN wins. Doing
    the axes one after another gives PyTorch's row-major rule for the whole window.
    """
    values, indices = [], []
    for a, b in _bounds(x.shape[axis], out):
        window = x[(slice(None),) * axis + (slice(a, b),)]
        nan = np.isnan(window)
        last_nan = (b - a - 1) - np.argmax(np.flip(nan, axis=axis), axis=axis)
        pos = np.expand_dims(np.where(nan.any(axis=axis), last_nan, np.argmax(window, axis=axis)), axis)
        values.append(np.take_along_axis(window, pos, axis=axis))
        if flat is not None:
            carried = np.take_along_axis(flat[(slice(None),) * axis + (slice(a, b),)], pos, axis=axis)
            indices.append(carried + (a + pos) * step)
    best = np.concatenate(values, axis=axis)
    return best, (np.concatenate(indices, axis=axis) if flat is not None else None)


def _fast(x: np.ndarray, n: int) -> bool:
    """Whether the compiled kernels (``convlayers.kernels.pooling``) serve: 1-D or 2-D, float32
    or float64, not empty."""
    return n in (1, 2) and x.dtype in (np.float32, np.float64) and x.size > 0


def _bound_arrays(length: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.array(_bounds(length, out), dtype=np.int64).reshape(out, 2)
    return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])


def _planes(x: np.ndarray, n: int) -> np.ndarray:
    """``(N*C, H, W)`` contiguous planes of a 1-D (``H = 1``) or 2-D batch."""
    return np.ascontiguousarray(x).reshape(-1, 1 if n == 1 else x.shape[2], x.shape[-1])


@functools.lru_cache(maxsize=256)
def _windows(in_shape: tuple[int, ...], out: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Row and column window bounds ``(rlo, rhi, clo, chi)`` of a 1-D or 2-D problem
    (remembered per shapes: a model asks the same every call; the kernels only read them, and
    they stay writeable so that numba compiles no read-only variant)."""
    rows = _bound_arrays(in_shape[0], out[0]) if len(in_shape) == 2 else _bound_arrays(1, 1)
    return (*rows, *_bound_arrays(in_shape[-1], out[-1]))


def _compiled(work: int) -> Any:
    """The pooling kernels, with numba's threads applied (one thread for small work)."""
    return loaded_kernels().pooling, _threads_for(work, config.engine.serial_pool_taps)


class _Plan:
    """What one adaptive pooling call needs that depends only on its shapes and settings, worked
    out once per (shape, dtype, output size, op, settings): a model pools the same shapes on
    every call, and on small maps working it out took 10 of a call's 15 us (torch's whole call
    took 5-7). ``kind`` is ``"numpy"`` (the axis-by-axis NumPy passes), ``"global"`` (the
    scans of whole planes), ``"rows"`` or ``"columns"`` (the compiled window kernels), or
    ``"pool"`` (:func:`convlayers.functional.max_pool2d` with ``kernel`` as its kernel and
    stride: see ``config.engine.pooled_max_width``); ``serial`` runs the kernel on the calling
    thread."""

    __slots__ = ("final", "kernel", "kind", "out", "planes", "rows", "scratch", "serial",
                 "windows", "y_shape")

    def __init__(self, x_shape: tuple[int, ...], dtype: np.dtype, output_size: OutputSize,
                 n: int, op: str, indices: bool) -> None:
        in_shape = x_shape[2:]
        self.out = out = _output_size(output_size, in_shape)
        order = range(n) if op == "avg" else reversed(range(n))
        _check_passes(x_shape, dtype, out, order, f"adaptive_{op}_pool{n}d", indices)
        self.final = (*x_shape[:2], *out)
        count = x_shape[0] * x_shape[1]
        size = math.prod(x_shape)
        self.kind, self.rows, self.scratch, self.serial = "numpy", 0, (0, 0), True
        self.kernel: tuple[int, ...] = ()
        self.windows: tuple[np.ndarray, ...] = ()
        self.planes: tuple[int, ...] = ()
        self.y_shape: tuple[int, ...] = ()
        if not (n in (1, 2) and dtype in (np.float32, np.float64) and size > 0):
            return
        height = 1 if n == 1 else x_shape[2]
        serial = size < config.engine.global_pool_serial_taps
        if all(o == 1 for o in out):
            # global pooling: a scan of each flat plane; on the calling thread while small,
            # where the parallel kernels' thread switch and region cost more than the scan
            # (global max pooling of 1x6x15x15 took 15 us, of 15x18x10x10 77 us, where torch
            # takes 5 and 22)
            self.kind, self.planes, self.serial = "global", (count, height * x_shape[-1]), serial
            self.y_shape = (count,) if op == "max" else (count, 1)
            return
        e = config.engine
        if (op == "max" and n == 2 and not indices and x_shape[-1] <= e.pooled_max_width
                and size >= e.pooled_max_taps
                and all(i % o == 0 for i, o in zip(in_shape, out, strict=True))):
            self.kind, self.kernel = "pool", tuple(i // o for i, o in zip(in_shape, out, strict=True))
            return
        self.planes = (count, height, x_shape[-1])
        self.y_shape = (count, 1 if n == 1 else out[0], out[-1])
        self.windows = _windows(in_shape, out)
        self.serial = size < config.engine.serial_pool_taps
        self.kind = "rows"
        widest = int((self.windows[3] - self.windows[2]).max())
        if op == "max" and widest >= _kernels(True).WIDE_WINDOW:
            # a row of column tops per thread, each on cache lines of its own (rows that
            # shared lines ran two threads slower than one); units of whole planes while
            # there are eight a thread (one 13x13 plane's output row was mostly overhead)
            threads = 1 if self.serial else _numba_threads()
            self.kind = "columns"
            self.scratch = (threads, -(-in_shape[-1] // 16) * 16 + 16)
            self.rows = self.y_shape[1] if count >= 8 * threads else 1


_PLANS: dict[tuple[Any, ...], _Plan] = {}


def _plan(x: np.ndarray, output_size: OutputSize, n: int, op: str, indices: bool) -> _Plan:
    """The remembered :class:`_Plan` of a call (worked out afresh for an output size that is
    not hashable, a list)."""
    try:
        key = (x.shape, x.dtype, output_size, n, op, indices, config.engine_version(),
               config.max_array_bytes(), _numba_threads())
        plan = _PLANS.get(key)
    except TypeError:
        return _Plan(x.shape, x.dtype, output_size, n, op, indices)
    if plan is None:
        if len(_PLANS) >= 1024:
            _PLANS.clear()
        plan = _PLANS[key] = _Plan(x.shape, x.dtype, output_size, n, op, indices)
    return plan


def _kernels(serial: bool) -> Any:
    """The pooling kernels, with the thread setting applied unless they run ``serial`` (on the
    calling thread: no parallel region reads it)."""
    return (loaded_kernels() if serial else kernels()).pooling


def _adaptive_avg(input: Any, output_size: OutputSize, n: int) -> np.ndarray:
    x, unbatched = batched(input, n)
    plan = _plan(x, output_size, n, "avg", False)
    if plan.kind == "global":
        y = np.empty(plan.y_shape, dtype=x.dtype)
        planes = np.ascontiguousarray(x).reshape(plan.planes)
        if plan.serial:
            _kernels(True).global_avg_serial(planes, y[:, 0])
        else:
            _kernels(False).global_avg(planes, y[:, 0])
        return unbatch(y.reshape(plan.final), unbatched)
    if plan.kind == "rows":
        y = np.empty(plan.y_shape, dtype=x.dtype)
        planes = np.ascontiguousarray(x).reshape(plan.planes)
        _kernels(plan.serial).adaptive_avg2d(planes, *plan.windows, y, plan.serial)
        return unbatch(y.reshape(plan.final), unbatched)
    for a, o in enumerate(plan.out):
        x = _avg_axis(x, 2 + a, o)
    return unbatch(np.ascontiguousarray(x), unbatched)


def _adaptive_max(
    input: Any, output_size: OutputSize, return_indices: bool, n: int
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    x, unbatched = batched(input, n)
    plan = _plan(x, output_size, n, "max", return_indices)
    if plan.kind == "pool":
        from convlayers.functional.pooling import max_pool2d

        pooled = cast(np.ndarray, max_pool2d(x, plan.kernel, plan.kernel))  # no indices
        return unbatch(pooled, unbatched)
    if plan.kind != "numpy":
        y = np.empty(plan.y_shape, dtype=x.dtype)
        idx = np.empty(plan.y_shape if return_indices else (0,) * len(plan.y_shape), np.int64)
        planes = np.ascontiguousarray(x).reshape(plan.planes)
        kernels = _kernels(plan.serial)
        if plan.kind == "global":
            (kernels.global_max_serial if plan.serial else kernels.global_max)(
                planes, y, idx, return_indices)
        elif plan.kind == "rows":
            kernels.adaptive_max2d(planes, *plan.windows, y, idx, return_indices, plan.serial)
        else:
            kernels.adaptive_max2d_columns(planes, *plan.windows, y, idx, return_indices,
                                           np.empty(plan.scratch, x.dtype),
                                           np.empty(plan.scratch, np.int64), plan.rows,
                                           plan.serial)
        y = unbatch(y.reshape(plan.final), unbatched)
        if return_indices:
            return y, unbatch(idx.reshape(plan.final), unbatched)
        return y
    # the flat index carried so far: all zeros before the first pass (a view, no memory)
    flat = np.broadcast_to(np.int64(0), x.shape) if return_indices else None
    in_shape = x.shape[2:]
    for a in reversed(range(n)):  # last axis first: PyTorch scans windows row-major
        x, flat = _max_axis(x, flat, 2 + a, plan.out[a], int(np.prod(in_shape[a + 1:])))
    if flat is not None:
        return unbatch(np.ascontiguousarray(x), unbatched), unbatch(flat, unbatched)
    return unbatch(np.ascontiguousarray(x), unbatched)


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
    """Gradient of adaptive average pooling: each window gets its output's gradient / size.

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
    g = gy.astype(x.dtype, copy=False)
    if _fast(x, n) and gy.size:
        kernels, threads = _compiled(x.size)
        gx = np.empty((x.shape[0] * x.shape[1], 1 if n == 1 else x.shape[2], x.shape[-1]),
                      dtype=x.dtype)
        with threads:
            kernels.adaptive_avg2d_backward(_planes(g, n), *_windows(x.shape[2:], g.shape[2:]),
                                            gx)
        return unbatch(gx.reshape(x.shape), unbatched)
    for a in reversed(range(n)):
        g = _avg_axis_backward(g, 2 + a, x.shape[2 + a])
    return unbatch(g, unbatched)
