"""ONNX layer ops as ``convlayers.nn`` layers: convolutions, pools, batch norm, dense layers
and activations. Weights must be constants (initializers); padding that a layer cannot take
(asymmetric, or ``auto_pad`` on an input of unknown size) becomes a padding layer before it."""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers import nn
from convlayers.nn.module import Module, Parameter
from convlayers.onnx import _layers as L
from convlayers.onnx import _layers_runtime as R
from convlayers.onnx._context import Context, Node, Translation, Translator

__all__ = ["NN_OPS"]

_AUTO_PAD = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _float_weight(node: Node, w: np.ndarray, what: str) -> np.ndarray:
    if w.dtype not in (np.float32, np.float64):
        raise node.error(f"its {what} has dtype {w.dtype}; only float32 and float64 are supported")
    return np.array(w)


def _window(node: Node, n: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
    """(strides, dilations, pads per side) from the attributes, for ``n`` spatial axes."""
    strides = tuple(int(s) for s in node.attr("strides", [1] * n))
    dilations = tuple(int(d) for d in node.attr("dilations", [1] * n))
    pads = [int(p) for p in node.attr("pads", [0] * 2 * n)]
    if len(strides) != n or len(dilations) != n or len(pads) != 2 * n:
        raise node.error(f"strides, dilations and pads must have {n}, {n} and {2 * n} values")
    if min(pads) < 0:
        raise node.error(f"negative pads {pads} are not supported")
    return strides, dilations, tuple((pads[i], pads[i + n]) for i in range(n))


def _resolve_auto(node: Node, ctx: Context, kernel: tuple[int, ...], strides: tuple[int, ...],
                  dilations: tuple[int, ...], pairs: tuple[tuple[int, int], ...]
                  ) -> tuple[tuple[tuple[int, int], ...] | None, str]:
    """Static per-side pads, or ``(None, mode)`` when SAME padding waits for the input size."""
    auto = node.attr("auto_pad", "NOTSET")
    if auto == "VALID":
        return tuple((0, 0) for _ in kernel), auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        shape = ctx.static_shape(node.inputs[0])
        if shape is None:
            return None, auto
        return tuple(L.same_pads(i, k, s, d, auto == "SAME_UPPER") for i, k, s, d in
                     zip(shape[2:], kernel, strides, dilations, strict=True)), auto
    return pairs, auto


def _pad_layer(pairs: tuple[tuple[int, int], ...]) -> Module:
    flat = tuple(v for p in reversed(pairs) for v in p)
    return nn.ZeroPad2d(flat) if len(pairs) == 2 else L.Pad(flat)


def _rank(node: Node, ctx: Context) -> int:
    """Number of spatial axes, from ``kernel_shape`` or the shapes of the input or weight."""
    if node.attr("kernel_shape") is not None:
        return len(node.attr("kernel_shape"))
    for name in node.inputs[:2]:
        if (shape := ctx.shapes.get(name)) is not None:
            return len(shape) - 2
    raise node.error("the number of spatial axes is unknown (no kernel_shape, no input shapes)")


def _runtime_weights(node: Node, ctx: Context) -> bool:
    return any(name and ctx.const(name) is None for name in node.inputs[1:])


def conv(node: Node, ctx: Context) -> Translation:
    node.only({"kernel_shape": None, "strides": None, "pads": None, "dilations": None,
               "group": None, "auto_pad": _AUTO_PAD})
    if _runtime_weights(node, ctx):
        n = _rank(node, ctx)
        strides, dilations, pairs = _window(node, n)
        auto = node.attr("auto_pad", "NOTSET")
        pads = None if auto in ("SAME_UPPER", "SAME_LOWER") else (
            tuple((0, 0) for _ in range(n)) if auto == "VALID" else pairs)
        return R.ConvFn(strides, dilations, int(node.attr("group", 1)), pads, auto), node.inputs
    w = _float_weight(node, ctx.need_const(node, 1, "weight"), "weight")
    n = w.ndim - 2
    if n not in (1, 2, 3):
        raise node.error(f"a {n}-D convolution is not supported (1-D to 3-D are)")
    has_bias = len(node.inputs) > 2 and node.inputs[2] != ""
    bias = _float_weight(node, ctx.need_const(node, 2, "bias"), "bias") if has_bias else None
    kernel = tuple(w.shape[2:])
    if tuple(node.attr("kernel_shape", kernel)) != kernel:
        raise node.error(f"kernel_shape {node.attr('kernel_shape')} does not match the weight {w.shape}")
    strides, dilations, pairs = _window(node, n)
    groups = int(node.attr("group", 1))
    static, auto = _resolve_auto(node, ctx, kernel, strides, dilations, pairs)
    symmetric = static is not None and all(a == b for a, b in static)
    layer = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1](
        w.shape[1] * groups, w.shape[0], kernel, strides,
        [a for a, _ in static] if symmetric and static is not None else 0,
        dilations, groups, bias=has_bias, dtype=w.dtype)
    layer.weight = Parameter(w)
    if bias is not None:
        layer.bias = Parameter(bias)
    if static is None:
        pad = L.AutoPad(kernel, strides, dilations, auto == "SAME_UPPER")
        return nn.Sequential(pad, layer), node.inputs[:1]
    if not symmetric:
        return nn.Sequential(_pad_layer(static), layer), node.inputs[:1]
    return layer, node.inputs[:1]


def conv_transpose(node: Node, ctx: Context) -> Translation:
    node.only({"kernel_shape": None, "strides": None, "pads": None, "dilations": None, "group": None,
               "auto_pad": _AUTO_PAD, "output_padding": None, "output_shape": None})
    w = ctx.const(node.inputs[1])
    runtime = _runtime_weights(node, ctx)
    if runtime:
        w_shape = ctx.static_shape(node.inputs[1])
        if w_shape is None:
            raise node.error("a weight computed at run time needs a known shape")
        w = np.empty(w_shape, np.float32)  # only its shape is used below
    w = _float_weight(node, ctx.need_const(node, 1, "weight") if w is None else w, "weight")
    n, groups = w.ndim - 2, int(node.attr("group", 1))
    if n not in (1, 2, 3):
        raise node.error(f"a {n}-D transposed convolution is not supported")
    has_bias = len(node.inputs) > 2 and node.inputs[2] != ""
    bias = _float_weight(node, ctx.need_const(node, 2, "bias"), "bias") if has_bias else None
    kernel = tuple(w.shape[2:])
    strides, dilations, pairs = _window(node, n)
    out_pad = tuple(int(p) for p in node.attr("output_padding", [0] * n))
    auto, out_shape = node.attr("auto_pad", "NOTSET"), node.attr("output_shape")
    if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        shape = ctx.static_shape(node.inputs[0])
        if shape is None:
            raise node.error("output_shape or auto_pad=SAME needs an input of known size")
        want = ([int(o) for o in out_shape][-n:] if out_shape is not None
                else [i * s for i, s in zip(shape[2:], strides, strict=True)])
        totals = [s * (i - 1) + op + (k - 1) * d + 1 - o for i, s, op, k, d, o in
                  zip(shape[2:], strides, out_pad, kernel, dilations, want, strict=True)]
        # a larger output_shape than the padding-free result is extra output padding at the end
        out_pad = tuple(op + max(-t, 0) for op, t in zip(out_pad, totals, strict=True))
        totals = [max(t, 0) for t in totals]
        pairs = tuple((t // 2, t - t // 2) if auto == "SAME_UPPER" else (t - t // 2, t // 2) for t in totals)
    elif auto == "VALID":
        pairs = tuple((0, 0) for _ in range(n))
    symmetric = all(a == b for a, b in pairs)
    if runtime:
        return R.ConvTransposeFn(strides, dilations, groups, pairs, out_pad), node.inputs
    try:
        layer = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[n - 1](
            w.shape[0], w.shape[1] * groups, kernel, strides, [a for a, _ in pairs] if symmetric else 0,
            dilation=dilations, groups=groups, bias=has_bias, output_padding=out_pad, dtype=w.dtype)
    except (TypeError, ValueError) as err:
        raise node.error(str(err)) from None
    layer.weight = Parameter(w)
    if bias is not None:
        layer.bias = Parameter(bias)
    return (layer if symmetric else nn.Sequential(layer, L.Crop(pairs))), node.inputs[:1]


def _pool(node: Node, ctx: Context, kind: str) -> Translation:
    allowed: dict[str, Any] = {"kernel_shape": None, "strides": None, "pads": None, "dilations": None,
               "ceil_mode": None, "auto_pad": _AUTO_PAD}
    allowed.update({"storage_order": (0, 1)} if kind == "max" else {"count_include_pad": None})
    node.only(allowed)
    with_indices = len(node.outputs) > 1 and node.outputs[1] != ""
    kernel = tuple(int(k) for k in node.attr("kernel_shape", ()))
    n = len(kernel)
    if n not in (1, 2, 3):
        raise node.error(f"kernel_shape {kernel} must have 1 to 3 values")
    strides, dilations, pairs = _window(node, n)
    ceil, include = bool(node.attr("ceil_mode", 0)), bool(node.attr("count_include_pad", 0))
    static, auto = _resolve_auto(node, ctx, kernel, strides, dilations, pairs)
    if with_indices:
        if static is None:
            raise node.error("the Indices output with auto_pad needs an input of known size")
        pool = L.OnnxPool(kind, kernel, strides, static, dilations, ceil)
        return R.MaxPoolIndices(pool, int(node.attr("storage_order", 0))), node.inputs[:1]
    if static is None or n == 3:
        return L.OnnxPool(kind, kernel, strides, static, dilations, ceil, include,
                          auto if static is None else "NOTSET"), node.inputs[:1]
    padding: Any = static
    if all(a == b and a <= k // 2 for (a, b), k in zip(static, kernel, strict=True)):
        padding = tuple(a for a, _ in static)
    if kind == "max":
        return (nn.MaxPool1d, nn.MaxPool2d)[n - 1](kernel, strides, padding, dilations,
                                                   ceil_mode=ceil), node.inputs[:1]
    return (nn.AvgPool1d, nn.AvgPool2d)[n - 1](kernel, strides, padding, ceil, include,
                                               dilation=dilations), node.inputs[:1]


def batch_norm(node: Node, ctx: Context) -> Translation:
    node.only({"epsilon": None, "momentum": None, "training_mode": (0,)})
    if len([o for o in node.outputs if o]) > 1:
        raise node.error("running statistics outputs (training mode) are not supported")
    if _runtime_weights(node, ctx):
        return R.BatchNormFn(float(node.attr("epsilon", 1e-5))), node.inputs[:5]
    scale, bias, mean, var = (_float_weight(node, ctx.need_const(node, i, what), what) for i, what in
                              ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    shape = ctx.shapes.get(node.inputs[0])
    rank = len(shape) if shape is not None else 4
    if rank not in (2, 3, 4, 5):
        raise node.error(f"a {rank}-D input is not supported")
    cls = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[rank - 2]
    layer = cls(scale.shape[0], eps=float(node.attr("epsilon", 1e-5)), dtype=scale.dtype)
    layer.weight, layer.bias = Parameter(scale), Parameter(bias)
    layer.running_mean, layer.running_var = mean, var
    return layer, node.inputs[:1]


def gemm(node: Node, ctx: Context) -> Translation:
    node.only({"alpha": None, "beta": None, "transA": None, "transB": None})
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    trans_a, trans_b = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))
    b = ctx.const(node.inputs[1])
    c_name = node.inputs[2] if len(node.inputs) > 2 else ""
    c = ctx.const(c_name)
    if b is not None and b.ndim == 2 and not trans_a and b.dtype.kind == "f" and (
            not c_name or (c is not None and (c.ndim <= 1 or c.shape == (1, c.shape[-1])))):
        weight = b if trans_b else b.T
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bool(c_name), dtype=b.dtype)
        layer.weight = Parameter(np.ascontiguousarray(weight * b.dtype.type(alpha) if alpha != 1 else weight))
        if c is not None:
            scaled = c.reshape(-1) * c.dtype.type(beta)
            layer.bias = Parameter(np.broadcast_to(scaled, (weight.shape[0],)).copy())
        return layer, node.inputs[:1]
    return L.Gemm(alpha, beta, trans_a, trans_b), node.inputs


def matmul(node: Node, ctx: Context) -> Translation:
    node.only({})
    b = ctx.const(node.inputs[1])
    if b is not None and b.ndim == 2 and b.dtype.kind == "f":
        layer = nn.Linear(b.shape[0], b.shape[1], bias=False, dtype=b.dtype)
        layer.weight = Parameter(np.ascontiguousarray(b.T))
        return layer, node.inputs[:1]
    return L.MatMul(), node.inputs


def clip(node: Node, ctx: Context) -> Translation:
    node.only({})
    names = list(node.inputs[1:3]) + [""] * (3 - len(node.inputs))
    values = [ctx.const(n) for n in names[:2]]
    if any(n and v is None for n, v in zip(names, values, strict=False)):
        return L.Clamp(), node.inputs
    if any(v is not None and v.size != 1 for v in values):
        raise node.error("min and max must be single values")
    lo, hi = (None if v is None else float(v.ravel()[0]) for v in values)
    if lo == 0 and hi == 6:
        return nn.ReLU6(), node.inputs[:1]
    if lo == 0 and hi is None:
        return nn.ReLU(), node.inputs[:1]
    if lo is not None and hi is not None:
        return nn.Hardtanh(lo, hi), node.inputs[:1]
    return L.Clamp(), node.inputs


def hard_sigmoid(node: Node, ctx: Context) -> Translation:
    node.only({"alpha": None, "beta": None})
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    if abs(alpha - 1 / 6) < 1e-7 and beta == 0.5:
        return nn.Hardsigmoid(), node.inputs[:1]
    return L.HardSigmoid(alpha, beta), node.inputs[:1]


def softmax(node: Node, ctx: Context) -> Translation:
    node.only({"axis": None})
    axis = int(node.attr("axis", -1 if node.opset >= 13 else 1))
    shape = ctx.shapes.get(node.inputs[0])
    last = axis == -1 or (shape is not None and axis == len(shape) - 1)
    if node.opset >= 13 or last:
        return nn.Softmax(axis), node.inputs[:1]
    return L.Softmax2d(axis), node.inputs[:1]


def dropout(node: Node, ctx: Context) -> Translation:
    node.only({"seed": None, "ratio": None})
    if len(node.inputs) > 2 and node.inputs[2]:
        mode = ctx.need_const(node, 2, "training_mode")
        if bool(mode):
            raise node.error("training_mode=True is not supported (inference only)")
    if len(node.outputs) > 1 and node.outputs[1]:
        return R.DropoutMask(), node.inputs[:1]
    return nn.Identity(), node.inputs[:1]


def _simple(factory: Any, attrs: dict[str, Any] | None = None) -> Translator:
    def translate(node: Node, ctx: Context) -> Translation:
        node.only(attrs or {})
        return factory(node), node.inputs[:1]
    return translate


def _global_avg(node: Node, ctx: Context) -> Translation:
    node.only({})
    shape = ctx.shapes.get(node.inputs[0])
    if shape is not None and len(shape) == 4:
        return nn.AdaptiveAvgPool2d(1), node.inputs[:1]
    return L.GlobalPool("avg"), node.inputs[:1]


NN_OPS: dict[str, Translator] = {
    "Conv": conv, "ConvTranspose": conv_transpose,
    "MaxPool": lambda node, ctx: _pool(node, ctx, "max"),
    "AveragePool": lambda node, ctx: _pool(node, ctx, "avg"),
    "GlobalAveragePool": lambda node, ctx: _global_avg(node, ctx),
    "GlobalMaxPool": _simple(lambda node: L.GlobalPool("max")),
    "BatchNormalization": batch_norm, "Gemm": gemm, "MatMul": matmul, "Clip": clip,
    "Relu": _simple(lambda node: nn.ReLU()), "Sigmoid": _simple(lambda node: nn.Sigmoid()),
    "Tanh": _simple(lambda node: nn.Tanh()), "HardSwish": _simple(lambda node: nn.Hardswish()),
    "LeakyRelu": _simple(lambda node: nn.LeakyReLU(float(node.attr("alpha", 0.01))), {"alpha": None}),
    "HardSigmoid": hard_sigmoid, "Softmax": softmax, "Dropout": dropout,
    "Identity": _simple(lambda node: nn.Identity()),
}
