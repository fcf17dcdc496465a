"""Padding layers: ``ZeroPad2d`` (fixed) and ``SamePad2d`` (TensorFlow's size-dependent 'same')."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convlayers import functional as F
from convlayers._validate import as_int
from convlayers.nn.module import Module
from convlayers.shapes import tf_same_padding  # shapes owns the arithmetic; re-exported here

__all__ = ["SamePad2d", "ZeroPad2d", "tf_same_padding"]


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


class SamePad2d(Module):
    """Zero padding that makes the next ``kernel_size``/``stride`` conv TensorFlow-'same'.

    The padding is worked out from each input's height and width (see
    :func:`tf_same_padding`), so models ported from TensorFlow (EfficientNet-Lite) give the
    same numbers at any input size. Put it before a ``Conv2d`` with ``padding=0``.

    >>> import numpy as np
    >>> SamePad2d(3, 2)(np.ones((1, 1, 4, 4))).shape
    (1, 1, 5, 5)
    """

    def __init__(self, kernel_size: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.kernel_size = as_int(kernel_size, "kernel_size")
        self.stride = as_int(stride, "stride")
        self.dilation = as_int(dilation, "dilation")

    def forward(self, x: Any) -> Any:
        height, width = x.shape[-2:]
        top, bottom = tf_same_padding(height, self.kernel_size, self.stride, self.dilation)
        left, right = tf_same_padding(width, self.kernel_size, self.stride, self.dilation)
        if not (top or bottom or left or right):
            return x
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
