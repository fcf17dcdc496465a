"""A small CNN for digit images (sklearn's 8x8 digits or 28x28 MNIST-like)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convlayers._validate import as_int
from convlayers.functional.stochastic import Rng, as_generator
from convlayers.nn.blocks import ConvNormAct
from convlayers.nn.containers import Sequential
from convlayers.nn.linear import Flatten, Linear
from convlayers.nn.module import Module
from convlayers.nn.pooling import MaxPool2d

__all__ = ["SmallCNN"]


class SmallCNN(Module):
    """``(conv3x3-BN-ReLU, maxpool 2)`` per entry of ``widths``, then flatten and one Linear.

    Each stage halves the image, so ``image_size`` must be divisible by ``2**len(widths)``.

    >>> model = SmallCNN(image_size=8, rng=0)
    >>> model(np.zeros((5, 1, 8, 8), np.float32)).shape
    (5, 10)
    >>> model.classifier[1]
    Linear(in_features=128, out_features=10)
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8,
                 widths: Sequence[int] = (16, 32), *, rng: Rng = None, dtype: Any = np.float32) -> None:
        super().__init__()
        size = as_int(image_size, "image_size")
        if not widths or size % 2 ** len(widths):
            raise ValueError(f"image_size={size} must be divisible by 2**len(widths)="
                             f"{2 ** len(widths)} (each stage halves it)")
        gen = as_generator(rng)
        layers: list[Module] = []
        channels = in_channels
        for width in widths:
            layers += [ConvNormAct(channels, width, 3, rng=gen, dtype=dtype), MaxPool2d(2)]
            channels = width
        self.features = Sequential(*layers)
        side = size // 2 ** len(widths)
        self.classifier = Sequential(Flatten(), Linear(channels * side * side, num_classes,
                                                       rng=gen, dtype=dtype))

    def forward(self, x: Any) -> Any:
        return self.classifier(self.features(x))
