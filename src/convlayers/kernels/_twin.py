"""Serial twins of parallel kernels: the same code compiled without ``parallel``.

A parallel kernel on a small call pays for its parallel region even on one thread, and the
switch to one thread (:func:`convlayers.functional._compiled._threads_for`) costs more again:
on a 1x3x8x8 map a 3x3 max pool's kernel took 4.9 us on two threads, 7.4 switched to one (the
switch 2.1, the one-thread region 1.8 more) and 3.2 as its twin, where torch's whole call took
6. A twin runs on the calling thread, its ``prange`` a plain ``range``.
"""

from __future__ import annotations

import types
from typing import Any

from numba import njit

__all__ = ["serial_twin"]


def serial_twin(kernel: Any) -> Any:
    """``kernel`` (a ``parallel=True`` numba dispatcher) compiled again with its other options
    but not ``parallel`` (cached on disk where ``kernel`` is), as a function named ``<name>_serial`` so that
    numba's cache keeps the two apart.

    Examples
    --------
    >>> import numpy as np
    >>> from numba import njit, prange
    >>> @njit(parallel=True)
    ... def doubled(x, out):
    ...     for i in prange(x.shape[0]):
    ...         out[i] = 2 * x[i]
    >>> twin = serial_twin(doubled)
    >>> out = np.empty(3)
    >>> twin(np.arange(3.0), out)
    >>> out, twin.py_func.__name__
    (array([0., 2., 4.]), 'doubled_serial')
    """
    f = kernel.py_func
    twin = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__,
                              f.__closure__)
    twin.__qualname__ = f.__qualname__ + "_serial"
    twin.__doc__ = f"Serial twin of ``{f.__name__}`` (:func:`convlayers.kernels._twin.serial_twin`)."
    options = {k: v for k, v in kernel.targetoptions.items() if k not in ("parallel", "nopython")}
    cached = type(kernel._cache).__name__ != "NullCache"  # cached on disk where the kernel is
    return njit(cache=cached, **options)(twin)
