"""Pooling layers: thin modules over the functional pools, PyTorch's arguments and defaults.

``padding`` may also be given per side, ``((top, bottom), (left, right))``, as ONNX models
need; average pools also take ``dilation``.
"""

from __future__ import annotations

from typing import Any

from convlayers import functional as F
from convlayers._validate import IntOrTuple
from convlayers.functional.adaptive import OutputSize
from convlayers.nn.module import Module, extra_args

__all__ = [
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
    "AvgPool1d", "AvgPool2d", "MaxPool1d", "MaxPool2d",
]


class _MaxPool(Module):
    _fn: Any

    def __init__(self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, dilation: IntOrTuple = 1, return_indices: bool = False,
                 ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, kernel_size if stride is None else stride
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, x: Any) -> Any:
        return type(self)._fn(x, self.kernel_size, self.stride, self.padding, self.dilation,
                              self.ceil_mode, self.return_indices)

    def extra_repr(self) -> str:
        return extra_args(kernel_size=(self.kernel_size, None), stride=(self.stride, self.kernel_size),
                          padding=(self.padding, 0), dilation=(self.dilation, 1),
                          return_indices=(self.return_indices, False),
                          ceil_mode=(self.ceil_mode, False))


class MaxPool1d(_MaxPool):
    """1-D max pooling, as ``torch.nn.MaxPool1d``."""

    _fn = staticmethod(F.max_pool1d)


class MaxPool2d(_MaxPool):
    """2-D max pooling, as ``torch.nn.MaxPool2d`` (``stride`` defaults to ``kernel_size``).

    >>> MaxPool2d(2)
    MaxPool2d(kernel_size=2)
    >>> import numpy as np
    >>> MaxPool2d(2)(np.arange(16.0).reshape(1, 1, 4, 4))
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    """

    _fn = staticmethod(F.max_pool2d)


class _AvgPool(Module):
    """Average pooling; beyond PyTorch, ``dilation`` and per-side ``padding`` as ONNX has them."""

    _fn: Any

    def __init__(self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None,
                 dilation: IntOrTuple = 1) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, kernel_size if stride is None else stride
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override
        self.dilation = dilation

    def forward(self, x: Any) -> Any:
        extra: dict[str, Any] = {} if self.divisor_override is None else {
            "divisor_override": self.divisor_override}
        if self.dilation != 1:
            extra["dilation"] = self.dilation
        return type(self)._fn(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                              self.count_include_pad, **extra)

    def extra_repr(self) -> str:
        return extra_args(kernel_size=(self.kernel_size, None), stride=(self.stride, self.kernel_size),
                          padding=(self.padding, 0), ceil_mode=(self.ceil_mode, False),
                          count_include_pad=(self.count_include_pad, True),
                          divisor_override=(self.divisor_override, None),
                          dilation=(self.dilation, 1))


class AvgPool1d(_AvgPool):
    """1-D average pooling, as ``torch.nn.AvgPool1d`` (no ``divisor_override``)."""

    _fn = staticmethod(F.avg_pool1d)


class AvgPool2d(_AvgPool):
    """2-D average pooling, as ``torch.nn.AvgPool2d``.

    >>> AvgPool2d(2, stride=1)
    AvgPool2d(kernel_size=2, stride=1)
    """

    _fn = staticmethod(F.avg_pool2d)


class _Adaptive(Module):
    _fn: Any

    def __init__(self, output_size: OutputSize, return_indices: bool = False) -> None:
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, x: Any) -> Any:
        if self.return_indices:
            return type(self)._fn(x, self.output_size, True)
        return type(self)._fn(x, self.output_size)

    def extra_repr(self) -> str:
        return extra_args(output_size=(self.output_size, None),
                          return_indices=(self.return_indices, False))


class AdaptiveAvgPool1d(_Adaptive):
    """Adaptive average pooling over ``(N, C, L)``."""

    _fn = staticmethod(F.adaptive_avg_pool1d)

    def __init__(self, output_size: OutputSize) -> None:
        super().__init__(output_size)


class AdaptiveAvgPool2d(_Adaptive):
    """Adaptive average pooling, as ``torch.nn.AdaptiveAvgPool2d``; ``1`` is global pooling.

    >>> import numpy as np
    >>> AdaptiveAvgPool2d(1)(np.ones((2, 8, 5, 5))).shape
    (2, 8, 1, 1)
    """

    _fn = staticmethod(F.adaptive_avg_pool2d)

    def __init__(self, output_size: OutputSize) -> None:
        super().__init__(output_size)


class AdaptiveMaxPool1d(_Adaptive):
    """Adaptive max pooling over ``(N, C, L)``."""

    _fn = staticmethod(F.adaptive_max_pool1d)


class AdaptiveMaxPool2d(_Adaptive):
    """Adaptive max pooling over ``(N, C, H, W)``, as ``torch.nn.AdaptiveMaxPool2d``."""

    _fn = staticmethod(F.adaptive_max_pool2d)
