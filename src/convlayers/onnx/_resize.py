"""ONNX ``Resize`` in nearest and (multi)linear modes, one axis at a time.

Each output index is mapped back to a coordinate in the input by the
``coordinate_transformation_mode``; nearest mode rounds it (``nearest_mode``), linear mode
blends the two neighbours, the coordinate clamped to the input (the edge repeats).
"""

from __future__ import annotations

import numpy as np

__all__ = ["COORDINATE_MODES", "NEAREST_MODES", "resize"]

COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_half_pixel_for_nn", "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _source(out: int, size: int, scale: float, mode: str) -> np.ndarray:
    """Input coordinate of every output index along one axis."""
    i = np.arange(out, dtype=np.float64)
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out > 1 else np.zeros(out)
    if mode == "align_corners":  # the resized length is size*scale, not rounded (ONNX's rule)
        return i * (size - 1) / (size * scale - 1) if size * scale > 1 else np.zeros(out)
    if mode == "asymmetric":
        return i / scale
    if mode == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    adjustment = out / (size * scale)  # half_pixel_symmetric
    offset = size / 2 * (1 - adjustment)
    return offset + (i + 0.5) / scale - 0.5


def _nearest(coord: np.ndarray, mode: str, size: int) -> np.ndarray:
    if mode == "round_prefer_floor":
        index = np.ceil(coord - 0.5)
    elif mode == "round_prefer_ceil":
        index = np.floor(coord + 0.5)
    elif mode == "floor":
        index = np.floor(coord)
    else:
        index = np.ceil(coord)
    return np.clip(index, 0, size - 1).astype(np.int64)


def resize(x: np.ndarray, sizes: tuple[int, ...], scales: tuple[float, ...], mode: str,
           coordinate_mode: str, nearest_mode: str) -> np.ndarray:
    """Resize ``x`` to ``sizes`` (``scales`` give the coordinate mapping), axis by axis.

    >>> resize(np.array([[1.0, 2.0]]), (1, 4), (1.0, 2.0), "nearest", "asymmetric", "floor")
    array([[1., 1., 2., 2.]])
    >>> resize(np.array([[0.0, 1.0]]), (1, 4), (1.0, 2.0), "linear", "half_pixel", "floor")
    array([[0.  , 0.25, 0.75, 1.  ]])
    """
    if len(sizes) != x.ndim or any(s < 0 for s in sizes):
        raise ValueError(f"Resize needs one non-negative size per axis of the {x.ndim}-D input, "
                         f"got {sizes}")
    from convlayers import limits

    limits.check_elements(sizes, x.dtype, f"Resize output of shape {tuple(sizes)}")
    out = x
    for axis, (size, new, scale) in enumerate(zip(x.shape, sizes, scales, strict=True)):
        if new == size and scale == 1:
            continue
        coord = _source(new, size, scale, coordinate_mode)
        if mode == "nearest":
            out = np.take(out, _nearest(coord, nearest_mode, size), axis=axis)
            continue
        coord = np.clip(coord, 0, size - 1)
        lo = np.floor(coord).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        shape = [1] * x.ndim
        shape[axis] = new
        w = (coord - lo).astype(x.dtype).reshape(shape)
        a, b = np.take(out, lo, axis=axis), np.take(out, hi, axis=axis)
        out = a + (b - a) * w
    return out
