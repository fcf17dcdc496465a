"""``convlayers.onnx.save``: a convlayers model written as an ONNX graph.

The model is walked module by module while the example input flows through it, so every
layer's output shape is known as its node is written. Containers (``Sequential`` and the
blocks built on it, ``InvertedResidual``, the model classes, a loaded ``GraphModule``) give
the wiring; each layer becomes one or a few ONNX nodes (see ``_save_layers``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from convlayers.autograd import no_grad
from convlayers.nn.containers import Sequential
from convlayers.nn.module import Module
from convlayers.onnx._read import require_onnx
from convlayers.onnx._save_layers import LAYER_EXPORTERS, Builder, export_step
from convlayers.onnx.graph import GraphModule, as_array

__all__ = ["save"]

Flow = tuple[str, np.ndarray]  # ONNX value name and the value it has for the example input


def _run(b: Builder, module: Module, x: Flow) -> Flow:
    """Write ``module`` applied to ``x``; its output's name and value."""
    from convlayers.nn import blocks, models
    from convlayers.nn.models import efficientnet, resnet

    for cls, exporter in LAYER_EXPORTERS:
        if type(module) is cls or (isinstance(module, cls) and not isinstance(module, Sequential)):
            return exporter(b, module, x)
    if isinstance(module, Sequential):
        for child in module.children():
            x = _run(b, child, x)
        return x
    if isinstance(module, blocks.InvertedResidual):
        y = _run(b, module.conv, x)
        return (b.node("Add", [y[0], x[0]]), y[1] + x[1]) if module.use_residual else y
    if isinstance(module, (resnet.BasicBlock, resnet.Bottleneck)):
        identity = _run(b, module.downsample, x) if "downsample" in module._modules else x
        y = _run(b, module.relu, _run(b, module.bn1, _run(b, module.conv1, x)))
        if isinstance(module, resnet.Bottleneck):
            y = _run(b, module.relu, _run(b, module.bn2, _run(b, module.conv2, y)))
            y = _run(b, module.bn3, _run(b, module.conv3, y))
        else:
            y = _run(b, module.bn2, _run(b, module.conv2, y))
        return _run(b, module.relu, (b.node("Add", [y[0], identity[0]]), y[1] + identity[1]))
    if isinstance(module, models.MobileNetV2):
        y = _run(b, module.features, x)
        y = _flatten(b, (b.node("GlobalAveragePool", [y[0]]), y[1].mean(axis=(2, 3), keepdims=True)))
        return _run(b, module.classifier, y)
    if isinstance(module, efficientnet.EfficientNetLite):
        y = _run(b, module.head, _run(b, module.blocks, _run(b, module.stem, x)))
        return _run(b, module.classifier, _flatten(b, _run(b, module.pool, y)))
    if isinstance(module, resnet.ResNet):
        y = _run(b, module.maxpool, _run(b, module.relu, _run(b, module.bn1, _run(b, module.conv1, x))))
        for layer in (module.layer1, module.layer2, module.layer3, module.layer4):
            y = _run(b, layer, y)
        return _run(b, module.fc, _flatten(b, _run(b, module.avgpool, y)))
    if isinstance(module, models.SmallCNN):
        return _run(b, module.classifier, _run(b, module.features, x))
    if isinstance(module, GraphModule):
        return _graph(b, module, x)
    if type(module).__module__ == "convlayers.onnx._layers":  # e.g. a Crop after a ConvTranspose
        return export_step(b, module, [x], lambda m, f: _run(b, m, f))
    raise TypeError(f"convlayers.onnx.save cannot write a {type(module).__name__} ({module!r:.80}): "
                    f"it knows the convlayers layers, Sequential, the blocks and the model classes")


def _flatten(b: Builder, x: Flow) -> Flow:
    return b.node("Flatten", [x[0]], axis=1), x[1].reshape(x[1].shape[0], -1)


def _graph(b: Builder, graph: GraphModule, x: Flow) -> Flow:
    if len(graph.graph_inputs) != 1 or len(graph.graph_outputs) != 1:
        raise ValueError("convlayers.onnx.save writes graphs with one input and one output, got "
                         f"{len(graph.graph_inputs)} and {len(graph.graph_outputs)}")
    flows: dict[str, Flow] = {graph.graph_inputs[0].name: x}
    for name, value in graph.constants.items():
        flows[name] = (b.constant(value, name), value)
    for step in graph.steps:
        module = graph._modules[step.name]
        args = [flows[n] if n else None for n in step.inputs]
        flows[step.outputs[0]] = export_step(b, module, args, lambda m, f: _run(b, m, f))
    return flows[graph.graph_outputs[0]]


def save(model: Module, path: str | os.PathLike[str] | None, example_input: Any, *,
         opset: int | None = None, input_name: str = "input", output_name: str = "output",
         dynamic_batch: bool = True) -> bytes:
    """Write ``model`` as an ONNX model that onnxruntime (or any ONNX runtime) can run.

    Parameters
    ----------
    model : Module
        Built from convlayers layers, ``Sequential`` and the blocks, a model class
        (``MobileNetV2``, ``EfficientNetLite``, ``ResNet``, ``SmallCNN``) or a model read by
        :func:`convlayers.onnx.load`. Saved as in eval mode (BatchNorm statistics, no dropout).
    path : str or os.PathLike or None
        Where to write (atomically), or ``None`` for the bytes only.
    example_input : ndarray
        An input ``(N, C, H, W)`` of the right dtype; it fixes every shape except the batch
        axis (``dynamic_batch``), and layers whose padding depends on the size (TensorFlow
        'same') are written for its size.
    opset : int, optional
        ONNX opset (default 18, or 19 when a dilated average pool needs it).

    Returns
    -------
    bytes
        The serialised model.

    Examples
    --------
    >>> from convlayers import nn
    >>> data = save(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), None, np.zeros((1, 1, 4, 4), np.float32))
    >>> data[:2] != b""
    True
    """
    onnx = require_onnx()
    from onnx import helper

    x = np.asarray(as_array(example_input))
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"example_input must be a float32 or float64 array, got dtype {x.dtype}")
    if not isinstance(model, Module):
        raise TypeError(f"model must be a convlayers Module, got {type(model).__name__}")
    b = Builder(x.dtype)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            out_name, out = _run(b, model, (input_name, x))
    finally:
        model.train(was_training)
    b.node("Identity", [out_name], output=output_name)
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    in_shape: list[Any] = ["N" if dynamic_batch else x.shape[0], *x.shape[1:]]
    out_shape: list[Any] = ["N" if dynamic_batch else out.shape[0], *out.shape[1:]]
    graph = helper.make_graph(b.nodes, "convlayers",
                              [helper.make_tensor_value_info(input_name, elem, in_shape)],
                              [helper.make_tensor_value_info(output_name, elem, out_shape)], b.initializers)
    version = max(opset or 18, b.min_opset)
    if opset is not None and opset < b.min_opset:
        raise ValueError(f"opset {opset} is too old for this model: it needs {b.min_opset} ({b.why})")
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)],
                              producer_name="convlayers")
    proto.ir_version = min(proto.ir_version, 9)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if path is not None:
        from convlayers.io import atomic_write

        with atomic_write(path, "wb") as f:
            f.write(data)
    return data
