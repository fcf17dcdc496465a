"""One-time measurements of a dense layer's strategy where the planner cannot be sure.

The planner weighs the implicit GEMM (the positions it computes and drops) against im2col (the
values it copies) by :func:`convlayers.functional.plan._implicit_pays`. Near the break-even the
model guesses: on 100 random strided layers of one or two images its choice ran 1.3-2.2x
slower than the other strategy on a fifth of them, in both directions (a 140->208 6x6 stride-3
layer at batch 1 took 1.37x on the implicit GEMM it chose; a 17->198 5x5 one 1.14x on im2col).

Where the two models' costs are within ``config.engine.measure_band`` of each other (and the
call has at least ``config.engine.measure_min_macs`` multiply-adds), the second call of each
geometry runs both strategies three times, times them, and keeps the faster for every later call of
that geometry, settings and thread count: remembered in this process only
(:func:`measured_choices`), never on disk. The first call takes the model's choice, so a
one-off call (a summary, a first forward on an empty numba cache) compiles one strategy, not
two; a model's layers pay the measurement on their second call (on an empty numba cache that
call compiles the other strategy: MobileNetV2's first forward took 19.3 s, its second 4.7 s,
its third 61 ms). The
two strategies agree up to the order of their sums, so a layer's result can differ in its last
bits between processes where the measurement went one way in one and the other in another;
``config.engine.measure_band = 1`` (or forcing a strategy) turns measuring off.

The gradients are measured alike, each pass on its own (the input gradient, which is also a
transposed convolution's forward, and the weight gradient), but on their first call, so that
every step of a training run takes one strategy (two runs with the same seed in one process
give the same weights; backward kernels are compiled by training, where a first step's
compile is paid once), wherever both strategies serve a
dense or grouped 2-D pass of ``measure_min_macs`` or more: the planner's gradient rules have no
cost model to be sure by. On 97 random layers of the sweep's space (each strategy's best of
five interleaved runs) their choice of input gradient ran 1.026x the faster one's time
(geo-mean), 1.1-1.9x on 7 of them (493->38 5x5 on 1x493x17x17: 1.50 ms by the implicit GEMM,
1.12 lowered); their weight gradient 1.015x (up to 1.25x).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from convlayers import config
from convlayers.functional.plan import Geometry, cannot_serve, dense_position_costs

__all__ = ["forget_measurements", "measured_choices", "measured_strategy", "remembered_choice",
           "unsure"]

#: Runs of each candidate per measurement, alternating; the shortest of each counts (a first
#: run may load or compile its kernels, and another process's burst hits one run, not three).
ROUNDS = 3
#: The other strategy replaces the planner's only when it took less than ``1 - TIE`` of its
#: time: a near tie keeps the model's choice, the same in every process.
TIE = 0.05
#: The faster strategy per (pass, geometry, engine settings, threads), measured.
_CHOICES: dict[tuple[Any, ...], str] = {}
_CANDIDATES = ("implicit", "lowered")


def unsure(g: Geometry, strategy: str, pass_: str = "forward") -> bool:
    """Whether the planner's choice ``strategy`` for ``pass_`` (``forward``, ``input_grad`` or
    ``weight_grad``) of ``g`` is measured instead: a dense or grouped 2-D pass planned
    ``implicit`` or ``lowered``, both of which serve it, of ``measure_min_macs`` or more, no
    strategy forced; for the forward, only where the two costs (per output position:
    ``C_out/g * wq`` against ``(C_out/g + price) * wo``) are within ``measure_band`` of each
    other (:func:`convlayers.functional.plan.dense_position_costs`). Remembered per geometry
    and settings (every call asks)."""
    return _unsure(g, strategy, pass_, config.engine_version())


@functools.lru_cache(maxsize=1024)
def _unsure(g: Geometry, strategy: str, pass_: str, version: int) -> bool:
    e = config.engine
    if (strategy not in _CANDIDATES or e.force is not None or e.measure_band <= 1
            or g.spatial != 2 or g.c_in_g == 1 or g.macs < e.measure_min_macs
            or any(cannot_serve(s, g, pass_) for s in _CANDIDATES)):
        return False
    if pass_ != "forward":
        return True
    implicit, lowered = dense_position_costs(g)
    ratio = implicit / lowered
    return 1 / e.measure_band <= ratio <= e.measure_band


def measured_strategy(g: Geometry, pass_: str, strategy: str, run: Callable[[str], Any]) -> str:
    """The strategy of ``pass_`` for ``g``: ``strategy`` (the planner's) unless
    :func:`unsure`, then the faster of ``implicit`` and ``lowered`` as measured by
    ``run(name)`` (:data:`ROUNDS` calls each, alternating, the shortest of each kept; the
    other strategy only when :data:`TIE` faster): a forward on the second call of its
    geometry (the first takes ``strategy``), a gradient on the first."""
    if not unsure(g, strategy, pass_):
        return strategy
    key = (pass_, g, config.engine_version(), config.threads())
    best = _CHOICES.get(key)
    if best is None and len(_CHOICES) >= 4096:
        _CHOICES.clear()
    if best is None and pass_ == "forward":  # a first call: the model's choice, measured next
        _CHOICES[key] = ""
        return strategy
    if not best:
        times = dict.fromkeys(_CANDIDATES, float("inf"))
        for _ in range(ROUNDS):
            for name in _CANDIDATES:
                start = time.perf_counter()
                run(name)
                times[name] = min(times[name], time.perf_counter() - start)
        other = next(name for name in _CANDIDATES if name != strategy)
        best = other if times[other] < (1 - TIE) * times[strategy] else strategy
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
        ``{(pass, geometry, engine settings version, threads): "implicit" or "lowered"}``, the
        pass ``"forward"``, ``"input_grad"`` or ``"weight_grad"``; layers called once (not
        measured yet) are left out.

    Examples
    --------
    >>> import numpy as np
    >>> from convlayers import functional as F
    >>> F.forget_measurements()
    >>> x = np.ones((1, 140, 29, 29), np.float32)
    >>> w = np.ones((208, 140, 6, 6), np.float32)
    >>> for _ in range(2):  # the second call measures implicit against lowered
    ...     y = F.conv2d(x, w, stride=3, padding=2)
    >>> [name in ("implicit", "lowered") for name in F.measured_choices().values()]
    [True]
    """
    return {key: name for key, name in _CHOICES.items() if name}


def forget_measurements() -> None:
    """Drop every measurement: each layer's next two calls measure again.

    Examples
    --------
    >>> from convlayers import functional as F
    >>> F.forget_measurements()
    >>> F.measured_choices()
    {}
    """
    _CHOICES.clear()
