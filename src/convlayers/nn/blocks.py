"""The building blocks of the seed's "Implementation of Convolutional Blocks" section.

* :class:`ConvNormAct` is the standard block: a convolution, batch normalization, an activation.
* :class:`DepthwiseSeparable` is the efficient block: a per-channel (depthwise) convolution that
  filters space, then a 1x1 (pointwise) convolution that mixes channels, each followed by
  normalization and activation.
* :class:`InvertedResidual` is the MobileNetV2 block: widen with a 1x1 convolution, filter
  with a depthwise one, narrow again with a linear 1x1 projection, and add the input back.

The first two are flat ``Sequential`` containers, so their ``state_dict`` keys (``0.weight``,
``1.running_mean``, ...) are those of the same ``nn.Sequential`` written in PyTorch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers._validate import as_int
from convlayers.functional.stochastic import Rng, as_generator
from convlayers.nn.activation import make_activation, overwritable
from convlayers.nn.containers import Sequential
from convlayers.nn.conv import Conv2d
from convlayers.nn.module import Module
from convlayers.nn.norm import BatchNorm2d
from convlayers.nn.padding import SamePad2d

__all__ = ["ConvNormAct", "DepthwiseSeparable", "InvertedResidual"]

Activation = Any  # "relu", "relu6", "sigmoid", "tanh", a Module class, or None


class ConvNormAct(Sequential):
    """Conv2d, then BatchNorm2d (``norm``), then an activation: the seed's standard block.

    Children ``0`` (conv), ``1`` (norm, if any) and the activation, as torchvision's
    ``Conv2dNormActivation``, whose checkpoints therefore load. ``padding=None`` keeps the size
    at stride 1 (``(kernel_size - 1)//2 * dilation``); ``padding="tf_same"`` is TensorFlow's
    'same': where that is asymmetric (strided, or an even kernel: the extra row/column goes at
    the bottom/right) a :class:`SamePad2d` comes first, so the children are then pad, conv,
    norm, activation; at stride 1 with an odd kernel it is symmetric, and the convolution pads
    by itself (which lets the depthwise kernels read the borders in place, with no padded
    copy). ``bias=None`` puts a bias on the convolution only when there is no normalization,
    since BatchNorm subtracts any constant offset right away; the seed's
    ``nn.Conv2d(3, 64, 3, padding=1)`` before its BatchNorm keeps the bias, which is
    ``bias=True`` here.

    Examples
    --------
    >>> block = ConvNormAct(3, 64, bias=True, rng=0)
    >>> sum(p.size for p in block[0].parameters()), sum(p.size for p in block[1].parameters())
    (1792, 128)
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
        padding: int | str | None = None, groups: int = 1, norm: bool = True,
        activation: Activation = "relu", dilation: int = 1, bias: bool | None = None, *,
        norm_eps: float = 1e-5, rng: Rng = None, dtype: Any = np.float32,
    ) -> None:
        k, d = as_int(kernel_size, "kernel_size"), as_int(dilation, "dilation")
        layers: list[Module] = []
        if padding == "tf_same" and stride == 1 and (k - 1) * d % 2 == 0:
            pad: int = (k - 1) * d // 2  # TensorFlow's 'same' is symmetric here: the conv pads
        elif padding == "tf_same":
            layers.append(SamePad2d(k, stride, d))
            pad = 0
        elif isinstance(padding, str):
            raise ValueError(f"padding must be an int, None or 'tf_same', got {padding!r}")
        else:
            pad = (k - 1) // 2 * d if padding is None else padding
        layers.append(Conv2d(in_channels, out_channels, k, stride, pad, d, groups,
                             bias=not norm if bias is None else bias, rng=rng, dtype=dtype))
        if norm:
            layers.append(BatchNorm2d(out_channels, eps=norm_eps, dtype=dtype))
        act = make_activation(activation, inplace=True)  # overwrites the fresh norm output
        if act is not None:
            layers.append(act)
        super().__init__(*layers)


class DepthwiseSeparable(Sequential):
    """Depthwise conv + norm + act, then pointwise (1x1) conv + norm + act.

    The seed's "efficient depthwise-separable block". Its cost is
    ``C_in*k*k + C_in*C_out`` weights instead of ``C_in*C_out*k*k``: for 64 to 128 channels
    and 3x3 that is 8,768 against 73,728, about 8.4 times fewer. The depthwise step filters
    each channel alone (``groups=C_in``); only the pointwise step mixes channels. A flat
    Sequential (``0``-``5`` with norm and activation), the same keys as the seed's
    ``nn.Sequential``.

    >>> block = DepthwiseSeparable(64, 128, bias=False, norm=False, activation=None, rng=0)
    >>> sum(p.size for p in block.parameters())
    8768
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
        norm: bool = True, activation: Activation = "relu", bias: bool | None = None, *,
        rng: Rng = None, dtype: Any = np.float32,
    ) -> None:
        gen = as_generator(rng)
        depthwise = ConvNormAct(in_channels, in_channels, kernel_size, stride, groups=in_channels,
                                norm=norm, activation=activation, bias=bias, rng=gen, dtype=dtype)
        pointwise = ConvNormAct(in_channels, out_channels, 1, norm=norm, activation=activation,
                                bias=bias, rng=gen, dtype=dtype)
        super().__init__(*depthwise, *pointwise)


class InvertedResidual(Module):
    """MobileNetV2's block: 1x1 expand, depthwise, linear 1x1 project, plus a shortcut.

    ``self.conv`` holds, in torchvision's order and key names: an expanding
    :class:`ConvNormAct` to ``round(in_channels * expand_ratio)`` channels (left out when
    ``expand_ratio == 1``), a depthwise ConvNormAct with the stride, then the projection
    Conv2d and its BatchNorm. The projection has no activation on purpose (a "linear
    bottleneck": a ReLU on few channels would destroy information). The input is added to the
    output when ``residual`` and the shapes allow it (``stride == 1`` and
    ``in_channels == out_channels``).

    ``padding="tf_same"`` and ``norm_eps=1e-3`` give the EfficientNet-Lite flavour (TensorFlow's
    asymmetric 'same' padding before the depthwise convolution, Keras's BatchNorm epsilon).

    With ``norm=False, activation=None, residual=False, bias=True`` and ``expand_ratio=6`` this is
    the seed's simplified ``MobileBlock``. What that drops matters: with no activation anywhere,
    the three convolutions compose into one linear map, so stacking such blocks adds parameters
    but no expressive power; without normalization deep stacks train slowly and are sensitive
    to initialisation; without the shortcut, gradients reach early layers only through every
    block, and a block cannot easily start as the identity.

    Examples
    --------
    >>> block = InvertedResidual(16, 16, stride=1, expand_ratio=6, rng=0)
    >>> block.use_residual, block(np.zeros((1, 16, 8, 8), np.float32)).shape
    (True, (1, 16, 8, 8))
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: float = 6,
        kernel_size: int = 3, norm: bool = True, activation: Activation = "relu6",
        residual: bool = True, bias: bool | None = None, *, padding: str | None = None,
        norm_eps: float = 1e-5, rng: Rng = None, dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        stride = as_int(stride, "stride")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if not expand_ratio > 0:
            raise ValueError(f"expand_ratio must be > 0, got {expand_ratio!r}")
        gen = as_generator(rng)
        hidden = round(in_channels * expand_ratio)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.use_residual = bool(residual) and stride == 1 and in_channels == out_channels
        layers: list[Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_channels, hidden, 1, norm=norm, activation=activation,
                                      bias=bias, norm_eps=norm_eps, rng=gen, dtype=dtype))
        layers.append(ConvNormAct(hidden, hidden, kernel_size, stride, padding, groups=hidden,
                                  norm=norm, activation=activation, bias=bias, norm_eps=norm_eps,
                                  rng=gen, dtype=dtype))
        layers.append(Conv2d(hidden, out_channels, 1, bias=not norm if bias is None else bias,
                             rng=gen, dtype=dtype))
        if norm:
            layers.append(BatchNorm2d(out_channels, eps=norm_eps, dtype=dtype))
        self.conv = Sequential(*layers)

    def forward(self, x: Any) -> Any:
        out = self.conv(x)
        if not self.use_residual:
            return out
        if (buffer := overwritable(out)) is not None and buffer.shape == np.shape(x):
            buffer += getattr(x, "data", x)  # inference: add into the block's fresh output
            return out
        return x + out
