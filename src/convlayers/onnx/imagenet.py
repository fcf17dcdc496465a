"""ImageNet-style input for a loaded model (used by ``convlayers classify --model`` and the
explorer): the library's photo batches, ``(pixel - 127) / 128``, renormalised per channel."""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers.nn.module import Module

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageNetInput"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetInput(Module):
    """Wraps a model so that it takes ``convlayers.classify.preprocess``'s batches,
    ``(pixel - 127) / 128``, and sees ``(pixel / 255 - mean) / std`` instead.

    >>> from convlayers import nn
    >>> m = ImageNetInput(nn.Identity(), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    >>> m(np.full((1, 3, 1, 1), (255 - 127) / 128, np.float32))[0, :, 0, 0]
    array([1., 1., 1.], dtype=float32)
    """

    def __init__(self, net: Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        if min(std) <= 0:
            raise ValueError(f"std values must be > 0, got {','.join(map(str, std))}")
        self.mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)

    def forward(self, x: Any) -> Any:
        pixels = np.asarray(getattr(x, "data", x), np.float32) * np.float32(128) + np.float32(127)
        return self.net(((pixels / np.float32(255) - self.mean) / self.std).astype(np.float32))
