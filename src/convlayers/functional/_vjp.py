"""Tensor-aware versions of every functional op: the plain op plus the backward beside it.

Each rule receives the call's arguments (Tensors unwrapped, defaults applied), runs the plain
op and returns the output with a closure giving one gradient per differentiable argument. The
plain modules are not touched; :func:`differentiable` does the wrapping, and any new op can
use it the same way.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from convlayers._validate import as_tuple
from convlayers.autograd import Tensor, is_grad_enabled, record
from convlayers.functional import activations as act
from convlayers.functional import adaptive, conv, conv_transpose, dense, losses, padding, pooling, stochastic
from convlayers.functional import normalization as norm
from convlayers.functional._measured import on_first_call

Args = dict[str, Any]
Rule = tuple[Any, Callable[[np.ndarray], Any]]  # (output, backward)
VJP = Callable[[Args], Rule]


def differentiable(forward: Callable[..., Any], inputs: Sequence[str], vjp: VJP) -> Callable[..., Any]:
    """Make a plain-array op Tensor-aware without touching it.

    Called with no Tensor among its arguments, ``forward`` runs directly (the only overhead is
    one ``isinstance`` scan). Otherwise every Tensor argument is unwrapped and
    ``vjp(arguments)`` (a dict of all arguments, defaults applied) returns ``(output,
    backward)``: ``backward(grad)`` gives one gradient per name in ``inputs``. When ``output``
    is a tuple (e.g. values and pooling indices) only its first item is a Tensor.
    """
    signature = inspect.signature(forward)

    @functools.wraps(forward)
    def op(*args: Any, **kwargs: Any) -> Any:
        values = (*args, *kwargs.values())
        for v in values:  # a loop, not any() over a generator: 1 us less a call
            if isinstance(v, Tensor):
                break
        else:
            return forward(*args, **kwargs)
        if not (is_grad_enabled() and any(isinstance(v, Tensor) and v.requires_grad
                                          for v in values)):  # nothing to record: no binding
            out = forward(*(_unwrap(v) for v in args), **{k: _unwrap(v) for k, v in kwargs.items()})
            return (Tensor(out[0]), *out[1:]) if isinstance(out, tuple) else Tensor(out)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        parents = [bound.arguments[name] for name in inputs]
        arrays = {k: v.data if isinstance(v, Tensor) else v for k, v in bound.arguments.items()}
        if is_grad_enabled() and any(isinstance(p, Tensor) and p.requires_grad for p in parents):
            out, backward = vjp(arrays)
        else:
            out, backward = forward(**arrays), (lambda g: ())
        if isinstance(out, tuple):
            return (record(out[0], parents, backward), *out[1:])
        return record(out, parents, backward)

    return op


def _unwrap(value: Any) -> Any:
    return value.data if isinstance(value, Tensor) else value


def _conv_rule(f: Callable[..., Any]) -> Callable[[Args], Rule]:
    def rule(a: Args) -> Rule:
        with on_first_call():  # training: one strategy from the first step on
            out = f(**a)
        return out, lambda g: conv.conv_backward(
            g, a["input"], a["weight"], a["stride"], a["padding"], a["dilation"], a["groups"],
            a["padding_mode"], with_bias=a["bias"] is not None)
    return rule


def _conv_transpose_rule(f: Callable[..., Any]) -> Callable[[Args], Rule]:
    def rule(a: Args) -> Rule:
        with on_first_call():
            out = f(**a)
        return out, lambda g: conv_transpose.conv_transpose_backward(
            g, a["input"], a["weight"], a["stride"], a["padding"], a["output_padding"],
            a["groups"], a["dilation"], with_bias=a["bias"] is not None)
    return rule


def _max_pool_rule(f: Callable[..., Any], n: int) -> Callable[[Args], Rule]:
    def rule(a: Args) -> Rule:
        out, idx = f(**{**a, "return_indices": True})
        back = lambda g: (pooling.max_pool_backward(g, a["input"], idx, n),)  # noqa: E731
        return ((out, idx) if a["return_indices"] else out), back
    return rule


def _avg_pool_rule(f: Callable[..., Any], n: int) -> Callable[[Args], Rule]:
    def rule(a: Args) -> Rule:
        ks = as_tuple(a["kernel_size"], n, "kernel_size")
        stride = None if a["stride"] is None else as_tuple(a["stride"], n, "stride")
        return f(**a), lambda g: (pooling.avg_pool_backward(
            g, a["input"], ks, stride, a["padding"], a["ceil_mode"], a["count_include_pad"],
            a.get("divisor_override"), dilation=a.get("dilation", 1)),)
    return rule


def _adaptive_avg_rule(f: Callable[..., Any], n: int) -> Callable[[Args], Rule]:
    def rule(a: Args) -> Rule:
        return f(**a), lambda g: (adaptive.adaptive_avg_pool_backward(g, a["input"], n),)
    return rule


def _pad_rule(a: Args) -> Rule:
    shape = np.shape(a["input"])
    return padding.pad(**a), lambda g: (padding.pad_backward(g, shape, a["pad"], a["mode"]),)


def _from_input(f: Callable[..., Any], b: Callable[..., Any]) -> Callable[[Args], Rule]:
    """Rule for an elementwise op whose backward reads the input."""
    return lambda a: (f(**a), lambda g: (b(g, a["input"]),))


def _from_output(f: Callable[..., Any], b: Callable[..., Any], dim: bool = False) -> Callable[[Args], Rule]:
    """Rule for an op whose backward reads its own output (and maybe ``dim``)."""
    def rule(a: Args) -> Rule:
        out = f(**a)
        extra = (a["dim"],) if dim else ()
        return out, lambda g: (b(g, out, *extra),)
    return rule


def _batch_norm_rule(a: Args) -> Rule:
    rm, rv = (None if s is None else np.array(s) for s in (a["running_mean"], a["running_var"]))
    # updates the running statistics in place when training; the batch's, when the compiled
    # kernels found them, go to the backward
    out, stats = norm.batch_norm_with_statistics(**a)
    return out, lambda g: norm.batch_norm_backward(
        g, a["input"], rm, rv, a["weight"], a["training"], a["eps"], with_bias=a["bias"] is not None,
        batch_statistics=stats)


def _linear_rule(a: Args) -> Rule:
    return dense.linear(**a), lambda g: dense.linear_backward(
        g, a["input"], a["weight"], with_bias=a["bias"] is not None)


def _flatten_rule(a: Args) -> Rule:
    shape = np.shape(a["input"])
    return dense.flatten(**a), lambda g: (g.reshape(shape),)


def _dropout_rule(a: Args) -> Rule:
    x = a["input"]
    if not a["training"] or a["p"] == 0:
        return stochastic.dropout(**a), lambda g: (g,)
    mask = stochastic.dropout_mask(np.shape(x), a["p"], a["rng"], np.asarray(x).dtype)
    return x * mask, lambda g: (stochastic.dropout_backward(g, mask),)


def _cross_entropy_rule(a: Args) -> Rule:
    return losses.cross_entropy(**a), lambda g: (losses.cross_entropy_backward(g, **a),)


def _mse_rule(a: Args) -> Rule:
    return losses.mse_loss(**a), lambda g: losses.mse_loss_backward(g, **a)


_X, _XWB = ("input",), ("input", "weight", "bias")

conv1d, conv2d, conv3d = (differentiable(f, _XWB, _conv_rule(f))
                          for f in (conv.conv1d, conv.conv2d, conv.conv3d))
conv_transpose1d, conv_transpose2d, conv_transpose3d = (
    differentiable(f, _XWB, _conv_transpose_rule(f))
    for f in (conv_transpose.conv_transpose1d, conv_transpose.conv_transpose2d,
              conv_transpose.conv_transpose3d))
max_pool1d, max_pool2d, max_pool3d = (
    differentiable(f, _X, _max_pool_rule(f, n))
    for n, f in enumerate((pooling.max_pool1d, pooling.max_pool2d, pooling.max_pool3d), 1))
adaptive_max_pool1d, adaptive_max_pool2d, adaptive_max_pool3d = (
    differentiable(f, _X, _max_pool_rule(f, n))
    for n, f in enumerate((adaptive.adaptive_max_pool1d, adaptive.adaptive_max_pool2d,
                           adaptive.adaptive_max_pool3d), 1))
_AVG_POOLS: tuple[Callable[..., Any], ...] = (pooling.avg_pool1d, pooling.avg_pool2d,
                                              pooling.avg_pool3d)
avg_pool1d, avg_pool2d, avg_pool3d = (
    differentiable(f, _X, _avg_pool_rule(f, n)) for n, f in enumerate(_AVG_POOLS, 1))
adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d = (
    differentiable(f, _X, _adaptive_avg_rule(f, n))
    for n, f in enumerate((adaptive.adaptive_avg_pool1d, adaptive.adaptive_avg_pool2d,
                           adaptive.adaptive_avg_pool3d), 1))
pad = differentiable(padding.pad, _X, _pad_rule)

relu = differentiable(act.relu, _X, _from_input(act.relu, act.relu_backward))
relu6 = differentiable(act.relu6, _X, _from_input(act.relu6, act.relu6_backward))
sigmoid = differentiable(act.sigmoid, _X, _from_output(act.sigmoid, act.sigmoid_backward))
tanh = differentiable(act.tanh, _X, _from_output(act.tanh, act.tanh_backward))
softmax = differentiable(act.softmax, _X, _from_output(act.softmax, act.softmax_backward, dim=True))
log_softmax = differentiable(
    act.log_softmax, _X, _from_output(act.log_softmax, act.log_softmax_backward, dim=True))
batch_norm = differentiable(norm.batch_norm, _XWB, _batch_norm_rule)
linear = differentiable(dense.linear, _XWB, _linear_rule)
flatten = differentiable(dense.flatten, _X, _flatten_rule)
dropout = differentiable(stochastic.dropout, _X, _dropout_rule)
cross_entropy = differentiable(losses.cross_entropy, _X, _cross_entropy_rule)
mse_loss = differentiable(losses.mse_loss, ("input", "target"), _mse_rule)
