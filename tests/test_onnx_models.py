"""Whole networks through ``convlayers.onnx``: exported from torch twins (written here or in
tests/twins.py, never from convlayers) and compared with onnxruntime; convlayers models saved
as ONNX and run by onnxruntime; and the round trip ``save(load(p))``."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as tF

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from convlayers import nn  # noqa: E402
from convlayers import onnx as conv_onnx  # noqa: E402
from convlayers.nn import feature_maps  # noqa: E402
from convlayers.nn.models import efficientnet_lite0  # noqa: E402
from convlayers.nn.models.efficientnet import pretrained_lite0_path  # noqa: E402
from convlayers.summary import summary  # noqa: E402
from oracle import assert_close  # noqa: E402
from test_resnet import t_resnet18  # noqa: E402
from twins import TMobileNetV2, TorchLite0  # noqa: E402


def _bn(c: int) -> tnn.BatchNorm2d:
    return tnn.BatchNorm2d(c)


class TFactorized(tnn.Module):
    """Inception-style block: 1x1, a 1x7 then 7x1 branch, pooled 1x1, concatenated."""

    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.b1 = tnn.Conv2d(c, 8, 1)
        self.b2 = tnn.Sequential(tnn.Conv2d(c, 6, (1, 7), padding=(0, 3)), tnn.ReLU(),
                                 tnn.Conv2d(6, 8, (7, 1), padding=(3, 0)), _bn(8), tnn.ReLU())
        self.b3 = tnn.Sequential(tnn.AvgPool2d(3, 1, 1, count_include_pad=False), tnn.Conv2d(c, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1))


class TResNeXt(tnn.Module):
    """ResNeXt bottleneck: 1x1, grouped 3x3 (cardinality 8, stride 2), 1x1, projected shortcut."""

    def __init__(self, c: int = 3, width: int = 32, out: int = 64) -> None:
        super().__init__()
        self.body = tnn.Sequential(tnn.Conv2d(c, width, 1, bias=False), _bn(width), tnn.ReLU(),
                                   tnn.Conv2d(width, width, 3, 2, 1, groups=8, bias=False), _bn(width),
                                   tnn.ReLU(), tnn.Conv2d(width, out, 1, bias=False), _bn(out))
        self.down = tnn.Sequential(tnn.Conv2d(c, out, 1, 2, bias=False), _bn(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))


class TSEHardswish(tnn.Module):
    """MobileNetV3-style: conv, BN, hardswish, squeeze-excitation gated by hardsigmoid."""

    def __init__(self, c: int = 3, mid: int = 16) -> None:
        super().__init__()
        self.stem = tnn.Sequential(tnn.Conv2d(c, mid, 3, 2, 1, bias=False), _bn(mid), tnn.Hardswish())
        self.se = tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Conv2d(mid, 4, 1), tnn.ReLU(),
                                 tnn.Conv2d(4, mid, 1), tnn.Hardsigmoid())
        self.head = tnn.Sequential(tnn.Conv2d(mid, 8, 1), tnn.LeakyReLU(0.1), tnn.MaxPool2d(3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.head(y * self.se(y))


class TUNet(tnn.Module):
    """A small U-Net: two levels, ConvTranspose up, skip concatenation, a bilinear branch."""

    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.enc1 = tnn.Sequential(tnn.Conv2d(c, 8, 3, padding=1), _bn(8), tnn.ReLU())
        self.enc2 = tnn.Sequential(tnn.MaxPool2d(2), tnn.Conv2d(8, 16, 3, padding=1), tnn.ReLU())
        self.up = tnn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = tnn.Sequential(tnn.Conv2d(24, 8, 3, padding=1), tnn.Sigmoid())
        self.out = tnn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        smooth = tF.interpolate(e2[:, :8], scale_factor=2.0, mode="bilinear", align_corners=False)
        y = self.dec(torch.cat([self.up(e2), e1, smooth], 1))
        return self.out(y) + tF.interpolate(tF.avg_pool2d(self.out(y), 2), scale_factor=2.0, mode="nearest")


def _lite0() -> tnn.Module:
    model = TorchLite0()
    model.load_state_dict(torch.load(pretrained_lite0_path()), strict=True)
    return model


TWINS = {
    "mobilenet_v2": lambda: TMobileNetV2(num_classes=10),
    "efficientnet_lite0": _lite0,
    "factorized_7x7_concat": TFactorized,
    "resnext_bottleneck": TResNeXt,
    "se_hardswish": TSEHardswish,
    "unet": TUNet,
    "resnet18": lambda: t_resnet18(num_classes=10),
}
OPSETS = (13, 17)


def _randomized(model: tnn.Module) -> tnn.Module:
    """Non-trivial BatchNorm statistics, so folding or skipping one would show."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, tnn.BatchNorm2d) and m.running_mean.abs().sum() == 0:
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def _input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 64, 64)).astype(np.float32)


def _ort(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


class _Exports(dict):
    """Each twin exported by torch's (TorchScript-based) exporter when first asked for."""

    def __missing__(self, key: tuple[str, int]) -> bytes:
        name, opset = key
        torch.manual_seed(0)
        model = _randomized(TWINS[name]())
        buffer = io.BytesIO()
        torch.onnx.export(model, (torch.tensor(_input()),), buffer, opset_version=opset, dynamo=False,
                          input_names=["input"], output_names=["output"])
        self[key] = buffer.getvalue()
        return self[key]


@pytest.fixture(scope="module")
def exported() -> dict[tuple[str, int], bytes]:
    return _Exports()


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", list(TWINS))
def test_torch_exports_run_like_onnxruntime(exported, name: str, opset: int) -> None:
    data = exported[name, opset]
    model = conv_onnx.load(data)
    x = _input(1)
    assert_close(model(x), _ort(data, x), f"{name} at opset {opset}")
    assert any(isinstance(m, nn.Conv2d) for m in model.modules())  # ordinary layers inside


def test_loaded_models_work_with_summary_and_feature_maps(exported) -> None:
    model = conv_onnx.load(exported["resnet18", 17])
    table = summary(model, (1, 3, 64, 64))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20  # ResNet-18: 17 convolutions + 3 projections (BN folded by the exporter)
    assert "Conv2d" in str(table)
    first = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    maps = feature_maps(model, _input(), [first])
    assert maps[first].shape == (1, 64, 32, 32)


@pytest.mark.parametrize("name", ["mobilenet_v2", "unet", "se_hardswish", "factorized_7x7_concat"])
def test_round_trip_save_of_load_runs_the_same_in_onnxruntime(exported, name: str, tmp_path) -> None:
    data = exported[name, 17]
    x = _input(2)
    path = tmp_path / f"{name}.onnx"
    conv_onnx.save(conv_onnx.load(data), path, x)
    assert_close(_ort(path.read_bytes(), x), _ort(data, x), f"save(load({name}))")


def _blocks() -> nn.Module:
    return nn.Sequential(
        nn.ConvNormAct(3, 16, 3, 2, "tf_same", activation="relu6", rng=0),
        nn.DepthwiseSeparable(16, 24, rng=0), nn.InvertedResidual(24, 24, 1, 4, rng=0),
        nn.Hardswish(), nn.ZeroPad2d((0, 1, 1, 0)), nn.Conv2d(24, 16, 3, rng=0), nn.SiLU(),
        nn.AvgPool2d(3, 2, padding=((1, 0), (1, 1)), count_include_pad=False), nn.LeakyReLU(0.2),
        nn.Hardtanh(-1.0, 2.0), nn.MaxPool2d(2, ceil_mode=True), nn.Hardsigmoid(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5, rng=0))


SAVED = {
    "blocks": _blocks,
    "mobilenet_v2": lambda: nn.MobileNetV2(num_classes=10, rng=0),
    "efficientnet_lite0": lambda: efficientnet_lite0(pretrained=True),
    "resnet18": lambda: nn.resnet18(num_classes=10, rng=0),
    "small_cnn": lambda: nn.SmallCNN(image_size=28, rng=0),
}


@pytest.mark.parametrize("name", list(SAVED))
def test_saved_convlayers_models_run_the_same_in_onnxruntime(name: str) -> None:
    model = SAVED[name]().eval()
    x = np.random.default_rng(3).standard_normal((2, 1, 28, 28) if name == "small_cnn" else (2, 3, 32, 32))
    x = x.astype(np.float32)
    data = conv_onnx.save(model, None, x[:1])
    expected = np.asarray(getattr(model(x), "data", model(x)))
    assert_close(_ort(data, x), expected, f"{name} saved as ONNX, batch 2")
    assert_close(conv_onnx.load(data)(x[:1]), expected[:1], f"{name} saved and loaded")


def test_asymmetric_pads_survive_load_and_save(tmp_path) -> None:
    """Conv, ConvTranspose and pools with per-side pads and auto_pad, built with onnx.helper:
    loaded (padding layers or per-side padding), saved again, run by onnxruntime."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 2)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w2")
    w3 = numpy_helper.from_array(rng.standard_normal((5, 2, 2, 2)).astype(np.float32), "w3")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[0, 1, 2, 0], strides=[2, 1]),
        helper.make_node("MaxPool", ["a"], ["b"], kernel_shape=[3, 2], pads=[1, 0, 0, 1]),
        helper.make_node("ConvTranspose", ["b", "w2"], ["c"], strides=[2, 2], pads=[1, 0, 0, 1]),
        helper.make_node("AveragePool", ["c"], ["d"], kernel_shape=[3, 3], strides=[2, 2],
                         auto_pad="SAME_LOWER"),
        helper.make_node("Conv", ["d", "w3"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2]),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 17, 13])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x_info], [y_info], [w1, w2, w3])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = rng.standard_normal((1, 3, 17, 13)).astype(np.float32)
    loaded = conv_onnx.load(data)
    expected = _ort(data, x)
    assert_close(loaded(x), expected, "per-side pads")
    assert_close(_ort(conv_onnx.save(loaded, None, x), x), expected, "per-side pads, saved again")


class TOldOpsetHead(tnn.Module):
    """The U-Net with a head whose ONNX form changed at opset 13 (Softmax over flattened axes,
    Squeeze/Unsqueeze/ReduceMean axes as attributes)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _randomized(TUNet())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.softmax(self.body(x).flatten(2), dim=1)
        return y.unsqueeze(-1).squeeze(-1).mean(dim=2, keepdim=True)


@pytest.mark.parametrize("opset", [11, 12])
def test_opsets_before_13_run_like_onnxruntime(opset: int) -> None:
    buffer = io.BytesIO()
    torch.onnx.export(TOldOpsetHead().eval(), (torch.tensor(_input()),), buffer, opset_version=opset,
                      dynamo=False)
    x = _input(4)
    assert_close(conv_onnx.load(buffer.getvalue())(x), _ort(buffer.getvalue(), x), f"opset {opset}")
