"""The dense head of a CNN: ``flatten`` the feature maps, then ``linear`` (``x @ W.T + b``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers import config, limits
from convlayers._validate import as_int, check_ndim, float_array, same_dtype
from convlayers.functional._compiled import _threads_for

__all__ = ["flatten", "linear", "linear_backward"]


def linear(input: Any, weight: Any, bias: Any = None) -> np.ndarray:
    """``input @ weight.T + bias`` over the last axis, as ``torch.nn.functional.linear``.

    Parameters
    ----------
    input : ndarray
        ``(*, in_features)``.
    weight : ndarray
        ``(out_features, in_features)``.
    bias : ndarray, optional
        ``(out_features,)``.

    Returns
    -------
    ndarray
        ``(*, out_features)``.

    Examples
    --------
    >>> linear(np.array([[1.0, 2.0]]), np.array([[1.0, 1.0], [0.0, -1.0]]), np.array([0.5, 0.0]))
    array([[ 3.5, -2. ]])
    """
    x = float_array(input, "input")
    w = float_array(weight, "weight")
    _check_features(x, w)
    same_dtype(x, w, "input", "weight")
    b = None
    if bias is not None:
        b = float_array(bias, "bias")
        same_dtype(x, b, "input", "bias")
        if b.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},), got {b.shape}")
    rows = x.size // max(1, x.shape[-1])
    shape = (*x.shape[:-1], w.shape[0])
    if rows * w.shape[0] * x.itemsize > config.max_array_bytes():  # refused before allocating
        limits.check_elements(shape, x.dtype, lambda: f"the output of linear (shape {shape} "
                              f"from input {x.shape} and weight {w.shape})")
    kernel = _kernel(rows, w.shape[1], w.shape[0], x.dtype)
    if kernel:
        from convlayers.kernels import linear as compiled

        x2 = np.ascontiguousarray(x).reshape(rows, w.shape[1])
        wc = np.ascontiguousarray(w)
        shift = np.zeros(w.shape[0], x.dtype) if b is None else np.ascontiguousarray(b)
        out = np.empty((rows, w.shape[0]), x.dtype)
        with _threads_for(rows * w.size):  # the thread setting applied
            if kernel == "dot":
                compiled.linear_rows(x2, wc, shift, out)
            else:
                compiled.linear_tiles(wc, np.ascontiguousarray(x2.T), shift,
                                      np.empty((w.shape[0], rows), x.dtype), out)
        return out.reshape(shape)
    out = x @ w.T
    if b is not None:
        out += b
    return out


def _check_features(x: np.ndarray, w: np.ndarray) -> None:
    """A 2-D ``weight`` whose ``in_features`` is the input's last axis, or a ``ValueError``
    naming both shapes (before any reshape that would fail as NumPy's)."""
    check_ndim(w, (2,), "weight", "out_features, in_features")
    if x.ndim == 0 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"input's last axis must have in_features={w.shape[1]} values (weight "
                         f"{w.shape}), got input of shape {x.shape}")


def _kernel(rows: int, f_in: int, f_out: int, dtype: np.dtype) -> str | None:
    """Which of numba's kernels (:mod:`convlayers.kernels.linear`) :func:`linear` and
    :func:`linear_backward` run, float32 or float64 from ``config.engine.serial_macs``
    multiply-adds: ``"dot"`` (dot products) below ``config.engine.linear_dot_rows`` rows,
    ``"tiles"`` (the register-tiled products) from there. None below ``serial_macs`` or for
    other dtypes: NumPy's ``@``, whose BLAS runs such small products on the calling thread."""
    if dtype not in (np.float32, np.float64) or rows * f_in * f_out < config.engine.serial_macs:
        return None
    return "dot" if rows < config.engine.linear_dot_rows else "tiles"


def linear_backward(
    grad_output: Any, input: Any, weight: Any, with_bias: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`linear`: ``(g @ W, g.T @ x, g summed over all but the last axis)``.

    >>> gx, gw, gb = linear_backward(np.ones((1, 2)), np.array([[1.0, 2.0]]), np.eye(2))
    >>> gx, gw, gb
    (array([[1., 1.]]), array([[1., 2.],
           [1., 2.]]), array([1., 1.]))
    """
    x = float_array(input, "input")
    w = float_array(weight, "weight")
    g = float_array(grad_output, "grad_output")
    _check_features(x, w)
    if g.shape != (*x.shape[:-1], w.shape[0]):
        raise ValueError(f"grad_output must have shape {(*x.shape[:-1], w.shape[0])}, got {g.shape}")
    g2 = g.reshape(-1, w.shape[0])
    gb = g2.sum(axis=0) if with_bias else None
    rows = g2.shape[0]
    kernel = _kernel(rows, w.shape[1], w.shape[0], g.dtype) if g.dtype == x.dtype == w.dtype else None
    if kernel:
        from convlayers.kernels import linear as compiled

        g2 = np.ascontiguousarray(g2)
        x2 = np.ascontiguousarray(x).reshape(rows, w.shape[1])
        wc = np.ascontiguousarray(w)
        gx = np.empty((rows, w.shape[1]), g.dtype)
        gw = np.empty(w.shape, g.dtype)
        with _threads_for(rows * w.size):
            if kernel == "dot":
                compiled.linear_rows_backward(g2, x2, wc, gx, gw)
            else:
                compiled.linear_tiles_backward(g2, np.ascontiguousarray(g2.T), x2, wc, gx, gw)
        return gx.reshape(*g.shape[:-1], w.shape[1]), gw, gb
    gw = g2.T @ x.reshape(-1, w.shape[1])
    return g @ w, gw, gb


def flatten(input: Any, start_dim: int = 0, end_dim: int = -1) -> np.ndarray:
    """Merge axes ``start_dim..end_dim`` into one, as ``torch.flatten`` (a view when possible).

    ``nn.Flatten`` uses ``start_dim=1`` to keep the batch axis.

    >>> flatten(np.zeros((2, 3, 4, 5)), start_dim=1).shape
    (2, 60)
    """
    x = np.asarray(input)
    n = max(x.ndim, 1)
    s, e = as_int(start_dim, "start_dim"), as_int(end_dim, "end_dim")
    for name, v in (("start_dim", s), ("end_dim", e)):
        if not -n <= v < n:
            raise ValueError(f"{name} must be in [{-n}, {n - 1}] for a {x.ndim}-D input, got {v}")
    s, e = s % n, e % n
    if s > e:
        raise ValueError(f"start_dim={start_dim} must not come after end_dim={end_dim}")
    if x.ndim == 0:
        return x.reshape(1)
    return x.reshape((*x.shape[:s], -1, *x.shape[e + 1:]))
