"""The direct weight gradient: each tap's ``(C_in, C_out)`` slice of a dense convolution's
weight gradient as a product on the direct kernel's register tiles
(:func:`convlayers.kernels.simd.conv_band_taps_onto`), no im2col matrix.

For tap ``(i, j)`` the slice is ``sum over images and output positions (y, x) of
x[ci, y*sh + i*dh, x*sw + j*dw] * gy[co, y, x]`` (padded coordinates). Seen as the direct
kernel's product, its rows are the input channels, its columns the output channels, its "taps"
the output rows of every image and its inner dimension the output columns: row ``ci`` of "tap"
``(image, y)`` is a run of ``wo`` values of one input plane when the planes are split into
``sw`` column phases (column ``x*sw + j*dw`` is element ``x + (j*dw)//sw`` of phase
``(j*dw) % sw``), and the right operand is the output gradient ``(C_out, images*ho*wo)`` packed
like weights. Each tap sums only the output rows and columns whose windows read it inside the
input (none of the padding's zeros), so nothing is computed that a window does not read.
"""

from __future__ import annotations

from numba import njit, prange

from convlayers.kernels.queue import claim, new_queue
from convlayers.kernels.simd import conv_band_taps_onto

__all__ = ["taps_to_weights", "weight_grad_taps"]


@njit(parallel=True, cache=True)
def weight_grad_taps(xf, packed, offs, toffs, spans, units, images, chunk, zeros, threads,
                     out):
    """``out[t] = X_t^T @ G`` for every tap ``t`` (``out (taps, C_in, C_out)``), in units
    ``units[u] = (t, r0, r1, c0, c1)`` (input channels ``r0 .. r1`` by output channels ``c0 ..
    c1``, ``c0`` a multiple of the packed strips' width) handed out in order to the first free
    of ``threads`` threads.

    ``xf``: the input's planes, flat, each split into column phases; ``offs (taps, C_in)``: row
    ``ci``'s start for tap ``t`` in an image's first output row; ``toffs (images*ho,)``: each
    image's output row's offset from there; ``packed``: the output gradient ``(C_out,
    images*ho*wo)`` packed by :func:`convlayers.kernels.simd.pack_conv_weights_into` as weights
    of one input channel and a ``images*ho x wo`` kernel; ``spans (taps, 4)``: the output rows
    ``y0 .. y1`` and columns ``x0 .. x1`` whose windows read tap ``t`` inside the input (an
    empty span: that slice is zero). Each unit sums ``chunk`` output rows at a time over all
    its input channels, so that part of the packed gradient stays in cache across them;
    ``zeros`` (``C_out`` zeros) stands for the bias the tiles do not add."""
    ho = toffs.size // images
    queue = new_queue()
    for _ in prange(threads):
        while True:
            u = claim(queue)
            if u >= units.shape[0]:
                break
            t, r0, r1, c0, c1 = units[u, 0], units[u, 1], units[u, 2], units[u, 3], units[u, 4]
            y0, y1, x0, x1 = spans[t, 0], spans[t, 1], spans[t, 2], spans[t, 3]
            m = out[t]
            if y1 <= y0 or x1 <= x0:
                m[r0:r1, c0:c1] = 0
                continue
            add = 0
            for image in range(images):
                for ya in range(y0, y1, chunk):
                    yb = min(y1, ya + chunk)
                    conv_band_taps_onto(xf, packed, m, offs[t], toffs, image * ho + ya,
                                        image * ho + yb, r0, r1 - r0, c0, c1, x0, x1, zeros, m,
                                        -1, add)
                    add = 1


#: Input channels a unit of :func:`taps_to_weights` takes: their rows of every tap stay in L1
#: while each output channel's values are written (on six gradients of 64x64x3x3 to
#: 450x407x6x6, 8 ran 0.67-0.95x the time of 16, 32 and 64 up to 1.9x).
TRANSPOSE_CHANNELS = 8


@njit(parallel=True, cache=True)
def taps_to_weights(out, gw):
    """``gw (C_out, C_in, taps) = out (taps, C_in, C_out)`` transposed, in units of
    :data:`TRANSPOSE_CHANNELS` input channels: for each output channel, one contiguous run of
    their ``channels * taps`` values, read from rows of ``out`` that stay in L1. NumPy's copy
    of the reversed axes wrote a value per cache line (2.0 ms for a 3x3 256 -> 256 gradient,
    these 0.24); register-tiled transposes through a middle layout ran 0.7-1.5x this time,
    up to 3x on many taps (36 x 407 x 450: the middle copy passed through memory)."""
    taps, c_in, c_out = out.shape
    blocks = (c_in + TRANSPOSE_CHANNELS - 1) // TRANSPOSE_CHANNELS
    for block in prange(blocks):
        c0 = block * TRANSPOSE_CHANNELS
        c1 = min(c_in, c0 + TRANSPOSE_CHANNELS)
        for co in range(c_out):
            for ci in range(c0, c1):
                for t in range(taps):
                    gw[co, ci, t] = out[t, ci, co]
