"""Ready-made models: ``MobileNetV2`` (torchvision-compatible keys) and ``SmallCNN``."""

from convlayers.nn.models.mobilenetv2 import MobileNetV2, make_divisible
from convlayers.nn.models.small_cnn import SmallCNN

__all__ = ["MobileNetV2", "SmallCNN", "make_divisible"]
