"""A work queue for ``prange`` loops: units handed out one at a time, to whichever thread is free.

numba's OpenMP layer splits a ``prange`` into one contiguous block of iterations per thread,
whatever ``numba.set_parallel_chunksize`` says (its ``omp for`` has no ``schedule`` clause, so
the chunks it makes are dealt out statically): 8 units of work ``43, 43, 43, 43, 43, 43, 2, 2``
run as ``172 | 90`` on two threads, not ``131 | 131``. A kernel that wants its units handed out
in order to the first free thread (the schedule the planners cost, and one that lets a core
slowed by a neighbour take fewer) runs one ``prange`` iteration per thread, each claiming units
from a shared counter until none is left::

    queue = new_queue()
    for _ in prange(threads):
        while True:
            unit = claim(queue)
            if unit >= n_units:
                break
            ...  # the unit's work

``threads`` is numba's thread count, read by the caller (``numba.get_num_threads()`` inside a
kernel stops numba from caching it): more iterations than threads only add ones that find the
queue empty; fewer leave threads idle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["claim", "new_queue"]


@intrinsic
def claim(typingctx: Any, queue: Any) -> Any:
    """The next unit of ``queue`` (an int64 array from :func:`new_queue`): its first element,
    incremented atomically (LLVM ``atomicrmw add``, monotonic: the units' data are ordered by
    the parallel region's start and end, not by the counter)."""
    if not (isinstance(queue, types.Array) and queue.dtype == types.int64 and queue.ndim == 1):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", array.data, ir.Constant(ir.IntType(64), 1), "monotonic")

    return types.int64(queue), codegen


@njit(cache=True, inline="always")
def new_queue():
    """A counter at 0, on a cache line of its own (8 int64: no other data shares the line that
    the threads' atomic adds pass between them). Set by a loop: in a parallel kernel numba
    makes ``np.zeros`` a parallel region of its own."""
    queue = np.empty(8, np.int64)
    for i in range(8):
        queue[i] = 0
    return queue
