"""One-time measurements of a layer's strategy where the planner cannot be sure.

The planner weighs the implicit GEMM (the positions it computes and drops) against im2col (the
values it copies) by :func:`convlayers.functional.plan._implicit_pays`. Near the break-even the
model guesses: on 100 random strided layers of one or two images its choice ran 1.3-2.2x
slower than the other strategy on a fifth of them, in both directions (a 140->208 6x6 stride-3
layer at batch 1 took 1.37x on the implicit GEMM it chose; a 17->198 5x5 one 1.14x on im2col).
Its gradient rules have no cost model at all: on 97 random layers of the sweep's space (each
strategy's best of five interleaved runs) their input gradient ran 1.026x the faster one's
time (geo-mean), 1.1-1.9x on 7 of them (493->38 5x5 on 1x493x17x17: 1.50 ms by the implicit
GEMM, 1.12 lowered); their weight gradient 1.015x (up to 1.25x). And a dense forward of many
channels may run faster still on the channels-last ``direct`` kernel, whose transposes and
weight packing no simple model prices, and one of few output channels or positions on the
``dot`` kernel (vectors along the input channels, the taps in the padding skipped). The
depthwise rules are guesses too: between the channels-last and planar kernels, and for a
channel multiplier between the implicit GEMM and the planar kernels.

A pass of at least ``config.engine.measure_min_macs`` multiply-adds runs its
:func:`candidates` three times each (up to nine while that is quick), alternating, times them,
and keeps the fastest for every later call of that geometry, settings and thread count:
remembered in this process only (:func:`measured_choices`), never on disk. The candidates: a
forward's planned strategy, the other of implicit and lowered where the model's two costs are
within ``config.engine.measure_band`` of each other, ``direct`` where it serves (one group,
float32, 16 input channels or more; a forward the planner runs on swapped axes is measured
against ``direct`` on its planes as given) and ``dot`` where it may pay; a depthwise forward's
channels-last and planar kernels where both serve, a multiplier's planar kernels beside the
implicit GEMM and im2col; a gradient's implicit and lowered (a transposed convolution's
forward is an input gradient). A gradient is measured on its first call, and so
is a forward while training (autograd's recorded forwards and the gradient functions run in
:func:`on_first_call`): every step of a training run then takes one strategy per layer, and
two runs with the same seed in one process give the same weights. Any other forward is
measured on its second call, its first taking the planner's choice, so that a one-off call (a
summary, a first inference on an empty numba cache) compiles one strategy, not three:
MobileNetV2's first forward on an empty cache took 19.3 s this way, 26.3 s measuring on it.
The strategies agree up to the order of their sums, so a layer's result can differ in its last
bits between its first and later calls outside training, and between processes where the
measurement went one way in one and the other in another; ``config.engine.measure_band = 1``
(or forcing a strategy) turns measuring off.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from convlayers import config
from convlayers.functional import _ready
from convlayers.functional._engine_direct import direct_planar_pays, skips_padding
from convlayers.functional.plan import (
    Geometry,
    cannot_serve,
    channels_last_serves,
    dense_position_costs,
    multiplier_forward,
    planar_fits,
)

__all__ = ["SWAPPED", "candidates", "forget_measurements", "measured_choices", "measured_strategy",
           "on_first_call", "remembered_choice", "unsure"]

#: Whether a forward measures on its first call: while training (:func:`on_first_call`).
_FIRST_CALL: ContextVar[bool] = ContextVar("convlayers_measure_first_call", default=False)
#: The faster strategy per (pass, geometry, engine settings, threads), measured.
_CHOICES: dict[tuple[Any, ...], str] = {}
#: The strategies the planner's rules pick between for a dense or grouped pass.
_PAIR = ("implicit", "lowered")
#: The depthwise forwards (no multiplier) measured against each other where both serve: the
#: planner's rule between them (planes, pixels, block bytes) fits the layers it was tuned on,
#: not each (40 channels 4x4 stride 3 on 8x40x37x37, 320 planes of 12x12: 1.18x torch's
#: time planar, by the rule, 0.70x channels-last).
_DEPTHWISE_PAIR = ("depthwise-channels-last", "depthwise-planar")
#: The planner's choice of a forward it runs on transposed planes (``plan.swaps_axes``):
#: measured, where ``direct`` serves, against ``direct`` on the planes as they are.
SWAPPED = "swapped"


def candidates(g: Geometry, strategy: str, pass_: str = "forward") -> tuple[str, ...]:
    """The strategies measured against each other for ``pass_`` (``forward``, ``input_grad``
    or ``weight_grad``) of ``g`` planned ``strategy``; empty when the plan is kept unmeasured.

    Measured: a 2-D pass planned ``implicit`` or ``lowered`` (dense, grouped, or depthwise
    with a channel multiplier; or a forward planned on swapped axes, :data:`SWAPPED`), of
    ``measure_min_macs`` or more, no strategy forced. Its candidates: for a dense or grouped
    forward, the planned strategy, the other one too where the two costs (per output
    position: ``C_out/g * wq`` against ``(C_out/g + price) * wo``) are within
    ``measure_band`` of each other (:func:`convlayers.functional.plan.dense_position_costs`),
    ``direct`` where it serves (one group, float32) on ``config.engine.direct_min_channels``
    input channels or more, or on fewer where it skips the padding's taps
    (:func:`convlayers.functional._engine_direct.skips_padding`), and ``dot`` on
    ``dot_min_in_channels`` or more input channels a group and at most
    ``dot_max_out_channels`` output channels a group or ``dot_max_positions`` output positions
    an image (:mod:`convlayers.functional._engine_dot`); for a multiplier's
    forward (which the model does not price: 24->96 1x5 stride 2 on 32x24x13x13 ran 0.52 ms
    by the implicit GEMM it plans, 0.36 lowered, torch 0.36) and for a gradient, both; a
    dense, grouped or multiplier's 1x1 forward with a stride, planned ``pointwise``, against
    the implicit GEMM (:data:`_STRIDED_POINTWISE`); and a multiplier's forward against the
    planar depthwise kernels too, where their scratch fits (the planner's rule takes the
    implicit GEMM, 0.84x their time over 48 strided layers, geo-mean, but not on each:
    153->459 3x6 stride 2 dilation 3 on 4x153x22x22 ran 0.71x torch's time by the implicit
    GEMM, 0.34x planar; 177->531 2x2 stride 2 on 24x177x16x16 1.03x, 0.45x). A stride-1
    input gradient (a stride-1 transposed convolution's forward) also against Winograd and
    ``direct`` as forwards of the flipped weights
    (:data:`convlayers.functional.plan.FLIPPED_FORWARDS`), where they serve and their
    channels reach ``winograd_min_channels`` and ``direct_min_channels`` (Winograd not where
    ``winograd_backward`` is False). A dense float32 weight gradient also against ``direct``
    (:mod:`convlayers.kernels.direct_grad`, no im2col: 202 -> 11 7x7 dilation 3 padding 9 on
    1x202x28x28 took 7.0x torch's time by the implicit GEMM the plan picked, 3.4x by im2col,
    1.2x direct). Remembered per geometry and settings (every call asks)."""
    return _candidates(g, strategy, pass_, config.engine_version())


@functools.lru_cache(maxsize=1024)
def _candidates(g: Geometry, strategy: str, pass_: str, version: int) -> tuple[str, ...]:
    e = config.engine
    if (e.force is not None or e.measure_band <= 1 or g.spatial != 2
            or g.macs < e.measure_min_macs):
        return ()
    if strategy == "pointwise":
        return _STRIDED_POINTWISE if pass_ == "forward" and _strided_pointwise(g) else ()
    if strategy in _DEPTHWISE_PAIR:  # (channels_last_serves: depthwise, no multiplier)
        both = pass_ == "forward" and channels_last_serves(g) and planar_fits(g)
        return _DEPTHWISE_PAIR if both else ()
    if strategy not in (*_PAIR, SWAPPED):
        return ()
    if strategy == SWAPPED:
        found: tuple[str, ...] = (SWAPPED,)
    else:
        found = tuple(s for s in _PAIR if cannot_serve(s, g, pass_) is None)
        if pass_ == "forward" and g.c_in_g > 1:  # the model prices dense and grouped layers
            implicit, lowered = dense_position_costs(g)
            if not 1 / e.measure_band <= implicit / lowered <= e.measure_band:
                found = (strategy,)
    if (pass_ == "forward" and cannot_serve("direct", g, pass_) is None
            and (g.c_in >= e.direct_min_channels or skips_padding(g))):
        found += ("direct",)
    if (pass_ == "forward" and cannot_serve("direct-planar", g, pass_) is None
            and direct_planar_pays(g)):
        found += ("direct-planar",)
    if pass_ == "input_grad" and g.sh == g.sw == 1:
        # the forward of the flipped weights (plan.full_geometry): its input channels are
        # the layer's output channels
        if (g.c_out_g >= e.winograd_min_channels and g.c_in_g >= e.winograd_min_channels
                and e.winograd_backward is not False
                and cannot_serve("winograd", g, pass_) is None):
            found += ("winograd",)
        if g.c_out >= e.direct_min_channels and cannot_serve("direct", g, pass_) is None:
            found += ("direct",)
    if pass_ == "weight_grad" and cannot_serve("direct", g, pass_) is None:
        found += ("direct",)
    if (pass_ == "forward" and g.c_in_g >= e.dot_min_in_channels
            and (g.c_out_g <= e.dot_max_out_channels or g.ho * g.wo <= e.dot_max_positions)
            and cannot_serve("dot", g, pass_) is None):
        found += ("dot",)
    if pass_ == "forward" and multiplier_forward(g) and planar_fits(g):
        found += ("depthwise-planar",)
    return found if len(found) > 1 and strategy in found else ()


#: A strided 1x1 forward's candidates: the 1x1 kernels (which gather the strided columns)
#: and the implicit GEMM (which copies the phase it reads into its slab once). Neither wins by
#: a rule: on 9 strided 1x1 layers (groups 1-32, batches 2-25) the implicit GEMM took
#: 0.48-0.88x the 1x1 kernels' time on five (376->64 groups 4 at stride 2 on 25x376x23x23:
#: 2.1x torch's time -> 0.6x), 1.1-2.7x on four (448->288 groups 32: 0.23x torch's time
#: on the 1x1 kernels).
_STRIDED_POINTWISE = ("pointwise", "implicit")


def _strided_pointwise(g: Geometry) -> bool:
    """Whether ``g`` is a dense or grouped 1x1 convolution with a stride, or a depthwise one
    with a channel multiplier (131 -> 262 at stride 2 on 2x131x46x30: 1.44x torch's time on
    the 1x1 kernels, 0.85x by the implicit GEMM); depthwise 1x1 layers without one scale
    channels, on the 1x1 kernels only."""
    return (g.kh == g.kw == 1 and (g.c_in_g > 1 or g.c_out_g > 1)
            and (g.sh > 1 or g.sw > 1))


@contextmanager
def on_first_call() -> Iterator[None]:
    """Within it, a forward measures on its first call, as the gradients always do: autograd's
    recorded forwards and the gradient functions run in it, so that every step of a training
    run takes one strategy per layer."""
    token = _FIRST_CALL.set(True)
    try:
        yield
    finally:
        _FIRST_CALL.reset(token)


def unsure(g: Geometry, strategy: str, pass_: str = "forward") -> bool:
    """Whether the planner's choice ``strategy`` for ``pass_`` of ``g`` is measured
    (:func:`candidates`)."""
    return bool(candidates(g, strategy, pass_))


def measured_strategy(g: Geometry, pass_: str, strategy: str, run: Callable[[str], Any]) -> str:
    """The strategy of ``pass_`` for ``g``: ``strategy`` (the planner's) unless
    :func:`unsure`, then the fastest of :func:`candidates` as measured by ``run(name)``
    (``config.engine.measure_rounds`` calls each, alternating; the first round may load or
    compile kernels, so the rounds after it decide how many: fewer, two at least, once they
    took ``measure_budget_ms``, more up to ``measure_max_rounds`` while they took under
    ``measure_quick_ms`` at their pace; from the second round a run of under
    ``measure_warm_ms`` follows an untimed one of the same strategy; the shortest of each
    kept; another strategy only when
    ``measure_tie_percent`` faster than the planner's), remembered: a gradient on its first call, a
    forward on its second (its first takes ``strategy``), or its first in
    :func:`on_first_call`."""
    names = candidates(g, strategy, pass_)
    if not names:
        return strategy
    key = (pass_, g, config.engine_version(), config.threads())
    best = _CHOICES.get(key)
    if best is None and len(_CHOICES) >= 4096:
        _CHOICES.clear()
    if best is None and pass_ == "forward" and not _FIRST_CALL.get():
        _CHOICES[key] = ""  # a one-off call compiles and runs one strategy
        return strategy
    if not best:
        times = dict.fromkeys(names, float("inf"))
        e = config.engine
        first = time.perf_counter()
        for done in range(1, e.measure_max_rounds + 1):
            for name in names:
                if done > 1 and times[name] < e.measure_warm_ms / 1000:
                    run(name)  # untimed: its state warm, as after a call of itself
                start = time.perf_counter()
                run(name)
                times[name] = min(times[name], time.perf_counter() - start)
            now = time.perf_counter()
            if done == 1:
                first = now
                continue
            # the rounds after the first say whether the layer is large or quick: a strategy's
            # first call in a process may load or compile its kernels and build its layout
            # (0.68 s for ``direct`` by classes). Counted from the first, a batch-1 input
            # gradient (207 -> 507 5x5 stride 2) spent its budget there and kept the implicit
            # GEMM by its loading time, 4.4x the lowered one's time, and a 3x84x9x9 layer
            # measured in the sweep after a compile kept im2col at 2.9x torch's time (dot: 0.5x)
            steady = now - first
            if steady > e.measure_budget_ms / 1000:
                break  # a large layer: the runs so far decide
            pace = steady / (done - 1)
            if done >= e.measure_rounds and pace * done > e.measure_quick_ms / 1000:
                break  # more rounds only for quick layers
        other = min((name for name in names if name != strategy), key=times.__getitem__)
        faster = times[other] < (1 - e.measure_tie_percent / 100) * times[strategy]
        best = other if faster else strategy
        _CHOICES[key] = best
    return best


def remembered_choice(g: Geometry, pass_: str = "forward") -> str | None:
    """The measured strategy of ``pass_`` of ``g`` under the current settings, if any."""
    return _CHOICES.get((pass_, g, config.engine_version(), config.threads())) or None


def measured_choices() -> dict[tuple[Any, ...], str]:
    """The strategies measured so far in this process (a copy).

    Returns
    -------
    dict
        ``{(pass, geometry, engine settings version, threads): strategy}``, the pass
        ``"forward"``, ``"input_grad"`` or ``"weight_grad"``, the strategy ``"implicit"``,
        ``"lowered"``, ``"direct"``, ``"dot"``, ``"pointwise"`` or :data:`SWAPPED`; forwards
        called once outside training
        (not measured yet) are left out.

    Examples
    --------
    >>> import numpy as np
    >>> from convlayers import functional as F
    >>> F.forget_measurements()
    >>> x = np.ones((1, 140, 29, 29), np.float32)
    >>> w = np.ones((208, 140, 6, 6), np.float32)
    >>> for _ in range(2):  # the second call measures the candidates
    ...     y = F.conv2d(x, w, stride=3, padding=2)
    >>> [name in ("implicit", "lowered", "direct", "dot")
    ...  for name in F.measured_choices().values()]
    [True]
    """
    return {key: name for key, name in _CHOICES.items() if name}


def forget_measurements() -> None:
    """Drop every measurement: each layer measures again.

    Examples
    --------
    >>> from convlayers import functional as F
    >>> F.forget_measurements()
    >>> F.measured_choices()
    {}
    """
    _CHOICES.clear()
    _ready.forget()  # the calls remembered whole run measured strategies
