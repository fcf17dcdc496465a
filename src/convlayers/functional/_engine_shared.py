"""Helpers the convolution engine's strategies share: layout, bias argument, value checks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from convlayers import config
from convlayers.functional.plan import Geometry, magnitude

#: inf and NaN go through the NumPy parts silently, as through torch (no RuntimeWarning).
_quiet = np.errstate(invalid="ignore", over="ignore")


_Result = TypeVar("_Result")


def remembered(fn: Callable[..., _Result]) -> Callable[..., _Result]:
    """``fn(geometry, *args)`` remembered per its arguments, the engine settings and the scratch
    cap (what the unit sizes read): a model's layers ask the same question on every call, and
    the answer took 10-20 us of Python, as long as a small layer's kernel."""
    memo: dict[tuple[Any, ...], _Result] = {}

    @functools.wraps(fn)
    def wrapper(*args: Any) -> _Result:
        key = (*args, config.engine_version(), config.scratch_bytes())
        hit = memo.get(key)
        if hit is None:
            if len(memo) >= 4096:
                memo.clear()
            hit = memo[key] = fn(*args)
        return hit

    return wrapper


def _finite(a: np.ndarray) -> bool:
    """No inf or NaN in ``a``: a contiguous float array is read once by the compiled check
    (:mod:`convlayers.kernels.values`; on every thread from
    ``config.engine.parallel_check_elements`` elements), any other by NumPy."""
    if a.flags.c_contiguous and a.dtype.char in "fd" and a.size:
        from convlayers.functional._compiled import kernels, loaded_kernels

        if a.size >= config.engine.parallel_check_elements:
            return not kernels().values.any_nonfinite(a.ravel(), 1 << 16)
        # one vectorised pass on this thread: NumPy's max and min took 5-8 us on a small weight
        return not loaded_kernels().values.nonfinite_in(a.ravel())
    return bool(np.isfinite(magnitude(a)))


def _as_4d(a: np.ndarray) -> np.ndarray:
    """A 1-D problem ``(N, C, L)`` as 2-D ``(N, C, 1, L)``; contiguous for the kernels."""
    return np.ascontiguousarray(a if a.ndim == 4 else a[:, :, None, :])


def units_for_threads(g: Geometry, rows: int, threads: int,
                      split_channels: bool) -> tuple[int, int]:
    """``(R, B)`` for the slab kernels (lowered, implicit), from slabs of ``rows`` output rows
    that fit their scratch: while there are fewer units (image, group, slab) than twice the
    threads, slabs get shorter (down to ``config.engine.lowered_min_columns`` output
    positions), then, with ``split_channels``, the output channels split into blocks ``B`` of
    whole register-tile bands (else ``B`` is all of them)."""
    from convlayers.kernels.simd import TILE_ROWS

    want = 2 * threads if threads > 1 else 1
    images = g.n * g.groups
    if images * -(-g.ho // rows) < want:
        shortest = max(1, -(-config.engine.lowered_min_columns // g.wo))
        split = max(1, -(-g.ho // -(-want // images)))
        rows = min(rows, max(shortest, split))
    block = g.c_out_g
    units = images * -(-g.ho // rows)
    if split_channels and units < want and g.c_out_g > 2 * TILE_ROWS:
        per = -(-g.c_out_g // -(-want // units))
        block = min(g.c_out_g, max(2 * TILE_ROWS, -(-per // TILE_ROWS) * TILE_ROWS))
    return rows, block


def _bias_arg(bias: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """The bias as the kernels take it: an empty array when there is none."""
    return np.empty(0, dtype=dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
