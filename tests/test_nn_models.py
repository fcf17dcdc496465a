"""Blocks and models against torch twins written here (torchvision's layout and key names),
and the parameter counts of the seed's blocks and of MobileNetV2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn as tnn

from convlayers import nn, tensor
from oracle import assert_close, random_array
from test_nn_layers import compare_modules, copy_weights
from twins import TInvertedResidual, TMobileNetV2, t_conv_bn_act

R = np.random.default_rng(0)


# torch twins: torchvision's Conv2dNormActivation / InvertedResidual / MobileNetV2, verbatim layout


class SeedMobileBlock(tnn.Module):
    """The seed's simplified block, as written there (expand x6, depthwise, project)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.expand = tnn.Conv2d(in_ch, in_ch * 6, kernel_size=1)
        self.depthwise = tnn.Conv2d(in_ch * 6, in_ch * 6, 3, stride=stride, padding=1, groups=in_ch * 6)
        self.project = tnn.Conv2d(in_ch * 6, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.depthwise(self.expand(x)))


def _count(module: nn.Module | tnn.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in module.parameters())


# parameter counts


def test_seed_standard_block_counts_1792_plus_128() -> None:
    theirs = tnn.Sequential(tnn.Conv2d(3, 64, kernel_size=3, padding=1), tnn.BatchNorm2d(64),
                            tnn.ReLU(inplace=True))
    ours = nn.ConvNormAct(3, 64, bias=True)
    assert (_count(ours[0]), _count(ours[1])) == (_count(theirs[0]), _count(theirs[1])) == (1792, 128)
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_seed_efficient_block_matches_its_pytorch_sequential() -> None:
    theirs = tnn.Sequential(tnn.Conv2d(3, 3, kernel_size=3, groups=3, padding=1), tnn.BatchNorm2d(3),
                            tnn.ReLU(), tnn.Conv2d(3, 64, kernel_size=1), tnn.BatchNorm2d(64), tnn.ReLU())
    ours = nn.DepthwiseSeparable(3, 64, bias=True)
    assert _count(ours) == _count(theirs) == 30 + 6 + 256 + 128
    for train in (True, False):
        compare_modules(ours, theirs, random_array(R, (2, 3, 6, 6), np.float32), train, what="separable")


def test_seed_mobile_block_is_the_simplified_inverted_residual() -> None:
    theirs = SeedMobileBlock(4, 8, stride=2)
    ours = nn.InvertedResidual(4, 8, stride=2, expand_ratio=6, norm=False, activation=None,
                               residual=False, bias=True)
    assert _count(ours) == _count(theirs) == (4 * 24 + 24) + (24 * 9 + 24) + (24 * 8 + 8)
    names = {"expand": "conv.0.0", "depthwise": "conv.1.0", "project": "conv.2"}
    renamed = {f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(renamed)
    x = random_array(R, (2, 4, 7, 7), np.float32)
    assert_close(ours(x).data, theirs(torch.tensor(x)), "MobileBlock forward")


def test_mobilenet_v2_has_the_published_parameter_count() -> None:
    assert _count(nn.MobileNetV2()) == _count(TMobileNetV2()) == 3_504_872


# blocks and models, forward and every gradient


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_blocks_match_torch(train: bool) -> None:
    cases = [
        (nn.ConvNormAct(3, 8, stride=2), t_conv_bn_act(3, 8, stride=2, act=tnn.ReLU), (2, 3, 9, 9)),
        (nn.InvertedResidual(8, 8, 1, expand_ratio=6), TInvertedResidual(8, 8, 1, 6), (2, 8, 6, 6)),
        (nn.InvertedResidual(8, 16, 2, expand_ratio=1), TInvertedResidual(8, 16, 2, 1), (2, 8, 7, 7)),
    ]
    for ours, theirs, shape in cases:
        compare_modules(ours, theirs, random_array(R, shape, np.float32), train, what=type(ours).__name__)


def test_inverted_residual_adds_its_input_only_when_shapes_allow() -> None:
    assert nn.InvertedResidual(8, 8, 1).use_residual
    assert not nn.InvertedResidual(8, 8, 2).use_residual
    assert not nn.InvertedResidual(8, 16, 1).use_residual
    assert not nn.InvertedResidual(8, 8, 1, residual=False).use_residual


# float32 round-off compounds over 50 training-mode BatchNorms (a few grads differ by ~1e-3
# relative), so training is compared in float64, where any real difference would show
@pytest.mark.parametrize(("train", "dtype"), [(True, np.float64), (False, np.float32)],
                         ids=["train-float64", "eval-float32"])
def test_mobilenet_v2_matches_torch_forward_grads_and_running_stats(train: bool, dtype: type) -> None:
    ours = nn.MobileNetV2(num_classes=10, width_mult=0.35, dropout=0.0, rng=0).to(dtype)
    theirs = TMobileNetV2(num_classes=10, width_mult=0.35, dropout=0.0)
    theirs = theirs.to(torch.float64 if dtype is np.float64 else torch.float32)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert "features.1.conv.0.0.weight" in ours.state_dict() and "classifier.1.weight" in ours.state_dict()
    x = random_array(R, (2, 3, 64, 64), dtype)
    compare_modules(ours, theirs, x, train, what="MobileNetV2")


def test_mobilenet_v2_loads_a_torch_state_dict_and_agrees_in_eval() -> None:
    theirs = TMobileNetV2(num_classes=5, width_mult=0.5).eval()
    with torch.no_grad():
        for m in theirs.modules():  # non-trivial running statistics
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    ours = nn.MobileNetV2(num_classes=5, width_mult=0.5).eval()
    ours.load_state_dict(theirs.state_dict())
    x = random_array(R, (1, 3, 32, 32), np.float32)
    assert_close(ours(x).data, theirs(torch.tensor(x)), "loaded MobileNetV2")


def test_small_cnn_trains_like_torch() -> None:
    ours = nn.SmallCNN(image_size=8, rng=0)
    theirs = tnn.Sequential()
    theirs.features = tnn.Sequential(t_conv_bn_act(1, 16, act=tnn.ReLU), tnn.MaxPool2d(2),
                                     t_conv_bn_act(16, 32, act=tnn.ReLU), tnn.MaxPool2d(2))
    theirs.classifier = tnn.Sequential(tnn.Flatten(), tnn.Linear(128, 10))
    copy_weights(ours, theirs)
    x, y = random_array(R, (6, 1, 8, 8), np.float32), np.array([0, 1, 2, 3, 4, 9])
    loss = nn.functional.cross_entropy(ours(tensor(x)), y)
    expected = tnn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y))
    expected.backward()
    loss.backward()
    assert_close(loss.data, expected, "loss")
    their_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, their_params[name].grad, name)
