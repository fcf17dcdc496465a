"""``convlayers.interop.torch``: torch -> convlayers -> torch round trips that agree on outputs
(eval and train), hyper-parameters of every supported layer, clear errors, and no torch import
from ``import convlayers``."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn as tnn

from convlayers import nn, tensor
from convlayers.interop.torch import from_torch, state_dict_from_torch, to_torch
from oracle import assert_close, random_array
from test_nn_models import TMobileNetV2

R = np.random.default_rng(0)


def randomize_stats(model: tnn.Module) -> tnn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.BatchNorm1d | tnn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return model


def small_net() -> tnn.Sequential:
    torch.manual_seed(0)
    return randomize_stats(tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(8 * 4 * 4, 5)))


def run(model: tnn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(x)).numpy()


def round_trip_agrees(theirs: tnn.Module, x: np.ndarray, train: bool, what: str) -> None:
    """torch -> ours -> torch: the three give the same outputs and the same buffers after."""
    theirs.train(train)
    ours = from_torch(copy.deepcopy(theirs))
    back = to_torch(ours)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == list(back.state_dict())
    assert ours.training == back.training == train
    expected = run(theirs, x)
    assert_close(ours(tensor(x)).data, expected, f"{what} ours ({'train' if train else 'eval'})")
    assert_close(run(back, x), expected, f"{what} back ({'train' if train else 'eval'})")
    theirs_state, back_state = theirs.state_dict(), back.state_dict()
    for k, v in ours.state_dict().items():
        assert_close(np.asarray(v), theirs_state[k], f"{what} {k}")
        assert_close(back_state[k].numpy(), theirs_state[k], f"{what} {k} back")


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_small_net_round_trip(train: bool) -> None:
    round_trip_agrees(small_net(), random_array(R, (4, 3, 8, 8), np.float32), train, "small net")


@pytest.mark.parametrize(("train", "dtype"), [(False, torch.float32), (True, torch.float64)],
                         ids=["eval-float32", "train-float64"])
def test_mobilenet_v2_twin_round_trip(train: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    theirs = randomize_stats(TMobileNetV2(num_classes=10, width_mult=0.35, dropout=0.0)).to(dtype)
    ours = from_torch(theirs)
    assert isinstance(ours, nn.MobileNetV2) and isinstance(ours.features[2], nn.InvertedResidual)
    assert ours.features[1].use_residual is False and ours.features[3].use_residual is True
    assert ours.features[0][0].weight.dtype == (np.float64 if dtype == torch.float64 else np.float32)
    x = random_array(R, (2, 3, 32, 32), np.float64 if dtype == torch.float64 else np.float32)
    round_trip_agrees(theirs, x, train, "MobileNetV2")


LAYERS: list[tuple[Any, tuple[int, ...]]] = [
    (tnn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2, bias=False), (2, 3, 11)),
    (tnn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding="valid", groups=2, padding_mode="reflect"),
     (2, 4, 7, 6)),
    (tnn.Conv2d(2, 3, 3, padding="same", padding_mode="circular"), (1, 2, 5, 5)),
    (tnn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), (2, 4, 5, 5)),
    (tnn.BatchNorm1d(5, eps=1e-3, momentum=None), (4, 5)),
    (tnn.BatchNorm2d(3, affine=False), (2, 3, 4, 4)),
    (tnn.ReLU6(inplace=True), (2, 3)), (tnn.ReLU(), (2, 3)),
    (tnn.MaxPool2d(3, 2, 1, dilation=1, ceil_mode=True), (2, 3, 8, 8)),
    (tnn.AvgPool2d(3, 2, 1, count_include_pad=False, divisor_override=None), (2, 3, 8, 8)),
    (tnn.AdaptiveAvgPool2d((2, 3)), (2, 3, 7, 8)),
    (tnn.Linear(6, 4, bias=False), (3, 6)), (tnn.Flatten(0, 1), (2, 3, 4)),
    (tnn.Dropout(0.3), (2, 3)), (tnn.Identity(), (2, 3)), (tnn.ZeroPad2d((1, 0, 2, 1)), (1, 2, 3, 3)),
]


@pytest.mark.parametrize(("layer", "shape"), LAYERS, ids=[type(m).__name__ for m, _ in LAYERS])
def test_each_supported_layer_keeps_its_hyper_parameters(layer: tnn.Module, shape: tuple[int, ...]) -> None:
    randomize_stats(layer).eval()
    ours = from_torch(layer)
    back = to_torch(ours)
    assert type(ours).__name__ == type(layer).__name__ == type(back).__name__
    assert repr(back) == repr(layer)
    x = random_array(R, shape, np.float32)
    expected = run(layer, x)
    assert_close(ours(x), expected, type(layer).__name__)
    assert_close(run(back, x), expected, f"{type(layer).__name__} back")


def test_our_blocks_and_models_convert_to_torch() -> None:
    for ours, shape in [(nn.ConvNormAct(3, 8, stride=2, rng=0), (2, 3, 9, 9)),
                        (nn.DepthwiseSeparable(4, 8, bias=True, rng=0), (2, 4, 6, 6)),
                        (nn.InvertedResidual(8, 8, 1, rng=0), (2, 8, 5, 5)),
                        (nn.SmallCNN(image_size=8, rng=0), (2, 1, 8, 8))]:
        ours.eval()
        theirs = to_torch(ours)
        assert list(theirs.state_dict()) == list(ours.state_dict())
        x = random_array(R, shape, np.float32)
        assert_close(run(theirs, x), ours(x), type(ours).__name__)


def test_training_flags_are_kept_per_module() -> None:
    theirs = small_net().train()
    theirs[1].eval()
    ours = from_torch(theirs)
    assert ours.training and ours[0].training and not ours[1].training
    back = to_torch(ours)
    assert back.training and not back[1].training


def test_unsupported_layers_name_their_path_and_type() -> None:
    class Custom(tnn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    class Conv(tnn.Conv2d):  # a layer with its own computation
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    with pytest.raises(TypeError, match=r"'1\.0' \(torch\.nn\.modules\.activation\.GELU\)"):
        from_torch(tnn.Sequential(tnn.Identity(), tnn.Sequential(tnn.GELU())))
    with pytest.raises(TypeError, match=r"the root module \(.*Custom\)"):
        from_torch(Custom())
    with pytest.raises(TypeError, match=r"'0' \(.*Conv\)"):
        from_torch(tnn.Sequential(Conv(1, 1, 1)))

    class Mine(nn.Module):
        def forward(self, x: Any) -> Any:
            return x

    seq = nn.Sequential()
    assert len(to_torch(seq)) == 0  # empty is fine
    seq._modules["head"] = Mine()
    with pytest.raises(TypeError, match=r"'head' \(.*Mine\) to torch"):
        to_torch(seq)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        from_torch(nn.ReLU())
    with pytest.raises(TypeError, match="convlayers Module"):
        to_torch(tnn.ReLU())


def test_state_dict_from_torch_copies_to_numpy() -> None:
    theirs = small_net()
    arrays = state_dict_from_torch(theirs.state_dict())
    assert list(arrays) == list(theirs.state_dict())
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    assert arrays["1.num_batches_tracked"].dtype == np.int64
    arrays["0.weight"][...] = 0
    assert theirs[0].weight.abs().sum() > 0
    with pytest.raises(TypeError, match="state_dict"):
        state_dict_from_torch([1, 2])


def test_importing_convlayers_does_not_import_torch() -> None:
    code = ("import sys, convlayers, convlayers.nn, convlayers.summary, convlayers.interop, "
            "convlayers.interop.torch, convlayers.cli; convlayers.cli.build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
