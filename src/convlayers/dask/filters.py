"""``convolve2d``, ``correlate2d`` and ``apply_filter`` on dask arrays, chunk by chunk.

The result equals :mod:`convlayers.filters` on the whole image, for every ``mode`` and
``boundary``, whatever the chunking. How:

1. Every mode is the *valid* cross-correlation of the image padded by ``(before, after)`` rows
   and columns (SciPy's origin, even kernels included: the two sides differ by one). The padding
   is built lazily: for ``"wrap"``/``"symm"`` it is the image's own rows (periodic, or mirrored
   with the edge repeated, as often as the kernel needs), taken with ``da.take``; for ``"fill"``
   it is a placeholder that each block strips again (see 3).
2. ``map_overlap`` with an *asymmetric* halo ``(before, k - 1 - before)`` per axis
   (``boundary="none"``): each output chunk lines up with an input chunk, so in "same" mode the
   output has the input's chunks. Chunks shorter than the halo are merged with a neighbour first
   (``map_overlap`` fails on them, dask #6597).
3. Each block runs the in-memory function, so every output pixel goes through the same path
   (separable, direct or FFT) and, on the direct and separable paths, the same arithmetic in the
   same order: the results are bit-identical. A block touching the image's edge under ``"fill"``
   drops its placeholder rows and asks the in-memory function for its "full" output with the
   same ``fillvalue``, so the fill taps are summed exactly as in memory. Kernels large enough
   for the FFT path (see :data:`convlayers.filters.engine.FFT_MIN_AREA`) agree to float
   rounding only, since the FFT of a block is not the FFT of the image.

Examples
--------
>>> import numpy as np, dask.array as da
>>> from convlayers import filters
>>> img = np.random.default_rng(0).random((64, 48))
>>> x = da.from_array(img, chunks=(20, 17))
>>> out = convolve2d(x, filters.FILTERS["sobel_x"], mode="same", boundary="symm")
>>> out.chunks
((20, 20, 20, 4), (17, 17, 14))
>>> bool((out.compute() == filters.convolve2d(img, filters.FILTERS["sobel_x"], "same", "symm")).all())
True
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from numpy.typing import ArrayLike

from convlayers import filters as _mem
from convlayers._validate import one_of
from convlayers.dask._chunks import as_dask, merge_small

__all__ = ["apply_filter", "convolve2d", "correlate2d"]

MODES = ("full", "same", "valid")
BOUNDARIES = ("fill", "wrap", "symm")


@dataclass(frozen=True)
class _AxisPlan:
    """How one spatial axis is padded, chunked and overlapped."""

    before: int  # padding rows before the image (SciPy's origin)
    after: int
    chunks: tuple[int, ...]  # chunks of the padded axis
    out_chunks: tuple[int, ...]
    depth: tuple[int, int]  # halo (before, after) taken from the neighbours
    strip: tuple[tuple[int, int], ...]  # per block: placeholder fill rows (start, end)


def _mode_pads(k: int, mode: str, flip: bool) -> tuple[int, int]:
    """SciPy's padding for one axis: "same" centres even kernels differently per operation."""
    if mode == "full":
        return k - 1, k - 1
    if mode == "valid":
        return 0, 0
    return (k // 2, (k - 1) // 2) if flip else ((k - 1) // 2, k // 2)


def _plan(chunks: tuple[int, ...], n: int, k: int, before: int, after: int) -> _AxisPlan:
    base = list(chunks)
    base[0] += before
    base[-1] += after
    db, da_ = before, k - 1 - before
    padded = merge_small(base, max(db, da_, 1), last_minimum=da_ + 1)
    last = len(padded) - 1
    out, strip = [], []
    start = 0
    for j, length in enumerate(padded):
        out.append(length - (db if j == 0 else 0) - (da_ if j == last else 0))
        lo = start - (db if j > 0 else 0)
        hi = start + length + (da_ if j < last else 0)
        strip.append((max(0, before - lo), max(0, hi - (before + n))))
        start += length
    depth = (db, da_) if len(padded) > 1 else (0, 0)
    return _AxisPlan(before, after, tuple(padded), tuple(out), depth, tuple(strip))


def _source_index(positions: np.ndarray, n: int, boundary: str) -> np.ndarray:
    """Image index that an out-of-range position copies (SciPy: periodic, period n or 2n)."""
    if boundary == "wrap":
        return positions % n
    t = positions % (2 * n)
    return np.where(t < n, t, 2 * n - 1 - t)


def _pad_axis(x: da.Array, axis: int, before: int, after: int, boundary: str) -> da.Array:
    n = x.shape[axis]
    parts: list[da.Array | None] = []
    for count, positions in ((before, np.arange(-before, 0)), (after, np.arange(n, n + after))):
        if not count:
            parts.append(None)
        elif boundary == "fill":  # placeholder, stripped again in each block
            chunks = list(x.chunks)
            chunks[axis] = (count,)
            shape = list(x.shape)
            shape[axis] = count
            parts.append(da.zeros(tuple(shape), dtype=x.dtype, chunks=tuple(chunks)))
        else:
            parts.append(da.take(x, _source_index(positions, n, boundary), axis=axis))
    pieces = [p for p in (parts[0], x, parts[1]) if p is not None]
    return da.concatenate(pieces, axis=axis) if len(pieces) > 1 else x


def _check_fill(fillvalue: Any, dtype: np.dtype) -> None:
    if isinstance(fillvalue, np.ndarray) and fillvalue.size == 1:
        fillvalue = fillvalue.reshape(()).item()
    if not isinstance(fillvalue, numbers.Complex):
        raise TypeError(f"fillvalue must be a number, got {fillvalue!r}")
    if dtype.kind != "c" and complex(fillvalue).imag != 0:
        raise ValueError(f"fillvalue must be real for a real image, got {fillvalue!r}")


def _to_uint8(block: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(block), 0, 255).astype(np.uint8)


def _planes(fn: Any, block: np.ndarray) -> np.ndarray:
    if block.ndim == 2:
        return fn(block)
    return np.stack([fn(block[:, :, c]) for c in range(block.shape[2])], axis=-1)


def _run_block(
    block: np.ndarray, kernel: np.ndarray, flip: bool, fillvalue: Any, fill: bool,
    strips: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]],
    block_id: tuple[int, ...] | None = None,
) -> np.ndarray:
    fn = _mem.convolve2d if flip else _mem.correlate2d
    kh, kw = kernel.shape
    assert block_id is not None  # supplied by dask
    (r0, r1), (c0, c1) = strips[0][block_id[0]], strips[1][block_id[1]]
    rows, cols = block.shape[0] - kh + 1, block.shape[1] - kw + 1
    if fill and (r0 or r1 or c0 or c1):
        top, left = kh - 1 - r0, kw - 1 - c0

        def one(plane: np.ndarray) -> np.ndarray:
            core = plane[r0 : plane.shape[0] - r1, c0 : plane.shape[1] - c1]
            full = fn(core, kernel, "full", "fill", fillvalue)
            return full[top : top + rows, left : left + cols]

        return _planes(one, block)
    return _planes(lambda plane: fn(plane, kernel, "valid"), block)


def _filter(
    image: Any, kernel: Any, mode: str, boundary: str, fillvalue: Any, flip: bool,
    chunks: int | None, real_only: bool = False,
) -> da.Array:
    x = as_dask(image, "image", chunks, axes=(0, 1))
    if x.ndim not in (2, 3):
        raise ValueError(f"image must have 2 dimensions (H, W) or 3 (H, W, C), got shape {x.shape}")
    if x.dtype.kind not in ("biuf" if real_only else "biufc"):
        raise TypeError(f"image must be a numeric array, got dtype {x.dtype}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"image must not be empty, got shape {x.shape}")
    k = _mem.get_filter(kernel)
    if real_only and k.dtype.kind == "c":
        raise TypeError("filter must be a real kernel, got a complex one")
    one_of(mode, MODES, "mode")
    one_of(boundary, BOUNDARIES, "boundary")
    out_dtype = _mem.result_dtype(x.dtype, k.dtype)
    _check_fill(fillvalue, out_dtype)
    (h, w), (kh, kw) = x.shape[:2], k.shape
    if mode == "valid" and not (h >= kh and w >= kw):
        if not (kh >= h and kw >= w):
            raise ValueError(
                "for mode='valid', image or kernel must be at least as large as the other in "
                f"every dimension, got image shape {x.shape[:2]} and kernel shape {k.shape}"
            )
        # SciPy swaps image and kernel: the output is tiny, compute it in one block
        fn = _mem.convolve2d if flip else _mem.correlate2d
        whole = x.rechunk({0: -1, 1: -1})
        shape = (kh - h + 1, kw - w + 1, *x.shape[2:])
        return whole.map_blocks(
            lambda b: _planes(lambda p: fn(p, k, mode, boundary, fillvalue), b),
            chunks=tuple((s,) for s in shape[:2]) + whole.chunks[2:], dtype=out_dtype,
        )
    plans = []
    for axis, (n, ks) in enumerate(((h, kh), (w, kw))):
        before, after = _mode_pads(ks, mode, flip)
        plans.append(_plan(x.chunks[axis], n, ks, before, after))
    padded = x
    for axis, plan in enumerate(plans):
        padded = _pad_axis(padded, axis, plan.before, plan.after, boundary)
    padded = padded.rechunk({0: plans[0].chunks, 1: plans[1].chunks})
    depth = {0: plans[0].depth, 1: plans[1].depth}
    if x.ndim == 3:
        depth[2] = (0, 0)
    return da.map_overlap(
        _run_block, padded, depth=depth, boundary="none", trim=False, allow_rechunk=False,
        chunks=(plans[0].out_chunks, plans[1].out_chunks, *padded.chunks[2:]), dtype=out_dtype,
        kernel=k, flip=flip, fillvalue=fillvalue, fill=boundary == "fill",
        strips=(plans[0].strip, plans[1].strip), meta=np.empty((0,) * x.ndim, dtype=out_dtype),
    )


_PARAMS = """
    Parameters
    ----------
    image : dask.array.Array or array_like, shape (H, W) or (H, W, C)
        Any numeric dtype (the dtype rule of :func:`convlayers.filters.result_dtype`). A color
        image is filtered channel by channel. A NumPy array is chunked ``chunks`` square
        (``"auto"`` when None).
    kernel : array_like, 2-D
        Any size; a name from :data:`convlayers.filters.FILTERS` is accepted too.
    mode : {"full", "valid", "same"}, default "full"
    boundary : {"fill", "wrap", "symm"}, default "fill"
    fillvalue : scalar, default 0
        As in the in-memory function.
    chunks : int, optional
        Rechunk the spatial axes to this side first (the channel axis keeps its chunks).

    Returns
    -------
    dask.array.Array
        Lazy; ``.compute()`` gives exactly the in-memory result. In "same" mode the chunks are
        the input's (after any merging of chunks shorter than the kernel's halo).
"""


def convolve2d(
    image: Any, kernel: Any, mode: str = "full", boundary: str = "fill", fillvalue: Any = 0,
    *, chunks: int | None = None,
) -> da.Array:
    """:func:`convlayers.filters.convolve2d` (kernel flipped, as SciPy) on a dask array.
    {params}
    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = da.from_array(np.arange(36.0).reshape(6, 6), chunks=3)
    >>> convolve2d(x, [[1, 0], [0, -1]], mode="valid").compute()[0]
    array([7., 7., 7., 7., 7.])
    """
    return _filter(image, kernel, mode, boundary, fillvalue, True, chunks)


def correlate2d(
    image: Any, kernel: Any, mode: str = "full", boundary: str = "fill", fillvalue: Any = 0,
    *, chunks: int | None = None,
) -> da.Array:
    """:func:`convlayers.filters.correlate2d` (kernel not flipped) on a dask array.
    {params}
    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = da.from_array(np.arange(36.0).reshape(6, 6), chunks=3)
    >>> correlate2d(x, [[1, 0], [0, -1]], mode="valid").compute()[0]
    array([-7., -7., -7., -7., -7.])
    """
    return _filter(image, kernel, mode, boundary, fillvalue, False, chunks)


convolve2d.__doc__ = (convolve2d.__doc__ or "").replace("{params}", _PARAMS)
correlate2d.__doc__ = (correlate2d.__doc__ or "").replace("{params}", _PARAMS)


def apply_filter(
    image: Any,
    filter: str | ArrayLike,
    *,
    mode: str = "same",
    boundary: str = "symm",
    fillvalue: float = 0,
    output: str = "float",
    chunks: int | None = None,
) -> da.Array:
    """:func:`convlayers.filters.apply_filter` on a dask array: a photo, gray or color, by chunks.

    Parameters
    ----------
    image : dask.array.Array or array_like, shape (H, W) or (H, W, C)
        uint8 or float (real).
    filter : str or array_like
        A name from :data:`convlayers.filters.FILTERS` or a real 2-D kernel.
    mode, boundary, fillvalue, output
        As in the in-memory :func:`convlayers.filters.apply_filter` (defaults "same", "symm",
        0, "float"); ``output="uint8"`` rounds and clips to [0, 255].
    chunks : int, optional
        Rechunk the spatial axes to this side first.

    Returns
    -------
    dask.array.Array

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> img = np.zeros((4, 6), dtype=np.uint8); img[:, 3:] = 200
    >>> apply_filter(da.from_array(img, chunks=2), "blur", output="uint8").compute()[0]
    array([  0,   0,  67, 133, 200, 200], dtype=uint8)
    """
    one_of(output, ("float", "uint8"), "output")
    result = _filter(image, filter, mode, boundary, fillvalue, True, chunks, real_only=True)
    if output == "uint8":
        return da.map_blocks(_to_uint8, result, dtype=np.uint8)
    return result
