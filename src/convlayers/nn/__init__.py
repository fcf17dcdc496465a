"""Layers, blocks and models with PyTorch's names, arguments and ``state_dict`` keys.

>>> import numpy as np
>>> from convlayers import nn
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=0), nn.ReLU(), nn.Flatten(),
...                       nn.Linear(4 * 5 * 5, 2, rng=0))
>>> loss = nn.functional.cross_entropy(model(np.ones((3, 1, 5, 5), np.float32)), np.array([0, 1, 1]))
>>> loss.backward()
>>> model[0].weight.grad.shape
(4, 1, 3, 3)
"""

from convlayers import functional
from convlayers.nn import init
from convlayers.nn.activation import (
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from convlayers.nn.blocks import ConvNormAct, DepthwiseSeparable, InvertedResidual
from convlayers.nn.containers import ModuleList, Sequential
from convlayers.nn.conv import Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from convlayers.nn.fuse import fuse
from convlayers.nn.inspect import feature_maps
from convlayers.nn.linear import Dropout, Flatten, Identity, Linear
from convlayers.nn.loss import CrossEntropyLoss, MSELoss
from convlayers.nn.models import MobileNetV2, ResNet, SmallCNN, resnet18, resnet50
from convlayers.nn.module import Module, Parameter
from convlayers.nn.norm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from convlayers.nn.padding import SamePad2d, ZeroPad2d
from convlayers.nn.pooling import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool1d,
    AdaptiveMaxPool2d,
    AvgPool1d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
)

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvNormAct",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "CrossEntropyLoss",
    "DepthwiseSeparable",
    "Dropout",
    "Flatten",
    "Hardsigmoid",
    "Hardswish",
    "Hardtanh",
    "Identity",
    "InvertedResidual",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "MaxPool1d",
    "MaxPool2d",
    "MobileNetV2",
    "Module",
    "ModuleList",
    "Parameter",
    "ReLU",
    "ReLU6",
    "ResNet",
    "SamePad2d",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "SmallCNN",
    "Softmax",
    "Tanh",
    "ZeroPad2d",
    "feature_maps",
    "functional",
    "fuse",
    "init",
    "resnet18",
    "resnet50",
]
