"""The dense head and its helpers: ``Linear``, ``Flatten``, ``Dropout`` and ``Identity``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from convlayers import functional as F
from convlayers._validate import as_int
from convlayers.functional.stochastic import Rng, as_generator
from convlayers.nn import init
from convlayers.nn.module import Module, Parameter, extra_args

__all__ = ["Dropout", "Flatten", "Identity", "Linear"]


class Linear(Module):
    """``x @ weight.T + bias``, as ``torch.nn.Linear``.

    ``weight`` is ``(out_features, in_features)``; both weight and bias start as
    ``U(-1/sqrt(in_features), 1/sqrt(in_features))``, PyTorch's default.

    >>> fc = Linear(128, 10, rng=0)
    >>> fc, fc.weight.shape
    (Linear(in_features=128, out_features=10), (10, 128))
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 rng: Rng = None, dtype: Any = np.float32) -> None:
        super().__init__()
        self.in_features = as_int(in_features, "in_features")
        self.out_features = as_int(out_features, "out_features")
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        gen = as_generator(rng)
        self.weight = init.kaiming_uniform_(
            Parameter(np.empty((self.out_features, self.in_features), dtype)), a=math.sqrt(5), rng=gen)
        self.register_parameter("bias", None)
        if bias:
            bound = 1 / math.sqrt(self.in_features)
            self.bias = init.uniform_(Parameter(np.empty(self.out_features, dtype)), -bound, bound, gen)

    def forward(self, x: Any) -> Any:
        shape = np.shape(x)
        if not shape or shape[-1] != self.in_features:
            raise ValueError(f"{self!r} expected input with {self.in_features} features in its last "
                             f"axis, got input of shape {shape}")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}"
                + ("" if self.bias is not None else ", bias=False"))


class Flatten(Module):
    """Merge axes ``start_dim..end_dim`` (by default all but the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = as_int(start_dim, "start_dim"), as_int(end_dim, "end_dim")

    def forward(self, x: Any) -> Any:
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return extra_args(start_dim=(self.start_dim, 1), end_dim=(self.end_dim, -1))


class Dropout(Module):
    """Zero elements with probability ``p`` while training, scaling the rest by ``1/(1-p)``.

    The masks come from ``rng`` (a generator or a seed), so a seeded model trains reproducibly.
    ``inplace`` is accepted for compatibility and changes nothing.

    >>> d = Dropout(0.5, rng=0)
    >>> d(np.ones(4))
    array([2., 0., 0., 0.])
    >>> d.eval()(np.ones(4))
    array([1., 1., 1., 1.])
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, *, rng: Rng = None) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"dropout probability p must be in [0, 1], got {p!r}")
        self.p, self.inplace, self.rng = float(p), bool(inplace), as_generator(rng)

    def forward(self, x: Any) -> Any:
        return F.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", inplace=True" if self.inplace else "")


class Identity(Module):
    """Return the input unchanged (a placeholder where a block has no layer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        return x
