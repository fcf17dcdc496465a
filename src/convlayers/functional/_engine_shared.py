"""Helpers the convolution engine's strategies share: layout, bias argument, value checks."""

from __future__ import annotations

import numpy as np

from convlayers.functional.plan import magnitude

#: inf and NaN go through the NumPy parts silently, as through torch (no RuntimeWarning).
_quiet = np.errstate(invalid="ignore", over="ignore")


def _finite(a: np.ndarray) -> bool:
    return bool(np.isfinite(magnitude(a)))


def _as_4d(a: np.ndarray) -> np.ndarray:
    """A 1-D problem ``(N, C, L)`` as 2-D ``(N, C, 1, L)``; contiguous for the kernels."""
    return np.ascontiguousarray(a if a.ndim == 4 else a[:, :, None, :])


def _bias_arg(bias: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """The bias as the kernels take it: an empty array when there is none."""
    return np.empty(0, dtype=dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
