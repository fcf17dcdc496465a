"""Datasets: your own images in class folders (:class:`ImageFolder`), small real datasets that
ship inside installed packages, batching and augmentation (more in :mod:`convlayers.augment`).

The handwritten digits come with scikit-learn (1,797 images of 8x8 pixels, 10 classes), so
nothing is downloaded. Install them with ``pip install convlayers[train]``.

Examples
--------
>>> split = load_digits(seed=0)
>>> split.x_train.shape, split.x_train.dtype, split.y_train.dtype
((1438, 1, 8, 8), dtype('float32'), dtype('int64'))
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from convlayers._validate import as_int
from convlayers.image_folder import ImageFolder, prefetch_batches

__all__ = ["ImageFolder", "Split", "batches", "load_digits", "prefetch_batches", "random_shift"]


@dataclass(frozen=True)
class Split:
    """Images ``(N, 1, H, W)`` float32 in [0, 1] and int64 labels, for training and testing."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def load_digits(test_fraction: float = 0.2, seed: int | np.random.Generator | None = 0) -> Split:
    """scikit-learn's 8x8 handwritten digits, split into train and test by a seeded shuffle.

    Parameters
    ----------
    test_fraction : float
        Share of the images held out for testing, in (0, 1).
    seed : int or Generator, optional
        The same seed gives the same split.
    """
    if not 0 < float(test_fraction) < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits dataset ships with scikit-learn: pip install 'convlayers[train]'"
        ) from exc
    bunch = sklearn_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    order = _rng(seed).permutation(len(labels))
    n_test = round(len(labels) * float(test_fraction))
    test, train = order[:n_test], order[n_test:]
    return Split(images[train], labels[train], images[test], labels[test],
                 tuple(str(c) for c in range(10)))


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = True,
    seed: int | np.random.Generator | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, labels)`` mini-batches; the last one may be smaller.

    >>> [b[0].shape[0] for b in batches(np.zeros((5, 1, 2, 2)), np.zeros(5), 2, shuffle=False)]
    [2, 2, 1]
    """
    size = as_int(batch_size, "batch_size")
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    order = _rng(seed).permutation(len(x)) if shuffle else np.arange(len(x))
    for start in range(0, len(x), size):
        pick = order[start : start + size]
        yield x[pick], y[pick]


def random_shift(
    x: np.ndarray, max_shift: int = 1, seed: int | np.random.Generator | None = None
) -> np.ndarray:
    """Shift each image by up to ``max_shift`` pixels along each axis, filling with zeros.

    >>> img = np.zeros((1, 1, 3, 3), np.float32); img[0, 0, 1, 1] = 1
    >>> random_shift(img, 1, seed=0).sum()
    np.float32(1.0)
    """
    shift = as_int(max_shift, "max_shift")
    if shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {shift}")
    if shift == 0:
        return x.copy()
    rng = _rng(seed)
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(shift, shift), (shift, shift)])
    dy, dx = rng.integers(-shift, shift + 1, size=(2, n))
    out = np.empty_like(x)
    for i in range(n):  # one slice per image, not per pixel
        top, left = shift + dy[i], shift + dx[i]
        out[i] = padded[i, ..., top : top + h, left : left + w]
    return out
