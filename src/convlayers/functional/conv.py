"""Convolution as deep learning means it (cross-correlation, no kernel flip), 1-D to 3-D.

``conv1d``, ``conv2d`` and ``conv3d`` are one N-d implementation with the number of spatial
axes fixed. Arguments and results follow ``torch.nn.functional.conv2d``, plus the
``padding_mode`` of ``torch.nn.Conv2d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from convlayers import config, limits, shapes
from convlayers._validate import (
    IntOrTuple,
    as_int,
    check_ndim,
    float_array,
    one_of,
    positive_tuple,
    same_dtype,
)
from convlayers.functional import _engine, _ready
from convlayers.functional._common import (
    Pairs,
    SpecCache,
    batched,
    pad_pairs,
    typed_key,
    unbatch,
)
from convlayers.functional.padding import pad, pad_backward

__all__ = ["PADDING_MODES", "conv1d", "conv2d", "conv2d_backward", "conv3d", "conv_backward"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

Padding = IntOrTuple | str


@dataclass(frozen=True)
class ConvSpec:
    """Validated, normalised hyper-parameters of one convolution call."""

    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pairs: Pairs  # (before, after) padding per spatial axis
    groups: int
    padding_mode: str
    out_shape: tuple[int, ...]

    def torch_pad(self) -> tuple[int, ...]:
        """The padding as ``F.pad``'s flat tuple (last axis first)."""
        return shapes.torch_pad(self.pairs)


def conv_spec(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: IntOrTuple,
    padding: Padding,
    dilation: IntOrTuple,
    groups: int,
    padding_mode: str,
) -> ConvSpec:
    """Check a batched input, weight and bias against each other; return the normalised spec.

    Only shapes, dtypes and the hyper-parameters matter, so valid specs are remembered per
    such key (a model's layers see the same ones call after call); errors are never cached.
    The key holds each hyper-parameter's type beside its value: ``True == 1`` and ``1.0 == 1``,
    so without the types an invalid ``stride=True`` would find a valid ``stride=1``'s spec."""
    key = (x.shape, x.dtype, weight.shape, weight.dtype,
           None if bias is None else (bias.shape, bias.dtype), typed_key(stride),
           typed_key(padding), typed_key(dilation), typed_key(groups), typed_key(padding_mode))
    return _SPECS.get(key, lambda: _conv_spec(x, weight, bias, stride, padding, dilation,
                                              groups, padding_mode))


_SPECS: SpecCache[ConvSpec] = SpecCache()


def _conv_spec(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: IntOrTuple,
    padding: Padding,
    dilation: IntOrTuple,
    groups: int,
    padding_mode: str,
) -> ConvSpec:
    n = x.ndim - 2
    check_ndim(weight, (n + 2,), "weight", "C_out, C_in/groups, *kernel")
    same_dtype(x, weight, "input", "weight")
    groups = as_int(groups, "groups")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    one_of(padding_mode, PADDING_MODES, "padding_mode")
    c_in, c_out = x.shape[1], weight.shape[0]
    if c_in % groups:
        raise ValueError(f"in_channels={c_in} (input.shape[1]) must be divisible by groups={groups}")
    if c_out % groups:
        raise ValueError(f"out_channels={c_out} (weight.shape[0]) must be divisible by {groups=}")
    if weight.shape[1] * groups != c_in:
        raise ValueError(
            f"weight.shape[1]={weight.shape[1]} times groups={groups} must equal the input's "
            f"{c_in} channels (weight {weight.shape}, input {x.shape})"
        )
    if bias is not None:
        same_dtype(x, bias, "input", "bias")
        if bias.shape != (c_out,):
            raise ValueError(f"bias must have shape ({c_out},) (one per output channel), got {bias.shape}")
    kernel = tuple(weight.shape[2:])
    if min(kernel, default=1) < 1:
        raise ValueError(f"weight has an empty kernel: shape {weight.shape}")
    if weight.size == 0:
        raise ValueError(f"weight must not be empty: shape {weight.shape} has "
                         f"{'no output channels (C_out=0)' if c_out == 0 else 'no input channels'}"
                         f" (PyTorch refuses it too)")
    stride_t = positive_tuple(stride, n, "stride")
    dilation_t = positive_tuple(dilation, n, "dilation")
    pairs = shapes.resolve_padding(padding, kernel, stride_t, dilation_t)
    spatial = x.shape[2:]
    if padding_mode == "reflect":
        for size, (lo, hi) in zip(spatial, pairs, strict=True):
            if max(lo, hi) >= size:
                raise ValueError(
                    f"padding_mode='reflect' needs padding smaller than the input size, got "
                    f"padding {lo, hi} for spatial size {size}"
                )
    out_shape = shapes.conv_output_shape(spatial, kernel, stride_t, pairs, dilation_t)
    return ConvSpec(stride_t, dilation_t, pairs, groups, padding_mode, out_shape)


def check_sizes(x: np.ndarray, c_out: int, spec: ConvSpec, op: str) -> None:
    """Refuse, before anything is allocated, an output (or padded copy) over the memory cap."""
    shape = (x.shape[0], c_out, *spec.out_shape)
    if spec.padding_mode == "zeros" and math.prod(shape) * x.itemsize <= config.max_array_bytes():
        return  # the common case in a few operations (a small layer's call is tens of us)
    limits.check_elements(shape, x.dtype, lambda: f"the output of {op} (shape {shape} from input "
                          f"shape {x.shape}, padding {spec.pairs}, stride {spec.stride}, "
                          f"dilation {spec.dilation})")
    if spec.padding_mode != "zeros":
        padded = (*x.shape[:2], *(s + a + b for s, (a, b) in zip(x.shape[2:], spec.pairs,
                                                                 strict=True)))
        limits.check_elements(padded, x.dtype, lambda: f"the {spec.padding_mode}-padded input "
                              f"of {op} (shape {padded}, padding {spec.pairs})")


def _padded(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    if spec.padding_mode == "zeros":
        return pad_pairs(x, spec.pairs)
    return pad(x, spec.torch_pad(), mode=spec.padding_mode)


def _conv(
    input: Any, weight: Any, bias: Any, stride: IntOrTuple, padding: Padding,
    dilation: IntOrTuple, groups: int, padding_mode: str, n: int,
) -> np.ndarray:
    key = _ready.key_of("conv", (input, weight, bias), stride, padding, dilation, groups,
                        padding_mode)
    out = _ready.call(key, n, input, weight, bias)  # a call like an earlier one: its runner
    if out is not None:
        return out
    x, unbatched = batched(input, n)
    w = float_array(weight, "weight")
    b = None if bias is None else float_array(bias, "bias")
    spec = conv_spec(x, w, b, stride, padding, dilation, groups, padding_mode)
    check_sizes(x, w.shape[0], spec, f"conv{n}d")
    if spec.padding_mode == "zeros":  # the engine reads the borders itself (no padded copy)
        out = _engine.correlate(x, w, spec.stride, spec.dilation, spec.groups, spec.out_shape,
                                pairs=spec.pairs, bias=b)
        if key is not None and _ready.lookup(key) is None:
            ready = _engine.ready_forward(x.shape, w.shape, spec.stride, spec.dilation,
                                          spec.groups, spec.out_shape, spec.pairs, x.dtype)
            if ready is not None:
                _ready.remember(key, ready)
    else:
        out = _engine.correlate(_padded(x, spec), w, spec.stride, spec.dilation, spec.groups,
                                spec.out_shape, bias=b)
    return unbatch(out, unbatched)


_CONV_DOC = """
    Parameters
    ----------
    input : ndarray
        ``(N, C_in, {axes})`` or unbatched ``(C_in, {axes})``, float32 or float64.
    weight : ndarray
        ``(C_out, C_in/groups, {kaxes})``, same dtype as ``input``.
    bias : ndarray, optional
        ``(C_out,)``.
    stride, dilation : int or tuple of int
        Step between windows and spacing between kernel taps, per axis (>= 1).
    padding : int, tuple of int, "valid" or "same"
        Implicit padding on both sides of each axis. ``"same"`` (stride 1 only) keeps the size;
        when the total ``dilation*(k-1)`` is odd the extra element goes after (right/bottom).
    groups : int
        Split channels into ``groups`` independent convolutions. ``groups == C_in`` is a
        depthwise convolution (``C_out = multiplier * C_in``).
    padding_mode : {{"zeros", "reflect", "replicate", "circular"}}
        How the padding is filled, as in ``torch.nn.Conv2d``.

    Returns
    -------
    ndarray
        ``(N, C_out, {oaxes})`` with, per axis,
        ``out = floor((in + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1``.

    Notes
    -----
    This is a cross-correlation: the kernel is not flipped. ``scipy.signal.convolve2d`` flips
    it; :func:`convlayers.filters.correlate2d` is the SciPy-style name for what this computes.
"""


def conv1d(
    input: Any, weight: Any, bias: Any = None, stride: IntOrTuple = 1, padding: Padding = 0,
    dilation: IntOrTuple = 1, groups: int = 1, padding_mode: str = "zeros",
) -> np.ndarray:
    """1-D convolution over ``(N, C, L)`` input, as ``torch.nn.functional.conv1d``.
    {doc}
    Examples
    --------
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> conv1d(x, np.array([[[1.0, 0.0, -1.0]]]))
    array([[[-2., -2., -2.]]])
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, padding_mode, 1)


def conv2d(
    input: Any, weight: Any, bias: Any = None, stride: IntOrTuple = 1, padding: Padding = 0,
    dilation: IntOrTuple = 1, groups: int = 1, padding_mode: str = "zeros",
) -> np.ndarray:
    """2-D convolution over ``(N, C, H, W)`` input, as ``torch.nn.functional.conv2d``.
    {doc}
    Examples
    --------
    The seed's 4x4 image and vertical-edge kernel:

    >>> image = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    >>> kernel = np.array([[[[1.0, 0.0, -1.0]] * 3]])
    >>> conv2d(image, kernel)
    array([[[[-6., -6.],
             [-6., -6.]]]])
    >>> conv2d(image, kernel, padding="same").shape
    (1, 1, 4, 4)
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, padding_mode, 2)


def conv3d(
    input: Any, weight: Any, bias: Any = None, stride: IntOrTuple = 1, padding: Padding = 0,
    dilation: IntOrTuple = 1, groups: int = 1, padding_mode: str = "zeros",
) -> np.ndarray:
    """3-D convolution over ``(N, C, D, H, W)`` input, as ``torch.nn.functional.conv3d``.
    {doc}
    Examples
    --------
    >>> conv3d(np.ones((1, 2, 3, 3, 3)), np.ones((4, 2, 3, 3, 3))).shape
    (1, 4, 1, 1, 1)
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, padding_mode, 3)


conv1d.__doc__ = (conv1d.__doc__ or "").format(
    doc=_CONV_DOC.format(axes="L", kaxes="kL", oaxes="L_out"))
conv2d.__doc__ = (conv2d.__doc__ or "").format(
    doc=_CONV_DOC.format(axes="H, W", kaxes="kH, kW", oaxes="H_out, W_out"))
conv3d.__doc__ = (conv3d.__doc__ or "").format(
    doc=_CONV_DOC.format(axes="D, H, W", kaxes="kD, kH, kW", oaxes="D_out, H_out, W_out"))


def conv_backward(
    grad_output: Any,
    input: Any,
    weight: Any,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    with_bias: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of a 1-D, 2-D or 3-D convolution: ``(grad_input, grad_weight, grad_bias)``.

    The number of spatial axes is read from ``weight``. ``grad_input`` is a transposed
    convolution of ``grad_output`` (then folded back through a non-zero ``padding_mode``);
    ``grad_weight`` is one GEMM per kernel offset; ``grad_bias`` sums over batch and space
    (``None`` when ``with_bias`` is false).

    Examples
    --------
    >>> x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))
    >>> gx, gw, gb = conv_backward(np.ones((1, 1, 2, 2)), x, w)
    >>> gx[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    >>> gw[0, 0], gb
    (array([[4., 4.],
           [4., 4.]]), array([4.]))
    """
    # a call like an earlier one (batched, zero padding): its runner (see _ready)
    key = _ready.key_of("conv_backward", (grad_output, input, weight), stride, padding,
                        dilation, groups, padding_mode)
    run = _ready.lookup(key) if key is not None else None
    grads = run(input, grad_output, weight) if run is not None else None
    if grads is not None:
        gy = grad_output
        gx, gw = grads
        gb = gy.sum(axis=(0, *range(2, gy.ndim)), dtype=gy.dtype) if with_bias else None
        return gx, gw, gb
    w = float_array(weight, "weight")
    n = w.ndim - 2
    if n < 1:
        raise ValueError(f"weight must have at least 3 dimensions, got shape {w.shape}")
    x, unbatched = batched(input, n)
    gy, _ = batched(grad_output, n, "grad_output")
    if unbatched and np.ndim(grad_output) == n + 2:
        raise ValueError("grad_output must be unbatched like input")
    spec = conv_spec(x, w, None, stride, padding, dilation, groups, padding_mode)
    expected = (x.shape[0], w.shape[0], *spec.out_shape)
    if gy.shape != expected:
        raise ValueError(f"grad_output must have shape {expected}, got {gy.shape}")
    same_dtype(x, gy, "input", "grad_output")
    if spec.padding_mode == "zeros":
        gx, gw = _engine.correlate_backward(x, gy, w, spec.pairs, spec.stride, spec.dilation,
                                            spec.groups)
        # remembered for arrays taken as they came (batched, of their own dtype)
        if key is not None and run is None and x is input and gy is grad_output \
                and w is weight:
            ready = _engine.ready_backward(x.shape, w.shape, gy.shape, spec.stride,
                                           spec.dilation, spec.groups, spec.pairs, x.dtype)
            if ready is not None:
                _ready.remember(key, ready)
    else:
        xp = _padded(x, spec)
        gxp = _engine.correlate_input_grad(gy, w, xp.shape[2:], spec.stride, spec.dilation,
                                           spec.groups)
        gx = pad_backward(gxp, x.shape, spec.torch_pad(), spec.padding_mode)
        gw = _engine.correlate_weight_grad(xp, gy, tuple(w.shape[2:]), spec.stride, spec.dilation,
                                           spec.groups)
    gb = gy.sum(axis=(0, *range(2, gy.ndim)), dtype=gy.dtype) if with_bias else None
    return unbatch(gx, unbatched), gw, gb


def conv2d_backward(
    grad_output: Any, input: Any, weight: Any, stride: IntOrTuple = 1, padding: Padding = 0,
    dilation: IntOrTuple = 1, groups: int = 1, padding_mode: str = "zeros", with_bias: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`conv2d`; see :func:`conv_backward` (which serves 1-D to 3-D)."""
    if np.ndim(weight) != 4:
        raise ValueError(f"weight must have 4 dimensions for conv2d, got shape {np.shape(weight)}")
    return conv_backward(grad_output, input, weight, stride, padding, dilation, groups,
                         padding_mode, with_bias)
