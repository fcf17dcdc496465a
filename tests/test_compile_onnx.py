"""convlayers.compile on models loaded from ONNX: the loaded graph's layers lower like any
other model's, compared with torch (the exported twin) and with the eager loaded graph."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import convlayers
from convlayers import onnx as conv_onnx
from oracle import assert_close
from twins import TMobileNetV2


def _load(model: torch.nn.Module, shape: tuple[int, ...]) -> conv_onnx.GraphModule:
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), torch.zeros(shape), buffer, opset_version=17, dynamo=False)
    return conv_onnx.load(buffer.getvalue())


def test_compiled_onnx_mobilenet_matches_torch_and_the_loaded_graph() -> None:
    twin = TMobileNetV2(num_classes=7, width_mult=0.5)
    for module in twin.modules():  # non-trivial statistics, so folding is exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    graph = _load(twin, (1, 3, 48, 48))
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 48)).astype(np.float32)
    plan = convlayers.compile(graph, x)
    expected = twin(torch.from_numpy(x)).detach()
    assert_close(plan(x), expected, "compiled ONNX MobileNetV2 vs torch")
    assert_close(plan(x), graph(x), "compiled vs the loaded graph")
    text = str(plan)
    # Clip and the Adds fused: the stem's ReLU6, the blocks' residuals
    assert "conv + relu6" in text and "block + residual" in text


def test_an_onnx_node_without_lowering_is_named() -> None:
    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.gate = torch.nn.Parameter(torch.rand(1, 4, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * self.gate  # a broadcasting Mul

    graph = _load(Scaled(), (1, 3, 8, 8))
    with pytest.raises(TypeError, match=r"ONNX node .*Mul"):
        convlayers.compile(graph, np.zeros((1, 3, 8, 8), np.float32))
