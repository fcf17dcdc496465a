"""Pure functions on NumPy arrays, NCHW, with ``torch.nn.functional``'s names and meanings.

Each op has an explicit backward beside it (a vector-Jacobian product), so gradients can be
computed without any framework. ``convlayers.reference`` holds slow, literal twins of these
ops for reading and testing.
"""

from convlayers.functional.adaptive import (
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_avg_pool3d,
    adaptive_avg_pool_backward,
    adaptive_max_pool1d,
    adaptive_max_pool2d,
    adaptive_max_pool3d,
)
from convlayers.functional.conv import (
    PADDING_MODES,
    conv1d,
    conv2d,
    conv2d_backward,
    conv3d,
    conv_backward,
)
from convlayers.functional.conv_transpose import (
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
    conv_transpose_backward,
)
from convlayers.functional.padding import PAD_MODES, pad, pad_backward
from convlayers.functional.pooling import (
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    avg_pool_backward,
    max_pool1d,
    max_pool2d,
    max_pool3d,
    max_pool_backward,
)

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
    "conv1d",
    "conv2d",
    "conv2d_backward",
    "conv3d",
    "conv_backward",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv_transpose_backward",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "max_pool_backward",
    "pad",
    "pad_backward",
]
