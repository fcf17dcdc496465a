"""Parameter and multiply-add counts of convolutions, and the conv kinds side by side.

>>> conv_params(64, 64, 3)
36864
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from convlayers._validate import as_int, positive_tuple


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
