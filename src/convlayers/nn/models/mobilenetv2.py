"""MobileNetV2 (Sandler et al., 2018) with torchvision's architecture and ``state_dict`` keys.

``features.0`` is a stride-2 3x3 ConvNormAct, ``features.1`` ... ``features.17`` are
:class:`~convlayers.nn.blocks.InvertedResidual` blocks (``features.1.conv.0.0.weight`` ...),
``features.18`` a 1x1 ConvNormAct to 1280 channels, then global average pooling and
``classifier`` = Dropout + Linear (``classifier.1.weight``). Channel counts scale with
``width_mult`` and are rounded by :func:`make_divisible`, as in torchvision, so a torchvision
checkpoint converted to NumPy arrays loads with ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convlayers import functional as F
from convlayers.functional.stochastic import Rng, as_generator
from convlayers.nn import init
from convlayers.nn.blocks import ConvNormAct, InvertedResidual
from convlayers.nn.containers import Sequential
from convlayers.nn.conv import Conv2d
from convlayers.nn.linear import Dropout, Linear
from convlayers.nn.module import Module
from convlayers.nn.norm import BatchNorm2d

__all__ = ["MobileNetV2", "make_divisible"]

# expansion t, output channels c, repeats n, first stride s (Table 2 of the paper)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90% of it.

    >>> make_divisible(32 * 0.35), make_divisible(16 * 0.35), make_divisible(1280 * 1.4)
    (16, 8, 1792)
    """
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class MobileNetV2(Module):
    """MobileNetV2 for ``(N, 3, H, W)`` images (224x224 on ImageNet).

    Parameters
    ----------
    num_classes : int
        Size of the classifier's output.
    width_mult : float
        Multiplies every layer's channel count (the last one only when above 1).
    inverted_residual_setting : sequence of (t, c, n, s), optional
        The stages; defaults to the paper's.
    round_nearest : int
        Channel counts are multiples of this.
    dropout : float
        Dropout probability before the classifier.
    rng : Generator, int or None
        Seeds the initialisation (torchvision's: He-normal fan-out convolutions, unit
        BatchNorm, N(0, 0.01) classifier, zero biases) and the dropout masks.

    Examples
    --------
    >>> model = MobileNetV2(rng=0)
    >>> sum(p.size for p in model.parameters())  # torchvision's published count
    3504872
    >>> small = MobileNetV2(num_classes=10, width_mult=0.35, rng=0).eval()
    >>> small(np.zeros((1, 3, 32, 32), np.float32)).shape
    (1, 10)
    """

    def __init__(
        self, num_classes: int = 1000, width_mult: float = 1.0,
        inverted_residual_setting: Sequence[Sequence[int]] | None = None, round_nearest: int = 8,
        dropout: float = 0.2, *, rng: Rng = None, dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        gen = as_generator(rng)
        setting = SETTINGS if inverted_residual_setting is None else inverted_residual_setting
        if not setting or any(len(row) != 4 for row in setting):
            raise ValueError(f"inverted_residual_setting must be a non-empty list of (t, c, n, s) "
                             f"rows, got {setting!r}")
        channels = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        layers: list[Module] = [ConvNormAct(3, channels, stride=2, activation="relu6", dtype=dtype)]
        for t, c, n, s in setting:
            out = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, expand_ratio=t,
                                               dtype=dtype))
                channels = out
        layers.append(ConvNormAct(channels, self.last_channel, 1, activation="relu6", dtype=dtype))
        self.features = Sequential(*layers)
        self.classifier = Sequential(Dropout(dropout, rng=gen),
                                     Linear(self.last_channel, num_classes, dtype=dtype))
        for m in self.modules():
            if isinstance(m, Conv2d):
                init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", rng=gen)
            elif isinstance(m, BatchNorm2d):
                init.ones_(m.weight)
            elif isinstance(m, Linear):
                init.normal_(m.weight, 0.0, 0.01, rng=gen)
            if isinstance(m, Conv2d | BatchNorm2d | Linear) and m.bias is not None:
                init.zeros_(m.bias)

    def forward(self, x: Any) -> Any:
        x = self.features(x)
        x = F.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)
