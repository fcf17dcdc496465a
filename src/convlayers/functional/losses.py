"""Losses: ``cross_entropy`` (stable log-sum-exp, label smoothing) and ``mse_loss``."""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers._validate import float_array, one_of, same_dtype
from convlayers.functional.activations import log_softmax

__all__ = ["cross_entropy", "cross_entropy_backward", "mse_loss", "mse_loss_backward"]

REDUCTIONS = ("mean", "sum", "none")


def _targets(input: Any, target: Any, label_smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """Logits as ``(M, C)`` rows and the target distribution ``q`` of the same shape."""
    x = float_array(input, "input")
    if x.ndim == 0:
        raise ValueError("input must have a class axis: (C,), (N, C) or (N, C, d1, ...), got a scalar")
    if isinstance(label_smoothing, bool) or not 0 <= label_smoothing <= 1:
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    rows = np.moveaxis(x, 1, -1) if x.ndim > 1 else x
    t = np.asarray(target)
    C = rows.shape[-1]
    if t.dtype.kind == "f":  # class probabilities, shaped like input
        if t.shape != x.shape:
            raise ValueError(f"probability target must have the input's shape {x.shape}, got {t.shape}")
        q = np.moveaxis(t, 1, -1) if x.ndim > 1 else t
    elif t.dtype.kind in "iu":
        if t.shape != rows.shape[:-1]:
            raise ValueError(f"class-index target must have shape {rows.shape[:-1]} (input {x.shape} "
                             f"without its class axis), got {t.shape}")
        if t.size and (t.min() < 0 or t.max() >= C):
            raise ValueError(f"target class indices must be in [0, {C - 1}], got values from "
                             f"{t.min()} to {t.max()}")
        q = (t[..., None] == np.arange(C)).astype(x.dtype)
    else:
        raise TypeError(f"target must hold integer class indices or float probabilities, got dtype {t.dtype}")
    if label_smoothing:
        q = q * (1 - label_smoothing) + label_smoothing / C
    return rows.astype(x.dtype, copy=False), q.astype(x.dtype, copy=False)


def _reduce(values: np.ndarray, reduction: str) -> np.ndarray:
    one_of(reduction, REDUCTIONS, "reduction")
    if reduction == "none":
        return values
    return np.asarray(values.sum() if reduction == "sum" else values.mean(), values.dtype)


def cross_entropy(
    input: Any, target: Any, reduction: str = "mean", label_smoothing: float = 0.0
) -> np.ndarray:
    """Softmax cross-entropy of logits, as ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    input : ndarray
        Logits ``(N, C)``, ``(N, C, d1, ...)`` or unbatched ``(C,)``.
    target : ndarray
        Class indices (integers, the input's shape without ``C``) or class probabilities
        (floats, the input's shape).
    reduction : {"mean", "sum", "none"}
        Average over samples (default), sum, or one loss per sample.
    label_smoothing : float
        Mix the target with the uniform distribution: ``q = (1-eps)*q + eps/C``.

    Returns
    -------
    ndarray
        ``-sum(q * log_softmax(input))`` per sample, reduced. The log-softmax subtracts the
        row maximum before exponentiating, so large logits do not overflow.

    Examples
    --------
    >>> logits = np.array([[1000.0, 0.0], [0.0, 0.0]])
    >>> cross_entropy(logits, np.array([0, 1]), reduction="none")
    array([0.        , 0.69314718])
    """
    rows, q = _targets(input, target, label_smoothing)
    return _reduce(-(q * log_softmax(rows, -1)).sum(axis=-1), reduction)


def cross_entropy_backward(
    grad_output: Any, input: Any, target: Any, reduction: str = "mean", label_smoothing: float = 0.0
) -> np.ndarray:
    """Gradient of :func:`cross_entropy` with respect to the logits: ``softmax*sum(q) - q``.

    >>> cross_entropy_backward(np.array(1.0), np.array([[0.0, 0.0]]), np.array([1]))
    array([[ 0.5, -0.5]])
    """
    x = float_array(input, "input")
    rows, q = _targets(x, target, label_smoothing)
    one_of(reduction, REDUCTIONS, "reduction")
    g = np.asarray(grad_output, x.dtype)
    if reduction == "none":
        g = g[..., None]
    elif reduction == "mean":
        g = g / max(q.size // q.shape[-1], 1)
    p = np.exp(log_softmax(rows, -1))
    grad = (p * q.sum(axis=-1, keepdims=True) - q) * g
    return np.ascontiguousarray(np.moveaxis(grad, -1, 1) if x.ndim > 1 else grad)


def _pair(input: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    x, t = float_array(input, "input"), float_array(target, "target")
    same_dtype(x, t, "input", "target")
    if x.shape != t.shape:
        raise ValueError(f"input and target must have the same shape, got {x.shape} and {t.shape}")
    return x, t


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> np.ndarray:
    """Mean squared error ``mean((input - target)**2)``, as ``torch.nn.functional.mse_loss``.

    >>> mse_loss(np.array([1.0, 3.0]), np.array([0.0, 0.0]))
    array(5.)
    """
    x, t = _pair(input, target)
    return _reduce((x - t) ** 2, reduction)


def mse_loss_backward(
    grad_output: Any, input: Any, target: Any, reduction: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`mse_loss` for ``(input, target)``: ``+-2 (input - target) g / n``.

    >>> mse_loss_backward(np.array(1.0), np.array([1.0, 3.0]), np.array([0.0, 0.0]))
    (array([1., 3.]), array([-1., -3.]))
    """
    x, t = _pair(input, target)
    one_of(reduction, REDUCTIONS, "reduction")
    scale = 2 / x.size if reduction == "mean" else 2
    gx = (x - t) * (np.asarray(grad_output, x.dtype) * np.asarray(scale, x.dtype))
    return gx, -gx
