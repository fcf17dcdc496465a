"""Chunk arithmetic shared by the Dask ops: input coercion, merging small chunks, stride alignment.

Pure bookkeeping on tuples of chunk lengths; the only Dask call is the coercion of an input.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

__all__ = ["aligned_chunks", "as_dask", "merge_small"]


def as_dask(x: Any, name: str, chunks: int | None = None, axes: Sequence[int] = ()) -> da.Array:
    """``x`` as a dask array; NumPy input (and, when ``chunks`` is given, dask input too) is
    chunked ``chunks`` long along ``axes`` and whole along the other axes.

    ``chunks`` must be a positive int or None (keep a dask array's chunks; "auto" for NumPy).
    """
    if chunks is not None:
        if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)):
            raise TypeError(f"chunks must be a positive int or None, got {chunks!r}")
        if chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {chunks}")
    if isinstance(x, da.Array):
        arr = x
        axes = [ax % arr.ndim for ax in axes] if arr.ndim else []
    else:
        a = np.asarray(x)
        if a.dtype == object:
            raise TypeError(f"{name} must be a numeric array or a dask array, got {type(x).__name__}")
        spec: dict[int, Any] = {ax % a.ndim: (chunks or "auto") for ax in axes} if a.ndim else {}
        arr = da.from_array(a, chunks={ax: spec.get(ax, -1) for ax in range(a.ndim)})
        return arr
    if chunks is not None:
        arr = arr.rechunk({ax: int(chunks) for ax in axes})
    return arr


def merge_small(chunks: Sequence[int], minimum: int, last_minimum: int = 1) -> tuple[int, ...]:
    """Merge neighbouring chunks until each is at least ``minimum`` long and the last at least
    ``last_minimum`` (a single chunk is kept whatever its length).

    >>> merge_small((5, 1, 1, 5, 3), 3)
    (5, 7, 3)
    >>> merge_small((5, 1, 1, 5, 3), 3, last_minimum=4)
    (5, 10)
    """
    out: list[int] = []
    acc = 0
    for c in chunks:
        acc += int(c)
        if acc >= minimum:
            out.append(acc)
            acc = 0
    if acc:
        if out:
            out[-1] += acc
        else:
            out.append(acc)
    while len(out) > 1 and (out[-1] < last_minimum or out[-1] < minimum):
        tail = out.pop()
        out[-1] += tail
    return tuple(out)


def aligned_chunks(
    chunks: Sequence[int], total: int, stride: int, minimum: int, last_minimum: int
) -> tuple[int, ...]:
    """Chunks covering ``total`` elements whose boundaries are multiples of ``stride``.

    The boundaries of ``chunks`` (which may cover a different length, e.g. before padding) are
    rounded down to multiples of ``stride``; then small chunks are merged (:func:`merge_small`).

    >>> aligned_chunks((4, 4, 4), 12, 3, 1, 1)
    (3, 3, 6)
    """
    bounds = {0, total}
    pos = 0
    for c in chunks[:-1]:
        pos += int(c)
        b = (pos // stride) * stride
        if 0 < b < total:
            bounds.add(b)
    edges = sorted(bounds)
    lengths = [b - a for a, b in itertools.pairwise(edges)]
    # merge in units of stride so interior boundaries stay aligned
    merged: list[int] = []
    acc = 0
    for c in lengths:
        acc += c
        if acc >= minimum:
            merged.append(acc)
            acc = 0
    if acc:
        if merged:
            merged[-1] += acc
        else:
            merged.append(acc)
    while len(merged) > 1 and (merged[-1] < last_minimum or merged[-1] < minimum):
        tail = merged.pop()
        merged[-1] += tail
    return tuple(merged)
