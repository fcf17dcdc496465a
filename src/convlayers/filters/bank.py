"""The named filter bank: classic 3x3 kernels and parametric builders.

Edge kernels are built from 1-D factors, so their separability is visible in the source
(a Sobel kernel is a smoothing vector times a difference vector). Every kernel is a float64
2-D array laid out the way it is written: row 0 is the top row.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from convlayers._validate import as_int

__all__ = ["FILTERS", "box", "gaussian", "get_filter", "unsharp"]

# 1-D factors (column vector times row vector)
_DIFF = np.array([-1.0, 0.0, 1.0])  # central difference, increasing to the right / downwards
_MEAN = np.array([1.0, 1.0, 1.0])  # Prewitt smoothing
_BINOMIAL = np.array([1.0, 2.0, 1.0])  # Sobel smoothing
_SCHARR = np.array([3.0, 10.0, 3.0])  # Scharr smoothing (better rotational symmetry)


def _frozen(kernel: np.ndarray) -> np.ndarray:
    kernel = np.array(kernel, dtype=np.float64)
    kernel.flags.writeable = False
    return kernel


def box(n: int = 3) -> np.ndarray:
    """Mean filter: an ``n x n`` kernel of ``1 / n**2`` (sum 1).

    Parameters
    ----------
    n : int, default 3
        Side length, at least 1.

    Returns
    -------
    ndarray of float64, shape (n, n)

    Examples
    --------
    >>> box(2)
    array([[0.25, 0.25],
           [0.25, 0.25]])
    """
    if as_int(n, "n") < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return np.full((n, n), 1.0 / (n * n))


def _check_size_sigma(size: int, sigma: float) -> None:
    if as_int(size, "size") < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating, np.integer)):
        raise TypeError(f"sigma must be a real number, got {sigma!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def gaussian(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur kernel of shape ``(size, size)``, normalised to sum 1.

    It is the outer product of the 1-D kernel ``g[i] = exp(-(i - c)**2 / (2 sigma**2)) / Z``
    with itself (``c = (size - 1) / 2``), hence separable.

    Parameters
    ----------
    size : int, default 5
        Side length, at least 1 (odd sizes keep the kernel centred on a pixel).
    sigma : float, default 1.0
        Standard deviation in pixels, > 0.

    Returns
    -------
    ndarray of float64, shape (size, size)

    Examples
    --------
    >>> k = gaussian(3, sigma=1.0)
    >>> k.round(3)
    array([[0.075, 0.124, 0.075],
           [0.124, 0.204, 0.124],
           [0.075, 0.124, 0.075]])
    >>> float(k.sum())
    1.0
    """
    _check_size_sigma(size, sigma)
    x = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * float(sigma) ** 2))
    g /= g.sum()
    return np.outer(g, g)


def unsharp(size: int = 5, sigma: float = 1.0, amount: float = 1.0) -> np.ndarray:
    """Unsharp-masking kernel: ``(1 + amount) * identity - amount * gaussian(size, sigma)``.

    Convolving with it adds ``amount`` times the detail (image minus its blur) back to the
    image. The kernel sums to 1, so flat regions keep their value.

    Parameters
    ----------
    size, sigma
        Passed to :func:`gaussian`; ``size`` should be odd so that the identity is centred.
    amount : float, default 1.0
        Strength of the sharpening (0 gives the identity).

    Returns
    -------
    ndarray of float64, shape (size, size)

    Examples
    --------
    >>> k = unsharp(3, sigma=1.0, amount=1.0)
    >>> round(float(k.sum()), 12), round(float(k[1, 1]), 3)
    (1.0, 1.796)
    """
    _check_size_sigma(size, sigma)
    if isinstance(amount, bool) or not isinstance(amount, (int, float, np.floating, np.integer)):
        raise TypeError(f"amount must be a real number, got {amount!r}")
    if size % 2 == 0:
        raise ValueError(f"size must be odd so the identity tap is centred, got {size}")
    kernel = -float(amount) * gaussian(size, sigma)
    kernel[size // 2, size // 2] += 1.0 + float(amount)
    return kernel


#: name -> read-only float64 kernel. Use :func:`get_filter` for a writable copy.
FILTERS: Mapping[str, np.ndarray] = types.MappingProxyType(
    {
        # the seed's six
        "vertical": _frozen(np.outer(_MEAN, -_DIFF)),  # [[1, 0, -1]] * 3
        "horizontal": _frozen(np.outer(-_DIFF, _MEAN)),  # [[1]*3, [0]*3, [-1]*3]
        "sobel_x": _frozen(np.outer(_BINOMIAL, _DIFF)),
        "sobel_y": _frozen(np.outer(_DIFF, _BINOMIAL)),  # the transpose of sobel_x
        "blur": _frozen(box(3)),
        "laplacian": _frozen(np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]])),
        # more edge detectors, same pattern
        "prewitt_x": _frozen(np.outer(_MEAN, _DIFF)),
        "prewitt_y": _frozen(np.outer(_DIFF, _MEAN)),
        "scharr_x": _frozen(np.outer(_SCHARR, _DIFF)),
        "scharr_y": _frozen(np.outer(_DIFF, _SCHARR)),
        # enhancement
        "sharpen": _frozen(np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])),
        "emboss": _frozen(np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])),
        # parametric builders at their defaults
        "gaussian": _frozen(gaussian()),
        "box": _frozen(box()),
        "unsharp": _frozen(unsharp()),
    }
)


def as_kernel(kernel: Any, name: str = "kernel") -> np.ndarray:
    """Validate a 2-D, non-empty, numeric kernel; return it as float64 (complex stays complex)."""
    arr = np.asarray(kernel)
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (kH, kW), got shape {arr.shape} with {arr.ndim} "
            "dimensions"
        )
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    return arr.astype(np.complex128 if arr.dtype.kind == "c" else np.float64)


def get_filter(name_or_kernel: str | ArrayLike) -> np.ndarray:
    """Resolve a filter name from :data:`FILTERS`, or validate a kernel given as an array.

    Parameters
    ----------
    name_or_kernel : str or array_like
        A key of :data:`FILTERS` (e.g. ``"sobel_x"``), or a 2-D numeric kernel.

    Returns
    -------
    ndarray, 2-D
        A new, writable float64 array (complex128 for a complex kernel).

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones), or a kernel that is not 2-D or empty.
    TypeError
        A kernel with a non-numeric dtype.

    Examples
    --------
    >>> get_filter("sobel_x")
    array([[-1.,  0.,  1.],
           [-2.,  0.,  2.],
           [-1.,  0.,  1.]])
    >>> get_filter([[0, 1], [1, 0]]).dtype
    dtype('float64')
    """
    if isinstance(name_or_kernel, str):
        try:
            return np.array(FILTERS[name_or_kernel])
        except KeyError:
            known = ", ".join(sorted(FILTERS))
            raise ValueError(
                f"filter must be a known filter name or a 2-D kernel, got {name_or_kernel!r}; "
                f"known names: {known}"
            ) from None
    return np.array(as_kernel(name_or_kernel, "filter"))
