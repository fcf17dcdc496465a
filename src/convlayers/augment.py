"""Augmentations: small functions on batches of images ``(N, C, H, W)``, seeded and composable.

Every step has the signature ``step(x, rng, **options) -> new batch`` (``rng`` a NumPy
``Generator``; steps that draw nothing ignore it), so a pipeline is
``compose(partial(random_crop, size=32, padding=4), random_flip, ...)``, called as
``pipeline(x, rng)``: the same seed gives the same batch. Inputs are float images in [0, 1]
(what :class:`convlayers.datasets.ImageFolder` yields); the outputs stay float32.

The geometric steps follow torchvision's definitions (bilinear resize with
``align_corners=False`` and no antialiasing, as ``torch.nn.functional.interpolate``; brightness,
contrast and saturation as ``torchvision.transforms.functional``'s adjustments), and the tests
compare them with those formulas written in torch.

Examples
--------
>>> from functools import partial
>>> pipeline = compose(partial(random_crop, size=6, padding=1), random_flip,
...                    partial(normalize, mean=IMAGENET_MEAN, std=IMAGENET_STD))
>>> x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
>>> y = pipeline(x, np.random.default_rng(1))
>>> y.shape, y.dtype, np.array_equal(y, pipeline(x, np.random.default_rng(1)))
((4, 3, 6, 6), dtype('float32'), True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from convlayers._validate import as_int, positive_tuple

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "LITE0_MEAN", "LITE0_STD", "adjust_brightness",
    "adjust_contrast", "adjust_saturation", "color_jitter", "compose", "normalize",
    "random_crop", "random_flip", "resize", "training_pipeline",
]

#: Channel means and standard deviations of ImageNet (torchvision's pretrained models).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientNet-Lite0's input scaling ``(pixel - 127) / 128`` for images in [0, 1].
LITE0_MEAN = (127 / 255,) * 3
LITE0_STD = (128 / 255,) * 3

Step = Callable[..., np.ndarray]
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as torchvision


def _batch(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 4:
        raise ValueError(f"x must be a batch (N, C, H, W), got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise TypeError(f"x must hold float images in [0, 1], got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def compose(*steps: Step) -> Callable[[np.ndarray, np.random.Generator | int | None], np.ndarray]:
    """One step that runs ``steps`` in order with the same generator.

    >>> flip_twice = compose(partial(random_flip, p=1.0), partial(random_flip, p=1.0))
    >>> flip_twice(np.array([[[[0.2, 0.4]]]], np.float32), 0)
    array([[[[0.2, 0.4]]]], dtype=float32)
    """
    for step in steps:
        if not callable(step):
            raise TypeError(f"every step must be callable, got {step!r}")

    def pipeline(x: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
        gen = _rng(rng)
        for step in steps:
            x = step(x, gen)
        return x

    return pipeline


def random_crop(x: Any, rng: np.random.Generator | int | None = None, *, size: int | Sequence[int],
                padding: int = 0, fill: float = 0.0) -> np.ndarray:
    """Pad each side by ``padding`` (with ``fill``), then cut a random ``size`` window per image.

    >>> random_crop(np.ones((2, 1, 4, 4), np.float32), 0, size=4, padding=2).shape
    (2, 1, 4, 4)
    """
    batch = _batch(x)
    pad = as_int(padding, "padding")
    h, w = positive_tuple(size, 2, "size")
    if pad < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    n, c, height, width = batch.shape
    if h > height + 2 * pad or w > width + 2 * pad:
        raise ValueError(f"size {(h, w)} is larger than the padded image "
                         f"{(height + 2 * pad, width + 2 * pad)}")
    gen = _rng(rng)
    tops = gen.integers(0, height + 2 * pad - h + 1, size=n)
    lefts = gen.integers(0, width + 2 * pad - w + 1, size=n)
    padded = np.pad(batch, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill) \
        if pad else batch
    out = np.empty((n, c, h, w), dtype=np.float32)
    for i in range(n):
        out[i] = padded[i, :, tops[i] : tops[i] + h, lefts[i] : lefts[i] + w]
    return out


def random_flip(x: Any, rng: np.random.Generator | int | None = None, *, p: float = 0.5) -> np.ndarray:
    """Mirror each image left-right with probability ``p``.

    >>> random_flip(np.array([[[[0.2, 0.4, 0.8]]]], np.float32), 0, p=1.0)
    array([[[[0.8, 0.4, 0.2]]]], dtype=float32)
    """
    batch = _batch(x)
    if not 0 <= float(p) <= 1:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    flip = _rng(rng).random(len(batch)) < float(p)
    out = batch.copy()
    out[flip] = batch[flip, :, :, ::-1]
    return out


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of bilinear resampling with ``align_corners=False`` (torch)."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def resize(x: Any, rng: np.random.Generator | int | None = None, *,
           size: int | Sequence[int]) -> np.ndarray:
    """Bilinear resize to ``size`` ``(height, width)``: ``torch.nn.functional.interpolate(x,
    size, mode="bilinear", align_corners=False)`` (no antialiasing).

    >>> resize(np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4), size=(1, 2))
    array([[[[0.5, 2.5]]]], dtype=float32)
    """
    batch = _batch(x)
    h, w = positive_tuple(size, 2, "size")
    rows = _bilinear_matrix(batch.shape[2], h).astype(np.float32)
    cols = _bilinear_matrix(batch.shape[3], w).astype(np.float32)
    return np.ascontiguousarray(np.matmul(np.matmul(rows, batch), cols.T), dtype=np.float32)


def _gray(batch: np.ndarray) -> np.ndarray:
    if batch.shape[1] == 1:
        return batch
    if batch.shape[1] != 3:
        raise ValueError(f"colour adjustments need 1 or 3 channels, got {batch.shape[1]}")
    return np.tensordot(batch, _GRAY, axes=([1], [0]))[:, None]


def _factors(factor: float | np.ndarray, n: int) -> np.ndarray:
    f = np.asarray(factor, dtype=np.float32)
    if f.ndim > 1 or f.size not in (1, n):
        raise ValueError(f"factor must be one number or one per image ({n}), got shape {f.shape}")
    f = np.broadcast_to(f.reshape(-1), (n,))
    if (f < 0).any() or not np.isfinite(f).all():
        raise ValueError(f"factor must be finite and >= 0, got {factor!r}")
    return f.reshape(n, 1, 1, 1)


def adjust_brightness(x: Any, factor: float | np.ndarray) -> np.ndarray:
    """``clip(x * factor, 0, 1)`` (one factor, or one per image).

    >>> adjust_brightness(np.array([[[[0.2, 0.4, 0.8]]]], np.float32), 2.0)
    array([[[[0.4, 0.8, 1. ]]]], dtype=float32)
    """
    batch = _batch(x)
    return np.clip(batch * _factors(factor, len(batch)), 0, 1)


def adjust_contrast(x: Any, factor: float | np.ndarray) -> np.ndarray:
    """Blend each image with the mean of its grayscale version: ``clip(f*x + (1-f)*mean)``.

    >>> adjust_contrast(np.array([[[[0.2, 0.4, 0.8]]]], np.float32), 0.0)  # all the mean
    array([[[[0.4666667, 0.4666667, 0.4666667]]]], dtype=float32)
    """
    batch = _batch(x)
    f = _factors(factor, len(batch))
    mean = _gray(batch).mean(axis=(1, 2, 3), keepdims=True)
    return np.clip(f * batch + (1 - f) * mean, 0, 1)


def adjust_saturation(x: Any, factor: float | np.ndarray) -> np.ndarray:
    """Blend each image with its grayscale version: ``clip(f*x + (1-f)*gray)``.

    >>> adjust_saturation(np.array([[[[0.9]], [[0.1]], [[0.1]]]], np.float32), 0.0).ravel()
    array([0.3392, 0.3392, 0.3392], dtype=float32)
    """
    batch = _batch(x)
    f = _factors(factor, len(batch))
    return np.clip(f * batch + (1 - f) * _gray(batch), 0, 1)


def color_jitter(x: Any, rng: np.random.Generator | int | None = None, *, brightness: float = 0.0,
                 contrast: float = 0.0, saturation: float = 0.0) -> np.ndarray:
    """Random brightness, contrast and saturation per image, each factor drawn uniformly from
    ``[max(0, 1 - amount), 1 + amount]`` and applied in that order.

    >>> color_jitter(np.full((2, 3, 4, 4), 0.5, np.float32), 0, brightness=0.5).shape
    (2, 3, 4, 4)
    """
    batch = _batch(x)
    gen = _rng(rng)
    for amount, adjust in ((brightness, adjust_brightness), (contrast, adjust_contrast),
                           (saturation, adjust_saturation)):
        if not 0 <= float(amount) < np.inf:
            raise ValueError(f"jitter amounts must be finite and >= 0, got {amount!r}")
        if amount:
            factors = gen.uniform(max(0.0, 1 - float(amount)), 1 + float(amount), size=len(batch))
            batch = adjust(batch, factors)
    return batch


def normalize(x: Any, rng: np.random.Generator | int | None = None, *, mean: Sequence[float],
              std: Sequence[float]) -> np.ndarray:
    """``(x - mean) / std`` per channel, e.g. with :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`.

    >>> normalize(np.full((1, 1, 1, 2), 0.5, np.float32), mean=(0.25,), std=(0.5,))
    array([[[[0.5, 0.5]]]], dtype=float32)
    """
    batch = _batch(x)
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    if m.shape[1] not in (1, batch.shape[1]) or s.shape != m.shape:
        raise ValueError(f"mean and std must have one value per channel ({batch.shape[1]}), got "
                         f"{mean!r} and {std!r}")
    if not (s > 0).all():
        raise ValueError(f"std must be positive, got {std!r}")
    return (batch - m) / s


def training_pipeline(size: int | Sequence[int], jitter: float = 0.2
                      ) -> Callable[[np.ndarray, np.random.Generator | int | None], np.ndarray]:
    """What ``convlayers train folder`` applies to every training batch of ``size`` images: a
    random crop after padding by ``size // 16`` pixels (at least 1), a left-right flip with
    probability 1/2, and brightness, contrast and saturation jitter of ``jitter``.

    >>> training_pipeline(8)(np.zeros((2, 3, 8, 8), np.float32), 0).shape
    (2, 3, 8, 8)
    """
    h, w = positive_tuple(size, 2, "size")
    return compose(partial(random_crop, size=(h, w), padding=max(1, min(h, w) // 16)), random_flip,
                   partial(color_jitter, brightness=jitter, contrast=jitter, saturation=jitter))
