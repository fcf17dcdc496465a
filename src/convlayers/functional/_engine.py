"""The engine behind every convolution: runs the strategy the planner chooses for each pass.

:mod:`convlayers.functional.plan` holds the table of strategies and the rules that pick one
(and ``config.engine`` their thresholds); this module holds what each strategy does. Inputs here
are already validated; the public functions in ``conv.py`` and ``conv_transpose.py`` do that.

Four entry points, one per pass:

- :func:`correlate`: the forward, ``(N, C_in, *S)`` cross-correlated with the weights, plus the
  bias. With ``pairs`` given the input is *unpadded* and every strategy reads the zero borders
  by bounds (or pads a copy itself);
- :func:`correlate_backward`: both gradients of a convolution with zero padding, for the
  unpadded input; a joint strategy (Winograd, depthwise, fused lowering) computes them in one
  pass, otherwise each gradient takes its own;
- :func:`correlate_input_grad` and :func:`correlate_weight_grad`: one gradient alone, with
  respect to an already padded input (``conv_transpose``, padding modes other than zeros).

The ``numpy`` strategy, the twin of all the others, is one GEMM (``np.matmul``) per kernel
offset over the outputs whose tap lies inside the input: for each offset, the input slice with
the stride (a view) times that offset's ``(groups, C_out/g, C_in/g)`` weights, added into the
matching box of outputs. The input gradient scatters ``W_k^T @ grad`` back onto the slice, the
weight gradient sums ``grad @ slice^T``. Nothing is padded, so a tap that lies in the padding is
never multiplied (as in torch), and batches go in chunks under :func:`config.scratch_bytes`.

The compiled strategies (1-D and 2-D, float32/float64; 1-D runs as 2-D with one row):

- ``winograd``: F(2x2,3x3) (:mod:`convlayers.kernels.winograd`) in one numba parallel region
  (transforms and the 16 products of a block of tile rows per unit, the products by the
  register-tiled GEMM of :mod:`convlayers.kernels.simd`), forward with the bias fused; both
  gradients from one input transform and one output-gradient transform per unit (one image per
  unit, so with fewer images than threads the per-plane transforms and ``np.matmul`` serve);
- ``depthwise-flat``/``-planar``/``-rows``: direct numba kernels
  (:mod:`convlayers.kernels.depthwise`), forward and both gradients in one pass;
- ``pointwise``: 1x1 kernels, the register-tiled GEMM over blocks of pixel columns
  (:func:`convlayers.kernels.conv.pointwise`) with the images viewed as ``(N, g, C_in/g, H*W)``
  (no copy at stride 1); the input gradient is the same kernel with the weights transposed, the
  weight gradient per-thread ``grad @ x^T`` sums;
- ``lowered``: im2col and register-tiled GEMMs in one numba parallel region per pass
  (:mod:`convlayers.kernels.conv`): forward units are (image, group, slab of output rows, block
  of output channels), weight-gradient units (image, group, slab) with per-thread sums, and
  input-gradient units (image, group, block of input channels), so one image keeps every thread
  busy too (:func:`_lowered_units`). A unit's columns stay under
  ``config.engine.lowered_column_bytes``; the forward's sums run in the same order whatever the
  units, so the result does not depend on the thread count or the scratch cap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from convlayers import config
from convlayers.functional._common import Pairs, pad_pairs, window_offsets
from convlayers.functional.plan import JOINT, Geometry, choose, geometry, magnitude


def _batch_chunks(n: int, bytes_per_item: int) -> Iterator[slice]:
    """Slices of the batch axis so that one chunk's scratch stays under the configured cap."""
    step = max(1, config.scratch_bytes() // max(bytes_per_item, 1))
    for start in range(0, max(n, 1), step):
        yield slice(start, min(start + step, n))


def _kernels() -> Any:
    from convlayers import kernels
    from convlayers.kernels import conv, depthwise, winograd  # noqa: F401  (lazy: numba loads here)

    config.apply_numba_threads()
    return kernels


def _numba_threads() -> int:
    """Threads of numba's pool the kernels run with (after :func:`_kernels`)."""
    import numba

    return int(numba.get_num_threads())


def numba_threads() -> int:
    """The thread count the compiled kernels run with now (loads numba, compiles nothing)."""
    _kernels()
    return _numba_threads()


@contextmanager
def _threads_for(macs: int, serial_below: int | None = None) -> Iterator[None]:
    """Run the kernels inside on one thread when the work is small: under ``serial_below``
    operations (default ``config.engine.serial_macs``)."""
    if macs >= (config.engine.serial_macs if serial_below is None else serial_below):
        yield
        return
    import numba

    _kernels()  # loads numba and applies the thread setting first
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(saved)


@contextmanager
def _dynamic_units() -> Iterator[None]:
    """Hand out the units of the fused kernels one at a time (numba's ``prange`` otherwise
    splits them into one static chunk per thread, and a core slowed by a neighbour holds up
    the call)."""
    import numba

    saved = numba.set_parallel_chunksize(1)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(saved)


def _index(*trailing: slice) -> Any:
    """``(..., *trailing)``: an index on the trailing axes (typed loosely for mypy)."""
    return (Ellipsis, *trailing)


def _as_4d(a: np.ndarray) -> np.ndarray:
    """A 1-D problem ``(N, C, L)`` as 2-D ``(N, C, 1, L)``; contiguous for the kernels."""
    return np.ascontiguousarray(a if a.ndim == 4 else a[:, :, None, :])


def _grouped_taps(weight: np.ndarray, groups: int) -> np.ndarray:
    """Weights ``(C_out, C_in/g, *K)`` as ``(g, C_out/g, C_in/g, prod(K))``."""
    c_out, c_in_g = weight.shape[:2]
    return weight.reshape(groups, c_out // groups, c_in_g, -1)


# ----------------------------------------------------------------------------- planning

_PLANS: dict[tuple, tuple[Geometry, tuple[str, str], int]] = {}


def _planned(pass_: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
             stride: tuple[int, ...], dilation: tuple[int, ...], groups: int,
             pairs: Pairs | None, out_shape: tuple[int, ...], dtype: Any,
             ) -> tuple[Geometry, tuple[str, str], int]:
    """``(geometry, strategies, threads)`` of a call, remembered per shapes and settings (a
    model's layers ask the same questions call after call)."""
    threads = config.threads()
    key = (pass_, x_shape, w_shape, stride, dilation, groups, pairs, out_shape, dtype, threads,
           config.engine_version())
    hit = _PLANS.get(key)
    if hit is not None:
        return hit
    g = geometry(x_shape, w_shape, stride, dilation, groups, pairs, out_shape, dtype)
    t = numba_threads() if g.compiled else 1
    hit = (g, choose(g, pass_, t), t)
    if len(_PLANS) >= 4096:
        _PLANS.clear()
    _PLANS[key] = hit
    return hit


#: Strategies that multiply the zero padding by the weights in the forward pass.
_PADDING_TIMES_WEIGHTS = frozenset(("winograd", "lowered", "pointwise", "depthwise-planar"))


#: inf and NaN go through the NumPy parts silently, as through torch (no RuntimeWarning).
_quiet = np.errstate(invalid="ignore", over="ignore")


def _finite(a: np.ndarray) -> bool:
    return bool(np.isfinite(magnitude(a)))


def _checked_forward(s: str, g: Geometry, w: np.ndarray) -> str:
    """The forward's strategy after the weight check (see :mod:`convlayers.functional.plan`):
    a non-finite weight must not meet the zero padding."""
    if (g.padded and s in _PADDING_TIMES_WEIGHTS and config.engine.check_values
            and not _finite(w)):
        return "depthwise-rows" if g.c_in_g == 1 else "numpy"
    return s


def _checked_backward(ss: tuple[str, str], w: np.ndarray) -> tuple[str, str]:
    """The planar kernels scatter the input gradient over whole flat planes, padding and row
    ends included: a non-finite weight takes the row kernels."""
    if ss[0] == "depthwise-planar" and config.engine.check_values and not _finite(w):
        return "depthwise-rows", "depthwise-rows"
    return ss


# ----------------------------------------------------------------------------- entry points

def correlate(
    x: np.ndarray,
    weight: np.ndarray,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    out_shape: tuple[int, ...],
    pairs: Pairs | None = None,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Cross-correlate a batch ``(N, C_in, *S)`` with ``weight``, plus ``bias`` when given.

    ``pairs`` is the implicit zero padding ``(before, after)`` per spatial axis (``None``: the
    input is already padded). The strategy comes from :func:`convlayers.functional.plan.choose`.
    """
    pairs = pairs if pairs is not None else ((0, 0),) * (x.ndim - 2)
    if x.shape[0] == 0:
        out = np.zeros((0, weight.shape[0], *out_shape), dtype=x.dtype)
        return out
    g, (s, _), threads = _planned("forward", x.shape, weight.shape, stride, dilation, groups,
                                  pairs, out_shape, x.dtype)
    s = _checked_forward(s, g, weight)
    out4 = None
    if s != "numpy":
        with _threads_for(g.macs):
            out4 = _FORWARD[s](_as_4d(x), _as_4d(weight), bias, g)
            if out4 is None:  # Winograd saw an inf or NaN: again without it
                s = _checked_forward(choose(g, "forward", threads, winograd=False)[0], g, weight)
                if s != "numpy":
                    out4 = _FORWARD[s](_as_4d(x), _as_4d(weight), bias, g)
    if out4 is None:
        out = _numpy_forward(x, weight, stride, dilation, groups, out_shape, pairs)
        if bias is not None:
            out += bias.reshape((1, -1) + (1,) * len(out_shape))
        return out
    return out4.reshape(x.shape[0], weight.shape[0], *out_shape)


def correlate_backward(
    x: np.ndarray,
    grad: np.ndarray,
    weight: np.ndarray,
    pairs: Pairs,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(grad_input, grad_weight)`` of :func:`correlate` with zero padding ``pairs``, for the
    unpadded input ``x``. Joint strategies read the borders by bounds; the others pad, lower,
    and crop."""
    if x.shape[0] == 0:
        return np.zeros_like(x), np.zeros_like(weight)
    g, ss, threads = _planned("backward", x.shape, weight.shape, stride, dilation, groups, pairs,
                              grad.shape[2:], x.dtype)
    sx, sw = _checked_backward(ss, weight)
    if sx == sw and sx in JOINT:
        grads = _BACKWARD[sx](_as_4d(x), _as_4d(grad), _as_4d(weight), g)
        if grads is not None:
            return grads[0].reshape(x.shape), grads[1].reshape(weight.shape)
        # Winograd saw an inf or NaN: again without it
        sx, sw = _checked_backward(choose(g, "backward", threads, winograd=False), weight)
        if sx == sw and sx in JOINT:
            again = _BACKWARD[sx](_as_4d(x), _as_4d(grad), _as_4d(weight), g)
            assert again is not None  # only Winograd declines, and it is ruled out here
            return again[0].reshape(x.shape), again[1].reshape(weight.shape)
    if sx == "numpy":
        gx = _numpy_input_grad(grad, weight, x.shape[2:], stride, dilation, groups, pairs)
    else:
        gx = _INPUT_GRAD[sx](_as_4d(grad), _as_4d(weight), g).reshape(x.shape)
    if sw == "numpy":
        gw = _numpy_weight_grad(x, grad, tuple(weight.shape[2:]), stride, dilation, groups, pairs)
    else:
        gw = _WEIGHT_GRAD[sw](_as_4d(x), _as_4d(grad), g).reshape(weight.shape)
    return gx, gw


def correlate_input_grad(
    grad: np.ndarray,
    weight: np.ndarray,
    padded_shape: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    """Gradient of :func:`correlate` with respect to its padded input ``(N, C_in, *padded)``."""
    n = grad.shape[0]
    c_in = weight.shape[1] * groups
    if n == 0:
        return np.zeros((0, c_in, *padded_shape), dtype=grad.dtype)
    g, (s, _), _ = _planned("input_grad", (n, c_in, *padded_shape), weight.shape, stride,
                            dilation, groups, None, grad.shape[2:], grad.dtype)
    if s == "numpy":
        return _numpy_input_grad(grad, weight, padded_shape, stride, dilation, groups, None)
    s = _checked_backward((s, s), weight)[0]
    gx4 = _INPUT_GRAD[s](_as_4d(grad), _as_4d(weight), g)
    return gx4.reshape(n, c_in, *padded_shape)


def correlate_weight_grad(
    xp: np.ndarray,
    grad: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    """Gradient of :func:`correlate` with respect to ``weight`` ``(C_out, C_in/g, *K)``."""
    w_shape = (grad.shape[1], xp.shape[1] // groups, *kernel)
    if xp.shape[0] == 0:
        return np.zeros(w_shape, dtype=xp.dtype)
    g, (s, _), _ = _planned("weight_grad", xp.shape, w_shape, stride, dilation, groups, None,
                            grad.shape[2:], xp.dtype)
    if s == "numpy":
        return _numpy_weight_grad(xp, grad, kernel, stride, dilation, groups, None)
    return _WEIGHT_GRAD[s](_as_4d(xp), _as_4d(grad), g).reshape(w_shape)


# ----------------------------------------------------------------------------- numpy strategy

def _boxes(kernel: tuple[int, ...], in_shape: tuple[int, ...], out_shape: tuple[int, ...],
           stride: tuple[int, ...], dilation: tuple[int, ...], pairs: Pairs | None,
           ) -> Iterator[tuple[int, tuple[slice, ...], tuple[slice, ...], tuple[int, ...]]]:
    """For each kernel offset whose tap lies inside the input for some output: ``(tap index,
    output box, input slices, box shape)``; outputs whose tap lies in the padding are left out."""
    pads = [p[0] for p in pairs] if pairs is not None else [0] * len(kernel)
    for t, offset in enumerate(window_offsets(kernel)):
        outs, ins, shape = [], [], []
        for j, size, o_n, s, d, p in zip(offset, in_shape, out_shape, stride, dilation, pads,
                                         strict=True):
            off = j * d - p  # input index of output o: o*s + off
            lo = 0 if off >= 0 else -(off // s)  # ceil(-off / s)
            hi = min(o_n, (size - 1 - off) // s + 1) if size - 1 - off >= 0 else 0
            if hi <= lo:
                break
            outs.append(slice(lo, hi))
            ins.append(slice(lo * s + off, (hi - 1) * s + off + 1, s))
            shape.append(hi - lo)
        else:
            yield t, tuple(outs), tuple(ins), tuple(shape)


@_quiet
def _numpy_forward(x: np.ndarray, weight: np.ndarray, stride: tuple[int, ...],
                   dilation: tuple[int, ...], groups: int, out_shape: tuple[int, ...],
                   pairs: Pairs | None) -> np.ndarray:
    """The ``numpy`` strategy's forward, no bias."""
    n, c_in = x.shape[:2]
    c_out, c_in_g = weight.shape[:2]
    taps = _grouped_taps(weight, groups)
    out = np.zeros((n, groups, c_out // groups, *out_shape), dtype=x.dtype)
    xg = x.reshape(n, groups, c_in_g, *x.shape[2:])
    item = x.itemsize * c_in * int(np.prod(out_shape))
    for chunk in _batch_chunks(n, item):
        xc, oc = xg[chunk], out[chunk]
        rows = oc.shape[0]
        for t, o_box, i_box, shape in _boxes(tuple(weight.shape[2:]), x.shape[2:], out_shape,
                                             stride, dilation, pairs):
            length = int(np.prod(shape))
            window = xc[_index(*i_box)].reshape(rows, groups, c_in_g, length)
            if c_in_g == 1:  # depthwise: an outer product, cheaper as a broadcast multiply
                part = taps[None, :, :, 0, t, None] * window
            else:
                part = np.matmul(taps[:, :, :, t], window)
            oc[_index(*o_box)] += part.reshape(rows, groups, c_out // groups, *shape)
    return out.reshape(n, c_out, *out_shape)


@_quiet
def _numpy_input_grad(grad: np.ndarray, weight: np.ndarray, in_shape: tuple[int, ...],
                      stride: tuple[int, ...], dilation: tuple[int, ...], groups: int,
                      pairs: Pairs | None) -> np.ndarray:
    """The ``numpy`` strategy's input gradient, for an input of ``in_shape`` with ``pairs``."""
    n = grad.shape[0]
    c_out, c_in_g = weight.shape[:2]
    out_shape = grad.shape[2:]
    taps_t = _grouped_taps(weight, groups).swapaxes(1, 2)  # (g, C_in/g, C_out/g, K)
    gy = grad.reshape(n, groups, c_out // groups, *out_shape)
    gx = np.zeros((n, groups, c_in_g, *in_shape), dtype=grad.dtype)
    item = grad.itemsize * groups * c_in_g * int(np.prod(out_shape))
    for chunk in _batch_chunks(n, item):
        gyc, gxc = gy[chunk], gx[chunk]
        rows = gyc.shape[0]
        for t, o_box, i_box, shape in _boxes(tuple(weight.shape[2:]), in_shape, out_shape,
                                             stride, dilation, pairs):
            length = int(np.prod(shape))
            g_box = gyc[_index(*o_box)].reshape(rows, groups, c_out // groups, length)
            if c_in_g == 1 and taps_t.shape[2] == 1:
                part = taps_t[None, :, :, 0, t, None] * g_box
            else:
                part = np.matmul(taps_t[:, :, :, t], g_box)
            gxc[_index(*i_box)] += part.reshape(rows, groups, c_in_g, *shape)
    return gx.reshape(n, groups * c_in_g, *in_shape)


@_quiet
def _numpy_weight_grad(x: np.ndarray, grad: np.ndarray, kernel: tuple[int, ...],
                       stride: tuple[int, ...], dilation: tuple[int, ...], groups: int,
                       pairs: Pairs | None) -> np.ndarray:
    """The ``numpy`` strategy's weight gradient ``(C_out, C_in/g, *K)``."""
    n, c_in = x.shape[:2]
    c_out = grad.shape[1]
    c_in_g, c_out_g = c_in // groups, c_out // groups
    out_shape = grad.shape[2:]
    gy = grad.reshape(n, groups, c_out_g, *out_shape)
    xg = x.reshape(n, groups, c_in_g, *x.shape[2:])
    acc_dtype = np.float64 if x.dtype == np.float64 else np.float32
    gw = np.zeros((groups, c_out_g, c_in_g, int(np.prod(kernel))), dtype=acc_dtype)
    item = x.itemsize * c_in * int(np.prod(out_shape))
    for chunk in _batch_chunks(n, item):
        xc, gyc = xg[chunk], gy[chunk]
        rows = xc.shape[0]
        for t, o_box, i_box, shape in _boxes(kernel, x.shape[2:], out_shape, stride, dilation,
                                             pairs):
            length = int(np.prod(shape))
            window = xc[_index(*i_box)].reshape(rows, groups, c_in_g, length)
            g_box = gyc[_index(*o_box)].reshape(rows, groups, c_out_g, length)
            if c_in_g == 1 and c_out_g == 1:
                gw[:, 0, 0, t] += np.einsum("ngl,ngl->g", g_box[:, :, 0], window[:, :, 0])
            else:
                gw[:, :, :, t] += np.matmul(g_box, window.swapaxes(-1, -2)).sum(axis=0)
    return gw.reshape(c_out, c_in_g, *kernel).astype(x.dtype, copy=False)


# ----------------------------------------------------------------------------- shared helpers

def _subsampled(xp: np.ndarray, stride: tuple[int, int], out_shape: tuple[int, int]) -> np.ndarray:
    """The pixels a 1x1 kernel reads: every ``stride``-th, ``out_shape`` of them."""
    if stride == (1, 1) and xp.shape[2:] == out_shape:
        return xp
    return np.ascontiguousarray(xp[:, :, : stride[0] * out_shape[0] : stride[0],
                                   : stride[1] * out_shape[1] : stride[1]])


def _planar(g: Geometry) -> tuple[int, int, int, int]:
    """The planar depthwise kernels' geometry ``(rows, S, length, block)``."""
    from convlayers.kernels.depthwise import planar_geometry

    return planar_geometry((g.ho, g.wo), (g.kh, g.kw), (g.sh, g.sw), (g.dh, g.dw))


def _planar_parts(planes: int) -> int:
    """Parallel units of the planar kernels: a few per thread, so a busy core can be helped."""
    return max(1, min(planes, 8 * _numba_threads()))


def _bias_arg(bias: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """The bias as the kernels take it: an empty array when there is none."""
    return np.empty(0, dtype=dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)


def _depthwise_taps(w: np.ndarray) -> np.ndarray:
    c_out, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c_out, kh, kw))


def _lowered_units(g: Geometry, threads: int, pass_: str) -> tuple[int, int]:
    """``(R, B)``: output rows and channels (output channels for the forward, input channels
    for the input gradient) per unit of the lowered kernels.

    A unit's scratch (its columns, ``K x R*Wo``) stays under ``config.engine.lowered_column_bytes``
    (and the scratch cap); then, while there are fewer units than twice the threads, slabs get
    shorter (down to ``config.engine.lowered_min_columns`` output positions), and the forward
    splits its output channels into blocks of whole register-tile bands. The forward's sums
    run in the same order whatever the units, so its result never depends on them."""
    from convlayers.kernels.simd import TILE_ROWS

    e = config.engine
    kk = g.kh * g.kw
    want = 2 * threads if threads > 1 else 1
    images = g.n * g.groups
    cap = max(1, min(e.lowered_column_bytes, config.scratch_bytes()))
    if pass_ == "input_grad":
        block = g.c_in_g
        if images < want:
            block = max(1, -(-g.c_in_g // -(-want // images)))
        rows = max(1, min(g.ho, cap // max(1, block * kk * g.wo * g.itemsize)))
        return rows, block
    rows = max(1, min(g.ho, cap // max(1, g.c_in_g * kk * g.wo * g.itemsize)))
    if images * -(-g.ho // rows) < want:
        shortest = max(1, -(-e.lowered_min_columns // g.wo))
        split = max(1, -(-g.ho // -(-want // images)))
        rows = min(rows, max(shortest, split))
    block = g.c_out_g
    units = images * -(-g.ho // rows)
    if pass_ == "forward" and units < want and g.c_out_g > 2 * TILE_ROWS:
        parts = -(-want // units)
        per = -(-g.c_out_g // parts)
        block = -(-per // TILE_ROWS) * TILE_ROWS
        block = min(g.c_out_g, max(2 * TILE_ROWS, block))
    return rows, block


# ----------------------------------------------------------------------------- forward strategies
#
# Each takes the 4-D input (unpadded, the padding in ``g``), weights, bias (or None) and the
# geometry, and returns the output ``(N, C_out, Ho, Wo)`` with the bias added (None: the
# strategy saw an inf or NaN it may have made, see ``_checked_forward``).

def _fwd_depthwise_flat(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                        g: Geometry) -> np.ndarray:
    k = _kernels()
    out = np.empty((g.n, g.c_out, g.ho, g.wo), dtype=x.dtype)
    masks = k.depthwise.flat_masks((g.ho, g.wo), g.w, g.kw, g.dw, g.pl)
    k.depthwise.flat_forward(x.reshape(g.n, g.c_in, g.h * g.w), _depthwise_taps(w),
                             _bias_arg(bias, x.dtype), g.w, g.dh, g.dw, g.pt, g.pl, masks,
                             _planar_parts(g.n * g.c_out), out.reshape(g.n, g.c_out, -1))
    return out


def _fwd_depthwise_planar(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                          g: Geometry) -> np.ndarray:
    k = _kernels()
    out = np.empty((g.n, g.c_out, g.ho, g.wo), dtype=x.dtype)
    k.depthwise.planar_forward(x, _depthwise_taps(w), _bias_arg(bias, x.dtype), g.sh, g.sw,
                               g.dh, g.dw, g.pt, g.pl, *_planar(g), _planar_parts(g.n * g.c_in),
                               out)
    return out


def _fwd_depthwise_rows(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                        g: Geometry) -> np.ndarray:
    k = _kernels()
    out = np.empty((g.n, g.c_out, g.ho, g.wo), dtype=x.dtype)
    k.depthwise.depthwise_forward(x, _depthwise_taps(w), _bias_arg(bias, x.dtype), g.sh, g.sw,
                                  g.dh, g.dw, g.pt, g.pl, out)
    return out


def _fwd_winograd(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                  g: Geometry) -> np.ndarray | None:
    return _winograd_forward(x, w, bias, g.pt, g.pl, g.groups, (g.ho, g.wo))


def _fwd_pointwise(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                   g: Geometry) -> np.ndarray:
    taps = w.reshape(g.groups, g.c_out_g, g.c_in_g)
    out = np.empty((g.n, g.groups, g.c_out_g, g.ho * g.wo), dtype=x.dtype)
    xp = pad_pairs(x, ((g.pt, g.pb), (g.pl, g.pr)))
    xs = _subsampled(xp, (g.sh, g.sw), (g.ho, g.wo)).reshape(g.n, g.groups, g.c_in_g, -1)
    _pointwise(xs, np.ascontiguousarray(taps), _bias_arg(bias, x.dtype), out)
    return out.reshape(g.n, g.c_out, g.ho, g.wo)


def _fwd_lowered(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                 g: Geometry) -> np.ndarray:
    k = _kernels()
    threads = _numba_threads()
    rows, block = _lowered_units(g, threads, "forward")
    out = np.empty((g.n, g.c_out, g.ho * g.wo), dtype=x.dtype)
    taps = np.ascontiguousarray(w.reshape(g.groups, g.c_out_g, g.c_in_g * g.kh * g.kw))
    with _dynamic_units():
        k.conv.lowered_forward(x, taps, _bias_arg(bias, x.dtype), g.kh, g.kw, g.sh, g.sw, g.dh,
                               g.dw, g.pt, g.pl, g.wo, rows, block, threads, out)
    return out.reshape(g.n, g.c_out, g.ho, g.wo)


# ----------------------------------------------------------------------------- joint backward
#
# Each takes the unpadded input, the output gradient, the weights and the geometry, and returns
# ``(grad_input, grad_weight)`` (None: see the forward strategies).

def _bwd_winograd(x: np.ndarray, gy: np.ndarray, w: np.ndarray,
                  g: Geometry) -> tuple[np.ndarray, np.ndarray] | None:
    return _winograd_backward(x, gy, w, g.pt, g.pl, g.groups)


def _bwd_depthwise(kind: str) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    @_quiet
    def backward(x: np.ndarray, gy: np.ndarray, w: np.ndarray,
                 g: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """Both gradients of a depthwise convolution of the unpadded ``x`` by the ``kind``
        kernels in one pass."""
        k = _kernels()
        wd = _depthwise_taps(w)
        gx = np.empty(x.shape, dtype=x.dtype)
        if kind == "flat":
            part = k.depthwise.flat_backward(
                x.reshape(g.n, g.c_in, g.h * g.w), gy.reshape(g.n, g.c_out, g.ho * g.wo), wd,
                g.w, g.dh, g.dw, g.pt, g.pl, k.depthwise.flat_masks((g.ho, g.wo), g.w, g.kw,
                                                                    g.dw, g.pl),
                _planar_parts(g.n * g.c_in), True, True, gx.reshape(g.n, g.c_in, g.h * g.w))
        elif kind == "planar":
            part = k.depthwise.planar_backward(x, gy, wd, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
                                               *_planar(g), _planar_parts(g.n * g.c_in), True,
                                               True, gx)
            if config.engine.check_values and not _finite(part):
                # the dot products run over whole flat planes, padding and row ends included,
                # where an inf input meets a zero: the row kernels read by bounds
                part = k.depthwise.depthwise_weight_grad(x, gy, g.kh, g.kw, g.sh, g.sw, g.dh,
                                                         g.dw, g.pt, g.pl)
        else:
            k.depthwise.depthwise_input_grad(gy, wd, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, gx)
            part = k.depthwise.depthwise_weight_grad(x, gy, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw,
                                                     g.pt, g.pl)
        return gx, part.sum(axis=0).astype(x.dtype).reshape(g.c_out, 1, g.kh, g.kw)
    return backward


# ----------------------------------------------------------------------------- one gradient
#
# The input gradient ``(N, C_in, H, W)`` from the output gradient and weights, the weight
# gradient ``(C_out, C_in/g, kh, kw)`` from the input and the output gradient; the input is the
# one ``g`` describes (unpadded with its padding, or already padded with none).

def _gx_depthwise_planar(gy: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    k = _kernels()
    gx = np.empty((g.n, g.c_in, g.h, g.w), dtype=gy.dtype)
    k.depthwise.planar_backward(gx, gy, _depthwise_taps(w), g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
                                *_planar(g), _planar_parts(g.n * g.c_in), True, False, gx)
    return gx


def _gx_depthwise_rows(gy: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    k = _kernels()
    gx = np.empty((g.n, g.c_in, g.h, g.w), dtype=gy.dtype)
    k.depthwise.depthwise_input_grad(gy, _depthwise_taps(w), g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
                                     gx)
    return gx


def _gx_pointwise(gy: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    taps_t = w.reshape(g.groups, g.c_out_g, g.c_in_g).swapaxes(1, 2)
    gyg = gy.reshape(g.n, g.groups, g.c_out_g, g.ho * g.wo)
    part = np.empty((g.n, g.groups, g.c_in_g, g.ho * g.wo), dtype=gy.dtype)
    _pointwise(gyg, np.ascontiguousarray(taps_t), np.empty(0, dtype=gy.dtype), part)
    part = part.reshape(g.n, g.c_in, g.ho, g.wo)
    hp, wp = g.h + g.pt + g.pb, g.w + g.pl + g.pr
    if (g.sh, g.sw) == (1, 1) and (hp, wp) == (g.ho, g.wo) and not g.padded:
        return part
    gxp = np.zeros((g.n, g.c_in, hp, wp), dtype=gy.dtype)
    gxp[:, :, : g.sh * g.ho : g.sh, : g.sw * g.wo : g.sw] = part
    return np.ascontiguousarray(gxp[:, :, g.pt: g.pt + g.h, g.pl: g.pl + g.w])


def _gx_lowered(gy: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    k = _kernels()
    threads = _numba_threads()
    rows, block = _lowered_units(g, threads, "input_grad")
    kk = g.kh * g.kw
    taps_t = np.ascontiguousarray(
        w.reshape(g.groups, g.c_out_g, g.c_in_g * kk).swapaxes(1, 2))
    gx = np.empty((g.n, g.c_in, g.h, g.w), dtype=gy.dtype)
    with _dynamic_units():
        k.conv.lowered_input_grad(gy.reshape(g.n, g.c_out, g.ho * g.wo), taps_t, g.kh, g.kw,
                                  g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.wo, rows, block, threads,
                                  gx)
    return gx


@_quiet
def _gw_depthwise_planar(x: np.ndarray, gy: np.ndarray, g: Geometry) -> np.ndarray:
    k = _kernels()
    part = k.depthwise.planar_backward(x, gy, np.zeros((g.c_out, g.kh, g.kw), dtype=x.dtype),
                                       g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, *_planar(g),
                                       _planar_parts(g.n * g.c_in), False, True,
                                       np.empty((0, 0, 0, 0), dtype=x.dtype))
    if config.engine.check_values and not _finite(part):  # see _bwd_depthwise
        return _gw_depthwise_rows(x, gy, g)
    return part.sum(axis=0).astype(x.dtype).reshape(g.c_out, 1, g.kh, g.kw)


@_quiet
def _gw_depthwise_rows(x: np.ndarray, gy: np.ndarray, g: Geometry) -> np.ndarray:
    k = _kernels()
    part = k.depthwise.depthwise_weight_grad(x, gy, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt,
                                             g.pl)
    return part.sum(axis=0).astype(x.dtype).reshape(g.c_out, 1, g.kh, g.kw)


@_quiet
def _gw_pointwise(x: np.ndarray, gy: np.ndarray, g: Geometry) -> np.ndarray:
    k = _kernels()
    gyg = gy.reshape(g.n, g.groups, g.c_out_g, g.ho * g.wo)
    xp = pad_pairs(x, ((g.pt, g.pb), (g.pl, g.pr)))
    xs = _subsampled(xp, (g.sh, g.sw), (g.ho, g.wo)).reshape(g.n, g.groups, g.c_in_g, -1)
    acc = np.empty((_numba_threads(), g.groups, g.c_out_g, g.c_in_g), dtype=x.dtype)
    block = _pointwise_block(g.c_in_g + g.c_out_g, g.ho * g.wo, x.itemsize)
    with _dynamic_units():
        k.conv.pointwise_weight_grad(np.ascontiguousarray(xs), np.ascontiguousarray(gyg),
                                     block, acc)
    return acc.sum(axis=0).reshape(g.c_out, g.c_in_g, 1, 1)


@_quiet
def _gw_lowered(x: np.ndarray, gy: np.ndarray, g: Geometry) -> np.ndarray:
    k = _kernels()
    threads = _numba_threads()
    rows, _ = _lowered_units(g, threads, "weight_grad")
    kk = g.kh * g.kw
    acc = np.empty((threads, g.groups, g.c_in_g * kk, g.c_out_g), dtype=x.dtype)
    with _dynamic_units():
        k.conv.lowered_weight_grad(x, gy.reshape(g.n, g.c_out, g.ho * g.wo), g.groups, g.kh,
                                   g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.wo, rows, acc)
    gw = acc.sum(axis=0).swapaxes(1, 2)  # (G, C_out/g, C_in/g*kh*kw)
    return np.ascontiguousarray(gw).reshape(g.c_out, g.c_in_g, g.kh, g.kw)


# ----------------------------------------------------------------------------- 1x1 kernels

def _pointwise_block(k_rows: int, length: int, itemsize: int) -> int:
    """Pixel columns per unit of the 1x1 kernels (a multiple of 16, at least 64): the unit's
    block of the right-hand operand fits ``config.engine.pointwise_block_bytes``."""
    cols = config.engine.pointwise_block_bytes // max(1, k_rows * itemsize)
    return int(min(length, max(64, cols // 16 * 16)))


def _pointwise(xs: np.ndarray, taps: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
    """``out[n, g] = taps[g] @ xs[n, g]`` (+ bias) by :func:`convlayers.kernels.conv.pointwise`:
    ``xs (N, G, K, L)`` and ``taps (G, P, K)`` C-contiguous, ``out (N, G, P, L)``."""
    k = _kernels()
    length = xs.shape[3]
    block = _pointwise_block(xs.shape[2], length, xs.itemsize)
    rows = _pointwise_rows(taps.shape[1], xs.shape[0] * -(-length // block))
    with _dynamic_units():
        k.conv.pointwise(np.ascontiguousarray(xs), taps, bias, block, rows, out)


def _pointwise_rows(c_out_g: int, column_units: int) -> int:
    """Output rows per unit of the 1x1 kernel: all of them, unless there are fewer column units
    than twice the threads; then the rows are split too (whole register-tile bands, at least
    two)."""
    from convlayers.kernels.simd import TILE_ROWS

    want = 2 * _numba_threads()
    if column_units >= want:
        return c_out_g
    parts = -(-want // column_units)
    rows = max(2 * TILE_ROWS, -(-c_out_g // parts))
    return min(c_out_g, -(-rows // TILE_ROWS) * TILE_ROWS)


# ----------------------------------------------------------------------------- Winograd F(2x2,3x3)

def _winograd_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """``U = G g G^T`` per (output, input) channel pair, as ``(16, groups, C_out/g, C_in/g)``
    (:func:`convlayers.kernels.winograd.weight_transform`; an ``einsum`` of the three took
    25-50 ms for 256x256 channels, more than the convolution at batch 1)."""
    c_out, c_in_g = w.shape[:2]
    u = np.empty((16, c_out * c_in_g), dtype=w.dtype)
    _kernels().winograd.weight_transform(np.ascontiguousarray(w).reshape(-1, 9), u)
    return u.reshape(16, groups, c_out // groups, c_in_g)


def _winograd_rows(tw: int, tiles: int) -> int:
    """Tile rows per fused unit: about ``tiles`` tiles (geometry only)."""
    return max(1, -(-tiles // tw))


def _split(total: int, units: int, threads: int, least: int, multiple: int = 1) -> int:
    """Channels per block so that ``units`` units of whole channels become at least twice the
    threads (blocks of at least ``least`` channels, rounded up to ``multiple``)."""
    want = 2 * threads
    if threads <= 1 or units >= want:
        return total
    per = -(-total // -(-want // units))
    per = -(-per // multiple) * multiple
    return min(total, max(least, per))


def _winograd_forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, pt: int, pl: int,
                      groups: int, out_shape: tuple[int, int]) -> np.ndarray | None:
    """Transforms and the 16 products of each block of tile rows (and output channels, when
    there are too few blocks for the threads) in one parallel region; None when an output came
    out inf or NaN (see :mod:`convlayers.functional.plan`)."""
    from convlayers.kernels.simd import TILE_ROWS

    k = _kernels()
    n = x.shape[0]
    c_out = w.shape[0]
    ho, wo = out_shape
    u = _winograd_weights(w, groups)
    out = np.empty((n, c_out, ho, wo), dtype=x.dtype)
    rows = _winograd_rows(-(-wo // 2), config.engine.winograd_block_tiles)
    threads = _numba_threads()
    th = -(-ho // 2)
    blocks = n * -(-th // min(rows, th))
    cob = _split(c_out // groups, blocks, threads, 2 * TILE_ROWS, TILE_ROWS)
    bad = np.zeros(threads, dtype=np.bool_)
    with _dynamic_units():
        k.winograd.forward_fused(x, u, _bias_arg(bias, x.dtype), pt, pl, rows, cob, threads, out,
                                 bad)
    return None if bad.any() and config.engine.check_values else out


@_quiet
def _winograd_backward(x: np.ndarray, gy: np.ndarray, w: np.ndarray, pt: int, pl: int,
                       groups: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Both gradients of :func:`_winograd_forward`'s convolution from one input transform and
    one output-gradient transform per unit: ``dV = U^T dM`` and ``dU^T = sum V dM^T``; None
    when a gradient came out inf or NaN."""
    k = _kernels()
    n = x.shape[0]
    c_out, c_in_g = w.shape[:2]
    c_out_g = c_out // groups
    wo = gy.shape[3]
    ut = np.ascontiguousarray(_winograd_weights(w, groups).swapaxes(-1, -2))
    threads = _numba_threads()
    gx = np.empty_like(x)
    gut = np.empty((threads, 16, groups, c_in_g, c_out_g), dtype=x.dtype)
    rows = _winograd_rows(-(-wo // 2), config.engine.winograd_block_tiles_bwd)
    cib = _split(c_in_g, n * groups, threads, 8)
    bad = np.zeros(threads, dtype=np.bool_)
    with _dynamic_units():
        k.winograd.backward_fused(x, gy, ut, pt, pl, rows, cib, gx, gut, bad)
    du = np.ascontiguousarray(gut.sum(axis=0, dtype=np.float64).swapaxes(-1, -2))
    gw64 = np.empty((c_out, c_in_g, 3, 3))
    k.winograd.weight_grad_transform(du.reshape(16, c_out, c_in_g), gw64)
    gw = gw64.astype(x.dtype)
    if config.engine.check_values and (bad.any() or not _finite(gw)):
        return None
    return gx, gw


# ----------------------------------------------------------------------------- the tables

_FORWARD: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray | None, Geometry],
                             np.ndarray | None]] = {
    "winograd": _fwd_winograd,
    "depthwise-flat": _fwd_depthwise_flat,
    "depthwise-planar": _fwd_depthwise_planar,
    "depthwise-rows": _fwd_depthwise_rows,
    "pointwise": _fwd_pointwise,
    "lowered": _fwd_lowered,
}

_BACKWARD: dict[str, Callable[..., tuple[np.ndarray, np.ndarray] | None]] = {
    "winograd": _bwd_winograd,
    "depthwise-flat": _bwd_depthwise("flat"),
    "depthwise-planar": _bwd_depthwise("planar"),
    "depthwise-rows": _bwd_depthwise("rows"),
}

_INPUT_GRAD: dict[str, Callable[[np.ndarray, np.ndarray, Geometry], np.ndarray]] = {
    "depthwise-planar": _gx_depthwise_planar,
    "depthwise-rows": _gx_depthwise_rows,
    "pointwise": _gx_pointwise,
    "lowered": _gx_lowered,
}

_WEIGHT_GRAD: dict[str, Callable[[np.ndarray, np.ndarray, Geometry], np.ndarray]] = {
    "depthwise-planar": _gw_depthwise_planar,
    "depthwise-rows": _gw_depthwise_rows,
    "pointwise": _gw_pointwise,
    "lowered": _gw_lowered,
}
