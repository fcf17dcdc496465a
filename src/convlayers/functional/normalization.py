"""Batch normalization with PyTorch's semantics, and its backward.

Per channel (axis 1), the input is shifted and scaled to zero mean and unit variance, then
``weight`` and ``bias`` restore a learned scale and offset. In training the statistics are the
batch's own (the biased variance, divided by ``n``) and the running estimates move towards
them in place: ``running = (1 - momentum) * running + momentum * batch``, with the unbiased
variance (divided by ``n - 1``) for ``running_var``. Otherwise the running estimates are used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers._validate import float_array, same_dtype
from convlayers.functional._compiled import _threads_for

__all__ = ["batch_norm", "batch_norm_backward", "inference_affine"]


def _channel_array(value: Any, name: str, x: np.ndarray) -> np.ndarray | None:
    if value is None:
        return None
    arr = float_array(value, name)
    if arr.shape != (x.shape[1],):
        raise ValueError(f"{name} must have shape ({x.shape[1]},) (one per channel), got {arr.shape}")
    same_dtype(x, arr, "input", name)
    return arr


def _prepare(input: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any) -> tuple:
    x = float_array(input, "input")
    if x.ndim < 2:
        raise ValueError(f"input must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    names = ("running_mean", "running_var", "weight", "bias")
    arrays = [_channel_array(v, n, x) for v, n in zip((running_mean, running_var, weight, bias), names,
                                                      strict=True)]
    return x, (0, *range(2, x.ndim)), arrays


def _statistics(x: np.ndarray, axes: tuple[int, ...], training: bool, rm: Any, rv: Any,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (biased) variance per channel: the batch's when ``training``."""
    if training:
        if x.size // x.shape[1] <= 1:
            raise ValueError(f"batch_norm needs more than 1 value per channel when training, got "
                             f"input of shape {x.shape}")
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)
    elif rm is None or rv is None:
        raise ValueError("running_mean and running_var are needed when training=False")
    else:
        mean, var = rm, rv
    return mean, var


def _check_eps(eps: Any, training: bool) -> float:
    """PyTorch's rule: ``eps > 0`` when training, ``eps >= 0`` otherwise, and finite: a negative
    ``eps`` would turn a small variance into NaN without a word."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    if not np.isfinite(eps) or eps < 0 or (training and eps == 0):
        need = "> 0 when training" if training else ">= 0"
        raise ValueError(f"eps must be finite and {need} (as in PyTorch), got {eps!r}")
    return float(eps)


def _invstd(var: np.ndarray, eps: float) -> np.ndarray:
    return 1 / np.sqrt(var + np.asarray(eps, var.dtype))


#: Training-mode batch norm on at least this many elements runs on the compiled kernels of
#: :mod:`convlayers.kernels.batchnorm` (a few passes per channel instead of NumPy's temporaries).
COMPILED_BATCH_NORM_ELEMENTS = 1 << 14


def _compiled(x: np.ndarray) -> bool:
    return x.ndim >= 2 and x.size >= COMPILED_BATCH_NORM_ELEMENTS and x.shape[1] > 0


def _planes(x: np.ndarray) -> np.ndarray:
    """``x`` as ``(N, C, L)``, C-contiguous (a view when it already is)."""
    return np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)


def _batch_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 mean and biased variance per channel, by the compiled two-pass kernel."""
    from convlayers.kernels import batchnorm

    mean, var = np.empty(x.shape[1]), np.empty(x.shape[1])
    batchnorm.channel_statistics(_planes(x), mean, var)
    return mean, var


def batch_norm(
    input: Any, running_mean: Any, running_var: Any, weight: Any = None, bias: Any = None,
    training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
) -> np.ndarray:
    """Normalize each channel of ``(N, C, ...)`` input, as ``torch.nn.functional.batch_norm``.

    Parameters
    ----------
    input : ndarray
        ``(N, C)`` or ``(N, C, *spatial)``.
    running_mean, running_var : ndarray or None
        ``(C,)`` estimates, updated in place when ``training``; needed when not ``training``.
    weight, bias : ndarray, optional
        ``(C,)`` scale (gamma) and offset (beta).
    training : bool
        Normalize with the batch's statistics (and update the running ones).
    momentum : float
        Weight of the new batch in the running estimates.
    eps : float
        Added to the variance before the square root.

    Returns
    -------
    ndarray
        ``(x - mean) / sqrt(var + eps) * weight + bias``, same shape and dtype.

    Examples
    --------
    >>> x = np.array([[1.0], [3.0]])
    >>> rm, rv = np.zeros(1), np.ones(1)
    >>> np.round(batch_norm(x, rm, rv, training=True), 4)
    array([[-1.],
           [ 1.]])
    >>> rm, rv  # moved 10% of the way to mean 2 and unbiased variance 2
    (array([0.2]), array([1.1]))
    """
    return batch_norm_with_statistics(input, running_mean, running_var, weight, bias, training,
                                      momentum, eps)[0]


def batch_norm_with_statistics(
    input: Any, running_mean: Any, running_var: Any, weight: Any = None, bias: Any = None,
    training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """:func:`batch_norm` and the batch's float64 mean and biased variance per channel where
    the compiled training kernels computed them (else None): hand them to
    :func:`batch_norm_backward` so it does not read the input twice more to find them again.

    Examples
    --------
    >>> x = np.linspace(-1.0, 1.0, 2 * 4 * 64 * 64).reshape(2, 4, 64, 64)
    >>> out, (mean, var) = batch_norm_with_statistics(x, None, None, training=True)
    >>> mean.shape, var.dtype
    ((4,), dtype('float64'))
    >>> batch_norm_with_statistics(x[:, :, :2, :2], None, None, training=True)[1] is None  # NumPy
    True
    """
    eps = _check_eps(eps, bool(training))
    x, axes, (rm, rv, w, b) = _prepare(input, running_mean, running_var, weight, bias)
    compiled = bool(training) and _compiled(x)
    stats = None
    if compiled:
        stats = mean64, var64 = _batch_statistics(x)
        mean, var = mean64.astype(x.dtype), var64.astype(x.dtype)
    else:
        mean, var = _statistics(x, axes, bool(training), rm, rv)
    invstd = _invstd(var, eps)
    if training:
        n = x.size // x.shape[1]
        if rm is not None:
            rm *= 1 - momentum
            rm += momentum * mean
        if rv is not None:
            rv *= 1 - momentum
            rv += (momentum * n / (n - 1)) * var
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if not training:  # torch's CPU inference form: one multiply and one add per element
        alpha, beta = _affine(mean, invstd, w, b)
        if _compiled(x):
            return _inference_compiled(x, alpha, beta), None
        out = np.multiply(x, alpha.reshape(shape))
        out += beta.reshape(shape)
        return out, None
    scale = invstd if w is None else invstd * w
    if compiled:
        from convlayers.kernels import batchnorm

        out = np.empty(x.shape, dtype=x.dtype)
        shift = np.zeros(x.shape[1], dtype=x.dtype) if b is None else b
        batchnorm.normalize_forward(_planes(x), mean, scale, shift, out.reshape(_planes(x).shape))
        return out, stats
    out = x - mean.reshape(shape)  # in place from here: one array the size of the input
    out *= scale.reshape(shape)
    if b is not None:
        out += b.reshape(shape)
    return out, None


#: Inference batch norm on fewer elements than this (and at least
#: :data:`COMPILED_BATCH_NORM_ELEMENTS`) runs its compiled pass on the calling thread only: below
#: it, waking the other threads costs more than they save.
INFERENCE_SERIAL_ELEMENTS = 1 << 18


def _inference_compiled(x: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``x * alpha + beta`` per channel in one compiled pass over each plane
    (:func:`convlayers.kernels.batchnorm.normalize_forward` with a zero shift), where NumPy's
    broadcast multiply and add made two passes, one thread each, whose inner loops ran along
    one row of a plane: eager MobileNetV2's 52 BatchNorms at batch 1 took 8.4 ms of its
    23-27."""
    from convlayers.kernels import batchnorm

    planes = _planes(x)
    out = np.empty(x.shape, dtype=x.dtype)
    a, b = alpha.astype(x.dtype, copy=False), beta.astype(x.dtype, copy=False)
    with _threads_for(x.size, serial_below=INFERENCE_SERIAL_ELEMENTS):
        batchnorm.normalize_forward(planes, np.zeros_like(a), a, b, out.reshape(planes.shape))
    return out


def _affine(mean: np.ndarray, invstd: np.ndarray, w: np.ndarray | None, b: np.ndarray | None,
            ) -> tuple[np.ndarray, np.ndarray]:
    alpha = invstd if w is None else invstd * w
    beta = -mean * alpha if b is None else b - mean * alpha
    return alpha, beta


def inference_affine(running_mean: Any, running_var: Any, weight: Any = None, bias: Any = None,
                     eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(alpha, beta)`` with ``batch_norm(x, ...) == x * alpha + beta`` when not
    training, computed as torch computes them on the CPU (``alpha = weight / sqrt(var + eps)``,
    ``beta = bias - mean * alpha``, in the statistics' dtype).

    Examples
    --------
    >>> alpha, beta = inference_affine(np.array([1.0]), np.array([4.0]), np.array([2.0]),
    ...                                np.array([0.5]), eps=0.0)
    >>> alpha, beta
    (array([1.]), array([-0.5]))
    """
    mean = float_array(running_mean, "running_mean")
    var = float_array(running_var, "running_var")
    if mean.shape != var.shape or mean.ndim != 1:
        raise ValueError(f"running_mean and running_var must be matching (C,) arrays, got "
                         f"{mean.shape} and {var.shape}")
    w = None if weight is None else _channel_array(weight, "weight", mean[None])
    b = None if bias is None else _channel_array(bias, "bias", mean[None])
    return _affine(mean, _invstd(var, _check_eps(eps, False)), w, b)


def batch_norm_backward(
    grad_output: Any, input: Any, running_mean: Any, running_var: Any, weight: Any = None,
    training: bool = False, eps: float = 1e-5, with_bias: bool = True,
    batch_statistics: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gradients of :func:`batch_norm`: ``(grad_input, grad_weight, grad_bias)``.

    In training the mean and variance depend on the input too, which adds two terms:
    ``dx = invstd/n * (n*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))`` with ``dxhat = g*weight``.
    Pass the running statistics as they were during the forward (not used when ``training``).
    ``grad_weight`` is ``None`` without a weight, ``grad_bias`` without ``with_bias``.
    ``batch_statistics``: the float64 ``(mean, var)`` that :func:`batch_norm_with_statistics`
    returned for this input in training (computed again when None).

    Examples
    --------
    >>> gx, gw, gb = batch_norm_backward(np.array([[1.0], [0.0]]), np.array([[1.0], [3.0]]),
    ...                                  None, None, np.ones(1), training=True)
    >>> bool(np.abs(gx).max() < 1e-5), np.round(gw, 4), gb
    (True, array([-1.]), array([1.]))
    """
    x, axes, (rm, rv, w, _) = _prepare(input, running_mean, running_var, weight, None)
    eps = _check_eps(eps, bool(training))
    g = float_array(grad_output, "grad_output")
    if g.shape != x.shape:
        raise ValueError(f"grad_output must have the input's shape {x.shape}, got {g.shape}")
    if training and _compiled(x):
        return _compiled_backward(g, x, w, eps, with_bias, batch_statistics)
    mean, var = _statistics(x, axes, bool(training), rm, rv)
    invstd = _invstd(var, eps)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    gw = (g * xhat).sum(axis=axes) if w is not None else None
    gb = g.sum(axis=axes) if with_bias else None
    gxhat = g if w is None else g * w.reshape(shape)
    if not training:
        return gxhat * invstd.reshape(shape), gw, gb
    dot = (gxhat * xhat).mean(axis=axes).reshape(shape)
    gx = (gxhat - gxhat.mean(axis=axes).reshape(shape) - xhat * dot) * invstd.reshape(shape)
    return gx, gw, gb


def _compiled_backward(g: np.ndarray, x: np.ndarray, w: np.ndarray | None, eps: float,
                       with_bias: bool, stats: tuple[np.ndarray, np.ndarray] | None,
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Training-mode gradients by :func:`convlayers.kernels.batchnorm.normalize_backward`."""
    from convlayers.kernels import batchnorm

    if stats is not None:
        c = x.shape[1]
        if any(np.shape(s) != (c,) for s in stats):
            raise ValueError(f"batch_statistics must be two ({c},) arrays (mean and variance per "
                             f"channel), got shapes {[np.shape(s) for s in stats]}")
    mean64, var64 = (_batch_statistics(x) if stats is None
                     else (np.asarray(s, dtype=np.float64) for s in stats))
    invstd = _invstd(var64.astype(x.dtype), eps).astype(np.float64)
    gx = np.empty(x.shape, dtype=x.dtype)
    gw, gb = np.empty(x.shape[1]), np.empty(x.shape[1])
    weight = np.ones(x.shape[1]) if w is None else w.astype(np.float64)
    planes = _planes(x)
    batchnorm.normalize_backward(_planes(g), planes, mean64, invstd, weight,
                                 gx.reshape(planes.shape), gw, gb)
    return (gx, None if w is None else gw.astype(x.dtype),
            gb.astype(x.dtype) if with_bias else None)
