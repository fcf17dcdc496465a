"""Tensor-aware clamps and "hard" activations (see :mod:`convlayers.functional._vjp`).

Each backward reads the input and the op's own parameters (``min_val``, ``negative_slope``,
...), so the rule hands it every argument of the call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from convlayers.functional import activations as act
from convlayers.functional._vjp import Args, Rule, differentiable

__all__ = ["clamp", "hardsigmoid", "hardswish", "hardtanh", "leaky_relu", "silu"]


def _with_args(f: Callable[..., Any], b: Callable[..., Any]) -> Callable[[Args], Rule]:
    """Rule for an elementwise op whose backward reads the input and the op's parameters."""
    return lambda a: (f(**a), lambda g: (b(g, **a),))


_X = ("input",)
hardtanh = differentiable(act.hardtanh, _X, _with_args(act.hardtanh, act.hardtanh_backward))
clamp = differentiable(act.clamp, _X, _with_args(act.clamp, act.clamp_backward))
hardsigmoid = differentiable(act.hardsigmoid, _X, _with_args(act.hardsigmoid, act.hardsigmoid_backward))
hardswish = differentiable(act.hardswish, _X, _with_args(act.hardswish, act.hardswish_backward))
silu = differentiable(act.silu, _X, _with_args(act.silu, act.silu_backward))
leaky_relu = differentiable(act.leaky_relu, _X, _with_args(act.leaky_relu, act.leaky_relu_backward))
