"""Classify photos with an ImageNet network: preprocessing, class names, top-k.

>>> classes = imagenet_classes()
>>> len(classes), classes[285]
(1000, 'Egyptian cat')
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from convlayers._validate import as_int

__all__ = ["Prediction", "classify", "imagenet_classes", "preprocess", "pretrained_model"]


@dataclass(frozen=True)
class Prediction:
    """One of the top classes: ImageNet index, name and softmax probability."""

    index: int
    name: str
    probability: float


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet class names in index order (shipped with convlayers)."""
    text = resources.files("convlayers").joinpath("assets/imagenet_classes.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line)


def _as_rgb(image: Any) -> np.ndarray:
    if isinstance(image, (str, Path)):
        from convlayers.io import read_image

        return read_image(image, mode="RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"image must be a uint8 array (or a path), got dtype {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return arr[:, :, :3]
    raise ValueError(f"image must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")


def preprocess(image: Any, size: int = 224) -> np.ndarray:
    """An image (path or uint8 array) as a ``(1, 3, size, size)`` float32 batch.

    Resized with Pillow's bilinear filter and scaled as ``(pixel - 127) / 128``, the
    preprocessing EfficientNet-Lite was trained with.

    >>> preprocess(np.full((10, 20, 3), 255, np.uint8), size=4)[0, 0, 0]
    array([1., 1., 1., 1.], dtype=float32)
    """
    from PIL import Image

    side = as_int(size, "size")
    if side < 1:
        raise ValueError(f"size must be >= 1, got {side}")
    rgb = Image.fromarray(_as_rgb(image)).resize((side, side), Image.Resampling.BILINEAR)
    pixels = (np.asarray(rgb, dtype=np.float32) - 127.0) / 128.0
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def classify(model: Any, image: Any, top: int = 5, size: int = 224) -> list[Prediction]:
    """Top ``top`` ImageNet classes of one image (path or uint8 array) under ``model``.

    ``model`` maps a ``(1, 3, size, size)`` batch to ``(1, 1000)`` logits (an eval-mode
    convlayers Module, or any callable).
    """
    from convlayers.autograd import no_grad

    k = as_int(top, "top")
    classes = imagenet_classes()
    if not 1 <= k <= len(classes):
        raise ValueError(f"top must be between 1 and {len(classes)}, got {k}")
    with no_grad():
        out = model(preprocess(image, size))
    logits = np.asarray(getattr(out, "data", out), dtype=np.float64).reshape(-1)
    if logits.shape != (len(classes),):
        raise ValueError(f"model must return {len(classes)} logits, got shape {logits.shape}")
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")[:k]
    return [Prediction(int(i), classes[i], float(probs[i])) for i in order]


@functools.cache
def pretrained_model() -> Any:
    """EfficientNet-Lite0 with its ImageNet weights, loaded once per process."""
    from convlayers.nn.models import efficientnet_lite0

    return efficientnet_lite0(pretrained=True)
