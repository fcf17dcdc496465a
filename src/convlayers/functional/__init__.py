"""Pure functions on NumPy arrays, NCHW, with ``torch.nn.functional``'s names and meanings.

Each op has an explicit backward beside it (a vector-Jacobian product), so gradients can be
computed without any framework. ``convlayers.reference`` holds slow, literal twins of these
ops for reading and testing.

The ops exported here also accept :class:`convlayers.autograd.Tensor` arguments: given only
arrays they return arrays and record nothing (the plain op runs directly); given a Tensor they
return a Tensor and record the backward that stands beside the op, so ``loss.backward()``
reaches every parameter.

>>> import numpy as np
>>> from convlayers import tensor
>>> x = tensor(np.array([[-1.0, 2.0]]), requires_grad=True)
>>> relu(x).sum().backward()
>>> x.grad
array([[0., 1.]])
"""

from convlayers.functional._measured import forget_measurements, measured_choices
from convlayers.functional._vjp import (
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_avg_pool3d,
    adaptive_max_pool1d,
    adaptive_max_pool2d,
    adaptive_max_pool3d,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    batch_norm,
    conv1d,
    conv2d,
    conv3d,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
    cross_entropy,
    dropout,
    flatten,
    linear,
    log_softmax,
    max_pool1d,
    max_pool2d,
    max_pool3d,
    mse_loss,
    pad,
    relu,
    relu6,
    sigmoid,
    softmax,
    tanh,
)
from convlayers.functional._vjp_act import clamp, hardsigmoid, hardswish, hardtanh, leaky_relu, silu
from convlayers.functional.activations import (
    clamp_backward,
    hardsigmoid_backward,
    hardswish_backward,
    hardtanh_backward,
    leaky_relu_backward,
    log_softmax_backward,
    relu6_backward,
    relu_backward,
    sigmoid_backward,
    silu_backward,
    softmax_backward,
    tanh_backward,
)
from convlayers.functional.adaptive import adaptive_avg_pool_backward
from convlayers.functional.conv import PADDING_MODES, conv2d_backward, conv_backward
from convlayers.functional.conv_transpose import conv_transpose_backward
from convlayers.functional.dense import linear_backward
from convlayers.functional.losses import cross_entropy_backward, mse_loss_backward
from convlayers.functional.normalization import (
    batch_norm_backward,
    batch_norm_with_statistics,
    inference_affine,
)
from convlayers.functional.padding import PAD_MODES, pad_backward
from convlayers.functional.plan import plan
from convlayers.functional.pooling import avg_pool_backward, max_pool_backward
from convlayers.functional.stochastic import dropout_backward, dropout_mask

__all__ = [
    "PADDING_MODES",
    "PAD_MODES",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_avg_pool_backward",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "avg_pool_backward",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_with_statistics",
    "clamp",
    "clamp_backward",
    "conv1d",
    "conv2d",
    "conv2d_backward",
    "conv3d",
    "conv_backward",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv_transpose_backward",
    "cross_entropy",
    "cross_entropy_backward",
    "dropout",
    "dropout_backward",
    "dropout_mask",
    "flatten",
    "forget_measurements",
    "hardsigmoid",
    "hardsigmoid_backward",
    "hardswish",
    "hardswish_backward",
    "hardtanh",
    "hardtanh_backward",
    "inference_affine",
    "leaky_relu",
    "leaky_relu_backward",
    "linear",
    "linear_backward",
    "log_softmax",
    "log_softmax_backward",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "max_pool_backward",
    "measured_choices",
    "mse_loss",
    "mse_loss_backward",
    "pad",
    "pad_backward",
    "plan",
    "relu",
    "relu6",
    "relu6_backward",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "silu",
    "silu_backward",
    "softmax",
    "softmax_backward",
    "tanh",
    "tanh_backward",
]
