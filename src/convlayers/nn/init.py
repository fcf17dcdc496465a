"""Parameter initialisers with ``torch.nn.init``'s names and formulas, and explicit randomness.

Every random initialiser takes ``rng`` (a ``numpy.random.Generator``, an int seed or None),
never a hidden global, and fills the tensor in place. Fans follow PyTorch: for a weight of
shape ``(out, in, *kernel)``, ``fan_in = in * prod(kernel)`` and ``fan_out = out * prod(kernel)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from convlayers._validate import one_of
from convlayers.autograd import Tensor
from convlayers.functional.stochastic import Rng, as_generator

__all__ = [
    "calculate_gain", "fan_in_and_fan_out", "kaiming_normal_", "kaiming_uniform_", "normal_",
    "ones_", "uniform_", "zeros_",
]


def _array(t: Any) -> np.ndarray:
    return t.data if isinstance(t, Tensor) else t


def fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shape, as PyTorch computes them.

    >>> fan_in_and_fan_out((64, 3, 3, 3))
    (27, 576)
    """
    if len(shape) < 2:
        raise ValueError(f"fans need a weight with at least 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """Recommended gain: 1 for linear, sqrt(2) for relu, sqrt(2/(1+a^2)) for leaky_relu.

    >>> round(calculate_gain("leaky_relu", math.sqrt(5)) ** 2, 6)
    0.333333
    """
    one_of(nonlinearity, ("linear", "conv2d", "sigmoid", "relu", "leaky_relu"), "nonlinearity")
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope**2))
    return 1.0


def _std(t: Any, a: float, mode: str, nonlinearity: str) -> float:
    one_of(mode, ("fan_in", "fan_out"), "mode")
    fan_in, fan_out = fan_in_and_fan_out(_array(t).shape)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def uniform_(t: Any, a: float = 0.0, b: float = 1.0, rng: Rng = None) -> Any:
    """Fill with U(a, b)."""
    arr = _array(t)
    arr[...] = as_generator(rng).uniform(a, b, arr.shape)
    return t


def normal_(t: Any, mean: float = 0.0, std: float = 1.0, rng: Rng = None) -> Any:
    """Fill with N(mean, std^2)."""
    arr = _array(t)
    arr[...] = as_generator(rng).normal(mean, std, arr.shape)
    return t


def kaiming_uniform_(t: Any, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", rng: Rng = None) -> Any:
    """Fill with U(-bound, bound), ``bound = gain * sqrt(3 / fan)``.

    With ``a=sqrt(5)`` (what PyTorch's Conv2d and Linear use) the bound is ``1/sqrt(fan_in)``:

    >>> w = kaiming_uniform_(np.zeros((8, 4, 3, 3)), a=math.sqrt(5), rng=0)
    >>> bool(np.abs(w).max() <= 1 / 6)
    True
    """
    bound = math.sqrt(3.0) * _std(t, a, mode, nonlinearity)
    return uniform_(t, -bound, bound, rng)


def kaiming_normal_(t: Any, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", rng: Rng = None) -> Any:
    """Fill with N(0, std^2), ``std = gain / sqrt(fan)`` (He initialisation)."""
    return normal_(t, 0.0, _std(t, a, mode, nonlinearity), rng)


def zeros_(t: Any) -> Any:
    """Fill with 0."""
    _array(t)[...] = 0
    return t


def ones_(t: Any) -> Any:
    """Fill with 1."""
    _array(t)[...] = 1
    return t
