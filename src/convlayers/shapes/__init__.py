"""Shape arithmetic of convolution and pooling: sizes, paddings, receptive fields and costs.

Pure integer arithmetic, no arrays. Every other module asks this one rather than re-deriving a
formula. The output size of a convolution along one axis is (PyTorch's ``Conv2d`` docs)::

    out = floor((in + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1

which for ``dilation=1`` is the familiar ``floor((in + 2p - k) / s) + 1``. Sizes and paddings
live in ``_sizes``, the formulas as text in ``_formula``, parameter and multiply-add counts in
``_costs``; import them all from here.

Examples
--------
>>> conv_output_size(32, kernel_size=3, padding=1)
32
>>> conv_params(64, 64, 3)
36864
"""

from convlayers.shapes._costs import ConvCost, compare_conv_kinds, conv_macs, conv_params
from convlayers.shapes._formula import FORMULAS, Formula, conv_output_formula, size_formula
from convlayers.shapes._sizes import (
    AxisPadding,
    conv_output_shape,
    conv_output_size,
    conv_transpose_output_size,
    per_side_padding,
    pool_output_size,
    receptive_field,
    resolve_padding,
    same_padding,
    tf_same_padding,
    torch_pad,
    torch_pad_pairs,
    window_count,
)

__all__ = [
    "FORMULAS",
    "AxisPadding",
    "ConvCost",
    "Formula",
    "compare_conv_kinds",
    "conv_macs",
    "conv_output_formula",
    "conv_output_shape",
    "conv_output_size",
    "conv_params",
    "conv_transpose_output_size",
    "per_side_padding",
    "pool_output_size",
    "receptive_field",
    "resolve_padding",
    "same_padding",
    "size_formula",
    "tf_same_padding",
    "torch_pad",
    "torch_pad_pairs",
    "window_count",
]
