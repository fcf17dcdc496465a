"""``convlayers shape --stack``: output size and receptive field through a stack of layers.

A stack is written as layers separated by ``;``. Each layer is ``conv`` or ``pool`` (``max``
and ``avg`` are pools too) followed by its kernel size, then optional ``,sN`` (stride),
``,pN`` (padding, or ``,same``) and ``,dN`` (dilation): ``"conv3,s2,p1; conv3; pool2"``.
A convolution's stride defaults to 1, a pool's to its kernel size, as in PyTorch.

The sizes come from :mod:`convlayers.shapes` (``conv_output_size``, ``pool_output_size``,
``same_padding``) and the receptive field from :func:`convlayers.shapes.receptive_field`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from convlayers.cli._common import CLIError

__all__ = ["Layer", "parse_stack", "stack_table"]

_LAYER = re.compile(r"(conv|pool|max|avg|maxpool|avgpool)(\d+)$")


@dataclass(frozen=True)
class Layer:
    """One layer of a stack: ``kind`` is "conv" or "pool"; ``padding`` -1 means 'same'."""

    text: str
    kind: str
    kernel: int
    stride: int
    padding: int
    dilation: int


def parse_stack(spec: str) -> list[Layer]:
    """Read ``"conv3,s2; conv3; pool2"`` into layers.

    >>> [(l.kind, l.kernel, l.stride, l.padding) for l in parse_stack("conv3,s2,p1; pool2")]
    [('conv', 3, 2, 1), ('pool', 2, 2, 0)]
    """
    layers = []
    parts = [p.strip() for p in str(spec).split(";") if p.strip()]
    if not parts:
        raise CLIError(f"--stack must list layers such as 'conv3,s2; conv3; pool2', got {spec!r}")
    for n, part in enumerate(parts, 1):
        head, *opts = [o.strip().lower() for o in part.split(",")]
        m = _LAYER.match(head.replace(" ", ""))
        if m is None:
            raise CLIError(f"--stack layer {n} ({part!r}) must start with conv or pool and its "
                           "kernel size, e.g. conv3 or pool2")
        kind = "conv" if m.group(1) == "conv" else "pool"
        kernel = int(m.group(2))
        values = {"s": kernel if kind == "pool" else 1, "p": 0, "d": 1}
        for opt in opts:
            if opt == "same":
                values["p"] = -1
            elif re.fullmatch(r"[spd]\d+", opt):
                values[opt[0]] = int(opt[1:])
            else:
                raise CLIError(f"--stack layer {n} ({part!r}): option {opt!r} must be sN "
                               "(stride), pN (padding), dN (dilation) or same")
        if kernel < 1 or values["s"] < 1 or values["d"] < 1:
            raise CLIError(f"--stack layer {n} ({part!r}): kernel, stride and dilation must be "
                           ">= 1")
        if values["p"] == -1 and (kind != "conv" or values["s"] != 1):
            raise CLIError(f"--stack layer {n} ({part!r}): 'same' padding needs a conv with "
                           "stride 1 (PyTorch's rule)")
        layers.append(Layer(part, kind, kernel, values["s"], values["p"], values["d"]))
    return layers


def stack_table(layers: list[Layer], size: tuple[int, int] | None) -> str:
    """One line per layer: output size (when ``size`` is given), jump and receptive field.

    >>> print(stack_table(parse_stack("conv3; conv3; conv3"), None))
    layer kernel stride  pad dil  jump  receptive field
    conv3      3      1    0   1     1  3x3
    conv3      3      1    0   1     1  5x5
    conv3      3      1    0   1     1  7x7
    three layers see 7x7 input pixels per output pixel
    """
    from convlayers import shapes

    width = max(5, *(len(lay.text) for lay in layers))
    cols = "{:<" + str(width) + "} {:>6} {:>6} {:>4} {:>3} {:>5}  {:<15}{}"
    lines = [cols.format("layer", "kernel", "stride", "pad", "dil", "jump", "receptive field",
                         "  output" if size else "").rstrip()]
    current = size
    jump = 1
    field = 1
    for i, layer in enumerate(layers):
        field = shapes.receptive_field([(lay.kernel, lay.stride, lay.dilation)
                                        for lay in layers[: i + 1]])
        pad = "same" if layer.padding == -1 else str(layer.padding)
        jump *= layer.stride  # input pixels between neighbouring outputs of this layer
        out = ""
        if current is not None:
            try:
                current = (_one(layer, current[0]), _one(layer, current[1]))
            except ValueError as exc:
                raise CLIError(f"--stack layer {i + 1} ({layer.text!r}): {exc}") from None
            out = f"  {current[0]}x{current[1]}"
        row = cols.format(layer.text, layer.kernel, layer.stride, pad, layer.dilation, jump,
                          f"{field}x{field}", out).rstrip()
        lines.append(row)
    count = {1: "one layer sees", 2: "two layers see", 3: "three layers see"}
    words = count.get(len(layers), f"{len(layers)} layers see")
    lines.append(f"{words} {field}x{field} input pixels per output pixel")
    return "\n".join(lines)


def _one(layer: Layer, n: int) -> int:
    """Output size of ``layer`` on one axis of length ``n``, asked of :mod:`convlayers.shapes`."""
    from convlayers import shapes

    if layer.padding == -1:
        before, after = shapes.same_padding(layer.kernel, layer.dilation)
        return shapes.conv_output_size(n + before + after, layer.kernel, 1, 0, layer.dilation)
    if layer.kind == "pool":
        return shapes.pool_output_size(n, layer.kernel, layer.stride, layer.padding,
                                       layer.dilation)
    return shapes.conv_output_size(n, layer.kernel, layer.stride, layer.padding, layer.dilation)
