"""The output-size formulas as text, and with a layer's numbers filled in, for people to read.

:func:`size_formula` is what ``convlayers explain``, ``convlayers shape`` and the web
playground print; its size comes from :mod:`convlayers.shapes`' own functions.

>>> print(FORMULAS["conv"])
floor((in + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1
"""

from __future__ import annotations

from dataclasses import dataclass

from convlayers.shapes._sizes import (
    AxisPadding,
    _sides,
    conv_output_size,
    conv_transpose_output_size,
    pool_output_size,
)

#: The general formulas (``conv_short`` is the convolution's without dilation).
FORMULAS = {
    "conv": "floor((in + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1",
    "conv_short": "floor((in + 2*padding - kernel) / stride) + 1",
    "pool_ceil": "ceil((in + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1",
    "conv_transpose": "(in - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1",
}


@dataclass(frozen=True)
class Formula:
    """A formula with the numbers filled in (``text``, without ``= size``), the output
    ``size``, and whether ``ceil_mode`` dropped a last window starting in the padding."""

    text: str
    size: int
    dropped: bool = False

    def __str__(self) -> str:
        return f"{self.text} = {self.size}"


def size_formula(kind: str, in_size: int, kernel_size: int, stride: int = 1,
                 padding: AxisPadding = 0, dilation: int = 1, *, output_padding: int = 0,
                 ceil_mode: bool = False, short: bool = False) -> Formula:
    """One axis's output-size formula of a ``"conv"``, ``"pool"`` or ``"conv_transpose"``
    with the numbers filled in, and the size (from :func:`conv_output_size`,
    :func:`pool_output_size` or :func:`conv_transpose_output_size`, with their checks).

    ``short`` writes ``kernel`` instead of ``dilation*(kernel - 1) - 1`` when ``dilation`` is 1.
    A ``ceil_mode`` pool whose last window would start in the padding ends in ``- 1``.

    >>> str(size_formula("conv", 5, 3, padding=1))
    'floor((5 + 2*1 - 1*(3 - 1) - 1) / 1) + 1 = 5'
    >>> str(size_formula("pool", 5, 2, 2, 1, ceil_mode=True))
    'ceil((5 + 2*1 - 1*(2 - 1) - 1) / 2) + 1 - 1 = 3'
    >>> str(size_formula("conv_transpose", 3, 3, 2))
    '(3 - 1)*2 - 2*0 + 1*(3 - 1) + 0 + 1 = 7'
    """
    n, k, s, d = in_size, kernel_size, stride, dilation
    if kind == "conv_transpose":
        out = conv_transpose_output_size(n, k, s, padding, output_padding, d)  # type: ignore[arg-type]
        return Formula(f"({n} - 1)*{s} - 2*{padding} + {d}*({k} - 1) + {output_padding} + 1", out)
    if kind not in ("conv", "pool"):
        raise ValueError(f"kind must be 'conv', 'pool' or 'conv_transpose', got {kind!r}")
    lo, hi = _sides(padding)
    pad = f"2*{lo}" if lo == hi else f"{lo} + {hi}"
    span = f"{k}" if short and d == 1 else f"{d}*({k} - 1) - 1"
    rnd = "ceil" if ceil_mode and kind == "pool" else "floor"
    text = f"{rnd}(({n} + {pad} - {span}) / {s}) + 1"
    if kind == "conv":
        return Formula(text, conv_output_size(n, k, s, padding, d))
    out = pool_output_size(n, k, s, padding, d, ceil_mode)
    dropped = ceil_mode and -(-(n + lo + hi - d * (k - 1) - 1) // s) + 1 != out
    return Formula(text + " - 1" if dropped else text, out, dropped)


def conv_output_formula(in_size: int, kernel_size: int, stride: int = 1,
                        padding: AxisPadding = 0, dilation: int = 1) -> str:
    """:func:`conv_output_size`'s formula with the numbers filled in, for people to read (the
    short form ``in + 2p - k`` without dilation; pooling without ``ceil_mode`` shares it).

    >>> conv_output_formula(32, 3, stride=2, padding=1)
    'floor((32 + 2*1 - 3) / 2) + 1 = 16'
    >>> conv_output_formula(7, 3, padding=(0, 1), dilation=2)
    'floor((7 + 0 + 1 - 2*(3 - 1) - 1) / 1) + 1 = 4'
    """
    return str(size_formula("conv", in_size, kernel_size, stride, padding, dilation, short=True))
