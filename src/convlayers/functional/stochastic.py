"""Dropout with explicit randomness: the generator is an argument, never a hidden global."""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers._validate import float_array

__all__ = ["Rng", "as_generator", "dropout", "dropout_backward", "dropout_mask"]

Rng = np.random.Generator | int | None


def as_generator(rng: Rng, name: str = "rng") -> np.random.Generator:
    """A ``numpy.random.Generator`` from a generator (used as is), a seed, or None (fresh).

    >>> bool(as_generator(0).integers(10) == as_generator(0).integers(10))
    True
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"{name} must be a numpy.random.Generator, an int seed or None, got {rng!r}")


def _probability(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0 <= p <= 1:
        raise ValueError(f"dropout probability p must be a number in [0, 1], got {p!r}")
    return float(p)


def dropout_mask(shape: tuple[int, ...], p: float, rng: Rng = None, dtype: Any = np.float32) -> np.ndarray:
    """The multiplier dropout applies: 0 with probability ``p``, else ``1/(1-p)``.

    >>> dropout_mask((4,), 0.5, rng=0)
    array([2., 0., 0., 0.], dtype=float32)
    """
    p = _probability(p)
    if p == 1:
        return np.zeros(shape, dtype)
    keep = as_generator(rng).random(shape) >= p
    return keep.astype(dtype) * np.asarray(1 / (1 - p), dtype)


def dropout(input: Any, p: float = 0.5, training: bool = True, rng: Rng = None) -> np.ndarray:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)``.

    Outside training (or with ``p=0``) the input is returned unchanged. The same ``rng`` seed
    gives the same mask, which :func:`dropout_mask` rebuilds for the backward.

    >>> dropout(np.ones(4), 0.5, rng=0)
    array([2., 0., 0., 0.])
    >>> dropout(np.ones(2), 0.5, training=False)
    array([1., 1.])
    """
    x = float_array(input, "input")
    p = _probability(p)
    if not training or p == 0:
        return x
    return x * dropout_mask(x.shape, p, rng, x.dtype)


def dropout_backward(grad_output: Any, mask: Any) -> np.ndarray:
    """Gradient of :func:`dropout` given the mask it used: ``grad_output * mask``.

    >>> dropout_backward(np.ones(4), dropout_mask((4,), 0.5, rng=0))
    array([2., 0., 0., 0.])
    """
    return np.asarray(grad_output) * np.asarray(mask)
