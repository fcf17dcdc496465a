"""ResNet-18/50 against hand-written torchvision-layout torch twins (torchvision is not installable)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn as tnn

from convlayers import nn
from convlayers.interop.torch import from_torch, to_torch
from oracle import assert_close
from test_nn_layers import compare_modules, copy_weights


class TBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: tnn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: tnn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TResNet(tnn.Module):
    """torchvision.models.ResNet's layout, written out."""

    def __init__(self, block: type[TBasicBlock] | type[TBottleneck], layers: list[int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512 * block.expansion, num_classes)

    def _stage(self, block: type[TBasicBlock] | type[TBottleneck], planes: int, n: int,
               stride: int) -> tnn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(
                tnn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                tnn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, n)]
        return tnn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def t_resnet18(num_classes: int = 1000) -> TResNet:
    return TResNet(TBasicBlock, [2, 2, 2, 2], num_classes)


def t_resnet50(num_classes: int = 1000) -> TResNet:
    return TResNet(TBottleneck, [3, 4, 6, 3], num_classes)


def randomize_norms(model: tnn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so eval mode is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize(("ours", "theirs", "count"), [
    (nn.resnet18, t_resnet18, 11_689_512), (nn.resnet50, t_resnet50, 25_557_032)])
def test_published_parameter_counts_and_torchvision_keys(ours, theirs, count) -> None:  # type: ignore[no-untyped-def]
    model, twin = ours(rng=0), theirs()
    assert sum(p.size for p in model.parameters()) == count  # torchvision's published counts
    assert list(model.state_dict()) == list(twin.state_dict())
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in twin.state_dict().items()}


@pytest.mark.parametrize(("ours", "theirs"), [(nn.resnet18, t_resnet18), (nn.resnet50, t_resnet50)])
def test_eval_forward_matches_torch_with_torch_weights(ours, theirs) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    twin = theirs(num_classes=10)
    randomize_norms(twin, 1)
    model = from_torch(twin.eval())  # torch -> convlayers by structure and weights
    assert type(model) is nn.ResNet and not model.training
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x))
        assert_close(model(x), expected, "eval forward")
        back = to_torch(model).eval()  # convlayers -> torch: the same function again
        assert_close(back(torch.from_numpy(x)), expected, "to_torch round trip")


def test_resnet18_backward_matches_torch() -> None:
    # eval mode: in train mode at batch 2, layer4's BatchNorm normalises 8 values per channel,
    # which amplifies float32 rounding past any fair tolerance (the stage test below trains)
    model, twin = nn.resnet18(num_classes=5, rng=3), t_resnet18(num_classes=5)
    randomize_norms(twin, 2)
    model.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    compare_modules(model, twin, x, train=False, what="resnet18")


def test_bottleneck_stage_backward_matches_torch() -> None:
    downsample = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False, rng=0), nn.BatchNorm2d(16))
    ours = nn.Sequential(nn.models.Bottleneck(8, 4, 2, downsample, rng=1),
                         nn.models.Bottleneck(16, 4, rng=2))
    theirs = tnn.Sequential(
        TBottleneck(8, 4, 2, tnn.Sequential(tnn.Conv2d(8, 16, 1, 2, bias=False), tnn.BatchNorm2d(16))),
        TBottleneck(16, 4))
    x = np.random.default_rng(2).standard_normal((3, 8, 9, 7)).astype(np.float32)
    for train in (True, False):
        compare_modules(ours, theirs, x, train=train, what="bottleneck stage")


def test_weights_copy_both_ways() -> None:
    model = nn.resnet18(num_classes=4, rng=5)
    twin = t_resnet18(num_classes=4)
    copy_weights(model, twin)  # convlayers -> torch, by key
    back = nn.resnet18(num_classes=4, rng=6)
    back.load_state_dict({k: v.detach().numpy() for k, v in twin.state_dict().items()})
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(back.state_dict()[key]), key)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="layers"):
        nn.ResNet(nn.models.BasicBlock, (2, 2, 2))
    with pytest.raises(TypeError, match="block"):
        nn.ResNet(nn.Conv2d, (2, 2, 2, 2))  # type: ignore[arg-type]


def test_fuse_folds_the_named_conv_bn_pairs_of_resnet() -> None:
    twin = t_resnet50(num_classes=6)
    randomize_norms(twin, 4)
    model = from_torch(twin.eval())
    fused = nn.fuse(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original stays
    x = np.random.default_rng(3).standard_normal((1, 3, 40, 40)).astype(np.float32)
    with torch.no_grad():
        assert_close(np.asarray(fused(x)), twin(torch.from_numpy(x)), "fused resnet50")
