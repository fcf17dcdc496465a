"""Backward of the pooling ops (``convlayers.functional.pooling``): vector-Jacobian products."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from convlayers import config
from convlayers._validate import IntOrTuple, as_int, float_array
from convlayers.functional import _ready
from convlayers.functional._common import batched, trailing, unbatch, window_offsets
from convlayers.functional._compiled import _threads_for, loaded_kernels
from convlayers.functional._pool_spec import (
    PoolPadding,
    blocks,
    check_divisor,
    divisor_block,
    divisor_grid,
    pool_spec,
    scratch_elements,
)

__all__ = ["avg_pool_backward", "max_pool_backward", "scatter_to_argmax"]


def _planes(a: np.ndarray, plane: tuple[int, ...]) -> np.ndarray:
    """``a`` as C-contiguous planes of shape ``plane`` (the compiled kernels' layout)."""
    return np.ascontiguousarray(a).reshape((-1, *plane))


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
        with _threads_for(gy.size + gx.size, config.engine.serial_pool_taps):
            bad = loaded_kernels().pooling.scatter_add_planes(
                gy, _planes(idx.astype(np.int64, copy=False), (gy.shape[1],)), gx)
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
    >>> from convlayers.functional.pooling import max_pool1d
    >>> x = np.array([[[1.0, 3.0, 2.0]]])
    >>> y, idx = max_pool1d(x, 2, stride=1, return_indices=True)
    >>> max_pool_backward(np.ones_like(y), x, idx, spatial_dims=1)
    array([[[0., 2., 0.]]])
    """
    key = _ready.key_of("max_pool_backward", (grad_output, input, indices), spatial_dims)
    run = _ready.lookup(key) if key is not None else None
    if run is not None:  # a call like an earlier one: its runner
        out: np.ndarray = run(grad_output, indices)
        return out
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
    idx = np.asarray(indices)
    if (key is not None and gy.dtype == x.dtype and gy.size and idx.shape == gy.shape
            and np.issubdtype(idx.dtype, np.integer)):
        _ready.remember(key, _scatter_runner(x.shape, sd, x.dtype))
    return scatter_to_argmax(gy, idx, x, sd)


def _scatter_runner(shape: tuple[int, ...], spatial_dims: int,
                    dtype: np.dtype) -> Callable[..., np.ndarray]:
    """:func:`scatter_to_argmax`'s compiled path for ``shape`` inputs, worked out once: the
    runner of later :func:`max_pool_backward` calls like it (:mod:`convlayers.functional._ready`;
    a small pool's gradient spent most of its call validating, 1x66x10x10: 24 of 28 us). It
    reads the input's shape only, and raises as the full path does for an index outside the
    plane."""
    plane = math.prod(shape[len(shape) - spatial_dims:])
    n_planes = math.prod(shape[:len(shape) - spatial_dims])
    kern = loaded_kernels().pooling

    def run(grad_output: np.ndarray, indices: np.ndarray) -> np.ndarray:
        gy = np.ascontiguousarray(grad_output).reshape(n_planes, -1)
        gx = np.empty((n_planes, plane), dtype=dtype)  # zeroed plane by plane in the kernel
        with _threads_for(gy.size + gx.size, config.engine.serial_pool_taps):
            bad = kern.scatter_add_planes(
                gy, _planes(indices.astype(np.int64, copy=False), (gy.shape[1],)), gx)
        if bad:
            raise ValueError(f"indices must lie in [0, {plane}) (a flat position in the input plane)")
        return gx.reshape(shape)

    return run


def avg_pool_backward(
    grad_output: Any, input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
    padding: PoolPadding = 0, ceil_mode: bool = False, count_include_pad: bool = True,
    divisor_override: int | None = None, spatial_dims: int | None = None,
    dilation: IntOrTuple = 1,
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
    key = _ready.key_of("avg_pool_backward", (grad_output, input), spatial_dims, kernel_size,
                        stride, padding, dilation, ceil_mode, count_include_pad,
                        divisor_override)
    run = _ready.lookup(key) if key is not None else None
    if run is not None:  # a call like an earlier one: its runner
        out: np.ndarray = run(grad_output, input)
        return out
    raw = float_array(input, "input")
    if spatial_dims is not None:
        n = as_int(spatial_dims, "spatial_dims")
    else:
        n = len(kernel_size) if isinstance(kernel_size, (tuple, list)) else raw.ndim - 2
    x, unbatched = batched(raw, n)
    gy, _ = batched(grad_output, n, "grad_output")
    spec = pool_spec(x, kernel_size, stride, padding, dilation, ceil_mode)
    if gy.shape != x.shape[:2] + spec.out_shape:
        raise ValueError(f"grad_output must have shape {x.shape[:2] + spec.out_shape}, got {gy.shape}")
    override, include = check_divisor(divisor_override), bool(count_include_pad)
    fits = math.prod(spec.out_shape) * x.dtype.itemsize <= config.scratch_bytes() // 2
    from convlayers.functional import pooling  # the one switch for the compiled paths

    if pooling._fast(x, spec) and gy.dtype == x.dtype and fits and set(spec.dilation) == {1}:
        k, s, p, i, o = (f if len(f) == 2 else (dflt, *f) for f, dflt in zip(
            (spec.kernel, spec.stride, spec.padding, spec.in_shape, spec.out_shape), (1, 1, 0, 1, 1),
            strict=True))
        div = divisor_grid(spec, include, override, x.dtype).reshape(o)
        ready = _avg_backward_runner(k, s, p, i, o, div, raw.shape, x.dtype)
        if key is not None:
            _ready.remember(key, ready)
        return ready(gy, x)
    share = np.array(gy, dtype=x.dtype)
    if override is not None:
        share /= x.dtype.type(override)
    else:
        for block in blocks(spec.out_shape, scratch_elements(x.dtype)):
            share[trailing(block)] /= divisor_block(spec, block, include, x.dtype)
    gx = np.zeros(x.shape, dtype=x.dtype)
    for offset in window_offsets(spec.kernel):
        if (taps := spec.tap_slices(offset)) is not None:
            gx[trailing(taps[1])] += share[trailing(taps[0])]
    return unbatch(gx, unbatched)


def _avg_backward_runner(k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
                         i: tuple[int, ...], o: tuple[int, ...], div: np.ndarray,
                         shape: tuple[int, ...], dtype: np.dtype) -> Callable[..., np.ndarray]:
    """The compiled average-pool gradient of ``shape`` inputs (planes ``i``, gradients ``o``),
    worked out once: also the runner of later calls like it
    (:mod:`convlayers.functional._ready`; a tiny pool's gradient, 7x19x10x10 3x3 stride 2,
    spent most of its time validating and planning). It reads only the input's shape."""
    kern = loaded_kernels().pooling

    def run(grad_output: np.ndarray, input: np.ndarray) -> np.ndarray:
        gy = _planes(grad_output, o)
        gx = np.empty((gy.shape[0], *i), dtype=dtype)  # zeroed in the kernel
        with _threads_for(gy.size * k[0] * k[1] + gx.size, config.engine.serial_pool_taps):
            kern.avg_pool2d_backward(gy, *k, *s, *p, div, gx)
        return gx.reshape(shape)

    return run
