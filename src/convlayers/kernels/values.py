"""Value checks over large arrays, on every thread.

The engine asks whether a weight or an input holds an inf or NaN before strategies that would
multiply them by zero padding (``convlayers.functional.plan``). NumPy's ``max`` and ``min``
read the array twice on one core: a batch-1 layer's 11 MiB weight (``507->223 5x5``) took
3 ms there, longer than the convolution. Importing compiles nothing.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["any_nonfinite"]


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def any_nonfinite(a, block):
    """Whether the 1-D ``a`` holds an inf or NaN, read once in blocks of ``block`` elements
    over the threads: a block's ``sum(a * 0)`` is NaN exactly then (compiled without
    fastmath's no-NaN/no-inf flags, which would fold ``a * 0`` to zero; ``reassoc`` lets the
    sum vectorise)."""
    n = a.shape[0]
    nb = (n + block - 1) // block
    bad = np.zeros(nb, dtype=np.bool_)
    zero = np.zeros(1, dtype=a.dtype)[0]
    for b in prange(nb):
        s = zero
        for i in range(b * block, min(n, (b + 1) * block)):
            s += a[i] * zero
        bad[b] = s != s
    return bad.any()
