"""Constants that compiled kernels pass to other compiled functions, typed as plain values.

Numba types a literal written in a kernel's call (``0``, ``-1``, ``False``) as a literal
type, and compiles the callee once more for each such spelling: ``block_last._product``
compiled four times, ``depthwise_row`` and ``conv_band_taps`` three, the GEMM tiles twice more,
each a first-call compile of its own, linked into every caller. These module-level NumPy
scalars are typed ``int64`` and ``bool`` instead, so a callee compiles once per dtype.

>>> import numba
>>> from convlayers.kernels._typed import ZERO
>>> numba.typeof(ZERO)
int64
"""

from __future__ import annotations

import numpy as np

__all__ = ["FALSE", "TRUE", "UNFINISHED", "ZERO"]

#: ``0`` (a first index, row or column).
ZERO = np.int64(0)
#: ``-1``: the epilogue code of sums stored as they are (a later slab adds onto them).
UNFINISHED = np.int64(-1)
#: ``False`` and ``True``.
FALSE, TRUE = np.bool_(False), np.bool_(True)
