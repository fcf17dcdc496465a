"""Lower an nn Module tree into a flat list of primitive nodes, in execution order.

Each value is produced by one node and has a per-image shape (channels, height, width, or
features), fixed by the example input; only the batch size may vary. Containers unroll their
children; blocks whose ``forward`` adds a shortcut (``InvertedResidual``, ResNet's blocks) and
the models whose ``forward`` is more than a chain have a lowering rule here. A module with no
rule raises a ``TypeError`` naming its path and type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convlayers import nn
from convlayers.nn.models import efficientnet, resnet
from convlayers.nn.padding import tf_same_padding
from convlayers.shapes import conv_output_size, pool_output_size

__all__ = ["Graph", "Node", "lower"]

_ACTIVATIONS = {"ReLU": "relu", "ReLU6": "relu6", "Hardswish": "hardswish", "SiLU": "silu",
                "Sigmoid": "sigmoid", "Tanh": "tanh"}


@dataclass
class Node:
    """One primitive: ``op`` reads ``inputs`` (value ids) and writes value ``output``."""

    op: str  # conv, bn, act, add, pad, maxpool, gap, flatten, linear
    inputs: list[int]
    output: int
    names: list[str]  # the module paths it stands for (several once fused)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """Nodes in execution order, per-image shapes of every value, and the dtype."""

    nodes: list[Node]
    shapes: dict[int, tuple[int, ...]]
    dtype: np.dtype
    output: int = 0
    #: Values stored channels-last (NHWC); the rest are NCHW (see ``inference.layout``).
    channels_last: set[int] = field(default_factory=set)

    def emit(self, op: str, inputs: list[int], shape: tuple[int, ...], name: str,
             **attrs: Any) -> int:
        value = len(self.shapes)
        self.shapes[value] = shape
        self.nodes.append(Node(op, list(inputs), value, [name], attrs))
        return value


def _f64(a: Any) -> np.ndarray:
    return np.asarray(getattr(a, "data", a), np.float64)


def _conv(g: Graph, m: Any, x: int, path: str) -> int:
    if len(m.kernel_size) != 2 or m.transposed:
        raise TypeError(f"compile: layer {path!r} ({type(m).__name__}) is not a 2-D convolution")
    if m.padding_mode != "zeros":
        raise TypeError(f"compile: layer {path!r} pads with {m.padding_mode!r}; only zeros compile")
    c, h, w = g.shapes[x]
    if c != m.in_channels:
        raise ValueError(f"compile: layer {path!r} expects {m.in_channels} channels, gets {c}")
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    if isinstance(m.padding, str):  # 'same' (PyTorch: extra on the bottom/right) or 'valid'
        pads = [(0, 0), (0, 0)] if m.padding == "valid" else [
            ((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2) for k, d in ((kh, dh), (kw, dw))]
    else:
        pads = [(m.padding[0],) * 2, (m.padding[1],) * 2]
    ho = conv_output_size(h + sum(pads[0]), kh, sh, 0, dh)
    wo = conv_output_size(w + sum(pads[1]), kw, sw, 0, dw)
    bias = None if m.bias is None else _f64(m.bias)
    return g.emit("conv", [x], (m.out_channels, ho, wo), path, weight=_f64(m.weight), bias=bias,
                  stride=(sh, sw), dilation=(dh, dw), pads=(*pads[0], *pads[1]),
                  groups=m.groups, act=None, residual=None)


def _bn(g: Graph, m: Any, x: int, path: str) -> int:
    if m.running_mean is None or m.running_var is None:
        raise TypeError(f"compile: layer {path!r} (BatchNorm without running statistics) has no "
                        "fixed inference form")
    if g.shapes[x][0] != m.num_features:
        raise ValueError(f"compile: layer {path!r} expects {m.num_features} channels, gets "
                         f"{g.shapes[x][0]}")
    scale = 1.0 / np.sqrt(_f64(m.running_var) + m.eps)
    if m.weight is not None:
        scale = scale * _f64(m.weight)
    shift = -_f64(m.running_mean) * scale + (0.0 if m.bias is None else _f64(m.bias))
    return g.emit("bn", [x], g.shapes[x], path, scale=scale, shift=shift)


def _pad(g: Graph, pads: tuple[int, int, int, int], x: int, path: str) -> int:
    """``pads`` = (top, bottom, left, right)."""
    if not any(pads):
        return x
    c, h, w = g.shapes[x]
    return g.emit("pad", [x], (c, h + pads[0] + pads[1], w + pads[2] + pads[3]), path, pads=pads)


def _same_pad(g: Graph, m: Any, x: int, path: str) -> int:
    _, h, w = g.shapes[x]
    top, bottom = tf_same_padding(h, m.kernel_size, m.stride, m.dilation)
    left, right = tf_same_padding(w, m.kernel_size, m.stride, m.dilation)
    return _pad(g, (top, bottom, left, right), x, path)


def _zero_pad(g: Graph, m: Any, x: int, path: str) -> int:
    left, right, top, bottom = m.padding
    if min(m.padding) < 0:
        raise TypeError(f"compile: layer {path!r} crops (negative padding); not compiled")
    return _pad(g, (top, bottom, left, right), x, path)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, tuple | list) else (int(v), int(v))


def _maxpool(g: Graph, m: Any, x: int, path: str) -> int:
    if m.return_indices:
        raise TypeError(f"compile: layer {path!r} returns indices; not compiled")
    c, h, w = g.shapes[x]
    k, s, p, d = (_pair(v) for v in (m.kernel_size, m.stride, m.padding, m.dilation))
    size = [pool_output_size(n, k[i], s[i], p[i], d[i], m.ceil_mode) for i, n in enumerate((h, w))]
    return g.emit("maxpool", [x], (c, *size), path, kernel=k, stride=s, pads=p, dilation=d)


def _adaptive(g: Graph, m: Any, x: int, path: str) -> int:
    if _pair(m.output_size) != (1, 1):
        raise TypeError(f"compile: layer {path!r} pools to {m.output_size}; only output size 1 "
                        "(global average pooling) compiles")
    return g.emit("gap", [x], (g.shapes[x][0], 1, 1), path)


def _flatten(g: Graph, x: int, path: str) -> int:
    return g.emit("flatten", [x], (int(np.prod(g.shapes[x])),), path)


def _flatten_module(g: Graph, m: Any, x: int, path: str) -> int:
    if m.start_dim != 1 or m.end_dim != -1:
        raise TypeError(f"compile: layer {path!r} flattens dims {m.start_dim}..{m.end_dim}; "
                        "only Flatten(1, -1) compiles")
    return _flatten(g, x, path)


def _linear(g: Graph, m: Any, x: int, path: str) -> int:
    if len(g.shapes[x]) != 1 or g.shapes[x][0] != m.in_features:
        raise ValueError(f"compile: layer {path!r} expects {m.in_features} features, gets a "
                         f"per-image shape {g.shapes[x]}")
    bias = None if m.bias is None else _f64(m.bias)
    return g.emit("linear", [x], (m.out_features,), path, weight=_f64(m.weight), bias=bias, act=None)


def _activation(g: Graph, m: Any, x: int, path: str) -> int:
    return g.emit("act", [x], g.shapes[x], path, act=_ACTIVATIONS[type(m).__name__])


def _chain(g: Graph, m: Any, x: int, path: str) -> int:
    for name, child in m.named_children():
        x = lower_module(g, child, x, f"{path}.{name}" if path else name)
    return x


def _children(g: Graph, m: Any, x: int, path: str, names: tuple[str, ...]) -> int:
    for name in names:
        x = lower_module(g, getattr(m, name), x, f"{path}.{name}" if path else name)
    return x


def _inverted_residual(g: Graph, m: Any, x: int, path: str) -> int:
    out = lower_module(g, m.conv, x, f"{path}.conv" if path else "conv")
    if not m.use_residual:
        return out
    return g.emit("add", [out, x], g.shapes[out], path, act=None)


def _resnet_block(g: Graph, m: Any, x: int, path: str) -> int:
    dot = f"{path}." if path else ""
    identity = lower_module(g, m.downsample, x, dot + "downsample") if "downsample" in m._modules else x
    names = ["conv1", "bn1", "relu", "conv2", "bn2"]
    if isinstance(m, resnet.Bottleneck):
        names = ["conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"]
    out = x
    for name in names:
        out = lower_module(g, getattr(m, name), out, dot + name)
    out = g.emit("add", [out, identity], g.shapes[out], dot + "add", act=None)
    return lower_module(g, m.relu, out, dot + "relu")


def _head(g: Graph, m: Any, x: int, path: str, before: tuple[str, ...], pool: str | None,
          after: str) -> int:
    dot = f"{path}." if path else ""
    x = _children(g, m, x, path, before)
    x = _adaptive(g, getattr(m, pool), x, dot + pool) if pool else g.emit("gap", [x], (g.shapes[x][0], 1, 1),
                                                                  dot + "adaptive_avg_pool2d")
    x = _flatten(g, x, dot + "flatten")
    return lower_module(g, getattr(m, after), x, dot + after)


_Rule = Callable[[Graph, Any, int, str], int]
_RULES: dict[type, _Rule] = {
    nn.Conv2d: _conv, nn.BatchNorm2d: _bn, nn.SamePad2d: _same_pad, nn.ZeroPad2d: _zero_pad,
    nn.MaxPool2d: _maxpool, nn.AdaptiveAvgPool2d: _adaptive, nn.Flatten: _flatten_module,
    nn.Linear: _linear, nn.Identity: lambda g, m, x, p: x, nn.Dropout: lambda g, m, x, p: x,
    nn.InvertedResidual: _inverted_residual, resnet.BasicBlock: _resnet_block,
    resnet.Bottleneck: _resnet_block,
    nn.MobileNetV2: lambda g, m, x, p: _head(g, m, x, p, ("features",), None, "classifier"),
    efficientnet.EfficientNetLite: lambda g, m, x, p: _head(g, m, x, p, ("stem", "blocks", "head"),
                                                            "pool", "classifier"),
    nn.SmallCNN: lambda g, m, x, p: _children(g, m, x, p, ("features", "classifier")),
    resnet.ResNet: lambda g, m, x, p: _head(g, m, x, p, ("conv1", "bn1", "relu", "maxpool", "layer1",
                                                         "layer2", "layer3", "layer4"), "avgpool", "fc"),
}


def lower_module(g: Graph, m: Any, x: int, path: str) -> int:
    """Append the nodes of module ``m`` applied to value ``x``; return its output value."""
    if type(m).__name__ == "GraphModule" and type(m).__module__ == "convlayers.onnx.graph":
        from convlayers.inference.onnx_graph import lower_onnx_graph  # needs no onnx package

        return lower_onnx_graph(g, m, x, path)
    if "forward" in vars(m):
        raise TypeError(f"compile: layer {path or '<model>'!r} has a forward of its own (a "
                        "recorder?); remove it first")
    rule = _RULES.get(type(m))
    if rule is not None:
        return rule(g, m, x, path)
    if type(m).__name__ in _ACTIVATIONS and type(m).__module__.startswith("convlayers.nn"):
        return _activation(g, m, x, path)
    if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
        return _chain(g, m, x, path)  # Sequential, ConvNormAct, DepthwiseSeparable
    raise TypeError(f"compile: layer {path or '<model>'!r} ({type(m).__name__}) has no "
                    "inference lowering (supported: Conv2d, BatchNorm2d, activations, pads, "
                    "MaxPool2d, AdaptiveAvgPool2d(1), Flatten, Linear, Dropout, Identity, "
                    "Sequential and the blocks and models of convlayers.nn)")


def lower(model: Any, per_image: tuple[int, ...], dtype: np.dtype) -> Graph:
    """The graph of ``model`` in eval mode for inputs of per-image shape ``per_image``."""
    g = Graph([], {0: tuple(per_image)}, np.dtype(dtype))
    g.output = lower_module(g, model, 0, "")
    return g
