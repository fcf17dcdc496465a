"""Convolution GEMMs with the epilogue inside, on numba's threads only (no BLAS hand-over).

The products run through the register-tiled micro-kernel of :mod:`convlayers.kernels.simd`
(8 output rows by 48 columns in registers). Work is split into units of ``R`` output channels
by ``B`` columns of one image, so batch 1 still keeps both threads busy (MLAS's split of
output channels and rows); each unit finishes its block (bias, residual, activation) while it
is still in cache and writes it once.
"""

from __future__ import annotations

import numba
from numba import njit, prange

from convlayers.inference.kernels import epilogue_row, im2col_rows
from convlayers.kernels.simd import gemm_tiled, gemm_tiled_cols

__all__ = ["gemm_epilogue", "im2col_gemm_images", "units"]


@njit(cache=True, fastmath=True, inline="always")
def _finish(o, c0, bias, res_n, has_res, act, j0, j1):
    """Rows of block ``o`` are channels ``c0 ...``: add bias (and residual), activate."""
    for co in range(o.shape[0]):
        epilogue_row(o[co, j0:j1], bias[c0 + co], res_n[c0 + co, j0:j1], has_res, act)


@njit(parallel=True, cache=True, fastmath=True)
def gemm_epilogue(x, taps, bias, res, has_res, act, B, R, out):
    """``out[n, g] = act(taps[g] @ x[n, g] + bias (+ res))`` for ``x (N, G, K, L)``,
    ``taps (G, C_out/G, K)``, ``out (N, G, C_out/G, L)``, ``res (N, C_out, L)``; units of
    ``R`` rows by ``B`` columns."""
    n_img, groups, length = x.shape[0], x.shape[1], x.shape[3]
    cog = taps.shape[1]
    nb = (length + B - 1) // B
    nr = (cog + R - 1) // R
    for unit in prange(n_img * groups * nb * nr):
        n = unit // (groups * nb * nr)
        rest = unit % (groups * nb * nr)
        g = rest // (nb * nr)
        rest = rest % (nb * nr)
        blk, r0 = rest // nr, (rest % nr) * R
        r1 = min(cog, r0 + R)
        j0, j1 = blk * B, min(length, blk * B + B)
        o = out[n, g, r0:r1]
        if nb == 1:
            gemm_tiled(taps[g, r0:r1], x[n, g], o)
        else:
            gemm_tiled_cols(taps[g, r0:r1], x[n, g], o, j0, j1)
        _finish(o, g * cog + r0, bias, res[n], has_res, act, j0, j1)


@njit(parallel=True, cache=True, fastmath=True)
def im2col_gemm_images(x, taps, bias, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, res, has_res,
                       act, scratch, out):
    """A whole image per iteration (batch >= threads): unfold into this thread's ``scratch``
    ``(threads, C_in*kh*kw, ho*wo)``, multiply per group, finish; ``out (N, C_out, L)``."""
    groups, cog, k = taps.shape
    for n in prange(x.shape[0]):
        cols = scratch[numba.get_thread_id()]
        im2col_rows(x[n], kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, cols, 0, cols.shape[0])
        for g in range(groups):
            gemm_tiled(taps[g], cols[g * k:(g + 1) * k], out[n, g * cog:(g + 1) * cog])
        _finish(out[n], 0, bias, res[n], has_res, act, 0, ho * wo)


def units(rows: int, length: int, k: int, images: int, threads: int) -> tuple[int, int]:
    """(B, R): column blocks whose ``k x B`` operand fits in 256 KiB of L2, split into row
    blocks (multiples of 8) until there are at least 2 units per thread."""
    block = max(48, (256 * 1024 // 4 // max(k, 1)) // 48 * 48)
    b = length if length <= block else block
    nb = -(-length // b)
    want = 2 * threads
    splits = max(1, -(-want // (images * nb)))
    per = -(-rows // splits)
    r = max(8, (per + 7) // 8 * 8) if splits > 1 else rows
    return b, min(r, max(rows, 1))
