"""Helpers shared by the functional ops: batching, argument normalisation, window offsets."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from convlayers import config
from convlayers._validate import check_ndim, float_array

Pairs = tuple[tuple[int, int], ...]


def batched(x: Any, n_spatial: int, name: str = "input") -> tuple[np.ndarray, bool]:
    """Return ``(x, was_unbatched)`` with ``x`` as a float array of ``n_spatial + 2`` dims.

    Unbatched input ``(C, *spatial)`` gains a batch axis of 1, as in PyTorch.
    """
    arr = float_array(x, name)
    full = n_spatial + 2
    if arr.ndim != full:
        if arr.ndim == full - 1:
            return arr[None], True
        # the layout's text only for the error (on every call it was a tenth of a small pool's)
        layout = "N, C, " + ", ".join("DHW"[3 - n_spatial :])
        check_ndim(arr, (full - 1, full), name, f"batched ({layout}) or unbatched without N")
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
    """Pad the trailing ``len(pairs)`` axes of ``x`` with a constant, no copy when all zero.

    A new array: ``x`` copied into its middle and ``value`` written around it, by NumPy
    slices, or on every thread for two trailing axes of a float array of at least
    ``config.engine.parallel_pad_elements`` elements (:mod:`convlayers.kernels.pad`).
    ``np.pad`` took 31 us on 2x8x10x10 (its generic modes' work, the slices 4) and 1.16 ms on
    9x111x43x43 (the kernel 0.39): a transposed convolution's weight gradient pads its output
    gradient on every call. Negative pairs (a crop) go to ``np.pad``, which refuses them.

    >>> pad_pairs(np.ones((1, 2, 2)), ((1, 0), (0, 1)), value=-1.0)[0]
    array([[-1., -1., -1.],
           [ 1.,  1., -1.],
           [ 1.,  1., -1.]])
    """
    if not any(a or b for a, b in pairs):
        return x
    k = len(pairs)
    lead = x.shape[: x.ndim - k]
    if min(min(pair) for pair in pairs) < 0:
        return np.pad(x, ((0, 0),) * len(lead) + tuple(pairs), mode="constant",
                      constant_values=value)
    inner = x.shape[x.ndim - k:]
    out = np.empty((*lead, *(s + a + b for s, (a, b) in zip(inner, pairs, strict=True))),
                   dtype=x.dtype)
    if (k == 2 and x.dtype.char in "fd" and x.size
            and x.size >= config.engine.parallel_pad_elements):
        from convlayers.functional._compiled import kernels

        (top, _), (left, _) = pairs
        kernels().pad.pad_planes(np.ascontiguousarray(x).reshape(-1, *inner), top, left,
                                 float(value), out.reshape(-1, *out.shape[x.ndim - k:]))
        return out
    lead_all: tuple[slice, ...] = (slice(None),) * len(lead)
    out[lead_all + tuple(slice(a, a + s) for s, (a, _) in zip(inner, pairs, strict=True))] = x
    for axis, (s, (a, b)) in enumerate(zip(inner, pairs, strict=True)):
        for edge in (slice(0, a), slice(a + s, None)) if a or b else ():
            index = [slice(None)] * k
            index[axis] = edge
            out[lead_all + tuple(index)] = value
    return out


def int_or_float(value: Any, name: str) -> float:
    """A real number for fill values."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


Spec = TypeVar("Spec")


def typed_key(value: Any) -> Any:
    """``value`` as part of a cache key that tells ``1``, ``True``, ``1.0`` and ``np.int64(1)``
    apart (they are equal and hash alike), nested tuples and lists included."""
    kind = type(value)
    if kind is int or kind is str:  # most hyper-parameters: the quick answer
        return (kind, value)
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(typed_key(v) for v in value))
    return (type(value), value)


class SpecCache(Generic[Spec]):
    """Validated specs of an op, remembered per key (shapes, dtypes and :func:`typed_key` of
    each hyper-parameter): a layer called again with the same arguments skips the validation,
    which costs more than a small layer's kernel. Errors are never remembered; a key that does
    not hash (a NumPy array for ``stride``) is validated every time; at ``size`` entries the
    cache starts over. Safe to share between threads."""

    def __init__(self, size: int = 1024) -> None:
        self._specs: dict[Any, Spec] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Any, validate: Callable[[], Spec]) -> Spec:
        """The spec remembered for ``key``, or ``validate()``'s (remembered if it returns)."""
        try:
            spec = self._specs.get(key)
        except TypeError:
            return validate()
        if spec is None:
            spec = validate()
            with self._lock:
                if len(self._specs) >= self._size:
                    self._specs.clear()
                self._specs[key] = spec
        return spec
