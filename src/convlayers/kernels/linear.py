"""Numba kernels of a fully connected layer and its gradients: one dot product per output for
few rows, the register tiles of :mod:`convlayers.kernels.simd` for more. No BLAS.

``x @ W.T`` for a handful of rows (a classifier head at batch 1) is a matrix-vector product:
each weight is read once and used once per row, so the time is the weights' trip from memory.
NumPy hands it to its BLAS, whose own thread pool has to wake beside numba's OpenMP threads
(which still spin after the convolution before) and then spins itself after the call, beside
the next numba kernels. On two cores, MobileNetV2's 1280 -> 1000 head right after its features
took 0.6-5.6 ms through ``@`` against 0.04-0.23 ms as numba's dot products, and the whole eager
forward at batch 1, called again and again, 35.9 ms against 14.3 (ResNet-18 64.0 against 26.4,
ResNet-50 140 against 70; one process each, alternated). Here the outputs are split between
numba's own threads, and each output's weight row is read contiguously once per row of ``x``.
A training step's gradients of the head are the same: MobileNetV2's step at batch 8 on 128x128
images took 208 ms through BLAS and 128 ms through :func:`linear_rows_backward`. With more rows
the tiles (:func:`linear_tiles`, :func:`linear_tiles_backward`) run the products about as fast
as BLAS alone (0.9-1.3x its time from 16 to 256 rows of 1280 -> 1000, the cores idle between
calls), and the steps gain as much: at batch 32 on 128x128, 583 -> 476 ms; at 64, 1120 -> 1025.

:func:`convlayers.functional.linear` and :func:`~convlayers.functional.linear_backward` take
the dot products below :attr:`convlayers.config.EngineSettings.linear_dot_rows` rows and the
tiles from there, from :attr:`~convlayers.config.EngineSettings.serial_macs` multiply-adds
(smaller products stay with NumPy, whose BLAS runs them on the calling thread); the compiled
plans' fully connected steps take the dot products below their own tiles' rows.
"""

from __future__ import annotations

from numba import njit, prange

from convlayers.kernels.simd import gemm_tiled, gemm_tiled_cols

__all__ = ["FEATURES_PER_UNIT", "OUTPUTS_PER_UNIT", "TILE_UNIT_ROWS", "linear_rows",
           "linear_rows_backward", "linear_tiles", "linear_tiles_backward"]

#: Outputs per parallel unit: 1000 units of one output cost more than their dot products when
#: they were handed out one at a time.
OUTPUTS_PER_UNIT = 16


# reassociation (the sums vectorise) but no finite-math assumptions: inf and NaN in x or W
# reach the outputs as IEEE arithmetic makes them
@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def linear_rows(x, w, bias, out):
    """``out = x @ w.T + bias`` for C-contiguous ``x (N, F_in)``, ``w (F_out, F_in)``,
    ``bias (F_out,)``, ``out (N, F_out)``, parallel over blocks of
    :data:`OUTPUTS_PER_UNIT` outputs (batch 1 too).

    Examples
    --------
    >>> import numpy as np
    >>> out = np.empty((1, 2), np.float32)
    >>> linear_rows(np.array([[1.0, 2.0]], np.float32),
    ...             np.array([[1.0, 1.0], [0.0, -1.0]], np.float32),
    ...             np.array([0.5, 0.0], np.float32), out)
    >>> out
    array([[ 3.5, -2. ]], dtype=float32)
    """
    n, f_out = out.shape
    per = OUTPUTS_PER_UNIT
    for u in prange((f_out + per - 1) // per):
        for o in range(u * per, min(f_out, u * per + per)):
            wr = w[o]
            for i in range(n):
                xr = x[i]
                total = bias[o]
                for k in range(wr.size):
                    total += wr[k] * xr[k]
                out[i, o] = total


#: Input features per parallel unit of :func:`linear_rows_backward`'s input gradient (a block
#: of every row's sums, 1 KiB of float32 a row, read and written along the weights' rows).
FEATURES_PER_UNIT = 256


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def linear_rows_backward(g, x, w, gx, gw):
    """The gradients of :func:`linear_rows` for C-contiguous ``g (N, F_out)`` (the output's),
    ``x (N, F_in)`` and ``w (F_out, F_in)``: ``gx = g @ w`` into ``gx (N, F_in)`` and
    ``gw = g.T @ x`` into ``gw (F_out, F_in)``, both overwritten. Each weight gradient row is
    the rows of ``x`` scaled by one column of ``g`` and added in order of the rows (parallel
    over blocks of :data:`OUTPUTS_PER_UNIT` rows); each block of :data:`FEATURES_PER_UNIT`
    columns of ``gx`` sums the weight rows scaled by ``g`` (parallel over the blocks).

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 2.0]]); x = np.array([[3.0, 4.0, 5.0]]); w = np.ones((2, 3))
    >>> gx, gw = np.empty((1, 3)), np.empty((2, 3))
    >>> linear_rows_backward(g, x, w, gx, gw)
    >>> gx
    array([[3., 3., 3.]])
    >>> gw
    array([[ 3.,  4.,  5.],
           [ 6.,  8., 10.]])
    """
    n, f_out = g.shape
    f_in = x.shape[1]
    per = OUTPUTS_PER_UNIT
    for u in prange((f_out + per - 1) // per):
        for o in range(u * per, min(f_out, u * per + per)):
            row = gw[o]
            for k in range(f_in):
                row[k] = 0
            for i in range(n):
                s = g[i, o]
                xr = x[i]
                for k in range(f_in):
                    row[k] += s * xr[k]
    cols = FEATURES_PER_UNIT
    for u in prange((f_in + cols - 1) // cols):
        k0, k1 = u * cols, min(f_in, u * cols + cols)
        for i in range(n):
            acc = gx[i, k0:k1]
            for k in range(k1 - k0):
                acc[k] = 0
            for o in range(f_out):
                s = g[i, o]
                wr = w[o, k0:k1]
                for k in range(k1 - k0):
                    acc[k] += s * wr[k]


#: Rows of the weights (outputs, or their gradients) per parallel unit of the tiled products.
TILE_UNIT_ROWS = 64


@njit(parallel=True, cache=True)
def linear_tiles(w, xt, bias, outt, out):
    """``out = x @ w.T + bias`` for many rows, on the register tiles of
    :func:`convlayers.kernels.simd.gemm_tiled`: ``outt (F_out, N) = w @ xt`` with ``xt
    (F_in, N)`` the input transposed (C-contiguous, as ``w (F_out, F_in)``), in units of
    :data:`TILE_UNIT_ROWS` weight rows, each then written into ``out (N, F_out)`` with its
    bias. The weights are read once, in place; only the rows are transposed."""
    f_out, n = outt.shape
    rows = TILE_UNIT_ROWS
    for u in prange((f_out + rows - 1) // rows):
        r0, r1 = u * rows, min(f_out, u * rows + rows)
        gemm_tiled(w[r0:r1], xt, outt[r0:r1])
        for o in range(r0, r1):
            b = bias[o]
            for i in range(n):
                out[i, o] = outt[o, i] + b


@njit(parallel=True, cache=True)
def linear_tiles_backward(g, gt, x, w, gx, gw):
    """The gradients of :func:`linear_tiles` on the register tiles: ``gw (F_out, F_in) = gt @
    x`` with ``gt (F_out, N)`` the output's gradient ``g (N, F_out)`` transposed, in units of
    :data:`TILE_UNIT_ROWS` rows, and ``gx (N, F_in) = g @ w`` in units of columns (a multiple of
    a vector), all C-contiguous."""
    f_out, f_in = gw.shape
    rows = TILE_UNIT_ROWS
    for u in prange((f_out + rows - 1) // rows):
        r0, r1 = u * rows, min(f_out, u * rows + rows)
        gemm_tiled(gt[r0:r1], x, gw[r0:r1])
    cols = FEATURES_PER_UNIT
    for u in prange((f_in + cols - 1) // cols):
        gemm_tiled_cols(g, w, gx, u * cols, min(f_in, u * cols + cols))
