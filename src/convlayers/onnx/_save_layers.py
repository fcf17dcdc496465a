"""One convlayers layer as ONNX nodes (for :func:`convlayers.onnx.save`).

Each exporter receives the builder, the layer and its input as ``(ONNX name, example value)``
and returns the same pair for its output: the value is computed by the layer itself, so the
shapes that some nodes need (static padding, crops) are known.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from convlayers import nn, shapes
from convlayers.nn.module import Module
from convlayers.onnx import _layers as L
from convlayers.onnx.graph import as_array

__all__ = ["LAYER_EXPORTERS", "Builder", "export_step"]

Flow = tuple[str, np.ndarray]


class Builder:
    """Collects nodes and initializers, and the lowest opset the written nodes need."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0
        self.min_opset, self.why = 14, "HardSwish"

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def constant(self, value: Any, stem: str = "const") -> str:
        from onnx import numpy_helper

        name = self.fresh(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(as_array(value), order="C"), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = output or self.fresh(op)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(op.lower()), **attrs))
        return out

    def need(self, opset: int, why: str) -> None:
        if opset > self.min_opset:
            self.min_opset, self.why = opset, why


def _y(module: Module, x: Flow) -> np.ndarray:
    return np.asarray(as_array(module(x[1])))


def _pads(padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> list[int]:
    """ONNX ``pads`` (all befores, then all afters) from a layer's padding."""
    n = len(kernel)
    if padding == "valid":
        pairs = [(0, 0)] * n
    elif padding == "same":
        pairs = [shapes.same_padding(k, d) for k, d in zip(kernel, dilation, strict=True)]
    elif isinstance(padding, int):
        pairs = [(padding, padding)] * n
    elif all(isinstance(p, (tuple, list)) for p in padding):
        pairs = [tuple(p) for p in padding]
    else:
        pairs = [(int(p), int(p)) for p in padding] * (n if len(padding) == 1 else 1)
    return [a for a, _ in pairs] + [b for _, b in pairs]


def _tuple(v: Any, n: int) -> list[int]:
    if isinstance(v, (int, np.integer)):
        return [int(v)] * n
    return [int(i) for i in v] * (n if len(v) == 1 else 1)


def _conv(b: Builder, m: Any, x: Flow) -> Flow:
    if m.padding_mode != "zeros":
        raise ValueError(f"convlayers.onnx.save writes zero-padded convolutions only, got {m!r}")
    inputs = [x[0], b.constant(m.weight.data, "weight")]
    if m.bias is not None:
        inputs.append(b.constant(m.bias.data, "bias"))
    n = len(m.kernel_size)
    attrs: dict[str, Any] = dict(kernel_shape=list(m.kernel_size), strides=list(m.stride),
                                 dilations=list(m.dilation), group=m.groups)
    if m.transposed:
        attrs.update(pads=_pads(m.padding, m.kernel_size, m.dilation), output_padding=list(m.output_padding))
        return b.node("ConvTranspose", inputs, **attrs), _y(m, x)
    attrs["pads"] = _pads(m.padding, m.kernel_size, m.dilation)[: 2 * n]
    return b.node("Conv", inputs, **attrs), _y(m, x)


def _batch_norm(b: Builder, m: Any, x: Flow) -> Flow:
    c = m.num_features
    weight = m.weight.data if m.weight is not None else np.ones(c, b.dtype)
    bias = m.bias.data if m.bias is not None else np.zeros(c, b.dtype)
    if m.running_mean is None:
        raise ValueError(f"{m!r} keeps no running statistics: it cannot run in eval mode")
    names = [b.constant(v, s) for v, s in ((weight, "bn_scale"), (bias, "bn_bias"),
                                           (m.running_mean, "bn_mean"), (m.running_var, "bn_var"))]
    return b.node("BatchNormalization", [x[0], *names], epsilon=m.eps), _y(m, x)


def _clip(b: Builder, x: Flow, lo: float, hi: float, y: np.ndarray) -> Flow:
    return b.node("Clip", [x[0], b.constant(np.array(lo, b.dtype), "min"),
                           b.constant(np.array(hi, b.dtype), "max")]), y


def _pool(b: Builder, m: Any, x: Flow) -> Flow:
    n = x[1].ndim - 2
    kernel, stride = _tuple(m.kernel_size, n), _tuple(m.stride, n)
    dilation = _tuple(getattr(m, "dilation", 1), n)
    attrs: dict[str, Any] = dict(kernel_shape=kernel, strides=stride, ceil_mode=int(m.ceil_mode),
                                 pads=_pads(m.padding if not isinstance(m.padding, int) else [m.padding] * n,
                                            tuple(kernel), tuple(dilation)))
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
        if m.return_indices:
            raise ValueError(f"convlayers.onnx.save cannot write {m!r} (return_indices)")
        return b.node("MaxPool", [x[0]], dilations=dilation, **attrs), _y(m, x)
    if m.divisor_override is not None:
        raise ValueError(f"ONNX has no divisor_override: cannot write {m!r}")
    if set(dilation) != {1}:
        b.need(19, "AveragePool with dilations")
        attrs["dilations"] = dilation
    return b.node("AveragePool", [x[0]], count_include_pad=int(m.count_include_pad), **attrs), _y(m, x)


def _adaptive(b: Builder, m: Any, x: Flow) -> Flow:
    y = _y(m, x)
    op = "GlobalMaxPool" if isinstance(m, nn.AdaptiveMaxPool2d) else "GlobalAveragePool"
    if all(s == 1 for s in y.shape[2:]) and not getattr(m, "return_indices", False):
        return b.node(op, [x[0]]), y
    kernel = [i // o for i, o in zip(x[1].shape[2:], y.shape[2:], strict=True)]
    divides = all(i % o == 0 for i, o in zip(x[1].shape[2:], y.shape[2:], strict=True))
    if op == "GlobalAveragePool" and divides:
        return b.node("AveragePool", [x[0]], kernel_shape=kernel, strides=kernel), y
    raise ValueError(f"convlayers.onnx.save cannot write {m!r} for input {x[1].shape}: only global "
                     f"pooling or an output size dividing the input")


def _linear(b: Builder, m: Any, x: Flow) -> Flow:
    w = b.constant(m.weight.data, "fc_weight")
    if x[1].ndim == 2:
        inputs = [x[0], w] + ([b.constant(m.bias.data, "fc_bias")] if m.bias is not None else [])
        return b.node("Gemm", inputs, transB=1), _y(m, x)
    out = b.node("MatMul", [x[0], b.constant(np.ascontiguousarray(m.weight.data.T), "fc_weight_t")])
    if m.bias is not None:
        out = b.node("Add", [out, b.constant(m.bias.data, "fc_bias")])
    return out, _y(m, x)


def _flatten(b: Builder, m: Any, x: Flow) -> Flow:
    y = _y(m, x)
    if m.start_dim == 1 and m.end_dim == -1:
        return b.node("Flatten", [x[0]], axis=1), y
    return b.node("Reshape", [x[0], b.constant(np.array([0, *y.shape[1:]], np.int64), "shape")]), y


def _pad_flat(b: Builder, x: Flow, flat: tuple[int, ...], mode: str, value: float, y: np.ndarray) -> Flow:
    nd = x[1].ndim
    pairs = [(0, 0)] * nd
    for i in range(len(flat) // 2):
        pairs[nd - 1 - i] = (flat[2 * i], flat[2 * i + 1])
    pads = np.array([a for a, _ in pairs] + [c for _, c in pairs], np.int64)
    onnx_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    if onnx_mode == "wrap":
        b.need(19, "Pad mode wrap")
    inputs = [x[0], b.constant(pads, "pads")]
    if mode == "constant" and value:
        inputs.append(b.constant(np.array(value, x[1].dtype), "pad_value"))
    return b.node("Pad", inputs, mode=onnx_mode), y


def _same_pad(b: Builder, m: Any, x: Flow) -> Flow:
    y = _y(m, x)
    h, w = x[1].shape[-2:]
    top, bottom = nn.padding.tf_same_padding(h, m.kernel_size, m.stride, m.dilation)
    left, right = nn.padding.tf_same_padding(w, m.kernel_size, m.stride, m.dilation)
    return _pad_flat(b, x, (left, right, top, bottom), "constant", 0.0, y)


def _simple(op: str, **attrs: Any) -> Callable[[Builder, Any, Flow], Flow]:
    return lambda b, m, x: (b.node(op, [x[0]], **attrs), _y(m, x))


def _silu(b: Builder, m: Any, x: Flow) -> Flow:
    return b.node("Mul", [x[0], b.node("Sigmoid", [x[0]])]), _y(m, x)


LAYER_EXPORTERS: list[tuple[type, Callable[[Builder, Any, Flow], Flow]]] = [
    (nn.Conv1d, _conv), (nn.Conv2d, _conv), (nn.Conv3d, _conv), (nn.ConvTranspose1d, _conv),
    (nn.ConvTranspose2d, _conv), (nn.ConvTranspose3d, _conv), (nn.BatchNorm1d, _batch_norm),
    (nn.BatchNorm2d, _batch_norm), (nn.BatchNorm3d, _batch_norm), (nn.ReLU, _simple("Relu")),
    (nn.ReLU6, lambda b, m, x: _clip(b, x, 0.0, 6.0, _y(m, x))),
    (nn.Hardtanh, lambda b, m, x: _clip(b, x, m.min_val, m.max_val, _y(m, x))),
    (nn.Sigmoid, _simple("Sigmoid")), (nn.Tanh, _simple("Tanh")), (nn.Hardswish, _simple("HardSwish")),
    (nn.Hardsigmoid, _simple("HardSigmoid", alpha=1 / 6, beta=0.5)), (nn.SiLU, _silu),
    (nn.LeakyReLU, lambda b, m, x: (b.node("LeakyRelu", [x[0]], alpha=m.negative_slope), _y(m, x))),
    (nn.Softmax, lambda b, m, x: (b.node("Softmax", [x[0]], axis=m.dim), _y(m, x))),
    (nn.LogSoftmax, lambda b, m, x: (b.node("LogSoftmax", [x[0]], axis=m.dim), _y(m, x))),
    (nn.MaxPool1d, _pool), (nn.MaxPool2d, _pool), (nn.AvgPool1d, _pool), (nn.AvgPool2d, _pool),
    (nn.AdaptiveAvgPool2d, _adaptive), (nn.AdaptiveMaxPool2d, _adaptive), (nn.Linear, _linear),
    (nn.Flatten, _flatten), (nn.Dropout, _simple("Identity")), (nn.Identity, _simple("Identity")),
    (nn.ZeroPad2d, lambda b, m, x: _pad_flat(b, x, m.padding, "constant", 0.0, _y(m, x))),
    (nn.SamePad2d, _same_pad),
]


def export_step(b: Builder, m: Module, args: list[Flow | None], run: Callable[[Module, Flow], Flow]) -> Flow:
    """One step of a loaded :class:`~convlayers.onnx.graph.GraphModule`."""
    names = [a[0] if a is not None else "" for a in args]
    values = [a[1] if a is not None else None for a in args]
    y = np.asarray(as_array(m(*values)))
    if isinstance(m, L.Elementwise):
        return b.node(m.op, names), y
    simple = {L.Concat: ("Concat", lambda: dict(axis=m.axis)), L.Reshape: ("Reshape", lambda: {}),
              L.Transpose: ("Transpose", lambda: {} if m.perm is None else dict(perm=list(m.perm))),
              L.Squeeze: ("Squeeze", lambda: {}), L.Unsqueeze: ("Unsqueeze", lambda: {}),
              L.Shape: ("Shape", lambda: {}), L.Gather: ("Gather", lambda: dict(axis=m.axis)),
              L.MatMul: ("MatMul", lambda: {}), L.Clamp: ("Clip", lambda: {}), L.Neg: ("Neg", lambda: {}),
              L.GlobalPool: ("GlobalMaxPool" if getattr(m, "kind", "") == "max" else "GlobalAveragePool",
                             lambda: {}),
              L.HardSigmoid: ("HardSigmoid", lambda: dict(alpha=m.alpha, beta=m.beta)),
              L.Gemm: ("Gemm", lambda: dict(alpha=m.alpha, beta=m.beta, transA=int(m.trans_a),
                                            transB=int(m.trans_b))),
              L.ReduceMean: ("ReduceMean", lambda: dict(keepdims=int(m.keepdims),
                                                        noop_with_empty_axes=int(m.noop)))}
    for cls, (op, make_attrs) in simple.items():
        if type(m) is cls:
            if op == "Shape" and (m.start or m.end is not None):
                return b.node("Shape", names, start=m.start, **({} if m.end is None else {"end": m.end})), y
            return b.node(op, names, **make_attrs()), y
    if isinstance(m, L.Cast):
        from onnx import helper

        return b.node("Cast", names, to=helper.np_dtype_to_tensor_dtype(m.dtype)), y
    if isinstance(m, L.Resize):
        inputs = [names[0], "", names[1]] if m.size_from == "scales" else [names[0], "", "", names[1]]
        return b.node("Resize", inputs, mode=m.mode, coordinate_transformation_mode=m.coordinate_mode,
                      nearest_mode=m.nearest_mode), y
    if isinstance(m, L.Pad):
        return _pad_flat(b, args[0], m.pad or (), m.mode, m.value, y)  # type: ignore[arg-type]
    if isinstance(m, L.AutoPad):
        flat = tuple(v for p in reversed([L.same_pads(i, k, s, d, m.upper) for i, k, s, d in zip(
            values[0].shape[2:], m.kernel, m.stride, m.dilation, strict=True)]) for v in p)  # type: ignore[union-attr]
        return _pad_flat(b, args[0], flat, "constant", 0.0, y)  # type: ignore[arg-type]
    if isinstance(m, L.Crop):
        nd = values[0].ndim  # type: ignore[union-attr]
        axes = list(range(nd - len(m.pairs), nd))
        starts = np.array([a for a, _ in m.pairs], np.int64)
        ends = np.array([values[0].shape[ax] - c for ax, (_, c) in zip(axes, m.pairs, strict=True)], np.int64)  # type: ignore[union-attr]
        return b.node("Slice", [names[0], b.constant(starts, "starts"), b.constant(ends, "ends"),
                                b.constant(np.array(axes, np.int64), "axes")]), y
    if isinstance(m, L.OnnxPool):
        attrs: dict[str, Any] = dict(kernel_shape=list(m.kernel), strides=list(m.stride),
                                     ceil_mode=int(m.ceil_mode))
        if m.auto_pad != "NOTSET":
            attrs["auto_pad"] = m.auto_pad
        elif m.pads:
            attrs["pads"] = [a for a, _ in m.pads] + [c for _, c in m.pads]
        if m.kind == "max":
            return b.node("MaxPool", names[:1], dilations=list(m.dilation), **attrs), y
        if set(m.dilation) != {1}:
            b.need(19, "AveragePool with dilations")
            attrs["dilations"] = list(m.dilation)
        return b.node("AveragePool", names[:1], count_include_pad=int(m.count_include_pad), **attrs), y
    if isinstance(m, L.Softmax2d):
        flattened = b.node("Flatten", names[:1], axis=m.axis)
        return b.node("Reshape", [b.node("Softmax", [flattened], axis=-1), b.node("Shape", names[:1])]), y
    if type(m).__name__ == "_Slice":
        return b.node("Slice", names), y
    if args[0] is None:
        raise ValueError(f"convlayers.onnx.save cannot write {m!r} without an input")
    return run(m, args[0])
