"""Public ``convolve2d`` and ``correlate2d``: ``scipy.signal``'s semantics on the fast engine."""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers.filters.engine import filter2d

__all__ = ["convolve2d", "correlate2d"]


_SCIPY_NOTE = """
    Parameters
    ----------
    image : array_like, 2-D
        Image, any numeric dtype (see the dtype rule below). Must not be empty.
    kernel : array_like, 2-D
        Kernel, any size (larger than the image is fine); non-empty.
    mode : {"full", "valid", "same"}, default "full"
        Output size: ``H + kH - 1`` (every overlap), ``H - kH + 1`` (kernel inside the image;
        when the kernel is the larger in every dimension the two are swapped, as in SciPy),
        or ``H`` (centred on the full output with SciPy's origin).
    boundary : {"fill", "wrap", "symm"}, default "fill"
        How the image is extended: with ``fillvalue``, periodically, or mirrored with the
        edge sample repeated (``d c b a | a b c d | d c b a``), as often as the kernel needs.
    fillvalue : scalar, default 0
        Value outside the image when ``boundary="fill"``.

    Returns
    -------
    ndarray, 2-D
        float32 for float16/float32 images, float64 for bool, integer and float64 images,
        complex64/complex128 for complex data (:func:`result_dtype`). SciPy would return the
        common type of image and kernel instead; the values agree to float rounding.
"""


def convolve2d(
    image: Any, kernel: Any, mode: str = "full", boundary: str = "fill", fillvalue: Any = 0
) -> np.ndarray:
    """2-D convolution, the kernel flipped, exactly as ``scipy.signal.convolve2d``.

    ``out[i, j] = sum_{a, b} kernel[a, b] * image[i - a, j - b]`` (``mode="full"``).
    This is *not* what a deep-learning "convolution" (and the seed's loop) computes: those
    slide the kernel without flipping it, which is :func:`correlate2d`.
    {params}
    See Also
    --------
    correlate2d : the same without flipping the kernel.
    scipy.signal.convolve2d : the reference these results agree with.

    Notes
    -----
    Flipping matters for antisymmetric kernels: with ``sobel_x`` a dark-to-bright step gives
    negative values here and positive ones under :func:`correlate2d`. Kernels symmetric under a
    180-degree rotation (``blur``, ``laplacian``, ``gaussian``) give the same result under both
    (in "same" mode, when their sides are odd).

    Rank-1 kernels run as two 1-D passes, large ones through the FFT, the rest through a
    compiled direct loop; results differ from SciPy only by float rounding. Zero taps are
    skipped, so an ``inf`` or ``nan`` meeting a zero tap does not spread as it would in SciPy.

    Examples
    --------
    >>> import numpy as np
    >>> from convlayers.filters import FILTERS
    >>> step = np.array([[0, 0, 1, 1]] * 3)  # dark to bright, left to right
    >>> convolve2d(step, FILTERS["sobel_x"], mode="valid")
    array([[-4., -4.]])
    >>> correlate2d(step, FILTERS["sobel_x"], mode="valid")
    array([[4., 4.]])
    >>> blur = FILTERS["blur"]
    >>> bool(np.allclose(convolve2d(step, blur, "same"), correlate2d(step, blur, "same")))
    True
    """
    return filter2d(image, kernel, mode, boundary, fillvalue, flip=True, method="auto")


def correlate2d(
    image: Any, kernel: Any, mode: str = "full", boundary: str = "fill", fillvalue: Any = 0
) -> np.ndarray:
    """2-D cross-correlation, the kernel not flipped, exactly as ``scipy.signal.correlate2d``.

    ``out[i, j] = sum_{a, b} conj(kernel[a, b]) * image[i + a - kH + 1, j + b - kW + 1]``
    (``mode="full"``): the kernel slides over the image as written, which is what the seed's
    loop and every deep-learning "convolution" compute.
    {params}
    See Also
    --------
    convolve2d : the same with the kernel flipped.
    scipy.signal.correlate2d : the reference these results agree with.

    Notes
    -----
    ``correlate2d(x, k, mode)`` equals ``convolve2d(x, k[::-1, ::-1].conj(), mode)`` in "full"
    and "valid" modes, and in "same" mode when both sides of the kernel are odd: for an even
    side SciPy centres the two operations differently (correlation keeps rows ``kH // 2 ..`` of
    the full output, convolution rows ``(kH - 1) // 2 ..``). In "valid" mode with the kernel
    larger than the image, SciPy swaps the two and reverses the result; so does this function.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(9.0).reshape(3, 3)
    >>> correlate2d(x, [[1, 0], [0, -1]], mode="valid")
    array([[-4., -4.],
           [-4., -4.]])
    >>> convolve2d(x, [[1, 0], [0, -1]], mode="valid")
    array([[4., 4.],
           [4., 4.]])
    """
    return filter2d(image, kernel, mode, boundary, fillvalue, flip=False, method="auto")


convolve2d.__doc__ = (convolve2d.__doc__ or "").replace("{params}", _SCIPY_NOTE)
correlate2d.__doc__ = (correlate2d.__doc__ or "").replace("{params}", _SCIPY_NOTE)
