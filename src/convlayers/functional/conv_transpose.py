"""Transposed convolution: the input-gradient of a convolution, used as a layer.

``conv_transpose2d(x, w)`` scatters each input element times the kernel onto a larger output,
exactly what the backward pass of ``conv2d`` does with the gradient; both run on the same
engine. Arguments follow ``torch.nn.functional.conv_transpose2d``; the weight is
``(C_in, C_out/groups, *kernel)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from convlayers import config, limits, shapes
from convlayers._validate import (
    IntOrTuple,
    as_int,
    check_ndim,
    float_array,
    nonnegative_tuple,
    positive_tuple,
    same_dtype,
)
from convlayers.functional import _engine, _ready
from convlayers.functional._common import SpecCache, batched, pad_pairs, typed_key, unbatch
from convlayers.functional._engine_shared import _finite
from convlayers.functional._measured import on_first_call

__all__ = [
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv_transpose_backward",
]


_TransposeSpec = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int, tuple[int, ...]]
_SPECS: SpecCache[_TransposeSpec] = SpecCache()


def _transpose_spec(
    x: np.ndarray, w: np.ndarray, stride: IntOrTuple, padding: IntOrTuple,
    output_padding: IntOrTuple, groups: int, dilation: IntOrTuple,
) -> _TransposeSpec:
    """``(stride, padding, dilation, groups, output shape)`` checked against the input and
    weight, remembered per shapes, dtypes and hyper-parameters (as ``conv_spec``: the checks
    took 25 us a call, more than a small layer's kernel)."""
    key = (x.shape, x.dtype, w.shape, w.dtype, typed_key(stride), typed_key(padding),
           typed_key(output_padding), typed_key(groups), typed_key(dilation))
    return _SPECS.get(key, lambda: _checked_transpose_spec(x, w, stride, padding,
                                                           output_padding, groups, dilation))


def _checked_transpose_spec(
    x: np.ndarray, w: np.ndarray, stride: IntOrTuple, padding: IntOrTuple,
    output_padding: IntOrTuple, groups: int, dilation: IntOrTuple,
) -> _TransposeSpec:
    n = x.ndim - 2
    check_ndim(w, (n + 2,), "weight", "C_in, C_out/groups, *kernel")
    same_dtype(x, w, "input", "weight")
    groups = as_int(groups, "groups")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    c_in = x.shape[1]
    if w.shape[0] != c_in:
        raise ValueError(
            f"weight.shape[0]={w.shape[0]} must equal the input's {c_in} channels for a "
            f"transposed convolution (weight is C_in, C_out/groups, *kernel)"
        )
    if c_in % groups:
        raise ValueError(f"in_channels={c_in} must be divisible by groups={groups}")
    if w.size == 0:
        raise ValueError(f"weight must not be empty: shape {w.shape} has "
                         f"{'no input channels (C_in=0)' if c_in == 0 else 'no output channels'}"
                         f" (PyTorch refuses it too)")
    stride_t = positive_tuple(stride, n, "stride")
    dilation_t = positive_tuple(dilation, n, "dilation")
    padding_t = nonnegative_tuple(padding, n, "padding")
    out_pad_t = nonnegative_tuple(output_padding, n, "output_padding")
    kernel = tuple(w.shape[2:])
    out_shape = tuple(
        shapes.conv_transpose_output_size(i, k, s, p, op, d)
        for i, k, s, p, op, d in zip(x.shape[2:], kernel, stride_t, padding_t, out_pad_t,
                                     dilation_t, strict=True)
    )
    return stride_t, padding_t, dilation_t, groups, out_shape


def _conv_transpose(
    input: Any, weight: Any, bias: Any, stride: IntOrTuple, padding: IntOrTuple,
    output_padding: IntOrTuple, groups: int, dilation: IntOrTuple, n: int,
) -> np.ndarray:
    key = _ready.key_of("transpose", (input, weight, bias), stride, padding, output_padding,
                        groups, dilation)
    out = _ready.call(key, n, input, weight, bias)  # a call like an earlier one: its runner
    if out is not None:
        return out
    x, unbatched = batched(input, n)
    w = float_array(weight, "weight")
    stride_t, padding_t, dilation_t, groups, out_shape = _transpose_spec(
        x, w, stride, padding, output_padding, groups, dilation)
    shape = (x.shape[0], w.shape[1] * groups, *out_shape)
    limits.check_elements(shape, x.dtype, lambda: f"the output of conv_transpose{n}d (shape "
                          f"{shape}, from input shape {x.shape}, stride {stride_t}, padding "
                          f"{padding_t}, output_padding {output_padding!r})")
    b = None
    if bias is not None:  # checked before the work, not after it
        b = float_array(bias, "bias")
        same_dtype(x, b, "input", "bias")
        if b.shape != (shape[1],):
            raise ValueError(f"bias must have shape ({shape[1]},), got {b.shape}")
    pairs = tuple((p, p) for p in padding_t)  # the padding's outputs are never made
    images, block = _blocks(x, w, groups, out_shape)
    if (images, block) == shape[:2]:
        out = _engine.correlate_input_grad(x, w, out_shape, stride_t, dilation_t, groups, pairs)
        if key is not None and _ready.lookup(key) is None:
            ready = _engine.ready_input_grad(x.shape, w.shape, out_shape, stride_t, dilation_t,
                                             groups, pairs, x.dtype)
            if ready is not None:
                _ready.remember(key, ready)
    else:  # in parts, each under the scratch cap
        out = np.empty((x.shape[0], shape[1], *out_shape), dtype=x.dtype)
        for x_ch, w_ch, g, out_ch in _channel_blocks(w.shape[0] // groups, w.shape[1], groups,
                                                     block):
            w_part = np.ascontiguousarray(w[w_ch])
            for i in range(0, x.shape[0], images):
                rows = slice(i, i + images)
                part = _engine.correlate_input_grad(x[rows, x_ch], w_part, out_shape, stride_t,
                                                    dilation_t, g, pairs)
                out[rows, out_ch] = part
                del part
    if b is not None:
        out += b.reshape((1, -1) + (1,) * n)
    return unbatch(out, unbatched)


def _blocks(x: np.ndarray, w: np.ndarray, groups: int,
            out_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(images, output channels)`` one engine call may make within
    :func:`config.scratch_bytes` (all of both when the whole call fits).

    Per image and output channel the engine lowers ``taps`` columns of each output position
    (of a slab of ``config.engine.slab_columns`` positions at most), held twice while the next
    GEMM's result replaces the last; with more than one call, each call's output planes are
    scratch too (copied into the whole output). The least is one image, one channel and one
    slab."""
    taps = math.prod(w.shape[2:])
    slab = int(getattr(getattr(config, "engine", None), "slab_columns", 1 << 16))
    unit = 2 * taps * min(math.prod(x.shape[2:]), slab) * x.itemsize
    plane = math.prod(out_shape) * x.itemsize
    n, c_out = x.shape[0], w.shape[1] * groups
    cap = config.scratch_bytes()
    if n * c_out * unit <= cap:
        return n, c_out
    channels = max(1, min(c_out, cap // (unit + plane)))
    return max(1, cap // (channels * (unit + plane))), channels


def _channel_blocks(c_in_g: int, c_out_g: int, groups: int, block: int,
                    ) -> Iterator[tuple[slice, tuple[Any, ...], int, slice]]:
    """``(input channels, weight index, groups, output channels)`` of each engine call making
    at most ``block`` output channels: whole groups together, or one group's channels in
    parts (the output channels of a transposed convolution are independent)."""
    if block >= c_out_g:
        per = block // c_out_g
        for g0 in range(0, groups, per):
            g1 = min(groups, g0 + per)
            yield (slice(g0 * c_in_g, g1 * c_in_g), (slice(g0 * c_in_g, g1 * c_in_g),), g1 - g0,
                   slice(g0 * c_out_g, g1 * c_out_g))
        return
    for g in range(groups):
        rows = slice(g * c_in_g, (g + 1) * c_in_g)
        for j0 in range(0, c_out_g, block):
            j1 = min(c_out_g, j0 + block)
            yield rows, (rows, slice(j0, j1)), 1, slice(g * c_out_g + j0, g * c_out_g + j1)


_DOC = """
    Parameters
    ----------
    input : ndarray
        ``(N, C_in, {axes})`` or unbatched.
    weight : ndarray
        ``(C_in, C_out/groups, {kaxes})``.
    bias : ndarray, optional
        ``(C_out,)``.
    stride, padding, output_padding, dilation : int or tuple of int
        ``padding`` trims that many elements from both ends of each axis; per axis the output
        is ``(in - 1)*stride - 2*padding + dilation*(k - 1) + output_padding + 1``;
        ``output_padding`` (smaller than stride or dilation) picks among the input sizes that a
        strided convolution maps to the same output size.
    groups : int
        Independent groups of channels.

    Returns
    -------
    ndarray
        ``(N, C_out, {oaxes})``.
"""


def conv_transpose1d(
    input: Any, weight: Any, bias: Any = None, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
) -> np.ndarray:
    """1-D transposed convolution, as ``torch.nn.functional.conv_transpose1d``.
    {doc}
    Examples
    --------
    >>> conv_transpose1d(np.ones((1, 1, 2)), np.ones((1, 1, 3)), stride=2)
    array([[[1., 1., 2., 1., 1.]]])
    """
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, 1)


def conv_transpose2d(
    input: Any, weight: Any, bias: Any = None, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
) -> np.ndarray:
    """2-D transposed convolution, as ``torch.nn.functional.conv_transpose2d``.
    {doc}
    Examples
    --------
    A 4x4 kernel with stride 2 and padding 1 doubles the size, the usual upsampling layer:

    >>> conv_transpose2d(np.ones((1, 3, 8, 8)), np.ones((3, 5, 4, 4)), stride=2, padding=1).shape
    (1, 5, 16, 16)
    """
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, 2)


def conv_transpose3d(
    input: Any, weight: Any, bias: Any = None, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
) -> np.ndarray:
    """3-D transposed convolution, as ``torch.nn.functional.conv_transpose3d``.
    {doc}
    Examples
    --------
    >>> conv_transpose3d(np.ones((1, 1, 2, 2, 2)), np.ones((1, 1, 2, 2, 2))).shape
    (1, 1, 3, 3, 3)
    """
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, 3)


conv_transpose1d.__doc__ = (conv_transpose1d.__doc__ or "").format(
    doc=_DOC.format(axes="L", kaxes="kL", oaxes="L_out"))
conv_transpose2d.__doc__ = (conv_transpose2d.__doc__ or "").format(
    doc=_DOC.format(axes="H, W", kaxes="kH, kW", oaxes="H_out, W_out"))
conv_transpose3d.__doc__ = (conv_transpose3d.__doc__ or "").format(
    doc=_DOC.format(axes="D, H, W", kaxes="kD, kH, kW", oaxes="D_out, H_out, W_out"))


def conv_transpose_backward(
    grad_output: Any, input: Any, weight: Any, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
    with_bias: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of a transposed convolution: ``(grad_input, grad_weight, grad_bias)``.

    The input gradient is an ordinary convolution of the (padded) output gradient with the
    same weight; the weight gradient swaps the roles of input and gradient.

    Examples
    --------
    >>> gx, gw, gb = conv_transpose_backward(np.ones((1, 1, 5)), np.ones((1, 1, 2)),
    ...                                      np.ones((1, 1, 3)), stride=2)
    >>> gx, gw, gb
    (array([[[3., 3.]]]), array([[[2., 2., 2.]]]), array([5.]))
    """
    # a call like an earlier one (batched): its runner (see _ready)
    key = _ready.key_of("transpose_backward", (grad_output, input, weight), stride, padding,
                        output_padding, groups, dilation)
    run = _ready.lookup(key) if key is not None else None
    grads = run(input, grad_output, weight) if run is not None else None
    if grads is not None:
        gb = (grad_output.sum(axis=(0, *range(2, grad_output.ndim)), dtype=grad_output.dtype)
              if with_bias else None)
        return (*grads, gb)
    w = float_array(weight, "weight")
    n = w.ndim - 2
    if n < 1:
        raise ValueError(f"weight must have at least 3 dimensions, got shape {w.shape}")
    x, unbatched = batched(input, n)
    gy, _ = batched(grad_output, n, "grad_output")
    stride_t, padding_t, dilation_t, groups, out_shape = _transpose_spec(
        x, w, stride, padding, output_padding, groups, dilation)
    expected = (x.shape[0], w.shape[1] * groups, *out_shape)
    if gy.shape != expected:
        raise ValueError(f"grad_output must have shape {expected}, got {gy.shape}")
    same_dtype(x, gy, "input", "grad_output")
    # the padding crops the output: its positions are no terms of either gradient (an inf
    # weight or input times the zero padding would be NaN where no term is)
    pairs = tuple((p, p) for p in padding_t)
    with on_first_call():  # a gradient: measured on its first call, as the others
        gx = _engine.correlate(gy, w, stride_t, dilation_t, groups, tuple(x.shape[2:]), pairs)
    gw = _engine.cropped_weight_grad(gy, x, tuple(w.shape[2:]), stride_t, dilation_t, groups,
                                     pairs)
    # remembered for arrays taken as they came (batched, of their own dtype)
    if key is not None and run is None and x is input and gy is grad_output and w is weight:
        ready = _ready_backward(gy.shape, x.shape, w.shape, pairs, stride_t, dilation_t,
                                groups, x.dtype)
        if ready is not None:
            _ready.remember(key, ready)
    gb = gy.sum(axis=(0, *range(2, gy.ndim)), dtype=gy.dtype) if with_bias else None
    return unbatch(gx, unbatched), gw, gb


def _ready_backward(gy_shape: tuple[int, ...], x_shape: tuple[int, ...],
                    w_shape: tuple[int, ...], pairs: tuple[tuple[int, int], ...],
                    stride: tuple[int, ...], dilation: tuple[int, ...], groups: int,
                    dtype: np.dtype) -> _engine.BackwardRunner | None:
    """The runner of :func:`conv_transpose_backward`'s ``(grad_input, grad_weight)`` for a
    batched call of these shapes: the remembered forward of the output gradient (with its
    ``pairs`` of padding) and the weight gradient's runner on its padded copy
    (:mod:`convlayers.functional._ready`); ``None`` from it where either declines, or where
    padding meets an inf or NaN input (:func:`convlayers.functional._engine.
    cropped_weight_grad`); ``None`` itself while either is unsettled."""
    forward = _engine.ready_forward(gy_shape, w_shape, stride, dilation, groups, x_shape[2:],
                                    pairs, dtype)
    padded = (*gy_shape[:2], *(n + a + b for n, (a, b) in zip(gy_shape[2:], pairs, strict=True)))
    weight_grad = _engine.ready_weight_grad(padded, w_shape, x_shape, stride, dilation, groups,
                                            dtype)
    if forward is None or weight_grad is None:
        return None
    if forward is _ready.declining or weight_grad is _engine.declining_weight_grad:
        return _engine.declining_backward
    settled_forward, settled_weight_grad = forward, weight_grad
    check = any(a or b for a, b in pairs) and config.engine.check_values

    def run(x: np.ndarray, gy: np.ndarray,
            w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if check and not _finite(x):
            return None
        gx = settled_forward(gy, w, None)
        gw = None if gx is None else settled_weight_grad(pad_pairs(gy, pairs), x)
        return None if gx is None or gw is None else (gx, gw)

    return run
