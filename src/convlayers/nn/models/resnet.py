"""ResNet (He et al., 2016) with torchvision's architecture and ``state_dict`` keys.

``conv1`` (7x7, stride 2), ``bn1``, ``relu``, ``maxpool`` (3x3, stride 2), four stages
``layer1`` ... ``layer4`` of residual blocks, global average pooling and ``fc``. ResNet-18 and
-34 use :class:`BasicBlock` (two 3x3 convolutions), ResNet-50 and deeper use
:class:`Bottleneck` (1x1 narrow, 3x3, 1x1 widen by 4; the stride sits on the 3x3, as in
torchvision's "ResNet v1.5"). Where a block changes the stride or the width, its shortcut is
``downsample`` = ``Sequential(conv1x1, BatchNorm2d)``; otherwise the input itself is added.
Keys such as ``layer1.0.conv1.weight`` and ``layer2.0.downsample.0.weight`` are torchvision's,
so its checkpoints, converted to NumPy arrays, load with ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convlayers import functional as F
from convlayers.functional.stochastic import Rng, as_generator
from convlayers.nn import init
from convlayers.nn.activation import ReLU
from convlayers.nn.containers import Sequential
from convlayers.nn.conv import Conv2d
from convlayers.nn.linear import Linear
from convlayers.nn.module import Module
from convlayers.nn.norm import BatchNorm2d
from convlayers.nn.pooling import AdaptiveAvgPool2d, MaxPool2d

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


def _add(out: Any, identity: Any) -> Any:
    """``out + identity``; in place when ``out`` is a fresh array nobody records."""
    if isinstance(out, np.ndarray) and isinstance(identity, np.ndarray) and out.shape == identity.shape:
        out += identity
        return out
    return out + identity


class _ResidualBlock(Module):
    """What both blocks share: ``relu(residual(x) + shortcut(x))``, the shortcut ``downsample``
    when given, else the input. Subclasses build their layers in ``_build`` and chain them in
    ``_residual``; ``downsample`` is registered after the layers, in torchvision's order."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Module | None = None, *, rng: Rng = None,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        self._build(inplanes, planes, stride, as_generator(rng), dtype)
        if downsample is not None:
            self.downsample = downsample
        self.stride = stride

    def _build(self, inplanes: int, planes: int, stride: int, gen: np.random.Generator,
               dtype: Any) -> None:
        raise NotImplementedError

    def _residual(self, x: Any) -> Any:
        raise NotImplementedError

    def forward(self, x: Any) -> Any:
        identity = self.downsample(x) if "downsample" in self._modules else x
        return self.relu(_add(self._residual(x), identity))


class BasicBlock(_ResidualBlock):
    """Two 3x3 conv-BN pairs, the input added back, then ReLU (ResNet-18/34).

    >>> block = BasicBlock(8, 8, rng=0).eval()
    >>> block(np.zeros((1, 8, 6, 6), np.float32)).shape
    (1, 8, 6, 6)
    """

    expansion = 1

    def _build(self, inplanes: int, planes: int, stride: int, gen: np.random.Generator,
               dtype: Any) -> None:
        self.conv1 = Conv2d(inplanes, planes, 3, stride, 1, bias=False, rng=gen, dtype=dtype)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.relu = ReLU(inplace=True)
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False, rng=gen, dtype=dtype)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)

    def _residual(self, x: Any) -> Any:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_ResidualBlock):
    """1x1 narrow, 3x3 (with the stride), 1x1 widen by 4, the input added, ReLU (ResNet-50+).

    >>> block = Bottleneck(16, 4, rng=0).eval()
    >>> block(np.zeros((1, 16, 5, 5), np.float32)).shape
    (1, 16, 5, 5)
    """

    expansion = 4

    def _build(self, inplanes: int, planes: int, stride: int, gen: np.random.Generator,
               dtype: Any) -> None:
        out = planes * self.expansion
        self.conv1 = Conv2d(inplanes, planes, 1, bias=False, rng=gen, dtype=dtype)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.conv2 = Conv2d(planes, planes, 3, stride, 1, bias=False, rng=gen, dtype=dtype)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        self.conv3 = Conv2d(planes, out, 1, bias=False, rng=gen, dtype=dtype)
        self.bn3 = BatchNorm2d(out, dtype=dtype)
        self.relu = ReLU(inplace=True)

    def _residual(self, x: Any) -> Any:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(Module):
    """ResNet for ``(N, 3, H, W)`` images (224x224 on ImageNet).

    Parameters
    ----------
    block : BasicBlock or Bottleneck (the class)
        The residual block of every stage.
    layers : sequence of 4 ints
        Blocks per stage (``(2, 2, 2, 2)`` for ResNet-18, ``(3, 4, 6, 3)`` for ResNet-50).
    num_classes : int
        Size of ``fc``'s output.
    rng : Generator, int or None
        Seeds torchvision's initialisation: He-normal (fan-out) convolutions, unit BatchNorm
        weights and zero biases, and ``fc`` as any Linear.

    Examples
    --------
    >>> model = resnet18(num_classes=10, rng=0).eval()
    >>> model(np.zeros((1, 3, 32, 32), np.float32)).shape
    (1, 10)
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 num_classes: int = 1000, *, rng: Rng = None, dtype: Any = np.float32) -> None:
        super().__init__()
        if block not in (BasicBlock, Bottleneck):
            raise TypeError(f"block must be BasicBlock or Bottleneck, got {block!r}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive block counts, got {tuple(layers)!r}")
        gen = as_generator(rng)
        self.inplanes = 64
        self.conv1 = Conv2d(3, 64, 7, 2, 3, bias=False, rng=gen, dtype=dtype)
        self.bn1 = BatchNorm2d(64, dtype=dtype)
        self.relu = ReLU(inplace=True)
        self.maxpool = MaxPool2d(3, 2, 1)
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stage = self._stage(block, planes, int(count), 1 if index == 0 else 2, gen, dtype)
            setattr(self, f"layer{index + 1}", stage)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(512 * block.expansion, num_classes, rng=gen, dtype=dtype)
        for m in self.modules():
            if isinstance(m, Conv2d):
                init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", rng=gen)
            elif isinstance(m, BatchNorm2d):
                init.ones_(m.weight)
                init.zeros_(m.bias)

    def _stage(self, block: type[BasicBlock] | type[Bottleneck], planes: int, count: int,
               stride: int, gen: np.random.Generator, dtype: Any) -> Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = Sequential(Conv2d(self.inplanes, out, 1, stride, bias=False, rng=gen,
                                           dtype=dtype), BatchNorm2d(out, dtype=dtype))
        blocks: list[Module] = [block(self.inplanes, planes, stride, downsample, rng=gen, dtype=dtype)]
        self.inplanes = out
        blocks += [block(out, planes, rng=gen, dtype=dtype) for _ in range(1, count)]
        return Sequential(*blocks)

    def forward(self, x: Any) -> Any:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, *, rng: Rng = None, dtype: Any = np.float32) -> ResNet:
    """ResNet-18: BasicBlocks, ``(2, 2, 2, 2)`` per stage, 11,689,512 parameters.

    >>> sum(p.size for p in resnet18().parameters())
    11689512
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, rng=rng, dtype=dtype)


def resnet50(num_classes: int = 1000, *, rng: Rng = None, dtype: Any = np.float32) -> ResNet:
    """ResNet-50: Bottlenecks, ``(3, 4, 6, 3)`` per stage, 25,557,032 parameters.

    >>> sum(p.size for p in resnet50().parameters())
    25557032
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, rng=rng, dtype=dtype)
