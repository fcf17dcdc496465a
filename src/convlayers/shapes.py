"""Shape arithmetic of convolution and pooling: sizes, paddings, receptive fields and costs.

Pure integer arithmetic, no arrays. Every other module asks this one rather than re-deriving a
formula. The output size of a convolution along one axis is (PyTorch's ``Conv2d`` docs)::

    out = floor((in + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1

which for ``dilation=1`` is the familiar ``floor((in + 2p - k) / s) + 1``.

Examples
--------
>>> conv_output_size(32, kernel_size=3, padding=1)
32
>>> conv_params(64, 64, 3)
36864
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from convlayers._validate import as_int, nonnegative_tuple, one_of, positive_tuple

__all__ = [
    "ConvCost",
    "compare_conv_kinds",
    "conv_macs",
    "conv_output_formula",
    "conv_output_shape",
    "conv_output_size",
    "conv_params",
    "conv_transpose_output_size",
    "pool_output_size",
    "receptive_field",
    "resolve_padding",
    "same_padding",
    "tf_same_padding",
]


def _check_axis(in_size: int, kernel_size: int, stride: int, padding: int, dilation: int) -> None:
    as_int(in_size, "in_size")
    as_int(padding, "padding")
    if in_size < 0:
        raise ValueError(f"in_size must be >= 0, got {in_size}")
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if as_int(value, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")


def conv_output_size(
    in_size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Output length of a convolution along one axis.

    ``floor((in_size + 2*padding - dilation*(kernel_size - 1) - 1) / stride) + 1``

    Raises ``ValueError`` when the (dilated) kernel does not fit in the padded input.

    Examples
    --------
    The seed's figures: 5x5 input, 3x3 kernel, no padding gives 3; padding 1 keeps 5; an 8x8
    input gives 6 at stride 1 and 3 at stride 2.

    >>> conv_output_size(5, 3), conv_output_size(5, 3, padding=1)
    (3, 5)
    >>> conv_output_size(8, 3, stride=1), conv_output_size(8, 3, stride=2)
    (6, 3)
    """
    _check_axis(in_size, kernel_size, stride, padding, dilation)
    span = dilation * (kernel_size - 1) + 1
    if in_size + 2 * padding < span:
        raise ValueError(
            f"kernel_size={kernel_size} (dilation={dilation}, effective size {span}) is larger "
            f"than the padded input ({in_size} + 2*{padding} = {in_size + 2 * padding})"
        )
    return (in_size + 2 * padding - span) // stride + 1


def pool_output_size(
    in_size: int,
    kernel_size: int,
    stride: int | None = None,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of a pooling along one axis, with PyTorch's ``ceil_mode`` rule.

    With ``ceil_mode`` the division rounds up, but a last window that would start inside the
    right padding (or beyond the input) is dropped, exactly as PyTorch does. ``stride=None``
    means the kernel size. ``padding`` may be at most half the kernel size.

    Examples
    --------
    >>> pool_output_size(4, 2)
    2
    >>> pool_output_size(5, 2), pool_output_size(5, 2, ceil_mode=True)
    (2, 3)
    >>> pool_output_size(5, 2, stride=2, padding=1, ceil_mode=True)  # a 4th window would start in padding
    3
    """
    stride = kernel_size if stride is None else stride
    _check_axis(in_size, kernel_size, stride, padding, dilation)
    if padding > kernel_size // 2:
        raise ValueError(
            f"padding should be at most half of kernel_size, got padding={padding} "
            f"and kernel_size={kernel_size}"
        )
    span = dilation * (kernel_size - 1) + 1
    numerator = in_size + 2 * padding - span
    if numerator < 0:
        raise ValueError(
            f"kernel_size={kernel_size} (dilation={dilation}) is larger than the padded input "
            f"({in_size} + 2*{padding})"
        )
    out = (numerator + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= in_size + padding:
        out -= 1
    return out


def conv_transpose_output_size(
    in_size: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
    dilation: int = 1,
) -> int:
    """Output length of a transposed convolution along one axis.

    ``(in_size - 1)*stride - 2*padding + dilation*(kernel_size - 1) + output_padding + 1``;
    ``output_padding`` must be smaller than ``stride`` or ``dilation`` (PyTorch's rule).

    >>> conv_transpose_output_size(3, 3, stride=2)
    7
    >>> conv_transpose_output_size(4, 4, stride=2, padding=1)
    8
    """
    _check_axis(in_size, kernel_size, stride, padding, dilation)
    as_int(output_padding, "output_padding")
    if output_padding < 0 or (output_padding >= stride and output_padding >= dilation):
        raise ValueError(
            f"output_padding must be >= 0 and smaller than stride or dilation, got "
            f"output_padding={output_padding}, stride={stride}, dilation={dilation}"
        )
    out = (in_size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1
    if out < 1:
        raise ValueError(
            f"transposed convolution output size would be {out}; reduce padding={padding}"
        )
    return out


def conv_output_shape(
    input_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> tuple[int, ...]:
    """Spatial output shape of a convolution, one entry per spatial axis of ``input_shape``.

    >>> conv_output_shape((224, 224), 3, stride=2, padding=1)
    (112, 112)
    """
    n = len(input_shape)
    ks = positive_tuple(kernel_size, n, "kernel_size")
    ss = positive_tuple(stride, n, "stride")
    ds = positive_tuple(dilation, n, "dilation")
    ps = nonnegative_tuple(padding, n, "padding")
    return tuple(
        conv_output_size(i, k, s, p, d)
        for i, k, s, p, d in zip(input_shape, ks, ss, ps, ds, strict=True)
    )


def same_padding(kernel_size: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) zero padding that keeps the size at stride 1, PyTorch's way.

    The total is ``dilation*(kernel_size - 1)``; an odd total puts the extra row or column
    after (right/bottom), as ``torch.nn.functional.conv2d(padding="same")`` does.

    >>> same_padding(3)
    (1, 1)
    >>> same_padding(4)
    (1, 2)
    >>> same_padding(3, dilation=2)
    (2, 2)
    """
    if as_int(kernel_size, "kernel_size") < 1 or as_int(dilation, "dilation") < 1:
        raise ValueError(f"kernel_size and dilation must be >= 1, got {kernel_size}, {dilation}")
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


def resolve_padding(padding: int | Sequence[int] | str, kernel_size: Sequence[int],
                    stride: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``(before, after)`` padding per axis of a convolution's ``padding`` argument.

    An int, or one per axis, pads both sides; ``"valid"`` pads nothing; ``"same"`` (stride 1
    only, as in PyTorch) keeps the size, the odd extra element after (:func:`same_padding`).

    >>> resolve_padding("same", (3, 4), (1, 1), (1, 1)), resolve_padding(2, (3,), (2,), (1,))
    (((1, 1), (1, 2)), ((2, 2),))
    """
    n = len(kernel_size)
    if isinstance(padding, str):
        one_of(padding, ("valid", "same"), "padding")
        if padding == "valid":
            return ((0, 0),) * n
        if any(s != 1 for s in stride):
            raise ValueError(f"padding='same' is not supported for strided convolutions, got "
                             f"stride={tuple(stride)}")
        return tuple(same_padding(k, d) for k, d in zip(kernel_size, dilation, strict=True))
    return tuple((p, p) for p in nonnegative_tuple(padding, n, "padding"))


def tf_same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) zeros TensorFlow's ``padding="SAME"`` adds along one axis.

    The output has ``ceil(size / stride)`` elements; the total padding that needs is split
    with the odd extra element *after*. At stride 1 this is PyTorch's ``padding="same"``; at
    stride 2 on an even size it is ``(0, 1)``, which no symmetric padding can express.

    >>> tf_same_padding(112, 3, 2), tf_same_padding(7, 3, 2), tf_same_padding(28, 5, 1)
    ((0, 1), (1, 1), (2, 2))
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel_size - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def conv_output_formula(in_size: int, kernel_size: int, stride: int = 1,
                        padding: int | tuple[int, int] = 0, dilation: int = 1) -> str:
    """:func:`conv_output_size`'s formula with the numbers filled in, for people to read (the
    short form ``in + 2p - k`` without dilation; pooling without ``ceil_mode`` shares it).

    >>> conv_output_formula(32, 3, stride=2, padding=1)
    'floor((32 + 2*1 - 3) / 2) + 1 = 16'
    >>> conv_output_formula(7, 3, padding=(0, 1), dilation=2)
    'floor((7 + 0 + 1 - 2*(3 - 1) - 1) / 1) + 1 = 4'
    """
    lo, hi = (padding, padding) if isinstance(padding, int) else padding
    pad = f"2*{lo}" if lo == hi else f"{lo} + {hi}"
    span = f"{kernel_size}" if dilation == 1 else f"{dilation}*({kernel_size} - 1) - 1"
    size = conv_output_size(in_size + lo + hi, kernel_size, stride, 0, dilation)
    return f"floor(({in_size} + {pad} - {span}) / {stride}) + 1 = {size}"


def receptive_field(layers: Sequence[tuple[int, int] | tuple[int, int, int]]) -> int:
    """Receptive field (in input pixels, per axis) of a stack of convolutions or pools.

    Each layer is ``(kernel_size, stride)`` or ``(kernel_size, stride, dilation)``. The field
    grows by ``dilation*(kernel_size - 1)`` times the product of the earlier strides.

    Examples
    --------
    Two stacked 3x3 convolutions see as far as one 5x5, three see as far as one 7x7:

    >>> receptive_field([(3, 1), (3, 1)]), receptive_field([(5, 1)])
    (5, 5)
    >>> receptive_field([(3, 1)] * 3)
    7
    """
    field, jump = 1, 1
    for i, layer in enumerate(layers):
        if len(layer) not in (2, 3):
            raise ValueError(f"layers[{i}] must be (kernel, stride[, dilation]), got {layer!r}")
        kernel, stride = layer[0], layer[1]
        dilation = layer[2] if len(layer) == 3 else 1
        for name, value in (("kernel", kernel), ("stride", stride), ("dilation", dilation)):
            if as_int(value, f"layers[{i}] {name}") < 1:
                raise ValueError(f"layers[{i}] {name} must be >= 1, got {value}")
        field += dilation * (kernel - 1) * jump
        jump *= stride
    return field


def _kernel_area(kernel_size: int | Sequence[int]) -> int:
    """Product of the kernel's sides; a plain int means a square 2-D kernel."""
    dims = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    area = 1
    for k in positive_tuple(dims, len(dims), "kernel_size"):
        area *= k
    return area


def _check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if as_int(value, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if as_int(groups, "groups") < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels={in_channels} and out_channels={out_channels} must both be divisible "
            f"by groups={groups}"
        )


def conv_params(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    groups: int = 1,
    bias: bool = False,
) -> int:
    """Number of learnable numbers in a convolution: ``out*(in/groups)*prod(kernel) [+ out]``.

    An int ``kernel_size`` means a square 2-D kernel; pass a tuple for other shapes.

    Examples
    --------
    The seed's counts: a 1x1 from 64 to 32 channels, a 3x3 from 64 to 64, and a depthwise 3x3
    on 64 channels (``groups=64``):

    >>> conv_params(64, 32, 1), conv_params(64, 64, 3), conv_params(64, 64, 3, groups=64)
    (2048, 36864, 576)
    >>> conv_params(64, 32, 1, bias=True)
    2080
    """
    _check_groups(in_channels, out_channels, groups)
    weights = out_channels * (in_channels // groups) * _kernel_area(kernel_size)
    return weights + (out_channels if bias else 0)


def conv_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    output_size: int | Sequence[int],
    groups: int = 1,
) -> int:
    """Multiply-accumulates of one convolution on one image (bias excluded).

    Every output element costs ``(in_channels/groups) * prod(kernel_size)`` multiply-adds.
    FLOPs are twice this number; this library always says which of the two it means.

    >>> conv_macs(3, 64, 3, (224, 224))
    86704128
    """
    _check_groups(in_channels, out_channels, groups)
    sizes = (output_size,) if isinstance(output_size, int) else tuple(output_size)
    positions = 1
    for s in sizes:
        if as_int(s, "output_size") < 0:
            raise ValueError(f"output_size must be >= 0, got {output_size}")
        positions *= s
    return out_channels * positions * (in_channels // groups) * _kernel_area(kernel_size)


@dataclass(frozen=True)
class ConvCost:
    """Parameters and multiply-adds of one way to map ``in_channels`` to ``out_channels``."""

    kind: str
    params: int
    macs: int
    description: str

    def ratio_to(self, other: ConvCost) -> float:
        """How many times fewer parameters this kind needs than ``other``."""
        return other.params / self.params


def compare_conv_kinds(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    output_size: int | Sequence[int] = (56, 56),
    groups: int = 4,
) -> list[ConvCost]:
    """Costs of standard, pointwise, depthwise, depthwise-separable and grouped convolutions.

    Weights only (no bias), so the numbers are the ones usually quoted. The depthwise row maps
    ``in_channels`` to ``in_channels`` (one filter per channel); the separable row is that
    depthwise step followed by a 1x1 to ``out_channels``.

    Examples
    --------
    >>> rows = {c.kind: c for c in compare_conv_kinds(64, 128, 3)}
    >>> rows["standard"].params, rows["separable"].params
    (73728, 8768)
    >>> round(rows["separable"].ratio_to(rows["standard"]), 1)
    8.4
    """
    std = conv_params(in_channels, out_channels, kernel_size)
    pw = conv_params(in_channels, out_channels, 1)
    dw = conv_params(in_channels, in_channels, kernel_size, groups=in_channels)
    grp = conv_params(in_channels, out_channels, kernel_size, groups=groups)
    k = kernel_size

    def macs(cin: int, cout: int, ks: int, g: int = 1) -> int:
        return conv_macs(cin, cout, ks, output_size, groups=g)

    return [
        ConvCost("standard", std, macs(in_channels, out_channels, k),
                 f"{k}x{k}, every output channel sees every input channel"),
        ConvCost("pointwise", pw, macs(in_channels, out_channels, 1),
                 "1x1, mixes channels only"),
        ConvCost("depthwise", dw, macs(in_channels, in_channels, k, in_channels),
                 f"{k}x{k}, one filter per channel (groups={in_channels}), no mixing"),
        ConvCost("separable", dw + pw,
                 macs(in_channels, in_channels, k, in_channels) + macs(in_channels, out_channels, 1),
                 "depthwise then pointwise"),
        ConvCost("grouped", grp, macs(in_channels, out_channels, k, groups),
                 f"{k}x{k} in {groups} groups of {in_channels // groups} channels"),
    ]
