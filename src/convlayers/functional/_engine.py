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

Each entry point first leaves out the kernel taps that read only the zero padding
(:mod:`convlayers.functional._engine_crop`): the call runs with the kernel cropped to the taps
that reach the input, and the dropped taps' weight gradient is zero.

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
  ``depthwise-channels-last`` a forward for small maps, in blocks of channels
  (:mod:`convlayers.kernels.depthwise_nhwc`);
- ``implicit``: the register-tiled GEMM reading windows of a padded, stride-phase-split input
  slab in place of im2col columns (:mod:`convlayers.kernels.implicit`): forward and weight
  gradient of any 2-D geometry, the input gradient one stride-1 forward per stride phase;
- ``pointwise``: 1x1 kernels, the register-tiled GEMM over blocks of pixel columns
  (:func:`convlayers.kernels.conv.pointwise`) with the images viewed as ``(N, g, C_in/g, H*W)``
  (no copy at stride 1); the input gradient is the same kernel with the weights transposed, the
  weight gradient per-thread ``grad @ x^T`` sums;
- ``lowered``: im2col and register-tiled GEMMs in one numba parallel region per pass
  (:mod:`convlayers.kernels.conv`): forward units are (image, group, slab of output rows, block
  of output channels), weight-gradient units (image, group, slab) with per-thread sums, and
  input-gradient units (image, group, block of input channels), so one image keeps every thread
  busy too (``_lowered_units`` in :mod:`convlayers.functional._engine_lowered`). A unit's
  columns stay under ``config.engine.lowered_column_bytes``; the forward's sums run in the
  same order whatever the units, so the result does not depend on the thread count or the
  scratch cap. Maps of a few output positions: the forward gathers the images' columns side
  by side (products of at most four columns by dot products, ``simd.gemm_few``), and the
  gradients of two images or more make one product over all of them per block of input
  channels (:func:`convlayers.functional.plan.few_positions`).

This module plans a call and dispatches it; each strategy lives in its own module
(``_engine_numpy``, ``_engine_winograd``, ``_engine_depthwise``, ``_engine_pointwise``,
``_engine_implicit``, ``_engine_lowered``, with ``_engine_shared`` for what they share), and
:mod:`convlayers.functional._compiled` loads the kernels and sets numba's threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from convlayers import config
from convlayers.functional import _cold
from convlayers.functional._common import Pairs, pad_pairs
from convlayers.functional._compiled import _threads_for, numba_threads
from convlayers.functional._engine_crop import Cropped, planned_crop
from convlayers.functional._engine_depthwise import (
    _bwd_depthwise,
    _bwd_depthwise_channels_last,
    _fwd_depthwise_channels_last,
    _fwd_depthwise_flat,
    _fwd_depthwise_planar,
    _fwd_depthwise_rows,
    _gw_depthwise_planar,
    _gw_depthwise_rows,
    _gx_depthwise_planar,
    _gx_depthwise_rows,
)
from convlayers.functional._engine_direct import (
    _fwd_direct,
    _fwd_direct_planar,
    _gw_direct,
    forward_window,
    ready_direct,
)
from convlayers.functional._engine_dot import _fwd_dot
from convlayers.functional._engine_flipped import flipped_input_grad
from convlayers.functional._engine_implicit import (
    _fwd_implicit,
    _gw_implicit,
    _gx_implicit,
    ready_implicit,
    ready_implicit_input_grad,
)
from convlayers.functional._engine_lowered import (
    _fwd_lowered,
    _gw_lowered,
    _gx_lowered,
    lowered_alone,
    ready_lowered,
    ready_lowered_input_grad,
)
from convlayers.functional._engine_numpy import _numpy_forward, _numpy_input_grad, _numpy_weight_grad
from convlayers.functional._engine_phases import planned_reduction
from convlayers.functional._engine_pointwise import (
    _fwd_pointwise,
    _gw_pointwise,
    _gx_pointwise,
    ready_alone,
    ready_pointwise,
)
from convlayers.functional._engine_shared import _as_4d, _finite
from convlayers.functional._engine_winograd import _bwd_winograd, _fwd_winograd
from convlayers.functional._measured import SWAPPED, measured_strategy, remembered_choice, unsure
from convlayers.functional._ready import Runner, declining
from convlayers.functional.plan import (
    FLIPPED_FORWARDS,
    JOINT,
    Geometry,
    choose,
    geometry,
    swaps_axes,
    work,
)

__all__ = [
    "BackwardRunner",
    "correlate",
    "correlate_backward",
    "correlate_input_grad",
    "correlate_weight_grad",
    "cropped_weight_grad",
    "declining_backward",
    "declining_weight_grad",
    "numba_threads",
    "ready_backward",
    "ready_forward",
    "ready_input_grad",
    "ready_weight_grad",
]


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
_PADDING_TIMES_WEIGHTS = frozenset(("winograd", "implicit", "lowered", "direct", "direct-planar",
                                    "dot", "pointwise", "depthwise-planar",
                                    "depthwise-channels-last"))


def _checked_forward(s: str, g: Geometry, w: np.ndarray) -> str:
    """The forward's strategy after the weight check (see :mod:`convlayers.functional.plan`):
    a non-finite weight must not meet the zero padding."""
    if (g.padded and s in _PADDING_TIMES_WEIGHTS and config.engine.check_values
            and not _finite(w)):
        return "depthwise-rows" if g.c_in_g == 1 else "numpy"
    return s


def _weight_check_after(s: str, g: Geometry, w_size: int) -> bool:
    """Whether the forward checks its output, not ``w``, for inf and NaN: a non-finite weight
    makes every output of its channel non-finite (times an input or the zero padding), so a
    finite output needs no weight check; only a non-finite one looks at ``w`` (and runs again
    by :func:`_checked_forward`'s strategy when it is the weight's doing). Taken where the
    output has fewer elements than the weight (a batch-1 layer of small maps: the parallel
    check of a 2.4M-element weight took 0.18 ms of a 1.8 ms 507->187 5x5 forward on 7x7).
    Winograd checks its own transforms and keeps the check before."""
    return (g.padded and s in _PADDING_TIMES_WEIGHTS and s != "winograd"
            and config.engine.check_values and g.n * g.c_out * g.ho * g.wo < w_size)


def _timed_forward(s: str, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   g: Geometry, cropped: Cropped | None = None) -> None:
    """One run of the forward strategy ``s`` (with the copy or packing of a ``cropped``
    kernel's taps), its result dropped (a measurement's)."""
    with _threads_for(work(g, (s,))):
        _forward_by(s, x, weight, bias, g, cropped)


def _timed_input_grad(s: str, grad: np.ndarray, weight: np.ndarray, g: Geometry) -> None:
    """One run of the input-gradient strategy ``s`` alone, its result dropped (a
    measurement's)."""
    with _threads_for(work(g, (s,))):
        _INPUT_GRAD[s](_as_4d(grad), _as_4d(weight), g)


def _swapped(a: np.ndarray) -> np.ndarray:
    """``a`` with its last two axes swapped, C-contiguous (:func:`plan.swaps_axes`)."""
    return np.ascontiguousarray(np.swapaxes(a, -1, -2))


def _checked_backward(ss: tuple[str, str], w: np.ndarray) -> tuple[str, str]:
    """The planar kernels scatter the input gradient over whole flat planes, padding and row
    ends included: a non-finite weight takes the row kernels. The implicit input gradient
    multiplies the output gradient's zero padding by the weights: such a weight takes
    ``lowered`` (whose col2im drops the taps in the padding)."""
    if ss[0] in ("depthwise-planar", "implicit") and config.engine.check_values \
            and not _finite(w):
        return ("depthwise-rows", "depthwise-rows") if ss[0] == "depthwise-planar" \
            else ("lowered", ss[1])
    return ss


def _checked_weight_grad(s: str, x: np.ndarray) -> str:
    """The implicit weight gradient sums zero output gradients times the input at the positions
    it drops, so an inf or NaN input a real output never reads would turn into NaN there: such
    an input takes ``lowered``."""
    if s == "implicit" and config.engine.check_values and not _finite(x):
        return "lowered"
    return s


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
    reduced = planned_reduction(x.shape, weight.shape, stride, dilation, pairs, out_shape)
    if reduced is not None:  # strides that skip input: the phase its taps read, stride 1
        return correlate(reduced.take(x), weight, reduced.stride, reduced.dilation, groups,
                         out_shape, reduced.pairs, bias)
    # taps that read only the padding are left out: the call is planned with the kernel
    # cropped (each strategy run takes the cropped taps, see _forward_by)
    cropped = planned_crop(x.shape, weight.shape, stride, dilation, pairs, out_shape)
    g, (s, _), threads = _planned("forward", x.shape, _kept_shape(weight.shape, cropped),
                                  stride, dilation, groups,
                                  pairs if cropped is None else cropped.pairs, out_shape,
                                  x.dtype)
    out4: np.ndarray | None = None
    if s != "numpy" and not _cold.deferred(s, g):
        # on an empty cache, a kernel the helper process compiles is not compiled here: this
        # call runs the NumPy strategy (see _cold)
        with _cold.trying(s, g):
            out4 = _compiled_forward(x, weight, bias, g, s, threads, stride, dilation, groups,
                                     out_shape, pairs, cropped)
    if out4 is None:
        out = _numpy_forward(x, weight, stride, dilation, groups, out_shape, pairs)
        if bias is not None:
            out += bias.reshape((1, -1) + (1,) * len(out_shape))
        return out
    return out4.reshape(x.shape[0], weight.shape[0], *out_shape)


def _compiled_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, g: Geometry,
                      s: str, threads: int, stride: tuple[int, ...], dilation: tuple[int, ...],
                      groups: int, out_shape: tuple[int, ...], pairs: Pairs,
                      cropped: Cropped | None) -> np.ndarray | None:
    """:func:`correlate`'s forward by the planned strategy ``s`` (or the one measured, or
    the one the value checks move it to) on ``g`` (the kernel ``cropped`` where it is): the
    output, ``None`` where the NumPy strategy must serve."""
    if swaps_axes(g):  # its products drop fewer positions along the other axis

        def by_swapping() -> np.ndarray:
            return _swapped(correlate(_swapped(x), _swapped(weight), stride[::-1],
                                      dilation[::-1], groups, out_shape[::-1], pairs[::-1], bias))

        # direct drops no positions: it runs on the planes as they are, if measured faster
        s = measured_strategy(g, "forward", SWAPPED, lambda name: by_swapping() if name == SWAPPED
                              else _timed_forward(name, x, weight, bias, g, cropped))
        if s == SWAPPED:
            return by_swapping()
    s = measured_strategy(g, "forward", s,
                          lambda name: _timed_forward(name, x, weight, bias, g, cropped))
    after = _weight_check_after(s, g, weight.size)
    s = s if after else _checked_forward(s, g, weight)
    out4 = None
    if s != "numpy":
        with _threads_for(work(g, (s,))):
            out4 = _forward_by(s, x, weight, bias, g, cropped)
            if out4 is None:  # Winograd saw an inf or NaN: again without it
                s = _checked_forward(choose(g, "forward", threads, winograd=False)[0], g, weight)
                if s != "numpy":
                    out4 = _forward_by(s, x, weight, bias, g, cropped)
            elif after and not _finite(out4):
                again = _checked_forward(s, g, weight)
                if again != s:  # a non-finite weight met the padding: by bounds instead
                    s = again
                    out4 = (None if s == "numpy"
                            else _forward_by(s, x, weight, bias, g, cropped))
    return out4


def _kept_shape(w_shape: tuple[int, ...], cropped: Cropped | None) -> tuple[int, ...]:
    """The weight's shape with its kernel ``cropped`` (as it is where None)."""
    return tuple(w_shape) if cropped is None else (*w_shape[:2], *cropped.kernel())


def _forward_by(s: str, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                g: Geometry, cropped: Cropped | None) -> np.ndarray | None:
    """The forward strategy ``s`` on ``g``; a ``cropped`` kernel's taps copied out for it,
    or, by ``direct``, packed from the whole weight in place
    (:func:`convlayers.functional._engine_direct.forward_window`: a 160x497x6x6 weight cropped
    to 4x4 took 0.64 ms to copy, and 1.1 ms in all by the window against 1.55 by the copy and
    im2col; torch 0.93)."""
    if cropped is None:
        return _FORWARD[s](_as_4d(x), _as_4d(weight), bias, g)
    if s == "direct":
        starts = (0, *cropped.starts) if len(cropped.starts) == 1 else cropped.starts
        return forward_window(_as_4d(x), _as_4d(weight), bias, g,
                              (starts[0], starts[1], g.kh, g.kw))
    return _FORWARD[s](_as_4d(x), _as_4d(cropped.weight(weight)), bias, g)


def ready_forward(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    out_shape: tuple[int, ...],
    pairs: Pairs,
    dtype: Any,
) -> Runner | None:
    """A runner for later :func:`correlate` calls with these shapes, zero padding ``pairs``
    and the current settings (:mod:`convlayers.functional._ready`): the planned (or measured)
    strategy's forward on the threads it was planned for, with the value checks of the full
    path; ``None`` while the strategy is still to be measured. A call the full path runs by
    stride phases or the NumPy strategy gets :func:`_ready.declining`."""
    if x_shape[0] == 0 or planned_reduction(x_shape, w_shape, stride, dilation, pairs,
                                        out_shape) is not None:
        return declining
    cropped = planned_crop(x_shape, w_shape, stride, dilation, pairs, out_shape)
    if cropped is not None:  # as correlate: the runner of the cropped kernel
        kept = _kept_shape(w_shape, cropped)
        g, (s, _), _ = _planned("forward", x_shape, kept, stride, dilation, groups,
                                cropped.pairs, out_shape, dtype)
        if (remembered_choice(g) or s) == "direct":
            if _cold.pending():  # as below
                return None
            return _ready_direct_window(g, cropped, (x_shape[0], w_shape[0], *out_shape),
                                        len(x_shape) == 3)
        return _taking_whole_weights(ready_forward(
            x_shape, kept, stride, dilation, groups, out_shape, cropped.pairs, dtype), cropped)
    g, (s, _), threads = _planned("forward", x_shape, w_shape, stride, dilation, groups,
                                  pairs, out_shape, dtype)
    if _cold.pending():  # a kernel still compiling in the helper: the full path, for now
        return None
    if swaps_axes(g):
        s = SWAPPED
    if unsure(g, s):  # as measured, once it is
        found = remembered_choice(g)
        if found is None:
            return None
        s = found
    if s == SWAPPED:
        return _ready_swapped(x_shape, w_shape, stride, dilation, groups, out_shape, pairs, dtype)
    if s == "numpy":
        return declining
    after = _weight_check_after(s, g, math.prod(w_shape))
    before = (not after and g.padded and s in _PADDING_TIMES_WEIGHTS
              and config.engine.check_values)
    macs = work(g, (s,))
    serial = macs < config.engine.serial_macs
    ready = _READY_FORWARD.get(s)
    strategy = _FORWARD[s]
    forward = (ready(g, 1 if serial else threads) if ready is not None
               else lambda x4, w4, bias: strategy(x4, w4, bias, g))
    full_shape = (x_shape[0], w_shape[0], *out_shape)
    flat = len(x_shape) == 3  # 1-D: run as one row

    # as in ready_input_grad: a serial implicit GEMM needs no thread setting, nor does the
    # serial twin of the 1x1 kernel, nor a lowered pass of slab units (lowered_alone)
    alone = serial and (s == "implicit" or (s == "pointwise" and ready_alone(g))
                        or (s == "lowered" and lowered_alone(g, "forward")))

    def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray | None:
        if before and not _finite(weight):
            return None
        x4 = np.ascontiguousarray(x[:, :, None, :] if flat else x)
        w4 = np.ascontiguousarray(weight[:, :, None, :] if flat else weight)
        if alone:
            out4 = forward(x4, w4, bias)
        else:
            with _threads_for(macs):
                out4 = forward(x4, w4, bias)
        if out4 is None or (after and not _finite(out4)):
            return None
        return out4.reshape(full_shape)

    return run


def ready_input_grad(
    grad_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    padded_shape: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    pairs: Pairs | None,
    dtype: Any,
) -> Runner | None:
    """As :func:`ready_forward`, for :func:`correlate_input_grad` (a transposed
    convolution's forward) plus a bias (``C_in`` entries) on its output: ``runner(grad,
    weight, bias)``, ``None`` from it where the full path must run (a non-finite weight its
    strategy cannot take); ``None`` itself while the strategy is still to be measured, and
    :func:`_ready.declining` for the NumPy strategy. The implicit GEMM's stride-1 gradient
    is worked out once and adds the bias in its kernel (:func:`_engine_implicit.
    ready_implicit_input_grad`)."""
    n = grad_shape[0]
    c_in = w_shape[1] * groups
    if n == 0:
        return declining
    cropped = planned_crop((n, c_in, *padded_shape), w_shape, stride, dilation, pairs,
                           grad_shape[2:])
    if cropped is not None:  # as correlate_input_grad: the runner of the cropped kernel
        return _taking_whole_weights(ready_input_grad(
            grad_shape, _kept_shape(w_shape, cropped), padded_shape, stride, dilation, groups,
            cropped.pairs, dtype), cropped)
    g, (s, _), _ = _planned("input_grad", (n, c_in, *padded_shape), w_shape, stride, dilation,
                            groups, pairs, grad_shape[2:], dtype)
    if _cold.pending():  # as ready_forward
        return None
    if unsure(g, s, "input_grad"):
        found = remembered_choice(g, "input_grad")
        if found is None:
            return None
        s = found
    if s == "numpy":
        return declining
    check = s in ("depthwise-planar", "implicit") and config.engine.check_values
    macs = work(g, (s,))
    full_shape = (n, c_in, *padded_shape)
    # a serial implicit GEMM runs no parallel region (one scratch row), so it needs no thread
    # setting either: entering and leaving one took 1-2 us of a 15 us call; nor does a lowered
    # pass of slab units planned for one thread (lowered_alone)
    alone = False
    if s == "lowered" or (s == "implicit" and g.sh == g.sw == 1):
        threads = 1 if macs < config.engine.serial_macs else numba_threads()
        alone = threads == 1 and (s == "implicit" or lowered_alone(g, "input_grad"))
        input_grad = (ready_lowered_input_grad if s == "lowered"
                      else ready_implicit_input_grad)(g, threads)
    else:
        strategy = _INPUT_GRAD[s]

        def input_grad(grad: np.ndarray, weight: np.ndarray,
                       bias: np.ndarray | None) -> np.ndarray:
            out = strategy(grad, weight, g)  # (N, C_in, H, W), a 1-D call's too
            if bias is not None:
                out += bias.reshape(1, -1, 1, 1)
            return out

    def run(grad: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray | None:
        if check and not _finite(weight):
            return None
        if alone:
            return input_grad(_as_4d(grad), _as_4d(weight), bias).reshape(full_shape)
        with _threads_for(macs):
            gx4 = input_grad(_as_4d(grad), _as_4d(weight), bias)
        return gx4.reshape(full_shape)

    return run


def _ready_direct_window(g: Geometry, cropped: Cropped, full_shape: tuple[int, ...],
                         flat: bool) -> Runner:
    """The runner of a call whose kernel is ``cropped`` and whose forward is ``direct``: its
    taps packed from the whole weight in place (:func:`_engine_direct.forward_window`), the
    output checked (an inf or NaN anywhere: the full path answers). The full path's Python
    took 20-40 us a call, which the measurement (of the strategy alone) never saw: 14 -> 139
    6x6 stride 3 dilation 3 on 25x14x9x14 measured ``direct`` faster than im2col and then ran
    1.34-1.43x torch's time against im2col's 1.11x."""
    starts = (0, *cropped.starts) if len(cropped.starts) == 1 else cropped.starts
    window = (starts[0], starts[1], g.kh, g.kw)
    macs = work(g, ("direct",))

    def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray | None:
        x4 = np.ascontiguousarray(x[:, :, None, :] if flat else x)
        w4 = np.ascontiguousarray(weight[:, :, None, :] if flat else weight)
        with _threads_for(macs):
            out4 = forward_window(x4, w4, bias, g, window)
        if not _finite(out4):
            return None
        return out4.reshape(full_shape)

    return run


def _taking_whole_weights(inner: Runner | None, cropped: Cropped) -> Runner | None:
    """The runner of a call whose kernel is ``cropped``, from ``inner`` (the cropped call's
    runner): it takes the whole weight and hands ``inner`` the kept taps. ``None`` and
    :func:`_ready.declining` as they are."""
    if inner is None or inner is declining:
        return inner

    def run(a: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray | None:
        return inner(a, cropped.weight(weight), bias)

    return run


def _ready_swapped(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, ...],
                   dilation: tuple[int, ...], groups: int, out_shape: tuple[int, ...],
                   pairs: Pairs, dtype: Any) -> Runner | None:
    """:func:`ready_forward` of a call that runs on its planes transposed: the transposed
    call's runner between two transposes."""
    inner = ready_forward((*x_shape[:2], *x_shape[:1:-1]), (*w_shape[:2], *w_shape[:1:-1]),
                          stride[::-1], dilation[::-1], groups, out_shape[::-1], pairs[::-1],
                          dtype)
    if inner is None or inner is declining:
        return inner

    def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray | None:
        out = inner(_swapped(x), _swapped(weight), bias)
        return None if out is None else _swapped(out)

    return run


#: ``runner(x, grad, weight)``: :func:`correlate_backward`'s ``(grad_input, grad_weight)``,
#: or ``None`` where the full path must run.
BackwardRunner = Callable[[np.ndarray, np.ndarray, np.ndarray],
                          "tuple[np.ndarray, np.ndarray] | None"]


def declining_backward(x: np.ndarray, grad: np.ndarray,
                        weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The backward runner of a call that always takes the full path."""
    return None


def ready_backward(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    grad_shape: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    pairs: Pairs,
    dtype: Any,
) -> BackwardRunner | None:
    """As :func:`ready_forward`, for :func:`correlate_backward`: ``runner(x, grad, weight)``
    runs the planned (or measured) gradient strategies on the planned threads, with the value
    checks of the full path, and returns ``None`` where one of them would change a strategy
    (or Winograd declines). ``None`` itself while a strategy is still to be measured or a
    kernel compiles in the helper; a call the full path runs by stride phases, a cropped
    kernel, swapped axes or the NumPy strategy declines always. A small layer's gradients
    spent 60-80 us planning in Python on every call (torch's whole backward: 30-50)."""
    if x_shape[0] == 0 or planned_reduction(x_shape, w_shape, stride, dilation, pairs,
                                            grad_shape[2:]) is not None \
            or planned_crop(x_shape, w_shape, stride, dilation, pairs,
                            grad_shape[2:]) is not None:
        return declining_backward
    g, ss, _ = _planned("backward", x_shape, w_shape, stride, dilation, groups, pairs,
                        grad_shape[2:], dtype)
    if swaps_axes(g) or "numpy" in ss:
        return declining_backward
    if _cold.pending():
        return None
    sx, sw = ss
    joint = sx == sw and sx in JOINT
    if not joint:
        found_x = remembered_choice(g, "input_grad") if unsure(g, sx, "input_grad") else sx
        found_w = remembered_choice(g, "weight_grad") if unsure(g, sw, "weight_grad") else sw
        if found_x is None or found_w is None:
            return None
        sx, sw = found_x, found_w
    # _checked_backward and _checked_weight_grad: a value that would move a strategy
    check_w = sx in ("depthwise-planar", "implicit") and config.engine.check_values
    check_x = not joint and sw == "implicit" and config.engine.check_values
    macs = work(g, ss)  # as correlate_backward: the planned pair sets the threads
    input_grad, weight_grad = _INPUT_GRAD.get(sx), _WEIGHT_GRAD.get(sw)
    joint_grads = _BACKWARD.get(sx)

    def run(x: np.ndarray, grad: np.ndarray,
            weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if (check_w and not _finite(weight)) or (check_x and not _finite(x)):
            return None
        with _threads_for(macs):
            if joint:
                assert joint_grads is not None
                grads = joint_grads(_as_4d(x), _as_4d(grad), _as_4d(weight), g)
                if grads is None:  # Winograd saw an inf or NaN
                    return None
                return grads[0].reshape(x_shape), grads[1].reshape(w_shape)
            assert input_grad is not None and weight_grad is not None
            gx = input_grad(_as_4d(grad), _as_4d(weight), g).reshape(x_shape)
            gw = weight_grad(_as_4d(x), _as_4d(grad), g).reshape(w_shape)
        return gx, gw

    return run


def declining_weight_grad(xp: np.ndarray, grad: np.ndarray) -> np.ndarray | None:
    """The weight-gradient runner of a call that always takes the full path."""
    return None


def ready_weight_grad(
    xp_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    grad_shape: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    dtype: Any,
) -> Callable[[np.ndarray, np.ndarray], np.ndarray | None] | None:
    """As :func:`ready_backward`, for :func:`correlate_weight_grad` of a padded input:
    ``runner(xp, grad)``, ``None`` from it where the input check would move the strategy;
    ``None`` itself while a kernel compiles in the helper; :func:`declining_weight_grad`
    for the NumPy strategy."""
    g, (s, _), _ = _planned("weight_grad", xp_shape, w_shape, stride, dilation, groups, None,
                            grad_shape[2:], dtype)
    if s not in _WEIGHT_GRAD:
        return declining_weight_grad
    if _cold.pending():
        return None
    check = s == "implicit" and config.engine.check_values  # as _checked_weight_grad
    macs = work(g, (s,))
    weight_grad = _WEIGHT_GRAD[s]

    def run(xp: np.ndarray, grad: np.ndarray) -> np.ndarray | None:
        if check and not _finite(xp):
            return None
        with _threads_for(macs):
            return weight_grad(_as_4d(xp), _as_4d(grad), g).reshape(w_shape)

    return run


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
    reduced = planned_reduction(x.shape, weight.shape, stride, dilation, pairs, grad.shape[2:])
    if reduced is not None:  # as the forward: the phase, its input gradient put back
        gx, gw = correlate_backward(reduced.take(x), grad, weight, reduced.pairs,
                                    reduced.stride, reduced.dilation, groups)
        return reduced.put(gx, x.shape), gw
    cropped = planned_crop(x.shape, weight.shape, stride, dilation, pairs, grad.shape[2:])
    if cropped is not None:  # as the forward: the dropped taps' gradient is zero
        gx, gw = correlate_backward(x, grad, cropped.weight(weight), cropped.pairs, stride,
                                    dilation, groups)
        return gx, cropped.weight_grad(gw, weight.shape)
    g, ss, threads = _planned("backward", x.shape, weight.shape, stride, dilation, groups, pairs,
                              grad.shape[2:], x.dtype)
    if swaps_axes(g):  # as the forward
        gx, gw = correlate_backward(_swapped(x), _swapped(grad), _swapped(weight), pairs[::-1],
                                    stride[::-1], dilation[::-1], groups)
        return _swapped(gx), _swapped(gw)
    label = f"{ss[0]}+{ss[1]} backward"
    if "numpy" not in ss and not _cold.deferred(label, g):
        # as the forward: on an empty cache, the gradient kernels the helper compiles are not
        # compiled here (see _cold)
        # both gradients; small ones on one thread, as the forward
        with _cold.trying(label, g), _threads_for(work(g, ss)):
            return _backward(x, grad, weight, pairs, stride, dilation, groups, g, ss, threads)
    if "numpy" not in ss:  # a kernel still compiling in the helper: by the NumPy strategy
        return (_numpy_input_grad(grad, weight, x.shape[2:], stride, dilation, groups, pairs),
                _numpy_weight_grad(x, grad, tuple(weight.shape[2:]), stride, dilation, groups,
                                   pairs))
    with _threads_for(work(g, ss)):
        return _backward(x, grad, weight, pairs, stride, dilation, groups, g, ss, threads)


def _backward(x: np.ndarray, grad: np.ndarray, weight: np.ndarray, pairs: Pairs,
              stride: tuple[int, ...], dilation: tuple[int, ...], groups: int, g: Geometry,
              ss: tuple[str, str], threads: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`correlate_backward` once planned; the gradients of a dense layer measured apart
    (on the threads of the planned pair: :mod:`convlayers.functional._measured`)."""
    sx, sw = ss
    if not (sx == sw and sx in JOINT):
        sx = measured_strategy(g, "input_grad", sx,
                               lambda name: _INPUT_GRAD[name](_as_4d(grad), _as_4d(weight), g))
        sw = measured_strategy(g, "weight_grad", sw,
                               lambda name: _WEIGHT_GRAD[name](_as_4d(x), _as_4d(grad), g))
    sx, sw = _checked_backward((sx, sw), weight)
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
    sw = _checked_weight_grad(sw, x)
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
    pairs: Pairs | None = None,
) -> np.ndarray:
    """Gradient of :func:`correlate` with respect to its input ``(N, C_in, *padded_shape)``
    (padded, or unpadded with zero padding ``pairs`` per spatial axis: the gradient of the
    padding is never made)."""
    n = grad.shape[0]
    c_in = weight.shape[1] * groups
    if n == 0:
        return np.zeros((0, c_in, *padded_shape), dtype=grad.dtype)
    cropped = planned_crop((n, c_in, *padded_shape), weight.shape, stride, dilation, pairs,
                           grad.shape[2:])
    if cropped is not None:  # as the forward
        return correlate_input_grad(grad, cropped.weight(weight), padded_shape, stride,
                                    dilation, groups, cropped.pairs)
    g, (s, _), _ = _planned("input_grad", (n, c_in, *padded_shape), weight.shape, stride,
                            dilation, groups, pairs, grad.shape[2:], grad.dtype)
    if s == "numpy":
        return _numpy_input_grad(grad, weight, padded_shape, stride, dilation, groups, pairs)
    label = f"{s} input_grad"
    if not _cold.deferred(label, g):
        with _cold.trying(label, g):  # as the forward (see _cold)
            s = measured_strategy(g, "input_grad", s,
                                  lambda name: _timed_input_grad(name, grad, weight, g))
            s = _checked_backward((s, s), weight)[0]
            with _threads_for(work(g, (s,))):
                gx4 = _INPUT_GRAD[s](_as_4d(grad), _as_4d(weight), g)
            return gx4.reshape(n, c_in, *padded_shape)
    return _numpy_input_grad(grad, weight, padded_shape, stride, dilation, groups, pairs)


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
    label = f"{s} weight_grad"
    if not _cold.deferred(label, g):
        with _cold.trying(label, g):  # as the forward (see _cold)
            s = _checked_weight_grad(s, xp)
            with _threads_for(work(g, (s,))):
                return _WEIGHT_GRAD[s](_as_4d(xp), _as_4d(grad), g).reshape(w_shape)
    return _numpy_weight_grad(xp, grad, kernel, stride, dilation, groups, None)


def cropped_weight_grad(
    x: np.ndarray,
    grad: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    pairs: Pairs,
) -> np.ndarray:
    """:func:`correlate_weight_grad` of ``x`` with zero padding ``pairs`` whose products with
    the padding are no terms at all: a transposed convolution's weight gradient (``x`` its
    output gradient, ``grad`` its input), whose output the padding crops. Where ``grad``
    holds an inf or NaN, the NumPy strategy sums the windows inside ``x`` only (an inf input
    times the zero padding made NaN where no term is); otherwise the padded copy goes to the
    planned strategy."""
    if any(a or b for a, b in pairs) and config.engine.check_values and not _finite(grad):
        return _numpy_weight_grad(x, grad, kernel, stride, dilation, groups, pairs)
    return correlate_weight_grad(pad_pairs(x, pairs), grad, kernel, stride, dilation, groups)


# ----------------------------------------------------------------------------- the tables

_FORWARD: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray | None, Geometry],
                             np.ndarray | None]] = {
    "winograd": _fwd_winograd,
    "depthwise-flat": _fwd_depthwise_flat,
    "depthwise-planar": _fwd_depthwise_planar,
    "depthwise-rows": _fwd_depthwise_rows,
    "depthwise-channels-last": _fwd_depthwise_channels_last,
    "pointwise": _fwd_pointwise,
    "implicit": _fwd_implicit,
    "lowered": _fwd_lowered,
    "direct": _fwd_direct,
    "direct-planar": _fwd_direct_planar,
    "dot": _fwd_dot,
}

#: Forwards that work out their units once for :func:`ready_forward` (the others run as in
#: :func:`correlate`).
_READY_FORWARD = {"pointwise": ready_pointwise, "implicit": ready_implicit,
                  "lowered": ready_lowered, "direct": ready_direct}

_BACKWARD: dict[str, Callable[..., tuple[np.ndarray, np.ndarray] | None]] = {
    "winograd": _bwd_winograd,
    "depthwise-flat": _bwd_depthwise("flat"),
    "depthwise-planar": _bwd_depthwise("planar"),
    "depthwise-rows": _bwd_depthwise("rows"),
    "depthwise-channels-last": _bwd_depthwise_channels_last,
}

_INPUT_GRAD: dict[str, Callable[[np.ndarray, np.ndarray, Geometry], np.ndarray]] = {
    "depthwise-planar": _gx_depthwise_planar,
    "depthwise-rows": _gx_depthwise_rows,
    "pointwise": _gx_pointwise,
    "implicit": _gx_implicit,
    "lowered": _gx_lowered,
    # a stride-1 input gradient as the forward of the flipped weights
    **{name: flipped_input_grad(_FORWARD[name]) for name in FLIPPED_FORWARDS},
}

_WEIGHT_GRAD: dict[str, Callable[[np.ndarray, np.ndarray, Geometry], np.ndarray]] = {
    "depthwise-planar": _gw_depthwise_planar,
    "depthwise-rows": _gw_depthwise_rows,
    "pointwise": _gw_pointwise,
    "implicit": _gw_implicit,
    "lowered": _gw_lowered,
    "direct": _gw_direct,
}
