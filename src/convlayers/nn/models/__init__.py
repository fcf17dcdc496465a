"""Ready-made models: ``MobileNetV2`` and ``ResNet`` (torchvision-compatible keys) and ``SmallCNN``."""

from convlayers.nn.models.efficientnet import EfficientNetLite, efficientnet_lite0
from convlayers.nn.models.mobilenetv2 import MobileNetV2, make_divisible
from convlayers.nn.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50
from convlayers.nn.models.small_cnn import SmallCNN

__all__ = ["BasicBlock", "Bottleneck", "EfficientNetLite", "MobileNetV2", "ResNet", "SmallCNN",
           "efficientnet_lite0", "make_divisible", "resnet18", "resnet50"]
