"""The work queue of the parallel kernels (:mod:`convlayers.kernels.queue`): every unit is
claimed exactly once, whatever the thread count and however many threads the loop asks for."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit, prange

from convlayers.kernels.queue import claim, new_queue


@njit(parallel=True, cache=False)
def _claim_all(n_units: int, threads: int, seen: np.ndarray) -> None:
    queue = new_queue()
    for _ in prange(threads):
        while True:
            unit = claim(queue)
            if unit >= n_units:
                break
            seen[unit] += 1  # each unit is one thread's alone, so no race


@pytest.mark.parametrize("n_units", [0, 1, 2, 3, 7, 1000])
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_every_unit_is_claimed_once(n_units: int, threads: int) -> None:
    seen = np.zeros(n_units, np.int64)
    _claim_all(n_units, threads, seen)
    np.testing.assert_array_equal(seen, np.ones(n_units, np.int64))

