"""``conv2d``, ``max_pool2d`` and ``avg_pool2d`` on dask arrays chunked spatially and along N.

Every op here is a strided, dilated window over a padded input. The plan, per spatial axis:

1. pad lazily (zeros, or ``reflect``/``replicate``/``circular`` for conv; ``-inf`` for max
   pooling; zeros for average pooling) to exactly the length the windows read,
   ``(out - 1) * stride + dilation * (kernel - 1) + 1``, cropping rows no window reads;
2. rechunk so that every chunk boundary is a multiple of the stride: a chunk starting at row
   ``S`` then produces the outputs ``S / stride ..`` and needs only a halo *after* it of
   ``span - stride`` rows (``span = dilation * (kernel - 1) + 1``), never before;
3. ``map_overlap`` with that one-sided halo, running the in-memory op of
   :mod:`convlayers.functional` without padding on each block. Average pooling sums each
   window on the block and divides by the divisor of the window's global position (PyTorch's
   ``count_include_pad``/``ceil_mode`` rules), which no block could know alone.

The channel axis is always one chunk (a convolution mixes all channels); N keeps its chunks.

Examples
--------
>>> import numpy as np, dask.array as da
>>> from convlayers import functional as F
>>> x = np.random.default_rng(0).standard_normal((2, 3, 17, 19))
>>> w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))
>>> y = conv2d(da.from_array(x, chunks=(1, 3, 5, 6)), w, stride=2, padding=1)
>>> bool(np.allclose(y.compute(), F.conv2d(x, w, stride=2, padding=1)))
True
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from convlayers import functional as F
from convlayers import shapes
from convlayers._validate import (
    FLOAT_DTYPES,
    IntOrTuple,
    as_int,
    float_array,
    nonnegative_tuple,
    positive_tuple,
)
from convlayers.dask._chunks import aligned_chunks, as_dask
from convlayers.functional.conv import conv_spec

__all__ = ["avg_pool2d", "conv2d", "max_pool2d"]

_DA_PAD = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _batched(input: Any, chunks: int | None) -> tuple[da.Array, bool]:
    x = as_dask(input, "input", chunks, axes=(-2, -1) if np.ndim(input) else ())
    if x.ndim not in (3, 4):
        raise ValueError(
            f"input must have 3 dimensions (C, H, W) or 4 (N, C, H, W), got shape {x.shape}"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"input must be a float32 or float64 array, got dtype {x.dtype}; "
            "convert it first, e.g. input.astype(np.float32)"
        )
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    if chunks is not None and not isinstance(input, da.Array):
        x = x.rechunk({0: 1})
    return x.rechunk({1: -1}), unbatched


def _windows(
    x: da.Array, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
    pairs: tuple[tuple[int, int], ...], out: tuple[int, ...], pad_mode: str, pad_value: float,
) -> tuple[da.Array, dict[int, tuple[int, int]], list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Pad and rechunk ``x`` (N, C, H, W) for a windowed op; return the array, the halo, the
    output chunks and the output offsets per spatial axis."""
    depth: dict[int, tuple[int, int]] = {}
    out_chunks: list[tuple[int, ...]] = []
    offsets: list[tuple[int, ...]] = []
    for i, axis in enumerate((2, 3)):
        k, s, d, (lo, _), o = kernel[i], stride[i], dilation[i], pairs[i], out[i]
        span = d * (k - 1) + 1
        need = (o - 1) * s + span
        n = x.shape[axis]
        hi = max(0, need - lo - n)
        if lo or hi:
            widths = [(0, 0)] * 4
            widths[axis] = (lo, hi)
            if pad_mode == "constant":
                x = da.pad(x, widths, mode="constant", constant_values=pad_value)
            else:
                x = da.pad(x, widths, mode=_DA_PAD[pad_mode])
        if x.shape[axis] > need:
            x = x[(slice(None),) * axis + (slice(0, need),)]
        halo = max(0, span - s)
        chunks = aligned_chunks(x.chunks[axis], need, s, max(halo, 1), span)
        x = x.rechunk({axis: chunks})
        starts = np.concatenate([[0], np.cumsum(chunks)[:-1]]) // s
        counts = [int(b - a) for a, b in zip(starts, [*list(starts[1:]), o], strict=True)]
        out_chunks.append(tuple(counts))
        offsets.append(tuple(int(v) for v in starts))
        depth[axis] = (0, halo) if len(chunks) > 1 else (0, 0)
    return x, depth, out_chunks, offsets


def conv2d(
    input: Any, weight: Any, bias: Any = None, stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0, dilation: IntOrTuple = 1, groups: int = 1,
    padding_mode: str = "zeros", *, chunks: int | None = None,
) -> da.Array:
    """:func:`convlayers.functional.conv2d` (PyTorch's semantics) on a dask array.

    Parameters
    ----------
    input : dask.array.Array or ndarray, shape (N, C_in, H, W) or (C_in, H, W)
        float32 or float64, chunked along N, H and W as you like (the channel axis is merged).
    weight : ndarray, shape (C_out, C_in / groups, kH, kW)
        Same dtype as ``input``; sent with the graph (small).
    bias, stride, padding, dilation, groups, padding_mode
        As in :func:`convlayers.functional.conv2d` (``padding="same"`` at stride 1 only).
    chunks : int, optional
        Rechunk H and W to this side first (and N to 1 for NumPy input).

    Returns
    -------
    dask.array.Array, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        Equal to the in-memory result to float rounding (blocks go through the same GEMM path
        with smaller matrices).

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = da.ones((1, 1, 6, 6), chunks=(1, 1, 3, 3))
    >>> conv2d(x, np.ones((1, 1, 3, 3)), padding=1).compute()[0, 0, 0]
    array([4., 6., 6., 6., 6., 4.])
    """
    x, unbatched = _batched(input, chunks)
    w = float_array(weight, "weight")
    b = None if bias is None else float_array(bias, "bias")
    # the in-memory op's own checks and size arithmetic, on a stand-in of x's shape (no memory)
    stand_in = np.broadcast_to(np.zeros((), x.dtype), x.shape)
    spec = conv_spec(stand_in, w, b, stride, padding, dilation, groups, padding_mode)
    kernel = (int(w.shape[2]), int(w.shape[3]))
    st, dl, pairs, out, groups = spec.stride, spec.dilation, spec.pairs, spec.out_shape, spec.groups
    mode = "constant" if padding_mode == "zeros" else padding_mode
    p, depth, out_chunks, _ = _windows(x, kernel, st, dl, pairs, out, mode, 0.0)

    def block(a: np.ndarray) -> np.ndarray:
        return F.conv2d(a, w, b, stride=st, padding=0, dilation=dl, groups=groups)

    y = da.map_overlap(
        block, p, depth=depth, boundary="none", trim=False, allow_rechunk=False,
        chunks=(p.chunks[0], (w.shape[0],), *out_chunks), dtype=x.dtype,
        meta=np.empty((0, 0, 0, 0), dtype=x.dtype),
    )
    return y[0] if unbatched else y


def _pool_args(
    kernel_size: IntOrTuple, stride: IntOrTuple | None, padding: IntOrTuple, dilation: IntOrTuple,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    k = positive_tuple(kernel_size, 2, "kernel_size")
    s = k if stride is None or stride == () else positive_tuple(stride, 2, "stride")
    return k, s, nonnegative_tuple(padding, 2, "padding"), positive_tuple(dilation, 2, "dilation")


def max_pool2d(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
    return_indices: bool = False, *, chunks: int | None = None,
) -> da.Array:
    """:func:`convlayers.functional.max_pool2d` on a dask array (``-inf`` padding).

    Arguments as in the in-memory function; ``return_indices=True`` is not supported (the
    indices are flat per plane, which chunks cannot produce cheaply). Exactly equal to the
    in-memory result.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = np.array([[1, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16]], float)
    >>> max_pool2d(da.from_array(x[None], chunks=(1, 2, 2)), 2).compute()
    array([[[ 4.,  8.],
            [12., 16.]]])
    """
    if return_indices:
        raise ValueError("return_indices=True is not supported on dask arrays; use False")
    x, unbatched = _batched(input, chunks)
    k, s, pd, dl = _pool_args(kernel_size, stride, padding, dilation)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    out = tuple(
        shapes.pool_output_size(n, *a, bool(ceil_mode))
        for n, a in zip(x.shape[2:], zip(k, s, pd, dl, strict=True), strict=True)
    )
    pairs = tuple((p, p) for p in pd)
    p, depth, out_chunks, _ = _windows(x, k, s, dl, pairs, out, "constant", -np.inf)

    def block(a: np.ndarray) -> np.ndarray:
        return F.max_pool2d(a, k, s, 0, dl)

    y = da.map_overlap(
        block, p, depth=depth, boundary="none", trim=False, allow_rechunk=False,
        chunks=(p.chunks[0], p.chunks[1], *out_chunks), dtype=x.dtype,
        meta=np.empty((0, 0, 0, 0), dtype=x.dtype),
    )
    return y[0] if unbatched else y


def _divisors(n: int, k: int, s: int, p: int, o: int, include_pad: bool) -> np.ndarray:
    """PyTorch's per-window divisor along one axis (before the product over axes)."""
    start = np.arange(o) * s - p
    end = np.minimum(start + k, n + p)
    if include_pad:
        return (end - start).astype(np.int64)
    return (np.minimum(end, n) - np.maximum(start, 0)).astype(np.int64)


def avg_pool2d(
    input: Any, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True,
    divisor_override: int | None = None, *, chunks: int | None = None,
) -> da.Array:
    """:func:`convlayers.functional.avg_pool2d` on a dask array.

    Arguments as in the in-memory function. Each block sums its windows; the divisor comes
    from the window's position in the whole image (``count_include_pad``, ``ceil_mode``).
    Equal to the in-memory result to float rounding.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = np.array([[1, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16]], float)
    >>> avg_pool2d(da.from_array(x[None], chunks=(1, 2, 2)), 2).compute()
    array([[[ 2.5,  6.5],
            [10.5, 14.5]]])
    """
    x, unbatched = _batched(input, chunks)
    k, s, pd, _ = _pool_args(kernel_size, stride, padding, 1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    if divisor_override is not None and as_int(divisor_override, "divisor_override") == 0:
        raise ValueError("divisor_override must not be 0")
    out = tuple(
        shapes.pool_output_size(n, kk, ss, pp, 1, bool(ceil_mode))
        for n, kk, ss, pp in zip(x.shape[2:], k, s, pd, strict=True)
    )
    pairs = tuple((p, p) for p in pd)
    p, depth, out_chunks, offsets = _windows(x, k, s, (1, 1), pairs, out, "constant", 0.0)
    div_h, div_w = (
        _divisors(n, kk, ss, pp, o, bool(count_include_pad))
        for n, kk, ss, pp, o in zip(x.shape[2:], k, s, pd, out, strict=True)
    )
    dtype = x.dtype

    def block(a: np.ndarray, block_id: tuple[int, ...] | None = None) -> np.ndarray:
        sums = F.avg_pool2d(a, k, s, 0, divisor_override=1)
        if divisor_override is not None:
            return sums / np.asarray(divisor_override, dtype=dtype)
        i, j = (block_id or (0, 0, 0, 0))[2:]
        h0, w0 = offsets[0][i], offsets[1][j]
        dh = div_h[h0 : h0 + sums.shape[2]]
        dw = div_w[w0 : w0 + sums.shape[3]]
        return sums / np.outer(dh, dw).astype(dtype)

    y = da.map_overlap(
        block, p, depth=depth, boundary="none", trim=False, allow_rechunk=False,
        chunks=(p.chunks[0], p.chunks[1], *out_chunks), dtype=dtype,
        meta=np.empty((0, 0, 0, 0), dtype=dtype),
    )
    return y[0] if unbatched else y
