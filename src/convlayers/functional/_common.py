"""Helpers shared by the functional ops: batching, argument normalisation, window offsets."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from convlayers._validate import check_ndim, float_array

Pairs = tuple[tuple[int, int], ...]


def batched(x: Any, n_spatial: int, name: str = "input") -> tuple[np.ndarray, bool]:
    """Return ``(x, was_unbatched)`` with ``x`` as a float array of ``n_spatial + 2`` dims.

    Unbatched input ``(C, *spatial)`` gains a batch axis of 1, as in PyTorch.
    """
    arr = float_array(x, name)
    full = n_spatial + 2
    layout = "N, C, " + ", ".join("DHW"[3 - n_spatial :])
    check_ndim(arr, (full - 1, full), name, f"batched ({layout}) or unbatched without N")
    if arr.ndim == full - 1:
        return arr[None], True
    return arr, False


def unbatch(y: np.ndarray, was_unbatched: bool) -> np.ndarray:
    """Undo :func:`batched` on an output."""
    return y[0] if was_unbatched else y


def window_offsets(kernel_size: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Kernel offsets in row-major order (the order PyTorch's loops visit them)."""
    return itertools.product(*(range(k) for k in kernel_size))


def offset_slices(
    offset: Sequence[int],
    out_shape: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> tuple[slice, ...]:
    """Slices of a padded input that line up the taps at ``offset`` with every output position.

    For output position ``o`` along an axis the tap at offset ``j`` reads padded index
    ``o*stride + j*dilation``; the slice picks that index for every ``o`` at once.
    """
    return tuple(
        slice(j * d, j * d + s * (o - 1) + 1, s)
        for j, o, s, d in zip(offset, out_shape, stride, dilation, strict=True)
    )


def trailing(slices: Sequence[slice]) -> tuple[Any, ...]:
    """An index for the last ``len(slices)`` axes: ``x[trailing(s)]`` is ``x[..., *s]``."""
    return (Ellipsis, *slices)


def pad_pairs(
    x: np.ndarray, pairs: Pairs, value: float = 0.0
) -> np.ndarray:
    """Pad the trailing ``len(pairs)`` axes of ``x`` with a constant, no copy when all zero."""
    if not any(a or b for a, b in pairs):
        return x
    lead = ((0, 0),) * (x.ndim - len(pairs))
    return np.pad(x, lead + tuple(pairs), mode="constant", constant_values=value)


def int_or_float(value: Any, name: str) -> float:
    """A real number for fill values."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)
