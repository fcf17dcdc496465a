"""The engine's ``winograd`` strategy: F(2x2,3x3) in one numba parallel region a pass.

Transforms and the 16 products of a block of tile rows per unit
(:mod:`convlayers.kernels.winograd`), forward with the bias fused; both gradients from one input
transform and one output-gradient transform per unit. A call that made an inf or NaN returns
None, and the engine runs it again by another strategy.
"""

from __future__ import annotations

import numpy as np

from convlayers import config
from convlayers.functional._compiled import _numba_threads, kernels
from convlayers.functional._engine_shared import _bias_arg, _finite, _quiet
from convlayers.functional._scratch import take
from convlayers.functional.plan import Geometry


def _winograd_weights(w: np.ndarray, groups: int, scratch: str | None = None) -> np.ndarray:
    """``U = G g G^T`` per (output, input) channel pair, as ``(16, groups, C_out/g, C_in/g)``
    (:func:`convlayers.kernels.winograd.weight_transform`; an ``einsum`` of the three took
    25-50 ms for 256x256 channels, more than the convolution at batch 1); in this thread's
    ``scratch`` buffer of that name when given (for a call that is done with it before it
    takes that name again), else a new array."""
    c_out, c_in_g = w.shape[:2]
    shape = (16, c_out * c_in_g)
    u = np.empty(shape, dtype=w.dtype) if scratch is None else take(scratch, shape, w.dtype)
    kernels().winograd.weight_transform(np.ascontiguousarray(w).reshape(-1, 9), u)
    return u.reshape(16, groups, c_out // groups, c_in_g)


def _winograd_rows(tw: int, tiles: int) -> int:
    """Tile rows per fused unit: about ``tiles`` tiles (geometry only)."""
    return max(1, -(-tiles // tw))


def _split(total: int, units: int, threads: int, least: int, multiple: int = 1) -> int:
    """Channels per block so that ``units`` units of whole channels become at least twice the
    threads (blocks of at least ``least`` channels, rounded up to ``multiple``)."""
    want = 2 * threads
    if threads <= 1 or units >= want:
        return total
    per = -(-total // -(-want // units))
    per = -(-per // multiple) * multiple
    return min(total, max(least, per))


def _winograd_forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, pt: int, pl: int,
                      groups: int, out_shape: tuple[int, int]) -> np.ndarray | None:
    """Transforms and the 16 products of each block of tile rows (and output channels, when
    there are too few blocks for the threads) in one parallel region; None when an output came
    out inf or NaN (see :mod:`convlayers.functional.plan`)."""
    from convlayers.kernels.simd import TILE_ROWS

    k = kernels()
    n = x.shape[0]
    c_out = w.shape[0]
    ho, wo = out_shape
    u = _winograd_weights(w, groups, "winograd.weights")
    out = np.empty((n, c_out, ho, wo), dtype=x.dtype)
    rows = _winograd_rows(-(-wo // 2), config.engine.winograd_block_tiles)
    threads = _numba_threads()
    th = -(-ho // 2)
    blocks = n * -(-th // min(rows, th))
    cob = _split(c_out // groups, blocks, threads, 2 * TILE_ROWS, TILE_ROWS)
    bad = np.zeros(threads, dtype=np.bool_)
    v, m = k.winograd.forward_scratch(x.shape[1], out_shape, rows, cob)
    k.winograd.forward_fused(x, u, _bias_arg(bias, x.dtype), pt, pl, rows, cob, threads, out,
                             bad, take("winograd.v", (threads, v), x.dtype),
                             take("winograd.m", (threads, m), x.dtype))
    return None if bad.any() and config.engine.check_values else out


@_quiet
def _winograd_backward(x: np.ndarray, gy: np.ndarray, w: np.ndarray, pt: int, pl: int,
                       groups: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Both gradients of :func:`_winograd_forward`'s convolution from one input transform and
    one output-gradient transform per unit: ``dV = U^T dM`` and ``dU^T = sum V dM^T``; None
    when a gradient came out inf or NaN."""
    k = kernels()
    n = x.shape[0]
    c_out, c_in_g = w.shape[:2]
    c_out_g = c_out // groups
    wo = gy.shape[3]
    ut = np.ascontiguousarray(_winograd_weights(w, groups, "winograd.weights").swapaxes(-1, -2))
    threads = _numba_threads()
    gx = np.empty_like(x)
    gut = np.empty((threads, 16, groups, c_in_g, c_out_g), dtype=x.dtype)
    rows = _winograd_rows(-(-wo // 2), config.engine.winograd_block_tiles_bwd)
    cib = _split(c_in_g, n * groups, threads, 8)
    bad = np.zeros(threads, dtype=np.bool_)
    v, m = k.winograd.backward_scratch(c_out_g, (gy.shape[2], wo), rows, cib)
    k.winograd.backward_fused(x, gy, ut, pt, pl, rows, cib, gx, gut, bad,
                              take("winograd.v", (threads, v), x.dtype),
                              take("winograd.m", (threads, m), x.dtype))
    du = np.ascontiguousarray(gut.sum(axis=0, dtype=np.float64).swapaxes(-1, -2))
    gw64 = np.empty((c_out, c_in_g, 3, 3))
    k.winograd.weight_grad_transform(du.reshape(16, c_out, c_in_g), gw64)
    gw = gw64.astype(x.dtype)
    if config.engine.check_values and (bad.any() or not _finite(gw)):
        return None
    return gx, gw


def _fwd_winograd(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                  g: Geometry) -> np.ndarray | None:
    return _winograd_forward(x, w, bias, g.pt, g.pl, g.groups, (g.ho, g.wo))


def _bwd_winograd(x: np.ndarray, gy: np.ndarray, w: np.ndarray,
                  g: Geometry) -> tuple[np.ndarray, np.ndarray] | None:
    return _winograd_backward(x, gy, w, g.pt, g.pl, g.groups)
