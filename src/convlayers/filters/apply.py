"""Filters applied to photos: grayscale or color, uint8 or float, and the Sobel gradient."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from convlayers import config, limits
from convlayers._validate import one_of
from convlayers.filters.bank import FILTERS, get_filter
from convlayers.filters.engine import _index_map, _pads, filter2d, result_dtype

__all__ = ["apply_filter", "filter_strips", "sobel_gradient"]


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
    kernel = _checked_kernel(filter, arr)
    one_of(output, ("float", "uint8"), "output")
    if mode == "same":  # strip by strip into one output: scratch stays under config.scratch_bytes
        dtype = result_dtype(arr.dtype, kernel.dtype)
        limits.check_elements(arr.shape, dtype, "output of apply_filter")
        result = np.empty(arr.shape, dtype)
        for row, strip in filter_strips(arr, kernel, boundary=boundary, fillvalue=fillvalue):
            result[row : row + len(strip)] = strip
    elif arr.ndim == 2:
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


def _checked_kernel(filter: Any, image: np.ndarray) -> np.ndarray:
    """The kernel, refused when not finite or when its responses could overflow the result."""
    kernel = get_filter(filter)
    if kernel.dtype.kind == "c":
        raise TypeError("filter must be a real kernel, got a complex one")
    if not np.isfinite(kernel).all():
        raise ValueError("filter must hold finite numbers, got NaN or infinity in the kernel")
    dtype = result_dtype(image.dtype, kernel.dtype)
    if image.dtype.kind in "iu":
        peak = float(max(abs(int(np.iinfo(image.dtype).min)), int(np.iinfo(image.dtype).max)))
    elif image.dtype.kind == "b":
        peak = 1.0
    else:
        peak = float(max(abs(np.nanmin(image)), abs(np.nanmax(image)), 0.0))
    with np.errstate(over="ignore", invalid="ignore"):
        bound = float(np.abs(kernel).sum()) * peak
    if np.isfinite(peak) and not bound <= float(np.finfo(dtype).max):
        raise ValueError(
            f"filter: kernel values up to {float(np.abs(kernel).max()):.3g} on an image with "
            f"values up to {peak:.3g} give responses beyond {dtype.name}'s range "
            f"({float(np.finfo(dtype).max):.3g}); scale the kernel down")
    return kernel


def filter_strips(
    image: ArrayLike, filter: str | ArrayLike, *, boundary: str = "symm", fillvalue: float = 0,
    rows: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """``apply_filter(image, filter, boundary=...)`` ("same" mode), a strip of rows at a time.

    Yields ``(first_row, response)`` pairs whose responses, stacked, equal :func:`apply_filter`'s
    result; only one strip (the rows it needs from the image, mirrored or wrapped at the edges as
    ``boundary`` says) is in memory at a time, so a large photo can be filtered and scaled to 8
    bits without holding its float response whole.

    Parameters
    ----------
    image : array_like, shape (H, W) or (H, W, C)
        Grayscale or channels-last color image.
    filter : str or array_like
        A name from :data:`FILTERS` or a real 2-D kernel (finite).
    boundary, fillvalue
        As in :func:`apply_filter`.
    rows : int, optional
        Rows per strip (default: as many as fit in a quarter of :func:`config.scratch_bytes`).

    Examples
    --------
    >>> img = np.arange(30.0).reshape(5, 6)
    >>> parts = [strip for _, strip in filter_strips(img, "laplacian", rows=2)]
    >>> [p.shape for p in parts]
    [(2, 6), (2, 6), (1, 6)]
    >>> bool(np.array_equal(np.concatenate(parts), apply_filter(img, "laplacian")))
    True
    """
    arr = _as_photo(image)
    kernel = _checked_kernel(filter, arr)
    one_of(boundary, ("fill", "wrap", "symm"), "boundary")
    dtype = result_dtype(arr.dtype, kernel.dtype)
    height, width = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    kh, kw = kernel.shape
    row_map = _index_map(height, *_pads(kh, "same", True), boundary)
    col_map = _index_map(width, *_pads(kw, "same", True), boundary)
    if rows is None:
        per_row = (width + kw) * channels * dtype.itemsize * 3
        rows = max(1, config.scratch_bytes() // 4 // per_row - kh)
    elif isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be an int >= 1, got {rows!r}")
    cols = np.maximum(col_map, 0)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        needed = row_map[top : bottom + kh - 1]
        strip = arr[np.maximum(needed, 0)][:, cols].astype(dtype)
        if boundary == "fill":
            strip[needed < 0] = fillvalue
            strip[:, col_map < 0] = fillvalue
        if arr.ndim == 2:
            yield top, filter2d(strip, kernel, "valid", "fill", 0, flip=True)
        else:
            out = np.empty((bottom - top, width, channels), dtype)
            for c in range(channels):
                out[:, :, c] = filter2d(strip[:, :, c], kernel, "valid", "fill", 0, flip=True)
            yield top, out


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
