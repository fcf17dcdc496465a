"""Activation functions and their backward, as ``torch.nn.functional`` defines them.

ReLU-like functions take the backward from the input (where it was positive); sigmoid, tanh
and the softmaxes take it from the output, which they already computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers._validate import as_int, float_array
from convlayers.functional._compiled import kernels

__all__ = [
    "clamp", "clamp_backward", "hardsigmoid", "hardsigmoid_backward", "hardswish",
    "hardswish_backward", "hardtanh", "hardtanh_backward", "leaky_relu", "leaky_relu_backward",
    "log_softmax", "log_softmax_backward", "relu", "relu6", "relu6_backward", "relu_backward",
    "sigmoid", "sigmoid_backward", "silu", "silu_backward", "softmax", "softmax_backward", "tanh",
    "tanh_backward",
]


def _axis(dim: Any, ndim: int) -> int:
    axis = as_int(dim, "dim")
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"dim must be in [{-max(ndim, 1)}, {max(ndim, 1) - 1}] for a {ndim}-D "
                         f"input, got {axis}")
    return axis


def _compiled(*arrays: np.ndarray) -> bool:
    """Whether the compiled clip and its gradient serve these arrays: one float32/float64 dtype,
    C-contiguous, at least ``config.engine.parallel_elementwise`` elements (smaller: NumPy)."""
    from convlayers import config

    first = arrays[0]
    return (first.size >= config.engine.parallel_elementwise and first.dtype.char in "fd"
            and all(a.flags.c_contiguous and a.dtype == first.dtype and a.shape == first.shape
                    for a in arrays))


def _gradient_for(grad_output: Any, x: np.ndarray) -> np.ndarray:
    """``grad_output`` as an array of ``x``'s shape or one that broadcasts to it (a scalar),
    else a ValueError naming it."""
    g = np.asarray(grad_output)
    try:
        fits = np.broadcast_shapes(g.shape, x.shape) == x.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"grad_output must have the input's shape {x.shape} (or broadcast to "
                         f"it), got shape {g.shape}")
    return g


def _clip_backward(grad_output: Any, x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 where ``x <= lo`` or ``x >= hi``, else ``g`` (a NaN input passes it), selected as
    torch does: a NaN or inf gradient does not leak into the zeros."""
    g = _gradient_for(grad_output, x)
    if not _compiled(x, g):
        return np.where((x <= lo) | (x >= hi), np.zeros((), np.result_type(g, x)), g)
    out = np.empty_like(x)
    kernels().elementwise.clip_backward_into(g.ravel(), x.ravel(), lo, hi, out.ravel())
    return out


def _clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``min(max(x, lo), hi)`` (NaN stays NaN): compiled on every thread for large arrays."""
    if not _compiled(x):
        low, high = x.dtype.type(lo), x.dtype.type(hi)  # NaN and -0.0 kept, as torch
        return np.where(x < low, low, np.where(x > high, high, x))
    out = np.empty_like(x)
    kernels().elementwise.clip_into(x.ravel(), lo, hi, out.ravel())
    return out


def relu(input: Any) -> np.ndarray:
    """``max(x, 0)`` elementwise (NaN stays NaN).

    >>> relu(np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 2.])
    """
    return _clip(float_array(input, "input"), 0.0, np.inf)


def relu_backward(grad_output: Any, input: Any) -> np.ndarray:
    """Gradient of :func:`relu`: 0 where the input is at most 0, else the incoming gradient
    (a NaN input passes it, as PyTorch).

    >>> relu_backward(np.ones(3), np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 1.])
    """
    return _clip_backward(grad_output, float_array(input, "input"), 0.0, np.inf)


def relu6(input: Any) -> np.ndarray:
    """``min(max(x, 0), 6)``, the bounded ReLU of MobileNetV2.

    >>> relu6(np.array([-1.0, 3.0, 9.0]))
    array([0., 3., 6.])
    """
    return _clip(float_array(input, "input"), 0.0, 6.0)


def relu6_backward(grad_output: Any, input: Any) -> np.ndarray:
    """Gradient of :func:`relu6`: 0 where ``x <= 0`` or ``x >= 6``, else the incoming gradient
    (as PyTorch's hardtanh backward).

    >>> relu6_backward(np.ones(3), np.array([-1.0, 3.0, 9.0]))
    array([0., 1., 0.])
    """
    return _clip_backward(grad_output, float_array(input, "input"), 0.0, 6.0)


def sigmoid(input: Any) -> np.ndarray:
    """``1 / (1 + exp(-x))`` without overflow.

    >>> sigmoid(np.array([0.0]))
    array([0.5])
    """
    x = float_array(input, "input")
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows (no scipy at import: expit's formula)
    return np.where(x >= 0, np.ones_like(e), e) / (1 + e)


def sigmoid_backward(grad_output: Any, output: Any) -> np.ndarray:
    """Gradient of :func:`sigmoid` from its output ``y``: ``g * y * (1 - y)``.

    >>> sigmoid_backward(np.ones(1), np.array([0.5]))
    array([0.25])
    """
    y = float_array(output, "output")
    return np.asarray(grad_output) * y * (1 - y)


def tanh(input: Any) -> np.ndarray:
    """Hyperbolic tangent.

    >>> tanh(np.array([0.0]))
    array([0.])
    """
    return np.tanh(float_array(input, "input"))


def tanh_backward(grad_output: Any, output: Any) -> np.ndarray:
    """Gradient of :func:`tanh` from its output ``y``: ``g * (1 - y**2)``.

    >>> tanh_backward(np.ones(1), np.array([0.0]))
    array([1.])
    """
    y = float_array(output, "output")
    return np.asarray(grad_output) * (1 - y * y)


def softmax(input: Any, dim: int = -1) -> np.ndarray:
    """``exp(x) / sum(exp(x))`` along ``dim``, shifted by the maximum so it cannot overflow.

    >>> softmax(np.array([[0.0, np.log(3.0)]]))
    array([[0.25, 0.75]])
    """
    x = float_array(input, "input")
    axis = _axis(dim, x.ndim)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(grad_output: Any, output: Any, dim: int = -1) -> np.ndarray:
    """Gradient of :func:`softmax` from its output ``y``: ``y * (g - sum(g * y))``.

    >>> softmax_backward(np.array([1.0, 0.0]), np.array([0.5, 0.5]))
    array([ 0.25, -0.25])
    """
    y = float_array(output, "output")
    g = np.asarray(grad_output)
    return y * (g - (g * y).sum(axis=_axis(dim, y.ndim), keepdims=True))


def log_softmax(input: Any, dim: int = -1) -> np.ndarray:
    """``x - logsumexp(x)`` along ``dim``, computed stably.

    >>> np.exp(log_softmax(np.array([0.0, np.log(3.0)])))
    array([0.25, 0.75])
    """
    x = float_array(input, "input")
    axis = _axis(dim, x.ndim)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def log_softmax_backward(grad_output: Any, output: Any, dim: int = -1) -> np.ndarray:
    """Gradient of :func:`log_softmax` from its output ``y``: ``g - exp(y) * sum(g)``.

    >>> log_softmax_backward(np.array([1.0, 0.0]), np.log([0.5, 0.5]))
    array([ 0.5, -0.5])
    """
    y = float_array(output, "output")
    g = np.asarray(grad_output)
    return g - np.exp(y) * g.sum(axis=_axis(dim, y.ndim), keepdims=True)


# --- clamps and the "hard" activations of MobileNetV3 / EfficientNet, as ONNX models use them ---

def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def hardtanh(input: Any, min_val: float = -1.0, max_val: float = 1.0) -> np.ndarray:
    """``min(max(x, min_val), max_val)``, as ``torch.nn.functional.hardtanh`` (NaN stays NaN).

    >>> hardtanh(np.array([-3.0, 0.5, 2.0]))
    array([-1. ,  0.5,  1. ])
    """
    x = float_array(input, "input")
    lo, hi = _real(min_val, "min_val"), _real(max_val, "max_val")
    if lo > hi:
        raise ValueError(f"min_val must not exceed max_val, got min_val={lo} and max_val={hi}")
    return np.clip(x, x.dtype.type(lo), x.dtype.type(hi))


def hardtanh_backward(grad_output: Any, input: Any, min_val: float = -1.0,
                      max_val: float = 1.0) -> np.ndarray:
    """Gradient of :func:`hardtanh`: passes where ``min_val < x < max_val`` (PyTorch's rule).

    >>> hardtanh_backward(np.ones(3), np.array([-3.0, 0.5, 1.0]))
    array([0., 1., 0.])
    """
    x = float_array(input, "input")
    return np.asarray(grad_output) * ((x > min_val) & (x < max_val))


def clamp(input: Any, min: float | None = None, max: float | None = None) -> np.ndarray:
    """``x`` limited to ``[min, max]`` (either bound may be ``None``), as ``torch.clamp`` and
    ONNX's ``Clip``; NaN stays NaN.

    >>> clamp(np.array([-3.0, 0.5, 2.0]), min=0.0)
    array([0. , 0.5, 2. ])
    """
    x = float_array(input, "input")
    if min is None and max is None:
        raise ValueError("clamp needs at least one of min and max, got both None")
    lo = None if min is None else x.dtype.type(_real(min, "min"))
    hi = None if max is None else x.dtype.type(_real(max, "max"))
    out = x if lo is None else np.maximum(x, lo)
    return out if hi is None else np.minimum(out, hi)  # out is a new array when hi is None


def clamp_backward(grad_output: Any, input: Any, min: float | None = None,
                   max: float | None = None) -> np.ndarray:
    """Gradient of :func:`clamp`: passes where ``min <= x <= max`` (bounds included, as torch).

    >>> clamp_backward(np.ones(3), np.array([-3.0, 0.0, 2.0]), min=0.0, max=1.0)
    array([0., 1., 0.])
    """
    x = float_array(input, "input")
    keep = np.ones(x.shape, dtype=bool)
    if min is not None:
        keep &= x >= min
    if max is not None:
        keep &= x <= max
    return np.asarray(grad_output) * keep


def hardsigmoid(input: Any, alpha: float = 1 / 6, beta: float = 0.5) -> np.ndarray:
    """``max(0, min(1, alpha*x + beta))``: PyTorch's ``hardsigmoid`` (``relu6(x + 3) / 6``, its
    rounding too) by default, ONNX's ``HardSigmoid`` with its ``alpha`` (0.2 there) and ``beta``.

    >>> hardsigmoid(np.array([-4.0, 0.0, 1.5, 4.0]))
    array([0.  , 0.5 , 0.75, 1.  ])
    """
    x = float_array(input, "input")
    if alpha == 1 / 6 and beta == 0.5:
        return np.clip(x + 3, 0, 6) / x.dtype.type(6)
    a, b = x.dtype.type(_real(alpha, "alpha")), x.dtype.type(_real(beta, "beta"))
    return np.clip(x * a + b, 0, 1)


def hardsigmoid_backward(grad_output: Any, input: Any, alpha: float = 1 / 6,
                         beta: float = 0.5) -> np.ndarray:
    """Gradient of :func:`hardsigmoid`: ``alpha`` where ``0 < alpha*x + beta < 1`` (for the
    default, ``-3 < x < 3``), else 0.

    >>> hardsigmoid_backward(np.ones(3), np.array([-4.0, 0.0, 3.0]))
    array([0.        , 0.16666667, 0.        ])
    """
    x = float_array(input, "input")
    if alpha == 1 / 6 and beta == 0.5:
        return np.asarray(grad_output) * ((x > -3) & (x < 3)) / x.dtype.type(6)  # torch's g / 6
    z = x * x.dtype.type(alpha) + x.dtype.type(beta)
    inside = (z > 0) & (z < 1)
    return np.asarray(grad_output) * (inside * x.dtype.type(alpha))


def hardswish(input: Any) -> np.ndarray:
    """``x * relu6(x + 3) / 6``, as ``torch.nn.functional.hardswish`` (MobileNetV3's).

    >>> hardswish(np.array([-4.0, 0.0, 1.0, 4.0]))
    array([-0.        ,  0.        ,  0.66666667,  4.        ])
    """
    x = float_array(input, "input")
    return x * np.clip(x + 3, 0, 6) / x.dtype.type(6)


def hardswish_backward(grad_output: Any, input: Any) -> np.ndarray:
    """Gradient of :func:`hardswish`: 0 up to -3, ``x/3 + 1/2`` inside, 1 from 3 (PyTorch's).

    >>> hardswish_backward(np.ones(3), np.array([-4.0, 0.0, 4.0]))
    array([0. , 0.5, 1. ])
    """
    x = float_array(input, "input")
    slope = np.where(x <= -3, 0, np.where(x < 3, x / x.dtype.type(3) + x.dtype.type(0.5), 1))
    return np.asarray(grad_output) * slope.astype(x.dtype, copy=False)


def silu(input: Any) -> np.ndarray:
    """``x * sigmoid(x)`` (swish), as ``torch.nn.functional.silu``.

    >>> silu(np.array([0.0, 1.0]))
    array([0.        , 0.73105858])
    """
    x = float_array(input, "input")
    return x * sigmoid(x)


def silu_backward(grad_output: Any, input: Any) -> np.ndarray:
    """Gradient of :func:`silu`: ``g * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``.

    >>> silu_backward(np.ones(1), np.array([0.0]))
    array([0.5])
    """
    x = float_array(input, "input")
    s = sigmoid(x)
    return np.asarray(grad_output) * (s * (1 + x * (1 - s)))


def leaky_relu(input: Any, negative_slope: float = 0.01) -> np.ndarray:
    """``x`` where positive, else ``negative_slope * x``, as ``torch.nn.functional.leaky_relu``.

    >>> leaky_relu(np.array([-2.0, 3.0]), 0.1)
    array([-0.2,  3. ])
    """
    x = float_array(input, "input")
    slope = x.dtype.type(_real(negative_slope, "negative_slope"))
    return np.where(x > 0, x, x * slope)


def leaky_relu_backward(grad_output: Any, input: Any, negative_slope: float = 0.01) -> np.ndarray:
    """Gradient of :func:`leaky_relu`: 1 where ``x > 0``, else ``negative_slope``.

    >>> leaky_relu_backward(np.ones(2), np.array([-2.0, 3.0]), 0.1)
    array([0.1, 1. ])
    """
    x = float_array(input, "input")
    g = np.asarray(grad_output)
    return np.where(x > 0, g, g * x.dtype.type(negative_slope))
