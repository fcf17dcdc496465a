"""``convolve2d`` and ``correlate2d`` with ``scipy.signal`` semantics, and the engine behind them.

Both reduce to one operation: the *valid* cross-correlation of a padded image with a kernel
(convolution first flips the kernel). The engine pads once, virtually, through two index maps
(see :mod:`convlayers.kernels.filter2d`), then picks a path:

- ``"separable"``: a rank-1 kernel (singular values ``s[1] <= 1e-10 * s[0]``) is factored as
  ``outer(col, row)`` and applied as two 1-D passes (numba);
- ``"fft"``: kernels with at least ``FFT_MIN_AREA[dtype]`` taps go through ``scipy.fft``;
- ``"direct"``: otherwise a numba loop over the kernel taps, zero taps skipped;
- ``"numpy"``: complex data (which the numba kernels do not take) with small kernels.

Every path returns the same numbers up to float rounding.
"""

from __future__ import annotations

import numbers
import types
from typing import Any

import numpy as np
import scipy.fft

from convlayers import config
from convlayers._validate import one_of
from convlayers.filters.bank import as_kernel

__all__ = ["BOUNDARIES", "FFT_MIN_AREA", "MODES", "filter2d", "result_dtype"]

MODES = ("full", "same", "valid")
BOUNDARIES = ("fill", "wrap", "symm")
_METHODS = ("auto", "separable", "direct", "fft", "numpy")

#: Kernels with at least this many taps (and not rank 1) go through the FFT. Measured on a
#: 3840x2160 image with 2 threads, the direct loop wins below about 25x25 taps in float32 and
#: 18x18 in float64 (OpenCV switches at 11x11); complex data has only the slower NumPy loop.
FFT_MIN_AREA = types.MappingProxyType(
    {"float32": 600, "float64": 300, "complex64": 130, "complex128": 130}
)
_RANK1_RTOL = 1e-10  # s[1] / s[0] below this counts as rank 1
_SVD_MAX_TAPS = 128 * 128  # larger kernels skip the rank test (and go to the FFT)


def result_dtype(image_dtype: Any, kernel_dtype: Any = np.float64) -> np.dtype:
    """The one dtype rule of the filters: the output (and working) dtype.

    - bool and integer images become float64; float16 becomes float32;
    - float32 stays float32 and float64 stays float64 (longdouble computes in float64);
    - complex64 and complex128 stay as they are; a complex kernel on a real image gives the
      complex type of the image's precision.

    The kernel never raises the precision: a float64 kernel on a float32 image is rounded to
    float32 and the result is float32 (SciPy would return float64).

    Examples
    --------
    >>> result_dtype(np.uint8), result_dtype(np.float32), result_dtype(np.float32, complex)
    (dtype('float64'), dtype('float32'), dtype('complex64'))
    """
    image_dtype, kernel_dtype = np.dtype(image_dtype), np.dtype(kernel_dtype)
    for name, dt in (("image", image_dtype), ("kernel", kernel_dtype)):
        if dt.kind not in "biufc":
            raise TypeError(f"{name} must have a numeric dtype (bool, int, float), got {dt}")
    single = image_dtype in (np.float16, np.float32, np.complex64)
    if image_dtype.kind == "c" or kernel_dtype.kind == "c":
        return np.dtype(np.complex64 if single else np.complex128)
    return np.dtype(np.float32 if single else np.float64)


def _as_image(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"image must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"image must be a 2-D array (H, W), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"image must not be empty, got shape {arr.shape}")
    return arr


def _fill_scalar(fillvalue: Any, dtype: np.dtype) -> Any:
    if isinstance(fillvalue, np.ndarray) and fillvalue.size == 1:
        fillvalue = fillvalue.reshape(()).item()
    if not isinstance(fillvalue, numbers.Complex):  # bool, int, float, complex, NumPy scalars
        raise TypeError(f"fillvalue must be a number, got {fillvalue!r}")
    value = complex(fillvalue)
    if dtype.kind == "c":
        return dtype.type(value)
    if value.imag != 0:
        raise ValueError(f"fillvalue must be real for a real image, got {fillvalue!r}")
    return dtype.type(value.real)


def _pads(ksize: int, mode: str, flip: bool) -> tuple[int, int]:
    """Rows (or columns) of padding before and after, SciPy's origin included.

    In "same" mode SciPy centres an even kernel differently for the two operations:
    ``convolve2d`` keeps rows ``(k-1)//2 ..`` of the full convolution, ``correlate2d`` rows
    ``k//2 ..`` of the full correlation.
    """
    if mode == "full":
        return ksize - 1, ksize - 1
    if mode == "valid":
        return 0, 0
    return (ksize // 2, (ksize - 1) // 2) if flip else ((ksize - 1) // 2, ksize // 2)


def _index_map(n: int, before: int, after: int, boundary: str) -> np.ndarray:
    """Source index of each padded position (``-1``: fill), extending periodically as SciPy."""
    i = np.arange(-before, n + after, dtype=np.int64)
    if boundary == "fill":
        return np.where((i >= 0) & (i < n), i, -1)
    if boundary == "wrap":
        return i % n
    t = i % (2 * n)  # "symm": mirror with the edge sample repeated, period 2n
    return np.where(t < n, t, 2 * n - 1 - t)


def _rank1_factors(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(col, row)`` with ``outer(col, row) == kernel`` to rounding, or None if not rank 1.

    The rank is decided by the SVD; the factors are taken from the kernel itself (the column
    and row through its largest entry), which keeps integer kernels such as Sobel exact.
    """
    if kernel.dtype.kind == "c" or kernel.size > _SVD_MAX_TAPS or not np.isfinite(kernel).all():
        return None
    s = np.linalg.svd(kernel, compute_uv=False)
    if s[0] == 0 or (s.size > 1 and s[1] > _RANK1_RTOL * s[0]):
        return None
    i, j = np.unravel_index(np.argmax(np.abs(kernel)), kernel.shape)
    col, row = kernel[:, j].copy(), kernel[i, :] / kernel[i, j]
    if np.abs(np.outer(col, row) - kernel).max() > _RANK1_RTOL * np.abs(kernel).max():
        return None
    return col, row


def _pick_method(method: str, kernel: np.ndarray, dtype: np.dtype) -> tuple[str, Any]:
    one_of(method, _METHODS, "_method")
    if dtype.kind == "c":  # the numba kernels take real data only
        if method in ("separable", "direct"):
            raise ValueError(f"_method={method!r} does not take complex data")
        if method == "auto":
            method = "fft" if kernel.size >= FFT_MIN_AREA[dtype.name] else "numpy"
        return method, None
    factors = _rank1_factors(kernel) if method in ("auto", "separable") else None
    if method == "separable" and factors is None:
        raise ValueError("_method='separable' needs a rank-1 kernel")
    if method != "auto":
        return method, factors
    if factors is not None:
        return "separable", factors
    return ("fft" if kernel.size >= FFT_MIN_AREA[dtype.name] else "direct"), None


def _padded(a: np.ndarray, rows: np.ndarray, cols: np.ndarray, fill: Any) -> np.ndarray:
    """The padded image itself (for the NumPy and FFT paths)."""
    p = a[np.ix_(np.maximum(rows, 0), np.maximum(cols, 0))]
    p[rows < 0, :] = fill
    p[:, cols < 0] = fill
    return p


def _correlate_valid(
    a: np.ndarray, k: np.ndarray, pads: tuple[int, int, int, int], boundary: str,
    fill: Any, dtype: np.dtype, method: str,
) -> np.ndarray:
    """Valid cross-correlation of ``a`` padded by ``pads`` (top, bottom, left, right) with ``k``."""
    top, bottom, left, right = pads
    rows = _index_map(a.shape[0], top, bottom, boundary)
    cols = _index_map(a.shape[1], left, right, boundary)
    kh, kw = k.shape
    out_shape = (rows.size - kh + 1, cols.size - kw + 1)
    method, factors = _pick_method(method, k, dtype)
    a = np.ascontiguousarray(a, dtype=dtype)
    if method in ("separable", "direct"):
        import numba  # deferred: compiling is paid on first use, not on `import convlayers`

        from convlayers.kernels import filter2d as kernels

        config.apply_numba_threads()
        out = np.empty(out_shape, dtype=dtype)
        nchunks = min(out_shape[0], numba.get_num_threads())
        if method == "separable":
            col, row = (f.astype(dtype) for f in factors)
            return kernels.correlate_separable(a, col, row, rows, cols, left, fill, out, nchunks)
        return kernels.correlate_direct(a, k.astype(dtype), rows, cols, left, fill, out, nchunks)
    p = _padded(a, rows, cols, fill)
    k = k.astype(dtype)
    if method == "numpy":
        out = np.zeros(out_shape, dtype=dtype)
        for (i, j), w in np.ndenumerate(k):
            if w != 0:
                out += w * p[i : i + out_shape[0], j : j + out_shape[1]]
        return out
    real = dtype.kind != "c"
    shape = [
        scipy.fft.next_fast_len(n + m - 1, real=real) for n, m in zip(p.shape, k.shape, strict=True)
    ]
    fwd, inv = (scipy.fft.rfft2, scipy.fft.irfft2) if real else (scipy.fft.fft2, scipy.fft.ifft2)
    workers = config.threads()
    spec = fwd(p, shape, workers=workers) * fwd(k[::-1, ::-1], shape, workers=workers)
    full = inv(spec, shape, workers=workers)
    return np.ascontiguousarray(full[kh - 1 : p.shape[0], kw - 1 : p.shape[1]], dtype=dtype)


def filter2d(
    image: Any, kernel: Any, mode: str, boundary: str, fillvalue: Any, flip: bool,
    method: str = "auto",
) -> np.ndarray:
    """Shared body of ``convolve2d`` (``flip=True``) and ``correlate2d`` (``flip=False``).

    ``method`` forces a path ("separable", "direct", "fft", "numpy"); "auto" chooses.
    """
    a = _as_image(image)
    k = as_kernel(kernel)
    one_of(mode, MODES, "mode")
    one_of(boundary, BOUNDARIES, "boundary")
    dtype = result_dtype(a.dtype, k.dtype)
    fill = _fill_scalar(fillvalue, dtype)
    swapped = False
    if mode == "valid":  # SciPy's rule: swap when the kernel is the larger of the two
        ok1 = a.shape[0] >= k.shape[0] and a.shape[1] >= k.shape[1]
        ok2 = k.shape[0] >= a.shape[0] and k.shape[1] >= a.shape[1]
        if not (ok1 or ok2):
            raise ValueError(
                "for mode='valid', image or kernel must be at least as large as the other in "
                f"every dimension, got image shape {a.shape} and kernel shape {k.shape}"
            )
        swapped = not ok1
        if swapped:
            a, k = k, a
    k = k.astype(np.complex128 if k.dtype.kind == "c" else np.float64)
    k = k[::-1, ::-1] if flip else k.conj()
    pads = _pads(k.shape[0], mode, flip) + _pads(k.shape[1], mode, flip)
    out = _correlate_valid(a, k, pads, boundary, fill, dtype, method)
    if swapped and not flip:
        out = np.ascontiguousarray(out[::-1, ::-1])
    return out

