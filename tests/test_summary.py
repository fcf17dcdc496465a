"""``summary``: per-layer shapes against torch forward hooks, the MAC policy, the published
MobileNetV2 figures, the exports; and ``feature_maps``."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn as tnn

from convlayers import nn
from convlayers.cli import main
from convlayers.summary import COLUMNS, Summary, layer_macs, summary
from oracle import assert_close, random_array
from test_nn_layers import copy_weights
from test_nn_models import TMobileNetV2

R = np.random.default_rng(0)


def torch_leaf_outputs(model: tnn.Module, x: np.ndarray) -> dict[str, torch.Tensor]:
    """Output of every leaf of a torch model, recorded with forward hooks."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, name=name: outputs.__setitem__(name, o))
             for name, m in model.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.tensor(x))
    finally:
        for h in hooks:
            h.remove()
    return outputs


def weight_macs(model: tnn.Module, x: np.ndarray) -> int:
    """Conv and Linear weight multiply-adds counted independently, from torch's outputs."""
    total = 0
    for name, out in torch_leaf_outputs(model, x).items():
        m = model.get_submodule(name)
        if isinstance(m, tnn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, tnn.Linear):
            total += out.numel() * m.in_features
    return total


@pytest.fixture(scope="module")
def mobilenet() -> tuple[nn.MobileNetV2, Summary]:
    model = nn.MobileNetV2(rng=0)
    return model, summary(model, (1, 3, 224, 224))


def test_mobilenet_v2_published_parameters_and_multiply_adds(mobilenet) -> None:
    model, s = mobilenet
    assert s.total_params == 3_504_872 == sum(r["params"] for r in s.rows)
    # Default policy: conv/linear weights only, as the paper ("300M" multiply-adds, Table 6 of
    # Sandler et al. 2018) and torchinfo (300.8 M) count; here counted independently from the
    # torch twin's outputs.
    assert s.total_macs == weight_macs(TMobileNetV2(), np.zeros((1, 3, 224, 224), np.float32))
    assert round(s.total_macs / 1e5) == 3008  # torchinfo's "300.8 M"
    assert s.total_flops == 2 * s.total_macs
    assert "Total mult-adds: 300,774,272 (300.77 M)" in str(s)
    assert "not bias adds, BatchNorm, pooling, activations" in str(s)
    # the other terms stay selectable, and the table says they were counted
    full = summary(model, (1, 3, 224, 224), bias=True, norm=True)
    bn_elements = sum(int(np.prod(r["output_shape"])) for r in s.rows if r["type"] == "BatchNorm2d")
    assert full.total_macs - s.total_macs == bn_elements + 1000  # + the classifier's bias adds
    assert "conv/linear weights, bias adds, BatchNorm; not pooling, activations" in str(full)


def test_per_layer_output_shapes_equal_the_torch_twins(mobilenet) -> None:
    _, s = mobilenet
    theirs = torch_leaf_outputs(TMobileNetV2().eval(), np.zeros((1, 3, 224, 224), np.float32))
    assert {r["name"]: r["output_shape"] for r in s.rows} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert [r["name"] for r in s.rows] == list(theirs)  # named_modules order
    first = s.rows[0]
    assert first == {"name": "features.0.0", "type": "Conv2d", "output_shape": (1, 32, 112, 112),
                     "params": 864, "macs": 864 * 112 * 112, "memory": 32 * 112 * 112 * 4}


def test_policy_switches_add_exactly_their_terms() -> None:
    model = nn.SmallCNN(image_size=8, rng=0)
    base = summary(model, (2, 1, 8, 8))
    by_type = {t: sum(int(np.prod(r["output_shape"])) for r in base.rows if r["type"] == t)
               for t in ("Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Linear")}
    # no conv bias (BN follows); the Linear has one
    assert summary(model, (2, 1, 8, 8), bias=True).total_macs - base.total_macs == by_type["Linear"]
    assert summary(model, (2, 1, 8, 8), norm=True).total_macs - base.total_macs == by_type["BatchNorm2d"]
    assert (summary(model, (2, 1, 8, 8), activations=True).total_macs
            - base.total_macs == by_type["ReLU"])
    assert (summary(model, (2, 1, 8, 8), pooling=True).total_macs
            - base.total_macs == 4 * by_type["MaxPool2d"])


def test_transposed_conv_linear_and_adaptive_pool_counts() -> None:
    convt = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, rng=0)
    x = np.zeros((2, 4, 5, 5), np.float32)
    y = convt(x)
    # every input pixel scatters C_out/groups * k*k products
    assert layer_macs(convt, x, y, bias=True) == 2 * 4 * 25 * 3 * 9 + y.size
    assert layer_macs(convt, x, y) == 2 * 4 * 25 * 3 * 9
    fc = nn.Linear(6, 4)
    x6 = np.zeros((2, 3, 6), np.float32)
    assert layer_macs(fc, x6, fc(x6), bias=True) == 6 * 4 * 6 + 24
    pool = nn.AdaptiveAvgPool2d(1)
    assert layer_macs(pool, np.zeros((1, 8, 5, 5)), np.zeros((1, 8, 1, 1)), pooling=True) == 200


def test_modes_and_forwards_are_restored_even_on_error() -> None:
    model = nn.SmallCNN(image_size=8, rng=0).train()
    model.classifier.eval()
    stats = {k: v.copy() for k, v in model.state_dict().items()}
    summary(model, (1, 1, 8, 8))
    assert model.training and model.features[0][1].training and not model.classifier[1].training
    for k, v in model.state_dict().items():  # eval mode during the pass: running stats untouched
        np.testing.assert_array_equal(v, stats[k])
    with pytest.raises(ValueError, match="channels"):
        summary(model, (1, 3, 8, 8))
    assert model.training and not any("forward" in vars(m) for m in model.modules())


def test_shared_and_unused_leaves() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.unused = nn.Linear(3, 3, rng=0), nn.ReLU()

        def forward(self, x: Any) -> Any:
            return self.fc(self.fc(x))

    s = summary(Twice(), (1, 3))
    assert [(r["name"], r["params"], r["macs"]) for r in s.rows] == [("fc", 12, 9), ("fc", 0, 9),
                                                                      ("unused", 0, 0)]
    assert s.rows[2]["output_shape"] is None and s.total_params == 12


def test_exports_round_trip_and_the_text_table_is_aligned(mobilenet) -> None:
    _, s = mobilenet
    parsed = list(csv.DictReader(io.StringIO(s.to_csv())))
    assert tuple(parsed[0]) == COLUMNS

    def typed(row: dict[str, str]) -> dict[str, Any]:
        text = row["output_shape"]
        shape = tuple(int(v) for v in text.split("x")) if text not in ("", "-") else None
        return {"name": row["name"], "type": row["type"], "output_shape": shape,
                **{k: int(row[k].replace(",", "")) for k in ("params", "macs", "memory")}}

    assert [typed(r) for r in parsed] == s.rows
    table = [ln for ln in s.to_markdown().splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in table]
    assert tuple(cells[0]) == COLUMNS
    assert [typed(dict(zip(COLUMNS, c, strict=True))) for c in cells[2:]] == s.rows
    assert "Total params: 3,504,872" in s.to_markdown()
    lines = str(s).splitlines()
    body = lines[lines.index(next(ln for ln in lines if ln.startswith("features.0.0"))):][:len(s.rows)]
    assert len({len(ln) for ln in body}) == 1 and body[-1].startswith("classifier.1")
    assert "FLOPs = 2 x MACs" in str(s)


@pytest.mark.parametrize(("args", "error"), [
    (("model", (1, 3, 8, 8)), TypeError), ((nn.ReLU(), "1,3"), TypeError),
    ((nn.ReLU(), (1, 0, 3)), ValueError), ((nn.ReLU(), (1.5, 2)), TypeError),
])
def test_bad_arguments_are_named(args: tuple[Any, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match=r"model|input_shape"):
        summary(*args)
    with pytest.raises(ValueError, match="dtype"):
        summary(nn.ReLU(), (1, 2), dtype=np.int32)


# feature_maps


def test_feature_maps_equal_torch_hook_outputs() -> None:
    ours = nn.MobileNetV2(num_classes=10, width_mult=0.35, rng=0).eval()
    theirs = TMobileNetV2(num_classes=10, width_mult=0.35).eval()
    copy_weights(ours, theirs)
    x = random_array(R, (1, 3, 32, 32), np.float32)
    names = ["features.0", "features.3", "features.3.conv.1.0", "classifier.1"]
    maps = nn.feature_maps(ours, x, names)
    assert list(maps) == names
    hooked: dict[str, torch.Tensor] = {}
    hooks = [theirs.get_submodule(n).register_forward_hook(
        lambda _m, _i, o, n=n: hooked.__setitem__(n, o)) for n in names]
    with torch.no_grad():
        theirs(torch.tensor(x))
    for h in hooks:
        h.remove()
    for n in names:
        assert_close(maps[n], hooked[n], n)
    leaves = nn.feature_maps(ours, x)
    assert list(leaves)[::len(leaves) - 1] == ["features.0.0", "classifier.1"]
    assert not any("forward" in vars(m) for m in ours.modules())


def test_feature_maps_unknown_names_list_valid_ones() -> None:
    model = nn.SmallCNN(image_size=8, rng=0)
    with pytest.raises(ValueError, match=r"'features.9'.*valid names include 'features'"):
        nn.feature_maps(model, np.zeros((1, 1, 8, 8), np.float32), ["features.9"])
    with pytest.raises(TypeError, match="names"):
        nn.feature_maps(model, np.zeros((1, 1, 8, 8), np.float32), "features")


# command line


def test_cli_summary_prints_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "small-cnn", "--csv", "--input", "2,1,8,8", "--norm"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    expected = summary(nn.SmallCNN(image_size=8), (2, 1, 8, 8), norm=True).to_csv()
    assert rows == list(csv.DictReader(io.StringIO(expected)))
    assert main(["summary", "conv-bn-relu", "--input", "1,3,32,32", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| 0 | Conv2d | 1x64x32x32 | 1,792 |" in out and "Total params: 1,920" in out
    assert main(["summary", "mobile-block", "--input", "1,4,8,8", "--out-channels", "8"]) == 0
    assert "Total params: 560" in capsys.readouterr().out  # (4*24+24) + (24*9+24) + (24*8+8)


@pytest.mark.parametrize("argv", [["summary", "small-cnn", "--input", "1,1,8"],
                                  ["summary", "resnet"], ["summary", "small-cnn", "--input", "1,1,8,9"]])
def test_cli_summary_user_errors_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convlayers: error: ")
