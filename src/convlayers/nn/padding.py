"""Padding layers; ``ZeroPad2d`` gives TensorFlow-style asymmetric 'same' padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convlayers import functional as F
from convlayers._validate import as_int
from convlayers.nn.module import Module

__all__ = ["ZeroPad2d"]


class ZeroPad2d(Module):
    """Pad ``(N, C, H, W)`` with zeros: an int for all sides, or ``(left, right, top, bottom)``.

    TensorFlow's 'same' padding of a strided convolution puts the odd extra pixel after
    (right/bottom); ``ZeroPad2d((0, 1, 0, 1))`` then a convolution with ``padding=0`` does that.

    >>> import numpy as np
    >>> ZeroPad2d((0, 1, 0, 1))(np.ones((1, 1, 2, 2)))[0, 0]
    array([[1., 1., 0.],
           [1., 1., 0.],
           [0., 0., 0.]])
    """

    def __init__(self, padding: int | Sequence[int]) -> None:
        super().__init__()
        if isinstance(padding, Sequence):
            if len(padding) != 4:
                raise ValueError(f"padding must be an int or (left, right, top, bottom), got {padding!r}")
            self.padding = tuple(as_int(p, "padding") for p in padding)
        else:
            self.padding = (as_int(padding, "padding"),) * 4

    def forward(self, x: Any) -> Any:
        return F.pad(x, self.padding)

    def extra_repr(self) -> str:
        return f"{self.padding}"
