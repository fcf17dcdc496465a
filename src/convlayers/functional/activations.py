"""Activation functions and their backward, as ``torch.nn.functional`` defines them.

ReLU-like functions take the backward from the input (where it was positive); sigmoid, tanh
and the softmaxes take it from the output, which they already computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers._validate import as_int, float_array

__all__ = [
    "log_softmax", "log_softmax_backward", "relu", "relu6", "relu6_backward", "relu_backward",
    "sigmoid", "sigmoid_backward", "softmax", "softmax_backward", "tanh", "tanh_backward",
]


def _axis(dim: Any, ndim: int) -> int:
    axis = as_int(dim, "dim")
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"dim must be in [{-max(ndim, 1)}, {max(ndim, 1) - 1}] for a {ndim}-D "
                         f"input, got {axis}")
    return axis


def relu(input: Any) -> np.ndarray:
    """``max(x, 0)`` elementwise (NaN stays NaN).

    >>> relu(np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 2.])
    """
    return np.maximum(float_array(input, "input"), 0)


def relu_backward(grad_output: Any, input: Any) -> np.ndarray:
    """Gradient of :func:`relu`: passes where the input was positive (0 at 0, as PyTorch).

    >>> relu_backward(np.ones(3), np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 1.])
    """
    return np.asarray(grad_output) * (float_array(input, "input") > 0)


def relu6(input: Any) -> np.ndarray:
    """``min(max(x, 0), 6)``, the bounded ReLU of MobileNetV2.

    >>> relu6(np.array([-1.0, 3.0, 9.0]))
    array([0., 3., 6.])
    """
    return np.clip(float_array(input, "input"), 0, 6)


def relu6_backward(grad_output: Any, input: Any) -> np.ndarray:
    """Gradient of :func:`relu6`: passes where ``0 < x < 6``.

    >>> relu6_backward(np.ones(3), np.array([-1.0, 3.0, 9.0]))
    array([0., 1., 0.])
    """
    x = float_array(input, "input")
    return np.asarray(grad_output) * ((x > 0) & (x < 6))


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
