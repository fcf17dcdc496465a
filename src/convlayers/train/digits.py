"""The digits model outside training: images as it sees them, and a SmallCNN rebuilt from weights.

scikit-learn's digits are 32x32 black-and-white scans, the digit scaled to fill the box, counted
in 4x4 blocks: 8x8 images of 0..16, light ink on a dark ground, which ``load_digits`` divides by
16. :func:`digit_input` brings any picture to that form.

Examples
--------
>>> img = np.zeros((8, 8), np.uint8); img[1:7, 3:5] = 255
>>> digit_input(img).shape, float(digit_input(img).max())
((1, 1, 8, 8), 1.0)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from convlayers.nn.models import SmallCNN

__all__ = ["DIGITS_SIDE", "digit_input", "small_cnn_from_state_dict"]

DIGITS_SIDE = 8
_INK = 0.25  # share of the ink's brightness above which a pixel counts as part of the digit


def _gray(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        raise ValueError(f"image must be a non-empty numeric array, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        x = arr.astype(np.float64)
    else:
        top = 255.0 if arr.dtype.kind == "b" or arr.max() <= 255 else float(np.iinfo(arr.dtype).max)
        x = arr.astype(np.float64) / (1.0 if arr.dtype.kind == "b" else top)
    if x.ndim == 3 and x.shape[2] in (2, 4):  # transparency: composite onto white paper
        alpha = x[:, :, -1:]
        x = x[:, :, :-1] * alpha + (1.0 - alpha)
    if x.ndim == 3 and x.shape[2] == 3:
        x = x @ np.array([0.299, 0.587, 0.114])
    elif x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim != 2:
        raise ValueError(f"image must be (H, W), (H, W, 1|2|3|4), got shape {arr.shape}")
    return np.clip(x, 0.0, 1.0)


def digit_input(image: Any) -> np.ndarray:
    """A picture of one digit as the digits model's input: ``(1, 1, 8, 8)`` float32 in [0, 1].

    Gray (color by luminance, transparency over white); inverted when the border is light
    (dark ink on paper), so the ink is bright as in the training data. An 8x8 image is then
    used as it is (``value / 255``, like sklearn's ``value / 16``). A larger one has its
    background level subtracted and its contrast stretched, is cropped to the ink, centred in a
    square, and averaged down to 8x8 (box filter, as sklearn's 4x4 block counts).
    """
    x = _gray(image)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    if border.mean() > 0.5:
        x = 1.0 - x
        border = 1.0 - border
    if x.shape != (DIGITS_SIDE, DIGITS_SIDE):
        background = float(np.median(border))
        x = np.clip(x - background, 0.0, None)
        if x.max() > 0:
            x = x / x.max()
            rows, cols = np.nonzero(x > _INK)
            x = x[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        side = max(x.shape)
        square = np.zeros((side, side))
        top, left = (side - x.shape[0]) // 2, (side - x.shape[1]) // 2
        square[top : top + x.shape[0], left : left + x.shape[1]] = x
        small = Image.fromarray(square.astype(np.float32), mode="F").resize(
            (DIGITS_SIDE, DIGITS_SIDE), Image.Resampling.BOX)
        x = np.asarray(small, dtype=np.float64)
        if x.max() > 0:
            x = x / x.max()
    return np.clip(x, 0.0, 1.0).astype(np.float32)[None, None]


def small_cnn_from_state_dict(state: Mapping[str, np.ndarray]) -> SmallCNN:
    """A :class:`~convlayers.nn.SmallCNN` shaped after ``state`` (widths, channels, classes,
    image size read from the arrays), with the weights loaded.

    >>> model = SmallCNN(widths=(4, 8), rng=0)
    >>> small_cnn_from_state_dict(model.state_dict()).classifier[1]
    Linear(in_features=32, out_features=10)
    """
    convs = sorted((int(m.group(1)), np.shape(v)) for k, v in state.items()
                   if (m := re.fullmatch(r"features\.(\d+)\.0\.weight", k)))
    head = np.shape(state.get("classifier.1.weight", ()))
    if not convs or len(head) != 2 or any(len(s) != 4 for _, s in convs):
        raise ValueError("the weights are not a SmallCNN state dict (features.N.0.weight and "
                         "classifier.1.weight are missing or misshapen)")
    widths = tuple(s[0] for _, s in convs)
    cells = head[1] // widths[-1]
    side = round(cells**0.5)
    if side * side * widths[-1] != head[1]:
        raise ValueError(f"classifier.1.weight {head} does not fit the last width {widths[-1]}")
    model = SmallCNN(in_channels=convs[0][1][1], num_classes=head[0],
                     image_size=side * 2 ** len(widths), widths=widths, rng=0)
    model.load_state_dict(state)
    return model
