"""PyTorch twins of convlayers' models, written independently of convlayers.

The tests compare convlayers with these (same weights, same inputs), and the benchmarks time
them beside convlayers. torchvision does not install beside the local torch build, so the
twins follow torchvision's layout and key names (MobileNetV2) and the EfficientNet-Lite0
wheel's (``_blocks.N._expand_conv``...) by hand.
"""

from __future__ import annotations

import torch
import torch.nn as tnn
import torch.nn.functional as tF

__all__ = ["TInvertedResidual", "TMobileNetV2", "TorchLite0", "t_conv_bn_act"]


def t_conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                  act: type[tnn.Module] | None = tnn.ReLU6) -> tnn.Sequential:
    layers: list[tnn.Module] = [tnn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                                tnn.BatchNorm2d(cout)]
    return tnn.Sequential(*layers, *([act()] if act else []))


class TInvertedResidual(tnn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[tnn.Module] = []
        if expand_ratio != 1:
            layers.append(t_conv_bn_act(inp, hidden, k=1))
        layers += [t_conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
                   tnn.Conv2d(hidden, oup, 1, 1, 0, bias=False), tnn.BatchNorm2d(oup)]
        self.conv = tnn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _divisible(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


class TMobileNetV2(tnn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        cin, last = _divisible(32 * width_mult), _divisible(1280 * max(1.0, width_mult))
        features: list[tnn.Module] = [t_conv_bn_act(3, cin, stride=2)]
        for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                           [6, 160, 3, 2], [6, 320, 1, 1]]:
            for i in range(n):
                features.append(TInvertedResidual(cin, _divisible(c * width_mult), s if i == 0 else 1, t))
                cin = _divisible(c * width_mult)
        features.append(t_conv_bn_act(cin, last, k=1))
        self.features = tnn.Sequential(*features)
        self.classifier = tnn.Sequential(tnn.Dropout(p=dropout), tnn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tnn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def _tf_same(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's 'same' padding, written independently of convlayers."""
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
    """EfficientNet-Lite0 as the wheel's keys describe it, in plain torch."""

    STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = tnn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = tnn.BatchNorm2d(32, eps=1e-3)
        blocks = []
        for repeats, k, stride, expand, cin, cout in self.STAGES:
            for r in range(repeats):
                blocks.append(_TorchBlock(cin if r == 0 else cout, cout, k, stride if r == 0 else 1, expand))
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
