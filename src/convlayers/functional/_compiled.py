"""The compiled kernels' loader and thread controls, shared by the functional ops.

:func:`kernels` is the one place that imports :mod:`convlayers.kernels` (numba loads there,
not on ``import convlayers``) and applies ``config``'s thread setting; :func:`_threads_for`
runs a call on one thread when the work is small. (Kernels whose units are uneven hand them out
to the first free thread themselves: :mod:`convlayers.kernels.queue`. numba's
``set_parallel_chunksize`` does not: its OpenMP layer deals the chunks out statically.)
"""

from __future__ import annotations

import threading
from typing import Any

from convlayers import config


def kernels() -> Any:
    """The package :mod:`convlayers.kernels` with its ``conv``, ``depthwise``, ``elementwise``,
    ``implicit``, ``dot``, ``winograd``, ``pad``, ``pooling`` and ``values`` modules loaded,
    and numba's thread setting applied."""
    found = loaded_kernels()
    if not getattr(_serial, "on", False):  # inside _threads_for the one thread stands
        config.apply_numba_threads()
    return found


def loaded_kernels() -> Any:
    """:func:`kernels` without applying the thread setting: for a caller that runs them inside
    :func:`_threads_for`, which applies it (or one thread)."""
    if not _loaded:
        from convlayers import kernels
        from convlayers.kernels import (  # noqa: F401  (lazy: numba loads here)
            conv,
            depthwise,
            depthwise_nhwc,
            dot,
            elementwise,
            implicit,
            pad,
            pooling,
            values,
            winograd,
        )

        _loaded.append(kernels)
    return _loaded[0]


_loaded: list[Any] = []
#: ``on`` while this thread runs a small call on one thread (:func:`_threads_for`).
_serial = threading.local()


def _numba_threads() -> int:
    """Threads of numba's pool the kernels run with (after :func:`kernels`)."""
    return int(config.numba_controls()[0]())


def numba_threads() -> int:
    """The thread count the compiled kernels run with now (loads numba, compiles nothing)."""
    kernels()
    return _numba_threads()


def _threads_for(macs: int, serial_below: int | None = None) -> _ThreadsFor:
    """Run the kernels inside on one thread when the work is small: under ``serial_below``
    operations (default ``config.engine.serial_macs``)."""
    return _ThreadsFor(macs, serial_below)


class _ThreadsFor:
    """:func:`_threads_for`'s context. A class, not a generator: entering and leaving it costs
    about 1 us instead of 4, a tenth of a small layer's call."""

    __slots__ = ("_nested", "_saved", "_serial_now")

    def __init__(self, macs: int, serial_below: int | None = None) -> None:
        self._serial_now = macs < (config.engine.serial_macs if serial_below is None
                                   else serial_below)

    def __enter__(self) -> None:
        if not self._serial_now:
            kernels()  # loads numba and applies the thread setting
            return
        loaded_kernels()  # loads numba; one thread stands inside
        get, put, _ = config.numba_controls()
        self._saved, self._nested = get(), getattr(_serial, "on", False)
        put(1)
        _serial.on = True  # so that kernels() inside does not put the thread setting back

    def __exit__(self, *exc: object) -> None:
        if self._serial_now:
            _serial.on = self._nested
            config.numba_controls()[1](self._saved)

