"""One stride phase of a batch of planes, copied out of an array or written into one.

``x[..., a::s, b::s]`` is NumPy's strided copy, on one thread; past
``config.engine.parallel_elementwise`` elements of a C-contiguous float 4-D array the compiled
copies (:func:`convlayers.kernels.conv.subsample`, :func:`~convlayers.kernels.conv.scatter_strided`)
run on every thread: a strided 1x1 layer's input on 8x192x51x51 took longer to copy on one
thread than its product took. The one owner of these copies: the reduced stride phases
(:mod:`convlayers.functional._engine_phases`), strided 1x1 layers and the implicit GEMM's
strided input gradients use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from convlayers import config
from convlayers.functional._compiled import kernels
from convlayers.functional._scratch import take

__all__ = ["put_phase", "take_phase"]


def _index(starts: Sequence[int], steps: Sequence[int],
           lengths: Sequence[int]) -> tuple[slice, ...]:
    return (slice(None), slice(None), *[slice(a, a + s * (n - 1) + 1, s) if n > 0 else slice(a, a)
                                        for a, s, n in zip(starts, steps, lengths, strict=True)])


def _compiled(a: np.ndarray, elements: int) -> bool:
    return (a.ndim == 4 and a.flags.c_contiguous and a.dtype.char in "fd"
            and elements >= config.engine.parallel_elementwise)


def take_phase(x: np.ndarray, starts: Sequence[int], steps: Sequence[int],
               lengths: Sequence[int], scratch: str | None = None) -> np.ndarray:
    """``x[:, :, a : a + s*(n-1) + 1 : s, ...]`` per spatial axis, C-contiguous; into this
    thread's ``scratch`` buffer of that name (:func:`convlayers.functional._scratch.take`)
    when given, for a copy the caller is done with before it takes that name again.

    >>> x = np.arange(2 * 5 * 6, dtype=np.float32).reshape(1, 2, 5, 6)
    >>> take_phase(x, (1, 0), (2, 3), (2, 2))[0, 1]
    array([[36., 39.],
           [48., 51.]], dtype=float32)
    """
    shape = (*x.shape[:2], *lengths)
    compiled = _compiled(x, math.prod(shape))
    if scratch is None and not compiled:
        return np.ascontiguousarray(x[_index(starts, steps, lengths)])
    out = np.empty(shape, dtype=x.dtype) if scratch is None else take(scratch, shape, x.dtype)
    if compiled:
        kernels().conv.subsample(x, starts[0], starts[1], steps[0], steps[1], out)
    else:
        np.copyto(out, x[_index(starts, steps, lengths)])
    return out


def put_phase(part: np.ndarray, starts: Sequence[int], steps: Sequence[int],
              out: np.ndarray) -> None:
    """``out[:, :, a::s, ...] = part`` per spatial axis (the phase :func:`take_phase` takes,
    ``part``'s shape long).

    >>> out = np.zeros((1, 1, 3, 4), np.float32)
    >>> put_phase(np.ones((1, 1, 2, 2), np.float32), (0, 1), (2, 2), out)
    >>> out[0, 0]
    array([[0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]], dtype=float32)
    """
    if _compiled(part, part.size) and out.flags.c_contiguous and out.dtype == part.dtype:
        kernels().conv.scatter_strided(part, starts[0], starts[1], steps[0], steps[1], out)
    else:
        out[_index(starts, steps, part.shape[2:])] = part
