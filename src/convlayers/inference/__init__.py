"""Whole-network inference: ``compile(model, example)`` returns a frozen, fused plan.

>>> import numpy as np
>>> from convlayers import nn
>>> from convlayers.inference import compile
>>> plan = compile(nn.SmallCNN(image_size=8, rng=0), np.zeros((1, 1, 8, 8), np.float32))
>>> plan(np.ones((3, 1, 8, 8), np.float32)).shape
(3, 10)
"""

from convlayers.inference.plan import Plan, compile

__all__ = ["Plan", "compile"]
