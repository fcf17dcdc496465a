"""First calls on an empty kernel cache: a convolution whose kernels are not compiled yet runs
the NumPy strategy while the helper process compiles them.

On a fresh installation every kernel compiles on its first call, one at a time on one core:
a first MobileNetV2 forward took 19-23 s, nearly all of it the main process compiling the
stem's implicit GEMM and the planar depthwise kernel (about 9 s each) while the helper
(:mod:`convlayers.kernels.precompile`) compiled the others on the second core. The NumPy
strategy needs no compile and runs that whole network in about 50 ms. So while the helper
runs, a forward's cache miss does not compile (:func:`convlayers.kernels._cache_lock.
deferring_misses`): the call runs the NumPy strategy, and a later call, once the helper has
saved the kernel, loads it from the cache. A strategy that missed is not tried again for
:data:`RETRY_SECONDS` (each try costs a cache lookup), and nothing defers past
:data:`DEFER_SECONDS` from the first deferral: a busy process starves the helper, and the
NumPy strategy is slower than the kernels. The gradients defer the same way (the
helper compiles them after the forwards: a first MobileNetV2 training step, batch 2 at 96x96,
spent 58 of its 63 s compiling them here); kernels the helper does not compile (float64)
compile here once it has finished: only float32 convolutions defer.

The NumPy strategy's sums run in another order than the compiled kernels': outputs of the
first calls differ from later ones in the last bits (float32 rounding), as two strategies'
do. ``config.engine.defer_cold_compiles = False`` compiles at once instead, and without a
helper (``CONVLAYERS_BACKGROUND_COMPILE=0``, the test suite) nothing defers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from convlayers import config
from convlayers.functional.plan import Geometry

__all__ = ["DEFER_SECONDS", "RETRY_SECONDS", "deferred", "pending", "trying"]

#: Seconds before a strategy whose kernel missed the cache is tried again.
RETRY_SECONDS = 0.25
#: Seconds from this process's first deferral after which nothing defers any more: the
#: kernels still missing compile here (or are waited for, where the helper compiles them). A
#: process that keeps both cores busy starves the helper (it runs at the lowest priority):
#: a MobileNetV2 training loop on the NumPy strategy (0.11-0.15 s a step, 0.05 compiled)
#: still missed five gradient kernels after 200 s.
DEFER_SECONDS = 15.0

#: Strategy -> when its kernel last missed the cache inside :func:`trying`.
_MISSED: dict[str, float] = {}
#: When this process first deferred a compile (None: not yet).
_first: list[float] = []


def _window_open() -> bool:
    return not _first or time.monotonic() - _first[0] < DEFER_SECONDS


def _applies(g: Geometry) -> bool:
    return (config.engine.defer_cold_compiles and g.compiled and g.itemsize == 4
            and _window_open())


def deferred(strategy: str, g: Geometry) -> bool:
    """Whether a forward of ``g`` by ``strategy`` runs the NumPy strategy without trying its
    kernel: it missed the cache less than :data:`RETRY_SECONDS` ago."""
    missed = _MISSED.get(strategy)
    return (missed is not None and _applies(g) and pending()
            and time.monotonic() - missed < RETRY_SECONDS)


def pending() -> bool:
    """Whether some strategy's kernel missed the cache, has not been loaded here since, and
    the helper still runs, within :data:`DEFER_SECONDS` of the first deferral: calls are
    not remembered whole (:mod:`convlayers.functional._ready`) until then. After that, the
    misses are forgotten (what the helper has not compiled compiles here)."""
    if not _MISSED:
        return False
    from convlayers.kernels import precompile

    if precompile.running() and _window_open():
        return True
    _MISSED.clear()
    return False


@contextlib.contextmanager
def trying(strategy: str, g: Geometry) -> Iterator[list[bool]]:
    """Run a forward by ``strategy`` inside it: a cache miss of its kernels then raises (see
    the module) and leaves ``[True]`` in the yielded list, the error swallowed, for the caller
    to run the NumPy strategy; a run that completes clears the strategy's miss."""
    missed = [False]
    if not _applies(g):
        yield missed
        return
    from convlayers.kernels import _cache_lock

    before = _cache_lock.deferred_here()
    try:
        with _cache_lock.deferring_misses():
            yield missed
    except Exception:
        if _cache_lock.deferred_here() == before:
            raise
        _MISSED[strategy] = time.monotonic()
        if not _first:
            _first.append(_MISSED[strategy])
        missed[0] = True
        return
    _MISSED.pop(strategy, None)
