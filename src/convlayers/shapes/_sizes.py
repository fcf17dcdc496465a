"""Output sizes, paddings and receptive fields of convolution and pooling, one axis at a time.

>>> conv_output_size(32, kernel_size=3, padding=1)
32
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convlayers._validate import as_int, nonnegative_tuple, one_of, positive_tuple

#: One axis's padding: the same on both sides, or ``(before, after)``.
AxisPadding = int | tuple[int, int]


def _check_axis(in_size: int, kernel_size: int, stride: int, dilation: int) -> None:
    as_int(in_size, "in_size")
    if in_size < 0:
        raise ValueError(f"in_size must be >= 0, got {in_size}")
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if as_int(value, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _sides(padding: AxisPadding) -> tuple[int, int]:
    """``(before, after)`` of one axis's padding, each checked to be an int >= 0."""
    if isinstance(padding, Sequence) and not isinstance(padding, (str, bytes)):
        if len(padding) != 2:
            raise ValueError(f"padding of one axis must be an int or (before, after), got {padding!r}")
        before, after = (as_int(v, "padding") for v in padding)
    else:
        before = after = as_int(padding, "padding")
    if min(before, after) < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    return before, after


def window_count(in_size: int, kernel_size: int, stride: int, before: int, after: int,
                 dilation: int = 1, ceil_mode: bool = False) -> int:
    """How many windows fit along one axis padded by ``before`` and ``after``: the one formula.

    ``floor((in + before + after - dilation*(kernel - 1) - 1) / stride) + 1``; with
    ``ceil_mode`` the division rounds up, but a last window that would start inside the right
    padding (or beyond the input) is dropped, exactly as PyTorch does. Arguments are not
    checked here (see :func:`conv_output_size` and :func:`pool_output_size`), except that the
    dilated kernel must fit in the padded input.

    >>> window_count(7, 3, 2, 0, 1), window_count(5, 2, 2, 1, 1, ceil_mode=True)
    (3, 3)
    """
    span = dilation * (kernel_size - 1) + 1
    numerator = in_size + before + after - span
    if numerator < 0:
        pad = f"2*{before}" if before == after else f"{before} + {after}"
        raise ValueError(
            f"kernel_size={kernel_size} (dilation={dilation}, effective size {span}) is larger "
            f"than the padded input ({in_size} + {pad} = {in_size + before + after})"
        )
    out = (numerator + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= in_size + before:
        out -= 1
    return out


def conv_output_size(
    in_size: int, kernel_size: int, stride: int = 1, padding: AxisPadding = 0, dilation: int = 1
) -> int:
    """Output length of a convolution along one axis.

    ``floor((in_size + 2*padding - dilation*(kernel_size - 1) - 1) / stride) + 1``;
    ``padding`` may also be ``(before, after)`` (``2*padding`` is then their sum).

    Raises ``ValueError`` when the (dilated) kernel does not fit in the padded input.

    Examples
    --------
    The seed's figures: 5x5 input, 3x3 kernel, no padding gives 3; padding 1 keeps 5; an 8x8
    input gives 6 at stride 1 and 3 at stride 2.

    >>> conv_output_size(5, 3), conv_output_size(5, 3, padding=1)
    (3, 5)
    >>> conv_output_size(8, 3, stride=1), conv_output_size(8, 3, stride=2)
    (6, 3)
    >>> conv_output_size(112, 3, stride=2, padding=(0, 1))  # TensorFlow's "SAME"
    56
    """
    _check_axis(in_size, kernel_size, stride, dilation)
    return window_count(in_size, kernel_size, stride, *_sides(padding), dilation)


def pool_output_size(
    in_size: int,
    kernel_size: int,
    stride: int | None = None,
    padding: AxisPadding = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of a pooling along one axis, with PyTorch's ``ceil_mode`` rule.

    With ``ceil_mode`` the division rounds up, but a last window that would start inside the
    right padding (or beyond the input) is dropped, exactly as PyTorch does. ``stride=None``
    means the kernel size. An int ``padding`` may be at most half the kernel size (PyTorch);
    ``(before, after)`` (ONNX's ``pads``) each less than the dilated kernel.

    Examples
    --------
    >>> pool_output_size(4, 2)
    2
    >>> pool_output_size(5, 2), pool_output_size(5, 2, ceil_mode=True)
    (2, 3)
    >>> pool_output_size(5, 2, stride=2, padding=1, ceil_mode=True)  # a 4th window would start in padding
    3
    >>> pool_output_size(6, 3, stride=2, padding=(0, 2))
    3
    """
    stride = kernel_size if stride is None else stride
    _check_axis(in_size, kernel_size, stride, dilation)
    before, after = _sides(padding)
    span = dilation * (kernel_size - 1) + 1
    if isinstance(padding, Sequence):
        if max(before, after) >= span:
            raise ValueError(f"padding {(before, after)} must be smaller than the window span "
                             f"{span} (kernel_size {kernel_size}, dilation {dilation}) on each side")
    elif before > kernel_size // 2:
        raise ValueError(
            f"padding should be at most half of kernel_size, got padding={before} "
            f"and kernel_size={kernel_size}"
        )
    return window_count(in_size, kernel_size, stride, before, after, dilation, bool(ceil_mode))


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
    _check_axis(in_size, kernel_size, stride, dilation)
    if as_int(padding, "padding") < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
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
    padding: Any = 0,
    dilation: int | Sequence[int] = 1,
) -> tuple[int, ...]:
    """Spatial output shape of a convolution, one entry per spatial axis of ``input_shape``.

    ``padding`` is anything :func:`resolve_padding` takes ("same", per-side pairs, ...).

    >>> conv_output_shape((224, 224), 3, stride=2, padding=1)
    (112, 112)
    >>> conv_output_shape((7, 8), (3, 4), padding="same"), conv_output_shape((5,), 3, padding=((0, 1),))
    ((7, 8), (4,))
    """
    n = len(input_shape)
    ks = positive_tuple(kernel_size, n, "kernel_size")
    ss = positive_tuple(stride, n, "stride")
    ds = positive_tuple(dilation, n, "dilation")
    pairs = resolve_padding(padding, ks, ss, ds)
    return tuple(
        conv_output_size(i, k, s, p, d)
        for i, k, s, p, d in zip(input_shape, ks, ss, pairs, ds, strict=True)
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



def per_side_padding(padding: Any, n: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(befores, afters)`` of padding given as one ``(before, after)`` pair per axis (ONNX's
    ``pads``), or ``None`` when ``padding`` is not written that way.

    >>> per_side_padding(((0, 1), (2, 3)), 2), per_side_padding((1, 2), 2)
    (((0, 2), (1, 3)), None)
    """
    if isinstance(padding, (str, bytes)) or not isinstance(padding, Sequence):
        return None
    items = list(padding)
    if not items or not all(isinstance(p, Sequence) and not isinstance(p, (str, bytes)) for p in items):
        return None
    if len(items) != n or any(len(p) != 2 for p in items):
        raise ValueError(f"padding given per side must be {n} (before, after) pairs, one per "
                         f"spatial axis, got {padding!r}")
    flat = [as_int(v, "padding") for p in items for v in p]
    if min(flat) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return tuple(flat[0::2]), tuple(flat[1::2])


def resolve_padding(padding: Any, kernel_size: Sequence[int], stride: Sequence[int],
                    dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``(before, after)`` padding per axis of a convolution's ``padding`` argument.

    An int, or one per axis, pads both sides; one ``(before, after)`` pair per axis pads each
    side as given (ONNX's ``pads``); ``"valid"`` pads nothing; ``"same"`` (stride 1 only, as in
    PyTorch) keeps the size, the odd extra element after (:func:`same_padding`).

    >>> resolve_padding("same", (3, 4), (1, 1), (1, 1)), resolve_padding(2, (3,), (2,), (1,))
    (((1, 1), (1, 2)), ((2, 2),))
    >>> resolve_padding(((0, 1), (2, 2)), (3, 3), (2, 2), (1, 1))
    ((0, 1), (2, 2))
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
    if (sides := per_side_padding(padding, n)) is not None:
        return tuple(zip(*sides, strict=True))
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


def torch_pad_pairs(pad: Sequence[int], ndim: int) -> list[tuple[int, int]]:
    """``(before, after)`` per axis of an ``ndim``-D array from ``torch.nn.functional.pad``'s
    flat ``pad`` (last axis first: ``(last_lo, last_hi, prev_lo, prev_hi, ...)``); axes it does
    not reach get ``(0, 0)``. Negative values (cropping) pass through.

    >>> torch_pad_pairs((1, 2), 3), torch_pad_pairs((1, 2, 3, 4), 2)
    ([(0, 0), (0, 0), (1, 2)], [(3, 4), (1, 2)])
    """
    if isinstance(pad, (str, bytes)) or not isinstance(pad, Sequence):
        raise TypeError(f"pad must be a sequence of ints, got {pad!r}")
    values = [as_int(v, "pad") for v in pad]
    if len(values) % 2 or len(values) // 2 > ndim:
        raise ValueError(
            f"pad must have an even length of at most 2*input.ndim={2 * ndim}, got {tuple(pad)}"
        )
    pairs = [(0, 0)] * ndim
    for i in range(len(values) // 2):
        pairs[ndim - 1 - i] = (values[2 * i], values[2 * i + 1])
    return pairs


def torch_pad(pairs: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """The inverse of :func:`torch_pad_pairs`: ``F.pad``'s flat tuple, last axis first.

    >>> torch_pad(((1, 1), (0, 2)))
    (0, 2, 1, 1)
    """
    return tuple(v for lo_hi in reversed(pairs) for v in lo_hi)
