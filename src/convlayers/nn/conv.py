"""Convolution layers: one general ``_ConvNd``; Conv1d/2d/3d and ConvTranspose1d/2d/3d fix the
number of spatial axes. Weights are ``(C_out, C_in/groups, *kernel)`` (transposed:
``(C_in, C_out/groups, *kernel)``) and start as PyTorch's do: ``kaiming_uniform(a=sqrt(5))``,
that is ``U(-b, b)`` with ``b = 1/sqrt(fan_in)``, and the bias ``U(-b, b)`` with the same ``b``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from convlayers import functional as F
from convlayers._validate import IntOrTuple, as_int, nonnegative_tuple, one_of, positive_tuple
from convlayers.functional.stochastic import Rng, as_generator
from convlayers.nn import init
from convlayers.nn.module import Module, Parameter, extra_args

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]


def check_channels(layer: Module, x: Any, channels: int, n_spatial: int) -> None:
    """Raise a ValueError naming ``layer`` when ``x`` has the wrong number of channels."""
    shape = np.shape(x)
    if len(shape) in (n_spatial + 1, n_spatial + 2) and shape[-n_spatial - 1] != channels:
        raise ValueError(f"{layer!r} expected input with {channels} channels, got input of "
                         f"shape {shape} ({shape[-n_spatial - 1]} channels)")


class _ConvNd(Module):
    n: ClassVar[int]
    transposed: ClassVar[bool] = False
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str
    output_padding: tuple[int, ...]

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: IntOrTuple,
        stride: IntOrTuple = 1, padding: IntOrTuple | str = 0, dilation: IntOrTuple = 1,
        groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
        output_padding: IntOrTuple = 0, *, rng: Rng = None, dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        n = self.n
        self.in_channels, self.out_channels = (as_int(in_channels, "in_channels"),
                                               as_int(out_channels, "out_channels"))
        self.groups = as_int(groups, "groups")
        if self.groups < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"in_channels, out_channels and groups must be >= 1, got "
                             f"{in_channels}, {out_channels}, {groups}")
        for name, c in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if c % self.groups:
                raise ValueError(f"{name}={c} must be divisible by groups={self.groups}")
        self.kernel_size = positive_tuple(kernel_size, n, "kernel_size")
        self.stride = positive_tuple(stride, n, "stride")
        self.dilation = positive_tuple(dilation, n, "dilation")
        self.padding = (one_of(padding, ("same", "valid"), "padding") if isinstance(padding, str)
                        else nonnegative_tuple(padding, n, "padding"))
        self.padding_mode = one_of(padding_mode, ("zeros",) if self.transposed else F.PADDING_MODES,
                                   "padding_mode")
        self.output_padding = nonnegative_tuple(output_padding, n, "output_padding")
        shape = ((self.in_channels, self.out_channels // self.groups) if self.transposed
                 else (self.out_channels, self.in_channels // self.groups)) + self.kernel_size
        gen = as_generator(rng)
        self.weight = Parameter(np.empty(shape, dtype))
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), rng=gen)
        self.register_parameter("bias", None)
        if bias:
            bound = 1 / math.sqrt(init.fan_in_and_fan_out(shape)[0])
            self.bias = init.uniform_(Parameter(np.empty(self.out_channels, dtype)), -bound, bound, gen)

    def extra_repr(self) -> str:
        n = self.n
        return extra_args(
            self.in_channels, self.out_channels, kernel_size=(self.kernel_size, None),
            stride=(self.stride, None), padding=(self.padding, (0,) * n),
            dilation=(self.dilation, (1,) * n), output_padding=(self.output_padding, (0,) * n),
            groups=(self.groups, 1), bias=(self.bias is not None, True),
            padding_mode=(self.padding_mode, "zeros"))


class _Conv(_ConvNd):
    _fn: ClassVar[Any]

    def forward(self, x: Any) -> Any:
        check_channels(self, x, self.in_channels, self.n)
        return type(self)._fn(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                              self.groups, self.padding_mode)


class _ConvTranspose(_ConvNd):
    transposed = True
    _fn: ClassVar[Any]

    def forward(self, x: Any) -> Any:
        check_channels(self, x, self.in_channels, self.n)
        return type(self)._fn(x, self.weight, self.bias, self.stride, self.padding,
                              self.output_padding, self.groups, self.dilation)


_DOC = """{dim} {kind} over ``(N, C_in, {axes})`` input, as ``torch.nn.{name}``.

    Arguments are those of :func:`convlayers.functional.{fn}` plus ``in_channels``,
    ``out_channels``, ``kernel_size`` and ``bias``; ``rng`` seeds the initial weights and
    ``dtype`` sets their precision (float32 by default).{example}
    """


class Conv1d(_Conv):
    n, _fn = 1, staticmethod(F.conv1d)


class Conv2d(_Conv):
    n, _fn = 2, staticmethod(F.conv2d)


class Conv3d(_Conv):
    n, _fn = 3, staticmethod(F.conv3d)


class ConvTranspose1d(_ConvTranspose):
    n, _fn = 1, staticmethod(F.conv_transpose1d)


class ConvTranspose2d(_ConvTranspose):
    n, _fn = 2, staticmethod(F.conv_transpose2d)


class ConvTranspose3d(_ConvTranspose):
    n, _fn = 3, staticmethod(F.conv_transpose3d)


_EXAMPLE = """

    Examples
    --------
    >>> conv = Conv2d(3, 64, kernel_size=3, padding=1, rng=0)
    >>> conv
    Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    >>> conv(np.zeros((1, 3, 8, 8), np.float32)).shape
    (1, 64, 8, 8)
    >>> sum(p.size for p in conv.parameters())  # 64*3*3*3 weights + 64 biases
    1792
"""

for _cls, _axes in ((Conv1d, "L"), (Conv2d, "H, W"), (Conv3d, "D, H, W"),
                    (ConvTranspose1d, "L"), (ConvTranspose2d, "H, W"), (ConvTranspose3d, "D, H, W")):
    _cls.__doc__ = _DOC.format(
        dim=f"{_cls.n}-D", kind="transposed convolution" if _cls.transposed else "convolution",
        axes=_axes, name=_cls.__name__, fn=_cls._fn.__name__,
        example=_EXAMPLE if _cls is Conv2d else "")
