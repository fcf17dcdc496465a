"""Compiled kernels (numba), imported lazily by the modules that use them.

Importing this package installs :class:`CompileNotice`: the first time numba compiles something
for more than a second, one line on stderr says why the call is slow (each kernel compiles on
its first call per dtype and ``cache=True`` keeps the machine code on disk, so this happens once
per installation; ``convlayers warmup`` does it ahead of time), and a helper process starts
compiling the common forward kernels on another core (:mod:`convlayers.kernels.precompile`).
``CONVLAYERS_COMPILE_NOTICE=0`` silences the line, ``CONVLAYERS_BACKGROUND_COMPILE=0`` keeps the
helper from starting. It also makes numba's cache safe for processes that compile at once
(:mod:`convlayers.kernels._cache_lock`) and fresh after any of the package's compiled code
changes (:mod:`convlayers.kernels._cache_stamp`), and starts numba's threads on an OpenMP runtime of
their own before any kernel runs (:func:`convlayers.config.start_numba_threads`).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from convlayers import config
from convlayers.kernels import _cache_lock, _cache_stamp

__all__ = ["NOTICE", "CompileNotice"]

#: The line printed on stderr when compiling takes longer than :attr:`CompileNotice.after`.
NOTICE = "convlayers: compiling kernels for first use; cached for next time"


class CompileNotice:
    """A numba event listener that prints :data:`NOTICE` once per process (unless ``shown``),
    when one compile (nested compiles of callees count as one) has run for ``after`` seconds,
    and starts the helper that compiles the common forward kernels on another core
    (:func:`convlayers.kernels.precompile.start`, unless ``helped``) when a kernel of this
    package first misses the cache."""

    after = 1.0

    def __init__(self) -> None:
        self.depth = 0
        self.timer: threading.Timer | None = None
        self.shown = False
        self.helped = False
        self.lock = threading.Lock()

    def on_start(self, event: Any) -> None:
        with self.lock:
            self.depth += 1
            if self.depth == 1 and not self.shown and self.timer is None:
                self.timer = threading.Timer(self.after, self._show)
                self.timer.daemon = True
                self.timer.start()
            help_ = not self.helped and _ours(event)
            self.helped = self.helped or help_
        if help_:
            from convlayers.kernels import precompile

            precompile.start()

    def on_end(self, event: Any) -> None:
        with self.lock:
            self.depth = max(0, self.depth - 1)
            if self.depth == 0 and self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def _show(self) -> None:
        with self.lock:
            if self.shown or self.depth == 0:
                return
            self.shown = True
        print(NOTICE, file=sys.stderr, flush=True)


def _ours(event: Any) -> bool:
    """Whether a ``numba:compile`` event compiles one of this package's kernels."""
    function = getattr(event.data.get("dispatcher"), "py_func", None)
    return str(getattr(function, "__module__", "")).startswith("convlayers.")


def _install() -> CompileNotice:
    from numba.core import event

    notice = CompileNotice()

    class _Listener(event.Listener):
        def on_start(self, ev: Any) -> None:
            notice.on_start(ev)

        def on_end(self, ev: Any) -> None:
            notice.on_end(ev)

    event.register("numba:compile", _Listener())
    return notice


#: The process's notice (installed when this package is imported). ``CONVLAYERS_COMPILE_NOTICE=0``
#: in the environment silences it (the test suite does, so that a cold numba cache does not add a
#: line to the output the tests read).
notice = _install()
_cache_lock.install()
_cache_stamp.install()
config.start_numba_threads()
notice.shown = os.environ.get("CONVLAYERS_COMPILE_NOTICE", "1") == "0"
