"""Pooling hyper-parameters, window arithmetic and divisors shared by the pooling ops.

Padding is either PyTorch's (an int or one int per axis, the same on both sides, at most half
the kernel) or explicit per side, ``((before, after), ...)`` one pair per spatial axis, as ONNX
writes ``pads``. Windows never read padding: each kernel offset touches only the outputs whose
tap lands inside the input, so no padded copy of the input is made.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convlayers import config, shapes
from convlayers._validate import IntOrTuple, check_ndim, nonnegative_tuple, positive_tuple
from convlayers.functional._common import SpecCache, trailing, typed_key

PoolPadding = IntOrTuple | Sequence[Sequence[int]]

INT_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64))


@dataclass(frozen=True)
class PoolSpec:
    """Normalised pooling hyper-parameters for one call (``padding`` is the *before* side)."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    pad_after: tuple[int, ...] = ()

    def after(self) -> tuple[int, ...]:
        """The padding after each axis (the same as before for PyTorch-style padding)."""
        return self.pad_after or self.padding

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

    def tap_slices(self, offset: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
        """``(output slices, input slices)`` pairing every output whose tap at ``offset`` lies
        inside the input with that input element; ``None`` when no output has one."""
        outs, ins = [], []
        for j, s, p, d, i, o in zip(offset, self.stride, self.padding, self.dilation,
                                    self.in_shape, self.out_shape, strict=True):
            shift = p - j * d  # tap of output o reads o*s - shift
            lo = max(0, -(-shift // s))
            hi = min(o, (i - 1 + shift) // s + 1) if i > 0 else 0
            if hi <= lo:
                return None
            start = lo * s - shift
            outs.append(slice(lo, hi))
            ins.append(slice(start, start + (hi - lo - 1) * s + 1, s))
        return tuple(outs), tuple(ins)


def pool_spec(
    x: np.ndarray, kernel_size: IntOrTuple, stride: IntOrTuple | None, padding: PoolPadding,
    dilation: IntOrTuple, ceil_mode: bool,
) -> PoolSpec:
    """Validate pooling arguments against a batched input ``(N, C, *spatial)`` (remembered
    per input shape and arguments: :class:`~convlayers.functional._common.SpecCache`)."""
    key = (x.shape, typed_key(kernel_size), typed_key(stride), typed_key(padding),
           typed_key(dilation), typed_key(ceil_mode))
    return _SPECS.get(key, lambda: _pool_spec(x, kernel_size, stride, padding, dilation,
                                              ceil_mode))


_REMEMBERED = 512
_SPECS: SpecCache[PoolSpec] = SpecCache(_REMEMBERED)


def _pool_spec(
    x: np.ndarray, kernel_size: IntOrTuple, stride: IntOrTuple | None, padding: PoolPadding,
    dilation: IntOrTuple, ceil_mode: bool,
) -> PoolSpec:
    n = x.ndim - 2
    kernel = positive_tuple(kernel_size, n, "kernel_size")
    stride_t = kernel if stride is None or stride == () else positive_tuple(stride, n, "stride")
    dilation_t = positive_tuple(dilation, n, "dilation")
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    sides = shapes.per_side_padding(padding, n)
    before, after = sides or (nonnegative_tuple(padding, n, "padding"),) * 2  # type: ignore[arg-type]
    out = tuple(
        shapes.pool_output_size(i, k, s, (b, a) if sides else b, d, bool(ceil_mode))
        for i, k, s, b, a, d in zip(x.shape[2:], kernel, stride_t, before, after, dilation_t,
                                    strict=True))
    if not sides:
        return PoolSpec(kernel, stride_t, before, dilation_t, tuple(x.shape[2:]), out)
    spec = PoolSpec(kernel, stride_t, before, dilation_t, tuple(x.shape[2:]), out, after)
    for axis, size in enumerate(out):
        for lo in range(0, size, 1 << 20):
            if axis_counts(spec, axis, lo, min(size, lo + (1 << 20)), False).min(initial=1) == 0:
                raise ValueError(f"padding {padding!r} leaves a window with no input element on "
                                 f"spatial axis {axis} (kernel_size {kernel}, dilation "
                                 f"{dilation_t}, input {tuple(x.shape[2:])})")
    return spec


def pool_array(x: Any, n_spatial: int, allow_int: bool, name: str = "input") -> tuple[np.ndarray, bool]:
    """``(x, was_unbatched)`` as :func:`convlayers.functional._common.batched`, admitting the
    integer dtypes where ``allow_int`` (max pooling, as PyTorch)."""
    arr = np.asarray(x)
    allowed = (np.dtype(np.float32), np.dtype(np.float64)) + (INT_DTYPES if allow_int else ())
    if arr.dtype not in allowed:
        kinds = "a float32, float64 or integer" if allow_int else "a float32 or float64"
        raise TypeError(f"{name} must be {kinds} array, got dtype {arr.dtype}; convert it first, "
                        f"e.g. {name}.astype(np.float32)")
    full = n_spatial + 2
    layout = "N, C, " + ", ".join("DHW"[3 - n_spatial :])
    check_ndim(arr, (full - 1, full), name, f"batched ({layout}) or unbatched without N")
    return (arr[None], True) if arr.ndim == full - 1 else (arr, False)


def axis_counts(spec: PoolSpec, axis: int, lo: int, hi: int, include_pad: bool) -> np.ndarray:
    """Number of taps of outputs ``lo..hi-1`` on ``axis`` that count towards the divisor: inside
    the padded extent (``include_pad``, the window clipped at the padding's end, PyTorch's and
    ONNX's rule) or inside the input."""
    k, s, d = spec.kernel[axis], spec.stride[axis], spec.dilation[axis]
    size, before, after = spec.in_shape[axis], spec.padding[axis], spec.after()[axis]
    start = np.arange(lo, hi, dtype=np.int64) * s - before
    low, high = (-before, size + after) if include_pad else (0, size)
    first = np.maximum(0, -((start - low) // d))  # ceil((low - start) / d), at least 0
    stop = np.minimum(k, -((start - high) // d))  # ceil((high - start) / d), at most k
    return np.maximum(stop - first, 0)


def blocks(shape: tuple[int, ...], budget: int) -> Iterator[tuple[slice, ...]]:
    """Tile ``shape`` into blocks of at most ``max(budget, 1)`` elements (last axis first)."""
    sizes, room = [], max(int(budget), 1)
    for extent in reversed(shape):
        step = max(1, min(extent, room))
        sizes.append(step)
        room = max(1, room // max(step, 1))
    sizes.reverse()
    ranges = [[slice(a, min(a + st, e)) for a in range(0, e, st)] or [slice(0, 0)]
              for e, st in zip(shape, sizes, strict=True)]
    return (tuple(b) for b in itertools.product(*ranges))


def divisor_block(spec: PoolSpec, block: tuple[slice, ...], include_pad: bool,
                  dtype: np.dtype) -> np.ndarray:
    """The divisor of the outputs in ``block``: the outer product of the per-axis counts."""
    grid = np.ones((1,) * len(block), dtype=dtype)
    for axis, sl in enumerate(block):
        counts = axis_counts(spec, axis, sl.start, sl.stop, include_pad).astype(dtype)
        grid = grid * counts.reshape((1,) * axis + (-1,) + (1,) * (len(block) - axis - 1))
    return grid


def scratch_elements(dtype: np.dtype) -> int:
    """How many elements of ``dtype`` a divisor block may hold (a quarter of the scratch cap)."""
    return max(1, config.scratch_bytes() // (4 * max(np.dtype(dtype).itemsize, 8)))


def divide_by_divisor(total: np.ndarray, spec: PoolSpec, include_pad: bool,
                      divisor_override: int | None) -> None:
    """Divide window sums ``(N, C, *out)`` in place by their divisors, block by block, so the
    scratch stays under ``config.scratch_bytes`` whatever the output size."""
    if divisor_override is not None:
        total /= total.dtype.type(divisor_override)
        return
    for block in blocks(spec.out_shape, scratch_elements(total.dtype)):
        total[trailing(block)] /= divisor_block(spec, block, include_pad, total.dtype)


def divisor_grid(spec: PoolSpec, include_pad: bool, divisor_override: int | None,
                 dtype: np.dtype) -> np.ndarray:
    """The whole divisor grid over the output plane, in ``dtype`` (for the compiled kernels),
    remembered when small: a layer called again reuses it, so callers must not write to it (it
    stays writeable, as numba compiles read-only arrays as another type)."""
    if math.prod(spec.out_shape) > _SMALL_GRID:
        return _divisor_grid(spec, include_pad, divisor_override, dtype)
    return _small_divisor_grid(spec, include_pad, divisor_override, np.dtype(dtype))


_SMALL_GRID = 1 << 16


@functools.lru_cache(maxsize=_REMEMBERED)
def _small_divisor_grid(spec: PoolSpec, include_pad: bool, divisor_override: int | None,
                        dtype: np.dtype) -> np.ndarray:
    return _divisor_grid(spec, include_pad, divisor_override, dtype)


def _divisor_grid(spec: PoolSpec, include_pad: bool, divisor_override: int | None,
                  dtype: np.dtype) -> np.ndarray:
    grid = np.empty(spec.out_shape, dtype=dtype)
    if divisor_override is not None:
        grid.fill(divisor_override)
        return grid
    for block in blocks(spec.out_shape, scratch_elements(dtype)):
        grid[block] = divisor_block(spec, block, include_pad, dtype)
    return grid


def check_divisor(divisor_override: Any) -> int | None:
    """``divisor_override`` as a non-zero int, or ``None``."""
    if divisor_override is None:
        return None
    if not isinstance(divisor_override, numbers.Integral) or isinstance(divisor_override, bool):
        raise TypeError(f"divisor_override must be an integer, got {divisor_override!r}")
    value = int(divisor_override)
    if value == 0:
        raise ValueError("divisor_override must be a non-zero integer, got 0")
    return value
