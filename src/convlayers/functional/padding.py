"""``pad`` with ``torch.nn.functional.pad``'s meaning, and its backward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convlayers import limits, shapes
from convlayers._validate import as_int, one_of
from convlayers.functional._common import int_or_float

__all__ = ["PAD_MODES", "pad", "pad_backward"]

PAD_MODES = ("constant", "reflect", "replicate", "circular")
_NUMPY_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _pad_pairs(ndim: int, pad: Sequence[int], mode: str) -> list[tuple[int, int]]:
    """Turn PyTorch's flat ``(last_lo, last_hi, prev_lo, prev_hi, ...)`` into per-axis pairs."""
    pairs = shapes.torch_pad_pairs(pad, ndim)
    if mode != "constant" and len(pad) // 2 > ndim - 2:
        raise ValueError(
            f"mode={mode!r} pads only spatial axes (not N and C): at most {2 * (ndim - 2)} "
            f"values for a {ndim}-D input, got {tuple(pad)}"
        )
    return pairs


def _check_sizes(shape: tuple[int, ...], pairs: list[tuple[int, int]], mode: str) -> None:
    for axis, (lo, hi) in enumerate(pairs):
        size = shape[axis]
        if mode != "constant" and (lo < 0 or hi < 0):
            raise ValueError(f"negative padding is only supported with mode='constant', got {lo, hi}")
        if mode == "reflect" and (lo >= size or hi >= size) and (lo or hi):
            raise ValueError(
                f"reflect padding must be smaller than the input size on that axis: got "
                f"padding ({lo}, {hi}) for axis {axis} of size {size}"
            )
        if mode in ("replicate", "circular") and size == 0 and (lo or hi):
            raise ValueError(f"{mode} padding needs a non-empty axis {axis}")
        if mode == "circular" and (lo > size or hi > size):
            raise ValueError(
                f"circular padding must be at most the input size on that axis: got "
                f"padding ({lo}, {hi}) for axis {axis} of size {size}"
            )
        if size + lo + hi < 0:
            raise ValueError(f"padding ({lo}, {hi}) removes more than axis {axis} of size {size}")


def pad(input: Any, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> np.ndarray:
    """Pad an array the way ``torch.nn.functional.pad`` does.

    Parameters
    ----------
    input : ndarray
        Any array; ``reflect``, ``replicate`` and ``circular`` pad only the spatial axes of an
        ``(N, C, ...)`` array, as in PyTorch.
    pad : sequence of int
        ``(left, right)`` for the last axis, then ``(top, bottom)`` for the one before, and so
        on. With ``mode="constant"`` negative values crop.
    mode : {"constant", "reflect", "replicate", "circular"}
        ``reflect`` mirrors without repeating the edge (``dcb|abcd|cba``), ``replicate`` repeats
        the edge, ``circular`` wraps around.
    value : float
        Fill value for ``mode="constant"``.

    Returns
    -------
    ndarray
        The padded array, same dtype.

    Examples
    --------
    >>> x = np.arange(3.0).reshape(1, 1, 3)
    >>> pad(x, (2, 1), mode="reflect")
    array([[[2., 1., 0., 1., 2., 1.]]])
    >>> pad(x, (1, 1), value=-1.0)
    array([[[-1.,  0.,  1.,  2., -1.]]])
    """
    one_of(mode, PAD_MODES, "mode")
    x = np.asarray(input)
    fill = int_or_float(value, "value")
    pairs = _pad_pairs(x.ndim, pad, mode)
    _check_sizes(x.shape, pairs, mode)
    shape = tuple(s + lo + hi for s, (lo, hi) in zip(x.shape, pairs, strict=True))
    limits.check_elements(shape, x.dtype, lambda: f"the output of pad (shape {shape} from input "
                          f"shape {x.shape} and pad={tuple(pad)})")
    if mode == "constant":
        crop = tuple(slice(max(-lo, 0), x.shape[a] - max(-hi, 0)) for a, (lo, hi) in enumerate(pairs))
        x = x[crop]
        grow = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
        if not any(lo or hi for lo, hi in grow):
            return x.copy()
        return np.pad(x, grow, mode="constant", constant_values=fill)
    return np.pad(x, pairs, mode=_NUMPY_MODE[mode])  # type: ignore[call-overload]


def _source_index(j: int, size: int, mode: str) -> int:
    """Input index that padded position ``j`` (in input coordinates, may be <0 or >=size) copies."""
    if mode == "replicate":
        return min(max(j, 0), size - 1)
    if mode == "circular":
        return j % size
    # reflect: mirror about the first and last element without repeating them
    period = 2 * (size - 1)
    j = abs(j) % period if period else 0
    return period - j if j >= size else j


def pad_backward(
    grad_output: Any, input_shape: Sequence[int], pad: Sequence[int], mode: str = "constant"
) -> np.ndarray:
    """Gradient of :func:`pad` with respect to its input.

    Constant padding just crops; the other modes add the gradient of every copied border
    element back onto the element it was copied from. The loop runs over border slabs (as many
    as the padding is wide), each one a vectorised add.

    Examples
    --------
    >>> g = np.ones((1, 1, 6))
    >>> pad_backward(g, (1, 1, 3), (2, 1), mode="reflect")
    array([[[1., 3., 2.]]])
    """
    one_of(mode, PAD_MODES, "mode")
    g = np.asarray(grad_output)
    shape = tuple(as_int(s, "input_shape") for s in input_shape)
    pairs = _pad_pairs(len(shape), pad, mode)
    expected = tuple(s + lo + hi for s, (lo, hi) in zip(shape, pairs, strict=True))
    if g.shape != expected:
        raise ValueError(f"grad_output must have shape {expected} for this padding, got {g.shape}")
    if mode == "constant":
        keep = tuple(slice(max(lo, 0), max(lo, 0) + s - max(-lo, 0) - max(-hi, 0))
                     for s, (lo, hi) in zip(shape, pairs, strict=True))
        inner = g[keep]
        regrow = [(max(-lo, 0), max(-hi, 0)) for lo, hi in pairs]
        return np.pad(inner, regrow) if any(a or b for a, b in regrow) else inner.copy()
    out = g
    for axis, (lo, hi) in enumerate(pairs):
        if not (lo or hi):
            continue
        size = shape[axis]
        moved = np.moveaxis(out, axis, 0)
        acc = moved[lo : lo + size].copy()
        border = list(range(lo)) + list(range(lo + size, lo + size + hi))
        for p in border:
            acc[_source_index(p - lo, size, mode)] += moved[p]
        out = np.moveaxis(acc, 0, axis)
    return np.ascontiguousarray(out)
