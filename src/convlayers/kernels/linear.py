"""Numba kernels of a fully connected layer for few rows: one dot product per output, and its
gradients.

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
images took 208 ms through BLAS and 128 ms through :func:`linear_rows_backward`.

:func:`convlayers.functional.linear` and :func:`~convlayers.functional.linear_backward` take
these kernels below
:attr:`convlayers.config.EngineSettings.linear_dot_rows` rows (and from
:attr:`~convlayers.config.EngineSettings.serial_macs` multiply-adds), the compiled plans' fully
connected steps below their tiles' rows.
"""

from __future__ import annotations

from numba import njit, prange

__all__ = ["FEATURES_PER_UNIT", "OUTPUTS_PER_UNIT", "linear_rows", "linear_rows_backward"]

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
