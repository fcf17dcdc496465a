"""Filters applied to photos: grayscale or color, uint8 or float, and the Sobel gradient."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from convlayers._validate import one_of
from convlayers.filters.bank import FILTERS, get_filter
from convlayers.filters.engine import filter2d

__all__ = ["apply_filter", "sobel_gradient"]


def _as_photo(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"image must be a real numeric array (uint8, float), got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"image must have 2 dimensions (H, W) or 3 (H, W, C), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"image must not be empty, got shape {arr.shape}")
    return arr


def apply_filter(
    image: ArrayLike,
    filter: str | ArrayLike,
    *,
    mode: str = "same",
    boundary: str = "symm",
    fillvalue: float = 0,
    output: str = "float",
) -> np.ndarray:
    """Convolve a grayscale or color photo with a named filter or a kernel, channel by channel.

    The defaults reproduce the classic recipe
    ``scipy.signal.convolve2d(image_gray, filt, mode="same", boundary="symm")``: a true
    convolution (kernel flipped), same size as the input, mirrored edges.

    Parameters
    ----------
    image : array_like, shape (H, W) or (H, W, C)
        Grayscale or channels-last color image, uint8 (0..255) or float.
    filter : str or array_like
        A name from :data:`FILTERS` or a real 2-D kernel.
    mode, boundary, fillvalue
        As in :func:`convolve2d`; keyword-only.
    output : {"float", "uint8"}, default "float"
        "float": the raw response (float64 for integer input, float32 stays float32).
        "uint8": the response rounded to the nearest integer and clipped to [0, 255], ready
        to save or show (edge responses are signed: clipping drops the negative half).

    Returns
    -------
    ndarray
        Shape (H, W) or (H, W, C) in "same" mode (other modes change H and W).

    See Also
    --------
    convolve2d : the 2-D operation applied to each channel.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((4, 4), dtype=np.uint8); img[:, 2:] = 200
    >>> apply_filter(img, "sobel_x")
    array([[   0., -800., -800.,    0.],
           [   0., -800., -800.,    0.],
           [   0., -800., -800.,    0.],
           [   0., -800., -800.,    0.]])
    >>> apply_filter(np.dstack([img, img, img]), "blur", output="uint8")[0, :, 0]
    array([  0,  67, 133, 200], dtype=uint8)
    """
    arr = _as_photo(image)
    kernel = get_filter(filter)
    if kernel.dtype.kind == "c":
        raise TypeError("filter must be a real kernel, got a complex one")
    one_of(output, ("float", "uint8"), "output")
    if arr.ndim == 2:
        result = filter2d(arr, kernel, mode, boundary, fillvalue, flip=True)
    else:
        planes = [
            filter2d(arr[:, :, c], kernel, mode, boundary, fillvalue, flip=True)
            for c in range(arr.shape[2])
        ]
        result = np.stack(planes, axis=-1)
    if output == "uint8":
        return np.clip(np.rint(result), 0, 255).astype(np.uint8)
    return result


def sobel_gradient(image: ArrayLike, *, boundary: str = "symm") -> tuple[np.ndarray, np.ndarray]:
    """Gradient magnitude and direction of a grayscale image with the Sobel kernels.

    ``gx = correlate2d(image, sobel_x)`` and ``gy = correlate2d(image, sobel_y)`` ("same"
    mode), so ``gx > 0`` where the image gets brighter to the right and ``gy > 0`` where it gets
    brighter downwards (row index increasing).

    Parameters
    ----------
    image : array_like, shape (H, W)
        Grayscale image, uint8 or float.
    boundary : {"symm", "wrap", "fill"}, default "symm"
        Edge handling, as in :func:`correlate2d` (fill value 0).

    Returns
    -------
    magnitude : ndarray, shape (H, W)
        ``hypot(gx, gy)``.
    direction : ndarray, shape (H, W)
        ``arctan2(gy, gx)`` in radians, in ``[-pi, pi]``; 0 points right, ``pi/2`` down.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((5, 5)); img[:, 3:] = 1.0  # brighter to the right
    >>> mag, ang = sobel_gradient(img)
    >>> float(mag[2, 2]), float(ang[2, 2])
    (4.0, 0.0)
    """
    arr = _as_photo(image)
    if arr.ndim != 2:
        raise ValueError(
            f"image must be grayscale with shape (H, W), got shape {arr.shape}; "
            "convert a color image to gray first"
        )
    gx = filter2d(arr, FILTERS["sobel_x"], "same", boundary, 0, flip=False)
    gy = filter2d(arr, FILTERS["sobel_y"], "same", boundary, 0, flip=False)
    return np.hypot(gx, gy), np.arctan2(gy, gx)
