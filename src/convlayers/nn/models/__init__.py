"""Ready-made models: ``MobileNetV2`` (torchvision-compatible keys) and ``SmallCNN``."""

from convlayers.nn.models.efficientnet import EfficientNetLite, efficientnet_lite0
from convlayers.nn.models.mobilenetv2 import MobileNetV2, make_divisible
from convlayers.nn.models.small_cnn import SmallCNN

__all__ = ["EfficientNetLite", "MobileNetV2", "SmallCNN", "efficientnet_lite0", "make_divisible"]
