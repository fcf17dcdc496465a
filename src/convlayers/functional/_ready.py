"""Calls remembered whole: a convolution or pooling called again as before skips what it
already worked out.

A small layer's kernel runs in a few microseconds, and before it the public function used to
spend about 15 more in Python on every call: validating and normalising the arguments, checking
the output's size, planning, looking up the measured strategy, choosing the thread count,
working out the kernel's units (a 1x1 layer 10->15 on 1x10x14x14: 19 us a call, torch 5).
Every one of those answers depends only on the shapes and dtypes, the hyper-parameters and the
settings. So a call whose plan is settled leaves a *runner* under that key (built by
:func:`convlayers.functional._engine.ready_forward`, ``ready_input_grad`` for a transposed
convolution, and by :mod:`convlayers.functional.pooling` for a compiled max or average pool),
and a later call with the same key goes straight to it (a max pool of 2x4x23x23: 15 -> 12 us,
torch 8; a transposed convolution 40->3 2x2 on 1x40x20x20: 26 -> 18 us, torch 13).

A runner still reads what depends on the values, as the full path does (the weights checked
for inf and NaN before, or the output after; Winograd's own check). When one of those finds
something, the runner returns ``None`` and the call takes the full path, which stays the one
source of truth: a runner only ever skips work whose answer it already has.

Not remembered: arguments that are not plain ``np.ndarray`` objects, or whose key does not hash
(a NumPy array as ``stride``); padding modes other than zeros; a forward whose strategy is yet
to be measured (until it is: :mod:`convlayers.functional._measured`). Any change of a setting
(:func:`convlayers.config.settings_key`) and :func:`forget` start over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from convlayers import config
from convlayers.functional._common import typed_key

__all__ = ["Runner", "call", "count", "declining", "forget", "key_of", "lookup", "plain_arrays",
           "remember"]

#: ``runner(x, weight, bias)``: the call's output, or ``None`` when the full path must run.
Runner = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], "np.ndarray | None"]

#: At this many runners the table starts over (a process that sees endless new shapes).
SIZE = 4096

#: Runners by key: a convolution's take ``(x, weight, bias)``, a pooling's ``(x,)``.
_runners: dict[Hashable, Callable[..., Any]] = {}
_lock = threading.Lock()


def declining(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> None:
    """The runner of a call that always takes the full path (a NumPy-strategy plan, or a
    stride phase that reads part of the input): remembered so that it is not built again."""
    return None


def lookup(key: Hashable) -> Callable[..., Any] | None:
    """The runner remembered under ``key``, if any (``None`` too for a key that does not hash)."""
    try:
        return _runners.get(key)
    except TypeError:
        return None


def call(key: Hashable | None, n: int, input: np.ndarray,
         *arrays: np.ndarray | None) -> np.ndarray | None:
    """The output of the runner remembered under ``key`` (:func:`key_of`) for ``input`` (and
    ``arrays``, a convolution's weight and bias), or ``None`` (no key, no runner, or it
    declined). An unbatched input (``n + 1`` dims for ``n`` spatial axes) runs as a batch of
    one."""
    if key is None:
        return None
    run = lookup(key)
    if run is None:
        return None
    if input.ndim == n + 2:
        return run(input, *arrays)
    out = run(input[None], *arrays)
    return None if out is None else out[0]


def remember(key: Hashable, runner: Callable[..., Any]) -> None:
    """Keep ``runner`` for later calls with ``key``."""
    try:
        hash(key)
    except TypeError:
        return
    with _lock:
        if len(_runners) >= SIZE:
            _runners.clear()
        _runners[key] = runner


def forget() -> None:
    """Drop every runner (after :func:`convlayers.functional.forget_measurements`: the
    strategies they run were measured)."""
    with _lock:
        _runners.clear()


def count() -> int:
    """How many runners are remembered."""
    return len(_runners)


def key_of(op: str, arrays: tuple[Any, ...], *arguments: Any) -> Hashable | None:
    """The key a call of ``op`` is remembered under: the shape and dtype of each of
    ``arrays`` (``None`` stays ``None``), :func:`typed_key` of each other argument and the
    settings (:func:`convlayers.config.settings_key`); ``None`` when an array is not a plain
    ``np.ndarray`` (:func:`plain_arrays`), so that the call is never remembered."""
    layouts: list[tuple[Any, ...] | None] = []
    for a in arrays:  # plain loops: this runs on every call (0.5 us less than comprehensions)
        if a is None:
            layouts.append(None)
        elif type(a) is np.ndarray:
            layouts.append((a.shape, a.dtype))
        else:
            return None
    return (op, tuple(layouts), tuple(map(typed_key, arguments)), config.settings_key())


def plain_arrays(*arrays: Any) -> bool:
    """Whether each of ``arrays`` is an ``np.ndarray`` itself (no subclass, list or Tensor) or
    ``None``: only those calls are keyed by shape and dtype."""
    return all(a is None or type(a) is np.ndarray for a in arrays)
