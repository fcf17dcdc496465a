"""Helpers the convolution engine's strategies share: layout, bias argument, value checks."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from convlayers import config
from convlayers.functional._compiled import kernels, loaded_kernels
from convlayers.functional.plan import Geometry, magnitude

#: inf and NaN go through the NumPy parts silently, as through torch (no RuntimeWarning).
_quiet = np.errstate(invalid="ignore", over="ignore")


_Result = TypeVar("_Result")


def remembered(fn: Callable[..., _Result]) -> Callable[..., _Result]:
    """``fn(*args)`` (a geometry, or shapes: hashable) remembered per its arguments, the engine
    settings and the scratch cap (what the unit sizes read): a model's layers ask the same
    question on every call, and the answer took 10-20 us of Python, as long as a small layer's
    kernel."""
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
        if a.size >= config.engine.parallel_check_elements:
            return not kernels().values.any_nonfinite(a.ravel(), 1 << 16)
        # one vectorised pass on this thread: NumPy's max and min took 5-8 us on a small weight
        return not loaded_kernels().values.nonfinite_in(a.ravel())
    return bool(np.isfinite(magnitude(a)))


#: Alignment of the kernels' scratch: a cache line, so that whole-vector loads never straddle
#: two.
SCRATCH_ALIGN = config.CACHE_LINE_BYTES


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a :data:`SCRATCH_ALIGN`-byte
    boundary. NumPy's own allocations start 16 bytes apart, so a kernel's 64-byte vector loads
    at multiples of its scratch rows straddled cache lines: the channels-last depthwise block
    ran 1.15-1.5x as long in a misaligned scratch.

    >>> a = aligned_empty((3, 5), np.float32)
    >>> a.shape, a.ctypes.data % SCRATCH_ALIGN
    ((3, 5), 0)
    """
    dt = np.dtype(dtype)
    count = math.prod(shape)
    raw = np.empty(count * dt.itemsize + SCRATCH_ALIGN, dtype=np.uint8)
    # the address from the array interface: ``raw.ctypes`` builds a ctypes object (2.5x the
    # time of the whole function, 10 us a call on the eager path's small layers)
    start = -raw.__array_interface__["data"][0] % SCRATCH_ALIGN
    return raw[start:start + count * dt.itemsize].view(dt).reshape(shape)


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


#: A unit's fixed cost (handing it out, its first loads), in multiply-adds of the product.
UNIT_MACS = 20_000
#: The cost of a product column on one-vector tiles against one on the three-vector tiles
#: (a vector loaded per row of the tile, not per three).
ONE_VECTOR_COST = 1.6
#: Slabs per thread from which the images' slabs are handed out as they come: with fewer, a
#: last slab's rows (22 rows in slabs of 7: 7, 7, 7 and 1) left a thread idle for most of a
#: slab, so the cuts are costed.
BALANCED_UNITS = 8


def costed_units(g: Geometry, rows: int, threads: int, row_length: int, halo: int,
                 copy_row: int) -> tuple[int, int]:
    """``(R, B)`` for a forward of the slab kernels: slabs of at most ``rows`` output rows
    (each ``row_length`` product columns, its copy ``copy_row`` multiply-adds' worth a row,
    ``halo`` rows more copied) by blocks of ``B`` output channels.

    While the images and groups alone give every thread :data:`BALANCED_UNITS` slabs, as they
    come (``B`` all the channels). Else each way of cutting the map into 1-8 slabs and the channels into 1-8
    blocks of whole register-tile bands is costed: a unit's product as the tiles compute it
    (bands of ``TILE_ROWS`` channels, the slab's positions on the tiles
    :func:`convlayers.kernels.simd.band_columns` counts), its copy and :data:`UNIT_MACS`; the units
    handed out in order to the least-loaded thread, the cheapest most-loaded thread wins (ties:
    fewer units). A batch-1 5x5 stride-2 layer 461->91 on 22x22 maps ran whole-map slabs in
    two blocks of channels (144 positions, 0.7% computed and dropped) at 1.4x the speed of
    slabs of 9 rows (117 positions on 144: 23%) in two blocks; on 50 random batch-1/2 layers
    of the implicit GEMM 0.89x the time of shortening the slabs first (geo-mean; 0.56-0.8x
    where the slabs' rows had wasted vector lanes, none slower beyond noise)."""
    import heapq

    from convlayers.kernels.simd import TILE_ROWS, VECTOR_BYTES, band_columns

    images = g.n * g.groups
    if images * -(-g.ho // rows) >= BALANCED_UNITS * threads or threads == 1:
        return rows, g.c_out_g
    lanes = VECTOR_BYTES // g.itemsize
    depth = g.c_in_g * g.kh * g.kw

    def cost(r: int, b: int) -> float:
        wide, one = band_columns(r * row_length, lanes)
        columns = wide + ONE_VECTOR_COST * one
        return (-(-b // TILE_ROWS) * TILE_ROWS * columns * depth + copy_row * (r + halo)
                + UNIT_MACS)

    best: tuple[float, int, int, int] | None = None
    for row_parts in range(1, 9):
        r = min(rows, -(-g.ho // row_parts))
        for block_parts in range(1, 9):
            per = -(-g.c_out_g // block_parts)
            b = min(g.c_out_g, max(TILE_ROWS, -(-per // TILE_ROWS) * TILE_ROWS))
            slabs = [min(r, g.ho - i) for i in range(0, g.ho, r)]
            blocks = [min(b, g.c_out_g - j) for j in range(0, g.c_out_g, b)]
            loads = [0.0] * threads
            for _ in range(images):
                for rr in slabs:
                    for bb in blocks:
                        heapq.heapreplace(loads, loads[0] + cost(rr, bb))
            key = (max(loads), images * len(slabs) * len(blocks), r, b)
            if best is None or key[:2] < best[:2]:
                best = key
    assert best is not None
    return best[2], best[3]


def _bias_arg(bias: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """The bias as the kernels take it: an empty array when there is none."""
    return np.empty(0, dtype=dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
