"""Value checks over large arrays, on every thread.

The engine asks whether a weight or an input holds an inf or NaN before strategies that would
multiply them by zero padding (``convlayers.functional.plan``), and the Winograd kernels ask it
of their outputs. NumPy's ``max`` and ``min`` read the array twice on one core: a batch-1
layer's 11 MiB weight (``507->223 5x5``) took 3 ms there, longer than the convolution.
Importing compiles nothing.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from convlayers.kernels._bounds import typed_zero

__all__ = ["any_nonfinite", "nonfinite_in"]


@njit(cache=True, fastmath={"reassoc", "contract"})
def nonfinite_in(a):
    """Whether ``a`` (1-D) holds an inf or NaN: ``sum(a * 0)`` is NaN exactly then. Compiled
    without fastmath's no-NaN/no-inf flags, which would fold ``a * 0`` to zero; ``reassoc``
    lets the sum vectorise."""
    zero = typed_zero(a)
    s = zero
    for i in range(a.shape[0]):
        s += a[i] * zero
    return s != s


@njit(parallel=True, cache=True)
def any_nonfinite(a, block):
    """:func:`nonfinite_in` of the 1-D ``a``, read once in blocks of ``block`` elements over
    the threads."""
    n = a.shape[0]
    nb = (n + block - 1) // block
    bad = np.empty(nb, dtype=np.bool_)  # each block sets its own; plain loops below: numba
    for b in prange(nb):                # makes np.zeros and .any() parallel regions of their own
        bad[b] = nonfinite_in(a[b * block: min(n, (b + 1) * block)])
    found = False
    for b in range(nb):
        found = found or bad[b]
    return found
