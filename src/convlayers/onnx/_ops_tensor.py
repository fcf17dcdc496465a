"""ONNX tensor ops (arithmetic, shapes, padding, resizing). Where all their inputs are known at
load time (shape-computing subgraphs), the loader runs them once and keeps the result."""

from __future__ import annotations

import numpy as np

from convlayers import nn
from convlayers.onnx import _layers as L
from convlayers.onnx import _layers_runtime as R
from convlayers.onnx._context import Context, Node, Translation, Translator
from convlayers.onnx._read import _DTYPES
from convlayers.onnx._resize import COORDINATE_MODES, NEAREST_MODES

__all__ = ["TENSOR_OPS", "attribute_input"]

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def attribute_input(node: Node, ctx: Context, name: str, values: object) -> str:
    """Register an attribute (e.g. ``axes`` before opset 13) as a constant input; its name."""
    key = f"{node.name}::{name}"
    ctx.constants[key] = np.asarray(values, dtype=np.int64)
    return key


def _binary(node: Node, ctx: Context) -> Translation:
    node.only({})
    return L.Elementwise(node.op_type), node.inputs[:2]


def _neg(node: Node, ctx: Context) -> Translation:
    node.only({})
    return L.Neg(), node.inputs[:1]


def _constant_of_shape(node: Node, ctx: Context) -> Translation:
    node.only({"value": None})
    value = node.attr("value")
    return L.ConstantOfShape(np.zeros(1, np.float32) if value is None else np.asarray(value)), node.inputs[:1]


def _concat(node: Node, ctx: Context) -> Translation:
    node.only({"axis": None})
    return L.Concat(int(node.attr("axis"))), node.inputs


def _flatten(node: Node, ctx: Context) -> Translation:
    node.only({"axis": None})
    axis = int(node.attr("axis", 1))
    if axis == 1:
        return nn.Flatten(), node.inputs[:1]
    shape = ctx.static_shape(node.inputs[0])
    if shape is None:
        raise node.error(f"Flatten with axis={axis} needs an input of known shape")
    axis %= max(len(shape), 1)
    target = (int(np.prod(shape[:axis], dtype=np.int64)), -1)
    return L.Reshape(), (node.inputs[0], attribute_input(node, ctx, "shape", target))


def _reshape(node: Node, ctx: Context) -> Translation:
    node.only({"allowzero": None})
    return L.Reshape(bool(node.attr("allowzero", 0))), node.inputs[:2]


def _transpose(node: Node, ctx: Context) -> Translation:
    node.only({"perm": None})
    perm = node.attr("perm")
    return L.Transpose(None if perm is None else tuple(int(p) for p in perm)), node.inputs[:1]


def _axes_op(node: Node, ctx: Context, module: object, since: int) -> Translation:
    """Squeeze/Unsqueeze/ReduceMean: ``axes`` an attribute before opset ``since``, then an input."""
    if node.opset < since:
        axes = node.attr("axes")
        if axes is None:
            return module, node.inputs[:1]  # type: ignore[return-value]
        return module, (node.inputs[0], attribute_input(node, ctx, "axes", axes))  # type: ignore[return-value]
    if "axes" in node.attrs:
        raise node.error(f"attribute 'axes' was replaced by an input in opset {since}")
    return module, node.inputs[:2]  # type: ignore[return-value]


def _squeeze(node: Node, ctx: Context) -> Translation:
    node.only({"axes": None})
    return _axes_op(node, ctx, L.Squeeze(), 13)


def _unsqueeze(node: Node, ctx: Context) -> Translation:
    node.only({"axes": None})
    if node.opset < 13 and node.attr("axes") is None:
        raise node.error("Unsqueeze needs axes")
    return _axes_op(node, ctx, L.Unsqueeze(), 13)


def _reduce_mean(node: Node, ctx: Context) -> Translation:
    node.only({"axes": None, "keepdims": None, "noop_with_empty_axes": None})
    module = L.ReduceMean(bool(node.attr("keepdims", 1)), bool(node.attr("noop_with_empty_axes", 0)))
    return _axes_op(node, ctx, module, 18)


def _shape(node: Node, ctx: Context) -> Translation:
    node.only({"start": None, "end": None})
    end = node.attr("end")
    return L.Shape(int(node.attr("start", 0)), None if end is None else int(end)), node.inputs[:1]


def _gather(node: Node, ctx: Context) -> Translation:
    node.only({"axis": None})
    return L.Gather(int(node.attr("axis", 0))), node.inputs[:2]


def _cast(node: Node, ctx: Context) -> Translation:
    node.only({"to": None, "saturate": None})
    to = int(node.attr("to"))
    if to not in _DTYPES:
        raise node.error(f"Cast to ONNX data type {to} is not supported")
    return L.Cast(np.dtype(_DTYPES[to][0])), node.inputs[:1]


def _pad(node: Node, ctx: Context) -> Translation:
    node.only({"mode": tuple(_PAD_MODES)})
    if any(name and ctx.const(name) is None for name in node.inputs[1:]) or min(
            ctx.need_const(node, 1, "pads").ravel(), default=0) < 0:
        mode_np = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}
        return R.PadFn(mode_np[node.attr("mode", "constant")]), node.inputs
    pads = [int(p) for p in ctx.need_const(node, 1, "pads").ravel()]
    value = 0.0
    if len(node.inputs) > 2 and node.inputs[2]:
        const = ctx.need_const(node, 2, "constant_value")
        value = float(const.ravel()[0]) if const.size else 0.0
    shape = ctx.shapes.get(node.inputs[0])
    rank = len(pads) // 2
    if len(node.inputs) > 3 and node.inputs[3]:
        if shape is None:
            raise node.error("Pad with axes needs an input of known rank")
        axes = [int(a) % len(shape) for a in ctx.need_const(node, 3, "axes").ravel()]
        full = [0] * (2 * len(shape))
        for i, a in enumerate(axes):
            full[a], full[a + len(shape)] = pads[i], pads[i + len(axes)]
        pads, rank = full, len(shape)
    pairs = [(pads[i], pads[i + rank]) for i in range(rank)]
    mode = _PAD_MODES[node.attr("mode", "constant")]
    if mode != "constant":
        if len(pairs) < 3 or any(a or b for a, b in pairs[:2]):
            raise node.error(f"mode={node.attr('mode')!r} pads only the spatial axes of (N, C, ...)")
        pairs = pairs[2:]
    while pairs and pairs[0] == (0, 0):
        pairs.pop(0)
    flat = tuple(v for p in reversed(pairs) for v in p)
    return L.Pad(flat, mode, value), node.inputs[:1]


def _resize(node: Node, ctx: Context) -> Translation:
    node.only({"mode": ("nearest", "linear"), "coordinate_transformation_mode": COORDINATE_MODES,
               "nearest_mode": NEAREST_MODES, "cubic_coeff_a": None, "exclude_outside": (0,),
               "antialias": (0,), "extrapolation_value": None,
               "keep_aspect_ratio_policy": ("stretch",)})
    inputs = list(node.inputs) + [""] * (4 - len(node.inputs))
    sizes = inputs[3]
    scales = ctx.const(inputs[2])
    use_sizes = bool(sizes) and (scales is None or scales.size == 0)
    module = L.Resize(node.attr("mode", "nearest"), node.attr("coordinate_transformation_mode", "half_pixel"),
                      node.attr("nearest_mode", "round_prefer_floor"), "sizes" if use_sizes else "scales")
    return module, (inputs[0], sizes if use_sizes else inputs[2])


def _slice(node: Node, ctx: Context) -> Translation:
    node.only({})
    return _Slice(), node.inputs


class _Slice(L.Module):
    """ONNX ``Slice`` (opset 10+): starts, ends, axes and steps as inputs."""

    def forward(self, x: object, starts: object, ends: object, axes: object = None,
                steps: object = None) -> object:
        data = np.asarray(L.as_array(x))
        st, en = (np.asarray(L.as_array(v)).ravel() for v in (starts, ends))
        ax = np.arange(st.size) if axes is None else np.asarray(L.as_array(axes)).ravel()
        sp = np.ones(st.size, np.int64) if steps is None else np.asarray(L.as_array(steps)).ravel()
        index = [slice(None)] * data.ndim
        for s, e, a, k in zip(st, en, ax, sp, strict=True):
            size = data.shape[int(a)]
            s, e = int(max(min(s, size), -size - 1)), int(max(min(e, size), -size - 1))
            index[int(a) % data.ndim] = slice(s, None if (k < 0 and e < -size) else e, int(k))
        return data[tuple(index)]


TENSOR_OPS: dict[str, Translator] = {
    "Add": _binary, "Sub": _binary, "Mul": _binary, "Div": _binary, "Neg": _neg, "Concat": _concat,
    "ConstantOfShape": _constant_of_shape,
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze, "ReduceMean": _reduce_mean, "Shape": _shape, "Gather": _gather,
    "Cast": _cast, "Pad": _pad, "Resize": _resize, "Slice": _slice,
}
