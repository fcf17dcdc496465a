"""Numba kernels behind 1-D/2-D max and average pooling (``convlayers.functional.pooling``).

Every kernel works on a C-contiguous stack of planes ``(P, H, W)`` (``P = N*C``; 1-D pooling
is the case ``H == 1``), ``prange`` over planes, and reads the input *unpadded*: taps outside
the plane are skipped, which is what PyTorch's ``-inf`` (max) or zero (average) padding
amounts to. The forward kernels compute one output at a time over the taps inside its window
(bounds computed once per call); the average's backward runs along an output row over the
columns whose windows lie wholly inside, the few border columns in a checked loop.

Rules kept from PyTorch (and the NumPy path): taps are visited in row-major order; a tap
replaces the running maximum when it is larger or NaN (so the first maximum wins a tie and the
last NaN wins); the index of a window starts at its first tap inside the plane; an average
divides the sum of the taps inside by a per-window divisor computed by the caller.

These kernels are compiled without ``fastmath`` (which would let LLVM assume there is no NaN);
they are memory-bound anyway. Importing compiles nothing; the first call per dtype compiles
and ``cache=True`` keeps the machine code on disk.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from convlayers.kernels._bounds import inside_range, typed_zero
from convlayers.kernels._twin import serial_twin

#: The empty index array of a max pool that keeps none.
_NO_INDEX = np.empty((0, 0, 0), dtype=np.int64)

__all__ = ["AVG_WINDOW_COLUMNS", "WIDE_WINDOW", "adaptive_avg2d", "adaptive_avg2d_backward",
           "adaptive_max2d", "adaptive_max2d_columns", "avg_pool2d", "avg_pool2d_backward",
           "global_avg", "global_avg_serial", "global_max", "global_max_serial", "max_pool2d",
           "max_pool2d_indices", "scatter_add_planes"]


@njit(cache=True)
def _taps(n_out, size, k, s, p, d):
    """``(first, count)`` per output along an axis: its taps ``o*s - p + j*d`` inside
    ``[0, size)`` are ``first + i*d`` for ``i < count`` (count 0: none inside)."""
    first = np.empty(n_out, dtype=np.int64)
    count = np.empty(n_out, dtype=np.int64)
    for o in range(n_out):
        start = o * s - p
        lo = max(0, -(start // d))  # the first tap at or after 0
        hi = min(k, -(-(size - start) // d))  # past the last tap before size
        first[o] = start + lo * d
        count[o] = max(0, hi - lo)
    return first, count


def _pairs(kh, kw, sh, sw, ph, pw, dh, dw, H, W, out):
    """Whether a pool is 2x2 windows side by side (stride 2, no padding or dilation), each
    inside the plane: the unrolled kernels serve it."""
    return ((kh, kw, sh, sw, ph, pw, dh, dw) == (2, 2, 2, 2, 0, 0, 1, 1)
            and 2 * out.shape[1] <= H and 2 * out.shape[2] <= W)


def max_pool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, out, serial=False):
    """Max over each window into ``out`` ``(P, Ho, Wo)``; NaN propagates (the last NaN is the
    output). 2x2 windows side by side run unrolled (:func:`_max_pairs`), 3x3 stride-2 ones
    row by row (:func:`_max_3x3_stride_2_rows`), the others tap by tap
    (:func:`_max_by_tap`: 1.1-4x faster than window by window on every layer tried, 2-38
    output columns, strides 1-3). ``serial``: on the calling thread, by the kernels' serial
    twins (:func:`convlayers.kernels._twin.serial_twin`)."""
    if _pairs(kh, kw, sh, sw, ph, pw, dh, dw, x.shape[1], x.shape[2], out):
        (_max_pairs_serial if serial else _max_pairs)(x, out, _NO_INDEX)
    elif (kh, kw, sh, sw, dh, dw) == (3, 3, 2, 2, 1, 1):
        (_max_3x3_stride_2_rows_serial if serial else _max_3x3_stride_2_rows)(x, ph, pw, out)
    else:
        (_max_by_tap_serial if serial else _max_by_tap)(x, kh, kw, sh, sw, ph, pw, dh, dw, out)


@njit(parallel=True, cache=True)
def _max_by_tap(x, kh, kw, sh, sw, ph, pw, dh, dw, out):
    """:func:`max_pool2d` tap by tap along each output row: each tap is a select over the
    row's outputs (a tap replaces the running maximum when larger or NaN, in the windows'
    row-major order: the per-window rule), which vectorises. Window by window, the maximum of
    3x3 windows took 1.5 ns a tap; at stride 2 it ran 1.3-2.6x this kernel's time (3x3 stride
    2 has its own, faster still). Each tap's run of outputs is the same on every row
    (:func:`_tap_runs`), and the loops index by unsigned offsets with the stride a literal
    where it is 1 or 2 (see :func:`_avg_by_tap`)."""
    P, H, W = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    runs = _tap_runs(kw, dw, pw, sw, W, Wo)
    u = np.uint64
    for p in prange(P):
        for oh in range(Ho):
            orow = out[p, oh]
            for ow in range(Wo):
                orow[ow] = -np.inf
            h0 = oh * sh - ph
            for a in range(kh):
                r = h0 + a * dh
                if r < 0 or r >= H:
                    continue
                xrow = x[p, r]
                for b in range(kw):
                    d, s, n = u(runs[b, 0]), u(runs[b, 2]), u(runs[b, 1] - runs[b, 0])
                    if sw == 1:
                        _max_run(orow, d, xrow, s, u(1), n)
                    elif sw == 2:
                        _max_run(orow, d, xrow, s, u(2), n)
                    else:
                        _max_run(orow, d, xrow, s, u(sw), n)


@njit(cache=True, inline="always")
def _max_run(orow, d, xrow, s, step, n):
    """``orow[d + i] = max(orow[d + i], xrow[s + step*i])`` for ``i < n`` (NaN wins), unsigned
    offsets: inlined in numba's IR where it is called, so a constant ``step`` reaches LLVM
    as one and the loop vectorises."""
    for i in range(n):
        v, top = xrow[s + step * i], orow[d + i]
        orow[d + i] = v if (v > top) | (v != v) else top


@njit(cache=True, inline="always")
def _add_run(orow, d, xrow, s, step, n):
    """``orow[d + i] += xrow[s + step*i]`` for ``i < n``, as :func:`_max_run`."""
    for i in range(n):
        orow[d + i] += xrow[s + step * i]


@njit(cache=True, inline="always")
def _tap_runs(kw, dw, pw, sw, W, Wo):
    """``runs[b] = (lo, hi, first)`` of :func:`_row_run` for each tap column ``b``: the same on
    every row, so the row loops divide nothing (on 8x23x23 planes, 3x3 stride 2, the per-row
    divisions were most of the kernel's time)."""
    runs = np.empty((kw, 3), dtype=np.int64)
    for b in range(kw):
        runs[b, 0], runs[b, 1], runs[b, 2] = _row_run(b * dw - pw, sw, W, Wo)
    return runs


@njit(cache=True, inline="always")
def _row_run(off, sw, W, Wo):
    """``(lo, hi, first)``: the outputs ``lo .. hi`` of a row whose tap at column ``ow*sw +
    off`` lies inside ``[0, W)``, and the column of output ``lo``'s (``lo == hi``: none)."""
    lo = max(0, (-off + sw - 1) // sw)
    hi = max(lo, min(Wo, (W - 1 - off) // sw + 1)) if W - 1 - off >= 0 else lo
    return lo, hi, lo * sw + off


@njit(cache=True, inline="always")
def _keep(v, at, top, best):
    """PyTorch's max-pool step as selects: ``(v, at)`` when ``v`` is larger than the running
    maximum ``top`` or NaN, else ``(top, best)`` (straight-line code, so the unrolled kernels'
    rows vectorise)."""
    take = (v > top) | (v != v)
    return (v if take else top), (at if take else best)


@njit(parallel=True, cache=True)
def _max_pairs(x, out, idx):
    """2x2 stride-2 max pooling (and the flat index of each maximum, unless ``idx`` is empty),
    the four taps unrolled as selects in PyTorch's order and rule (larger or NaN replaces):
    straight-line code that LLVM vectorises along the output row. At batch 32 on 16x16 to
    64x64 maps it took 0.1-0.25x the time of the loop over each window's taps (whose trip
    counts are only known at run time), and 0.1-0.35x torch's."""
    P, W = x.shape[0], x.shape[2]
    Ho, Wo = out.shape[1], out.shape[2]
    with_index = idx.shape[0] > 0
    for p in prange(P):
        plane = x[p]
        for oh in range(Ho):
            r0 = plane[2 * oh]
            r1 = plane[2 * oh + 1]
            orow = out[p, oh]
            base0 = 2 * oh * W
            base1 = base0 + W
            if with_index:
                irow = idx[p, oh]
                for ow in range(Wo):
                    c = 2 * ow
                    top, best = r0[c], base0 + c
                    top, best = _keep(r0[c + 1], base0 + c + 1, top, best)
                    top, best = _keep(r1[c], base1 + c, top, best)
                    top, best = _keep(r1[c + 1], base1 + c + 1, top, best)
                    orow[ow] = top
                    irow[ow] = best
            else:  # the same steps without the index (a loop of its own: 0.75-0.85x the time)
                for ow in range(Wo):
                    c = 2 * ow
                    top = _keep(r0[c + 1], 0, r0[c], 0)[0]
                    top = _keep(r1[c], 0, top, 0)[0]
                    orow[ow] = _keep(r1[c + 1], 0, top, 0)[0]


@njit(cache=True, inline="always")
def _window_max(plane, r0, nr, dh, c0, nc, dw):
    """``(max, flat index)`` of the taps ``(r0 + i*dh, c0 + j*dw)``, ``i < nr``, ``j < nc`` of
    ``plane``, in PyTorch's order and rule (a branch: the running maximum of a window rarely
    changes after its first taps); ``(-inf, r0*W + c0)`` when empty, PyTorch's index of a
    window with no tap inside (its first tap at or after 0, ``_taps``' ``first``)."""
    W = plane.shape[1]
    top = -np.inf
    best = r0 * W + c0
    for i in range(nr):
        r = r0 + i * dh
        for j in range(nc):
            c = c0 + j * dw
            v = plane[r, c]
            if v > top or v != v:
                top = v
                best = r * W + c
    return top, best


@njit(parallel=True, cache=True)
def _max_3x3_stride_2(x, ph, pw, out, idx):
    """3x3 stride-2 max pooling (ResNet's stem pool), with the flat index of each maximum
    unless ``idx`` is empty: windows wholly inside the plane as nine unrolled selects in
    PyTorch's order and rule (vectorised along the row, as :func:`_max_pairs`), the border
    windows over the taps inside them. ResNet's pool at batch 1 and 16 (64 channels, 112x112)
    and two more: 0.45-0.6x the time of the loop over each window's taps, 0.3-0.66x torch's."""
    P, H, W = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    with_index = idx.shape[0] > 0
    rfirst, rcount = _taps(Ho, H, 3, 2, ph, 1)
    cfirst, ccount = _taps(Wo, W, 3, 2, pw, 1)
    lo, hi = inside_range(Wo, W, 3, 2, pw, 1)
    for p in prange(P):
        plane = x[p]
        for oh in range(Ho):
            r0, nr = rfirst[oh], rcount[oh]
            orow = out[p, oh]
            inner = nr == 3
            for ow in range(Wo):  # the border windows (all of them on a border row)
                if inner and lo <= ow < hi:
                    continue
                top, best = _window_max(plane, r0, nr, 1, cfirst[ow], ccount[ow], 1)
                orow[ow] = top
                if with_index:
                    idx[p, oh, ow] = best
            if not inner:
                continue
            a0, a1, a2 = plane[r0], plane[r0 + 1], plane[r0 + 2]
            for ow in range(lo, hi):  # flat indices from row r0
                c = 2 * ow - pw
                top, best = a0[c], c
                top, best = _keep(a0[c + 1], c + 1, top, best)
                top, best = _keep(a0[c + 2], c + 2, top, best)
                top, best = _keep(a1[c], W + c, top, best)
                top, best = _keep(a1[c + 1], W + c + 1, top, best)
                top, best = _keep(a1[c + 2], W + c + 2, top, best)
                top, best = _keep(a2[c], 2 * W + c, top, best)
                top, best = _keep(a2[c + 1], 2 * W + c + 1, top, best)
                top, best = _keep(a2[c + 2], 2 * W + c + 2, top, best)
                orow[ow] = top
                if with_index:
                    idx[p, oh, ow] = r0 * W + best


@njit(cache=True, inline="always")
def _top(v, top):
    """PyTorch's max-pool step on values alone: ``v`` when larger than ``top`` or NaN."""
    return v if (v > top) | (v != v) else top


@njit(parallel=True, cache=True)
def _max_3x3_stride_2_rows(x, ph, pw, out):
    """3x3 stride-2 max pooling without indices (ResNet's stem pool), in two passes per plane:
    each input row's maximum over every window's three columns (the maximum of every run of
    three columns, contiguous loads that vectorise, then every other one of them), then each
    output row's maximum of its three input rows' (contiguous rows: whole vectors). Rows shared
    by two windows are reduced once. Taps are taken in PyTorch's order and rule, row by row
    (larger or NaN replaces), so ties and signed zeros come out as PyTorch's: the first
    maximum in row-major order. ResNet-18's pool at batch 1 (64 planes of 112x112) took 2.1 ms
    as nine selects per window with the index logic of :func:`_max_3x3_stride_2`."""
    P, H, W = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    rfirst, rcount = _taps(Ho, H, 3, 2, ph, 1)
    cfirst, ccount = _taps(Wo, W, 3, 2, pw, 1)
    lo, hi = inside_range(Wo, W, 3, 2, pw, 1)
    for p in prange(P):
        plane = x[p]
        rows = np.empty((H, Wo), x.dtype)
        run = np.empty(max(W - 2, 1), x.dtype)
        for r in range(H):
            a = plane[r]
            h = rows[r]
            for i in range(W - 2):  # every column's run of three: contiguous, vectorises
                run[i] = _top(a[i + 2], _top(a[i + 1], a[i]))
            for ow in range(lo, hi):
                h[ow] = run[2 * ow - pw]
            for ow in range(Wo):
                if lo <= ow < hi:
                    continue
                top = -np.inf
                for j in range(ccount[ow]):
                    top = _top(a[cfirst[ow] + j], top)
                h[ow] = top
        for oh in range(Ho):
            r0, nr = rfirst[oh], rcount[oh]
            o = out[p, oh]
            if nr == 3:
                h0, h1, h2 = rows[r0], rows[r0 + 1], rows[r0 + 2]
                for ow in range(Wo):
                    o[ow] = _top(h2[ow], _top(h1[ow], h0[ow]))
            else:
                for ow in range(Wo):
                    top = -np.inf
                    for i in range(nr):
                        top = _top(rows[r0 + i, ow], top)
                    o[ow] = top


@njit(parallel=True, cache=True)
def _max_by_window(x, kh, kw, sh, sw, ph, pw, dh, dw, out):
    """:func:`max_pool2d` one output at a time, over the taps inside its window: each window's
    bounds are computed once per call, so no tap is checked and no row is cut into views (a
    loop over each output row per tap ran 1.2-2.5x this time; short rows do not vectorise).
    The maximum is a select, not a branch (random data mispredicts it). No longer dispatched
    (:func:`_max_by_tap` now indexes without views and was faster on every layer tried): kept
    as the plain per-window rule the tests hold the other kernels to."""
    P, H, W = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    rfirst, rcount = _taps(Ho, H, kh, sh, ph, dh)
    cfirst, ccount = _taps(Wo, W, kw, sw, pw, dw)
    for p in prange(P):
        plane = x[p]
        for oh in range(Ho):
            r0, nr = rfirst[oh], rcount[oh]
            for ow in range(Wo):
                c0, nc = cfirst[ow], ccount[ow]
                top = -np.inf
                nan = False
                last_nan = top
                for i in range(nr):
                    r = r0 + i * dh
                    for j in range(nc):
                        v = plane[r, c0 + j * dw]
                        isnan = v != v
                        last_nan = v if isnan else last_nan
                        nan |= isnan
                        top = v if v > top else top
                out[p, oh, ow] = last_nan if nan else top


def max_pool2d_indices(x, kh, kw, sh, sw, ph, pw, dh, dw, out, idx):
    """Max and its flat in-plane index (PyTorch's tie and NaN rules) into ``out`` and ``idx``.

    A tap replaces the running maximum when it is larger or NaN, a branch as in PyTorch: the
    index makes a select cost two of them, and the running maximum of overlapping windows
    rarely changes. 2x2 windows side by side and 3x3 stride-2 windows run unrolled
    (:func:`_max_pairs`, :func:`_max_3x3_stride_2`); other windows that overlap along the
    row (column stride 1) tap by tap along each output row (long inner loops); the rest one
    output at a time over the taps inside it (0.4-0.7x the tap-by-tap order's time on strided
    pools, which ran 2.7-3.4x faster at stride 1)."""
    if _pairs(kh, kw, sh, sw, ph, pw, dh, dw, x.shape[1], x.shape[2], out):
        _max_pairs(x, out, idx)
    elif (kh, kw, sh, sw, dh, dw) == (3, 3, 2, 2, 1, 1):
        _max_3x3_stride_2(x, ph, pw, out, idx)
    elif sw == 1 and kw > 1:
        _max_indices_by_tap(x, kh, kw, sh, sw, ph, pw, dh, dw, out, idx)
    else:
        _max_indices_by_window(x, kh, kw, sh, sw, ph, pw, dh, dw, out, idx)


@njit(parallel=True, cache=True)
def _max_indices_by_window(x, kh, kw, sh, sw, ph, pw, dh, dw, out, idx):
    """:func:`max_pool2d_indices` one output at a time, as :func:`_max_by_window`."""
    P, H, W = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    rfirst, rcount = _taps(Ho, H, kh, sh, ph, dh)
    cfirst, ccount = _taps(Wo, W, kw, sw, pw, dw)
    for p in prange(P):
        plane = x[p]
        for oh in range(Ho):
            r0, nr = rfirst[oh], rcount[oh]
            for ow in range(Wo):
                top, best = _window_max(plane, r0, nr, dh, cfirst[ow], ccount[ow], dw)
                out[p, oh, ow] = top
                idx[p, oh, ow] = best


@njit(parallel=True, cache=True)
def _max_indices_by_tap(x, kh, kw, sh, sw, ph, pw, dh, dw, out, idx):
    """:func:`max_pool2d_indices` tap by tap along each output row: the stride-1 order."""
    P, H, W = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    for p in prange(P):
        for oh in range(Ho):
            orow = out[p, oh]
            irow = idx[p, oh]
            h0 = oh * sh - ph
            r0 = h0  # a window with no tap inside keeps PyTorch's start: first tap >= 0
            while r0 < 0:
                r0 += dh
            for a in range(kh):
                if 0 <= h0 + a * dh < H:
                    r0 = h0 + a * dh
                    break
            for ow in range(Wo):
                c0 = ow * sw - pw
                first = c0
                while first < 0:
                    first += dw
                for b in range(kw):
                    if 0 <= c0 + b * dw < W:
                        first = c0 + b * dw
                        break
                orow[ow] = -np.inf
                irow[ow] = r0 * W + first
            for a in range(kh):
                r = h0 + a * dh
                if r < 0 or r >= H:
                    continue
                xrow = x[p, r]
                for b in range(kw):
                    off = b * dw - pw
                    for ow in range(Wo):
                        c = ow * sw + off
                        if 0 <= c < W:
                            v = xrow[c]
                            if v > orow[ow] or v != v:
                                orow[ow] = v
                                irow[ow] = r * W + c


#: Output columns up to which a strided average pool runs window by window
#: (:func:`_avg_by_window`): each tap's run of a row is then a few strided values, and the
#: run's setup costs more than its adds. Against :func:`_avg_by_tap`, 3x3 windows on 4-8
#: output columns at stride 2 or 3 took 0.65-0.88x the time (133 planes of 10x10 at stride 2:
#: 10.6 us against 14.1), 0.92-0.98x on 7-10, 1.2x on 10 at stride 3; at stride 1, 1.05-1.2x
#: on 7 columns.
AVG_WINDOW_COLUMNS = 8


def avg_pool2d(x, kh, kw, sh, sw, ph, pw, div, out, serial=False):
    """Sum of the taps inside each window divided by ``div[oh, ow]``, into ``out``, summed in
    ``x``'s dtype in row-major tap order (the NumPy path's order, to the bit): 2x2 windows side
    by side unrolled (:func:`_avg_pairs`), strided windows on rows of at most
    :data:`AVG_WINDOW_COLUMNS` outputs window by window (:func:`_avg_by_window`), the others
    tap by tap (:func:`_avg_by_tap`); ``serial`` as :func:`max_pool2d`'s."""
    if _pairs(kh, kw, sh, sw, ph, pw, 1, 1, x.shape[1], x.shape[2], out):
        (_avg_pairs_serial if serial else _avg_pairs)(x, div, out)
    elif sw >= 2 and out.shape[2] <= AVG_WINDOW_COLUMNS:
        (_avg_by_window_serial if serial else _avg_by_window)(x, kh, kw, sh, sw, ph, pw, div,
                                                              out)
    else:
        (_avg_by_tap_serial if serial else _avg_by_tap)(x, kh, kw, sh, sw, ph, pw, div, out)


@njit(parallel=True, cache=True)
def _avg_by_tap(x, kh, kw, sh, sw, ph, pw, div, out):
    """:func:`avg_pool2d` tap by tap along each output row, as :func:`_max_by_tap`: each output
    still sums its taps inside the input from zero in row-major order (the window-by-window
    sums, to the bit), a vectorised add per tap. The loops index by unsigned offsets from
    runs computed once a call, with the stride a literal where it is 1 or 2: through views
    and signed indices (numba's wraparound check) the strided loops ran scalar, and window by
    window was faster at stride 2. Now against the window-by-window kernel: 3x3 stride 2 on
    64x56x56 0.38x the time, on 8x23x23 0.72x, 5x5 stride 3 0.83x."""
    P, H, W = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    runs = _tap_runs(kw, 1, pw, sw, W, Wo)
    u = np.uint64
    for p in prange(P):
        for oh in range(Ho):
            orow = out[p, oh]
            for ow in range(Wo):
                orow[ow] = 0
            h0 = oh * sh - ph
            for a in range(kh):
                r = h0 + a
                if r < 0 or r >= H:
                    continue
                xrow = x[p, r]
                for b in range(kw):
                    d, s, n = u(runs[b, 0]), u(runs[b, 2]), u(runs[b, 1] - runs[b, 0])
                    if sw == 1:
                        _add_run(orow, d, xrow, s, u(1), n)
                    elif sw == 2:
                        _add_run(orow, d, xrow, s, u(2), n)
                    else:
                        _add_run(orow, d, xrow, s, u(sw), n)
            drow = div[oh]
            for ow in range(Wo):
                orow[ow] /= drow[ow]


@njit(parallel=True, cache=True)
def _avg_pairs(x, div, out):
    """2x2 stride-2 average pooling, the four taps unrolled in row-major order (straight-line
    code that LLVM vectorises along the output row, as :func:`_max_pairs`)."""
    P = x.shape[0]
    Ho, Wo = out.shape[1], out.shape[2]
    for p in prange(P):
        plane = x[p]
        for oh in range(Ho):
            r0 = plane[2 * oh]
            r1 = plane[2 * oh + 1]
            orow = out[p, oh]
            drow = div[oh]
            for ow in range(Wo):
                c = 2 * ow
                total = r0[c] + r0[c + 1]
                total += r1[c]
                total += r1[c + 1]
                orow[ow] = total / drow[ow]


@njit(parallel=True, cache=True)
def _avg_by_window(x, kh, kw, sh, sw, ph, pw, div, out):
    """:func:`avg_pool2d` one output at a time, as :func:`_max_by_window`: the plain statement
    of the summation order the tests hold the other kernels to, bit for bit, and the kernel of
    strided pools on short rows (:data:`AVG_WINDOW_COLUMNS`; elsewhere :func:`_avg_by_tap` is
    faster)."""
    P, H, W = x.shape
    zero = typed_zero(out)
    Ho, Wo = out.shape[1], out.shape[2]
    rfirst, rcount = _taps(Ho, H, kh, sh, ph, 1)
    cfirst, ccount = _taps(Wo, W, kw, sw, pw, 1)
    for p in prange(P):
        plane = x[p]
        for oh in range(Ho):
            r0, nr = rfirst[oh], rcount[oh]
            drow = div[oh]
            for ow in range(Wo):
                c0, nc = cfirst[ow], ccount[ow]
                total = zero
                for r in range(r0, r0 + nr):
                    for c in range(c0, c0 + nc):
                        total += plane[r, c]
                out[p, oh, ow] = total / drow[ow]


def avg_pool2d_backward(gy, kh, kw, sh, sw, ph, pw, div, gx):
    """``gx[p] = 0``, then add ``gy / div`` onto every input element of each window (``gx`` may
    start uninitialised: each plane is zeroed by the thread that fills it, see
    :func:`scatter_add_planes`); 2x2 windows side by side unrolled
    (:func:`_avg_pairs_backward`), the others :func:`_avg_backward_by_rows`."""
    if _pairs(kh, kw, sh, sw, ph, pw, 1, 1, gx.shape[1], gx.shape[2], gy):
        _avg_pairs_backward(gy, div, gx)
    else:
        _avg_backward_by_rows(gy, kh, kw, sh, sw, ph, pw, div, gx)


@njit(parallel=True, cache=True)
def _avg_pairs_backward(gy, div, gx):
    """:func:`avg_pool2d_backward` of 2x2 windows side by side: each input element inside a
    window receives its window's share plus zero (as the general kernel adds it onto zero: a
    ``-0.0`` share lands as ``0.0``), the rest zero."""
    P, H, W = gx.shape
    Ho, Wo = gy.shape[1], gy.shape[2]
    zero = typed_zero(gx)
    for p in prange(P):
        for r in range(2 * Ho, H):
            gx[p, r, :] = 0
        for oh in range(Ho):
            grow = gy[p, oh]
            drow = div[oh]
            x0 = gx[p, 2 * oh]
            x1 = gx[p, 2 * oh + 1]
            for ow in range(Wo):
                share = zero + grow[ow] / drow[ow]
                c = 2 * ow
                x0[c] = share
                x0[c + 1] = share
                x1[c] = share
                x1[c + 1] = share
            for c in range(2 * Wo, W):
                x0[c] = 0
                x1[c] = 0


@njit(parallel=True, cache=True)
def _avg_backward_by_rows(gy, kh, kw, sh, sw, ph, pw, div, gx):
    """:func:`avg_pool2d_backward` along the output rows: each tap adds the shares of the
    outputs whose tap lies inside the row (:func:`_row_run`) onto a run of it, from the run's
    first element (a vectorised add at column stride 1). A loop with the stride a run-time
    value, indices that might be negative, and a bounds check of each edge output per tap ran
    3x torch's time at 3x3 stride 1."""
    P, H, W = gx.shape
    Ho, Wo = gy.shape[1], gy.shape[2]
    # each tap column's run, worked out once: per plane, row and tap (two divisions each)
    # they took most of a small plane's time (23x43x11x11 3x3 stride 2: 0.27 ms, torch 0.12)
    runs = np.empty((kw, 3), np.int64)
    for b in range(kw):
        runs[b, 0], runs[b, 1], runs[b, 2] = _row_run(b - pw, sw, W, Wo)
    shares = np.empty((P, Wo), dtype=gx.dtype)  # one allocation, not one a plane
    for p in prange(P):
        for r in range(H):
            gx[p, r, :] = 0
        share = shares[p]
        for oh in range(Ho):
            grow = gy[p, oh]
            drow = div[oh]
            for ow in range(Wo):
                share[ow] = grow[ow] / drow[ow]
            h0 = oh * sh - ph
            for a in range(kh):
                r = h0 + a
                if r < 0 or r >= H:
                    continue
                xrow = gx[p, r]
                for b in range(kw):
                    lo, hi, first = runs[b, 0], runs[b, 1], runs[b, 2]
                    src = share[lo:hi]
                    if sw == 1:
                        dst = xrow[first:first + hi - lo]
                        for i in range(hi - lo):
                            dst[i] += src[i]
                    else:
                        dst = xrow[first:]
                        for i in range(hi - lo):
                            dst[i * sw] += src[i]


@njit(parallel=True, cache=True)
def scatter_add_planes(gy, idx, gx):
    """``gx[p] = 0`` then ``gx[p, idx[p, i]] += gy[p, i]`` (``gx`` may start uninitialised);
    returns how many indices fell outside ``[0, M)``.

    Each plane is zeroed by the thread that then scatters into it: the zeroing writes the
    plane's pages in order (first touch of freshly mapped memory, in parallel) and leaves the
    plane in that core's cache for the scatter. Scattering into ``np.zeros`` memory instead
    took the page faults in random order inside the scatter, 3x slower on 2 cores."""
    P, L = gy.shape
    M = gx.shape[1]
    bad = np.empty(P, dtype=np.int64)  # (np.zeros would be a parallel region of its own)
    for p in prange(P):
        bad[p] = 0
        row = gx[p]
        for j in range(M):
            row[j] = 0
        for i in range(L):
            j = idx[p, i]
            if j < 0 or j >= M:
                bad[p] += 1
            else:
                gx[p, j] += gy[p, i]
    total = 0
    for p in range(P):  # a loop: bad.sum() would be a parallel reduction
        total += bad[p]
    return total


# ----------------------------------------------------------------------------- adaptive pooling
#
# Output cell ``o`` of an axis of length ``L`` pooled to ``O`` covers ``[lo[o], hi[o])`` (PyTorch's
# rule, computed by the caller). Windows may overlap; each output reads its window directly.


#: Elements of a window's run of memory summed in the input's dtype before joining the float64
#: sum: float32 additions go twice as wide as float64 ones, and a block's rounding stays far
#: below torch's own.
_RUN_BLOCK = 256


@njit(cache=True, fastmath={"reassoc", "contract"}, inline="always")
def _run_sum(run, zero):
    """The float64 sum of a contiguous run, in blocks of :data:`_RUN_BLOCK` summed in the run's
    dtype (8 lanes wide; ``zero`` of that dtype)."""
    s = 0.0
    for b0 in range(0, run.size, _RUN_BLOCK):
        block = run[b0:b0 + _RUN_BLOCK]
        part = zero
        for c in range(block.size):
            part += block[c]
        s += part
    return s


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def adaptive_avg2d(x, rlo, rhi, clo, chi, out, serial):
    """``out[p, i, j]`` = mean of ``x[p, rlo[i]:rhi[i], clo[j]:chi[j]]`` (``x (P, H, W)``),
    summed in float64 (``reassoc`` lets the sums vectorise and keeps NaN and inf); on the
    calling thread alone when ``serial`` (no parallel region: small calls).

    ``x`` is C-contiguous: a window as wide as the plane is one run of memory, summed in one
    loop of blocks (a loop per row of a small plane cost 3x as much: short rows do not
    vectorise). Narrower windows sum the rows of each output row's window column by column
    first (8x8 windows of 56x56 maps: 2.7x torch's time window by window)."""
    P = x.shape[0]
    if serial:
        for p in range(P):
            _avg_plane(x, p, rlo, rhi, clo, chi, out)
    else:
        for p in prange(P):
            _avg_plane(x, p, rlo, rhi, clo, chi, out)


@njit(cache=True, fastmath={"reassoc", "contract"}, inline="always")
def _avg_plane(x, p, rlo, rhi, clo, chi, out):
    """Plane ``p`` of :func:`adaptive_avg2d`."""
    P, H, W = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    zero = typed_zero(x)
    if Wo == 1 and clo[0] == 0 and chi[0] == W:  # each window one run of memory
        flat = x.reshape(P, H * W)
        for i in range(Ho):
            r0, r1 = rlo[i], rhi[i]
            out[p, i, 0] = _run_sum(flat[p, r0 * W:r1 * W], zero) / ((r1 - r0) * W)
        return
    # the window rows' sums per column (whole rows: vector adds), then each window's
    # columns of them; window by window, a loop of a few taps per row ran 3.5 ns a tap
    sums = np.empty(W, dtype=np.float64)
    for i in range(Ho):
        r0, r1 = rlo[i], rhi[i]
        for c in range(W):
            sums[c] = x[p, r0, c]
        for r in range(r0 + 1, r1):
            for c in range(W):
                sums[c] += x[p, r, c]
        for j in range(Wo):
            c0, c1 = clo[j], chi[j]
            s = 0.0
            for c in range(c0, c1):
                s += sums[c]
            out[p, i, j] = s / ((r1 - r0) * (c1 - c0))


@njit(parallel=True, cache=True)
def adaptive_avg2d_backward(gy, rlo, rhi, clo, chi, gx):
    """The gradient of :func:`adaptive_avg2d`: each window gets its output's gradient over its
    size; ``gx (P, H, W)`` is overwritten."""
    P = gy.shape[0]
    Ho, Wo = gy.shape[1], gy.shape[2]
    for p in prange(P):
        plane = gx[p]
        plane[:] = 0
        for i in range(Ho):
            r0, r1 = rlo[i], rhi[i]
            for j in range(Wo):
                c0, c1 = clo[j], chi[j]
                share = gy[p, i, j] / ((r1 - r0) * (c1 - c0))
                for r in range(r0, r1):
                    row = plane[r, c0:c1]
                    for c in range(c1 - c0):
                        row[c] += share


#: Windows at least this many columns wide take :func:`adaptive_max2d_columns` (on 12 such
#: pools 0.24-0.77x torch's time, where the scan took 0.7-2.6x; 1.2x on 14x14 planes to 2x2);
#: narrower ones :func:`adaptive_max2d`, the scan of :data:`_SCAN_PLANES` planes side by side
#: (on windows of 2-4 columns 0.4-0.65x torch's time, the columns' 0.35-1.25x).
WIDE_WINDOW = 5


@njit(cache=True, inline="always")
def _take(v, best, at, here):
    """One tap of a window's scan: ``v`` replaces the running maximum when larger or NaN."""
    take = (v > best) | (v != v)
    return (v if take else best), (here if take else at)


#: Planes whose windows one scan walks side by side: each tap's compare waits on the previous
#: one's result, so a lone scan ran at one tap per 11 cycles; four run in the same time.
_SCAN_PLANES = 4


@njit(parallel=True, cache=True)
def adaptive_max2d(x, rlo, rhi, clo, chi, out, idx, with_indices, serial):
    """``out[p, i, j]`` = max of the window, taps in row-major order: a tap replaces the running
    maximum when larger or NaN (the first maximum wins a tie, the last NaN wins); ``idx`` gets
    its flat index ``r*W + c`` when ``with_indices``; on the calling thread alone when
    ``serial`` (no parallel region: small calls).

    Each window is scanned, on :data:`_SCAN_PLANES` planes at once (windows of fewer than
    :data:`WIDE_WINDOW` columns; wider ones take :func:`adaptive_max2d_columns`)."""
    groups = (x.shape[0] + _SCAN_PLANES - 1) // _SCAN_PLANES
    if serial:
        for g in range(groups):
            _max_scan(x, g, rlo, rhi, clo, chi, out, idx, with_indices)
    else:
        for g in prange(groups):
            _max_scan(x, g, rlo, rhi, clo, chi, out, idx, with_indices)


@njit(cache=True, inline="always")
def _max_scan(x, g, rlo, rhi, clo, chi, out, idx, with_indices):
    """Group ``g`` of :data:`_SCAN_PLANES` planes of :func:`adaptive_max2d`."""
    P, W = x.shape[0], x.shape[2]
    Ho, Wo = out.shape[1], out.shape[2]
    G = _SCAN_PLANES
    p0 = g * G
    count = min(G, P - p0)
    p1, p2, p3 = p0 + min(1, count - 1), p0 + min(2, count - 1), p0 + min(3, count - 1)
    for i in range(Ho):
        r0, r1 = rlo[i], rhi[i]
        for j in range(Wo):
            c0, c1 = clo[j], chi[j]
            first = r0 * W + c0
            b0, b1, b2, b3 = x[p0, r0, c0], x[p1, r0, c0], x[p2, r0, c0], x[p3, r0, c0]
            a0 = a1 = a2 = a3 = first
            for r in range(r0, r1):
                for c in range(c0, c1):
                    here = r * W + c
                    b0, a0 = _take(x[p0, r, c], b0, a0, here)
                    b1, a1 = _take(x[p1, r, c], b1, a1, here)
                    b2, a2 = _take(x[p2, r, c], b2, a2, here)
                    b3, a3 = _take(x[p3, r, c], b3, a3, here)
            out[p0, i, j] = b0
            out[p1, i, j] = b1
            out[p2, i, j] = b2
            out[p3, i, j] = b3
            if with_indices:
                idx[p0, i, j] = a0
                idx[p1, i, j] = a1
                idx[p2, i, j] = a2
                idx[p3, i, j] = a3


@njit(parallel=True, cache=True)
def adaptive_max2d_columns(x, rlo, rhi, clo, chi, out, idx, with_indices, tops, rows, R, serial):
    """:func:`adaptive_max2d` by columns, per plane and output row: first each column's
    maximum over the window's rows and the first row that reached it (by :func:`_take`'s rule,
    elementwise along the row: vector compares and selects, no chain from tap to tap), then
    each window's maximum over its columns' ones. The first tap in row-major order that holds
    the window's maximum is the column top that equals it with the earliest row (ties: the
    leftmost column), which is where the scan would stop replacing.

    A window with a NaN (a column top is NaN) is scanned itself: there the last NaN wins.
    ``tops`` (of ``x``'s dtype) and ``rows`` (int64) are scratch, ``(threads, >= W)``; on the
    calling thread alone when ``serial`` (no parallel region: small calls). Units
    of one plane's ``R`` output rows (small planes: whole planes, so a unit is not all
    overhead)."""
    Ho = out.shape[1]
    units = x.shape[0] * ((Ho + R - 1) // R)
    if serial:
        for unit in range(units):
            _max_columns(x, unit, rlo, rhi, clo, chi, out, idx, with_indices, tops[0], rows[0],
                         R)
    else:
        for unit in prange(units):
            t = numba.get_thread_id()
            _max_columns(x, unit, rlo, rhi, clo, chi, out, idx, with_indices, tops[t], rows[t],
                         R)


@njit(cache=True, inline="always")
def _max_columns(x, unit, rlo, rhi, clo, chi, out, idx, with_indices, top, at, R):
    """Unit ``unit`` (a plane's ``R`` output rows) of :func:`adaptive_max2d_columns`, in one
    thread's scratch ``top``, ``at``."""
    W = x.shape[2]
    Ho, Wo = out.shape[1], out.shape[2]
    nr = (Ho + R - 1) // R
    p = unit // nr
    first = (unit % nr) * R
    for i in range(first, min(Ho, first + R)):
        r0, r1 = rlo[i], rhi[i]
        line = x[p, r0]
        for c in range(W):
            top[c] = line[c]
            at[c] = r0
        for r in range(r0 + 1, r1):
            line = x[p, r]
            for c in range(W):
                v = line[c]
                best = top[c]
                take = (v > best) | (v != v)
                top[c] = v if take else best
                at[c] = r if take else at[c]
        for j in range(Wo):
            c0, c1 = clo[j], chi[j]
            best = top[c0]
            best_row = at[c0]
            best_col = c0
            nan = best != best
            for c in range(c0 + 1, c1):
                v = top[c]
                nan |= v != v
                if v > best or (v == best and at[c] < best_row):
                    best = v
                    best_row = at[c]
                    best_col = c
            flat = best_row * W + best_col
            if nan:
                best = x[p, r0, c0]
                flat = r0 * W + c0
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        best, flat = _take(x[p, r, c], best, flat, r * W + c)
            out[p, i, j] = best
            if with_indices:
                idx[p, i, j] = flat


@njit(cache=True)
def global_max_serial(x, out, idx, with_indices):
    """``out[p]`` = the maximum of row ``p`` of ``x (P, L)`` (C-contiguous), by
    :func:`adaptive_max2d`'s rule (the first maximum wins a tie, the last NaN wins), ``idx[p]``
    its index when ``with_indices``; on the calling thread. For global pooling of small
    inputs: a parallel region and the thread-count switch around it cost more than the scan
    (1x6x15x15 took 15 us where torch takes 5)."""
    for p in range(x.shape[0]):
        _global_max_row(x[p], out, idx, p, with_indices)


@njit(parallel=True, cache=True)
def global_max(x, out, idx, with_indices):
    """:func:`global_max_serial` with the rows split over the threads: global pooling of
    larger inputs (the column-tops kernel took 1.6 ns an element on 13x13 planes, 2.1x
    torch's time)."""
    for p in prange(x.shape[0]):
        _global_max_row(x[p], out, idx, p, with_indices)


@njit(cache=True, inline="always")
def _global_max_row(row, out, idx, p, with_indices):
    """``out[p]`` (and ``idx[p]``) of :func:`global_max_serial` for its row ``row``: four
    running maxima (each compare waits on the previous one's result; a running maximum per
    lane of a 16-tap block, kept in a small array, ran 2.3x slower), NaN noted apart; the
    first tap equal to the maximum (or the last NaN) found afterwards, when its index is
    asked for or the maximum is a zero (whose sign is the first one's); any other maximum is
    the value of every tap equal to it (4x219x8x8 to 1: 59 -> 40 us, torch 50)."""
    L = row.shape[0]
    b0 = b1 = b2 = b3 = row[0]
    nan = row[0] != row[0]
    quads = L - L % 4
    for i in range(0, quads, 4):
        v0, v1, v2, v3 = row[i], row[i + 1], row[i + 2], row[i + 3]
        b0 = v0 if v0 > b0 else b0
        b1 = v1 if v1 > b1 else b1
        b2 = v2 if v2 > b2 else b2
        b3 = v3 if v3 > b3 else b3
        nan |= (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3)
    for i in range(quads, L):
        v = row[i]
        b0 = v if v > b0 else b0
        nan |= v != v
    b0 = b1 if b1 > b0 else b0
    b2 = b3 if b3 > b2 else b2
    best = b2 if b2 > b0 else b0
    at = 0
    if nan:
        for i in range(L - 1, -1, -1):
            if row[i] != row[i]:
                best, at = row[i], i
                break
    elif with_indices or best == 0:  # the first tap equal to it (its sign too: -0.0 == 0.0)
        for i in range(L):
            if row[i] == best:
                best, at = row[i], i
                break
    out[p] = best
    if with_indices:
        idx[p] = at


@njit(cache=True, fastmath={"reassoc", "contract"})
def global_avg_serial(x, out):
    """``out[p]`` = the mean of row ``p`` of ``x (P, L)`` (C-contiguous), summed as
    :func:`adaptive_avg2d` sums a window as wide as the plane (blocks in ``x``'s dtype into
    float64); on the calling thread, for global pooling of small inputs."""
    zero = typed_zero(x)
    for p in range(x.shape[0]):
        out[p] = _run_sum(x[p], zero) / x.shape[1]


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def global_avg(x, out):
    """:func:`global_avg_serial` with the rows split over the threads: global average pooling
    of larger inputs. The window kernel (:func:`adaptive_avg2d`) took 2.5x as long on
    16x1280x7x7 and 2.4x on 32x512x7x7 (its window bounds per plane), 5x torch's time."""
    zero = typed_zero(x)
    for p in prange(x.shape[0]):
        out[p] = _run_sum(x[p], zero) / x.shape[1]



_max_pairs_serial = serial_twin(_max_pairs)
_max_3x3_stride_2_rows_serial = serial_twin(_max_3x3_stride_2_rows)
_max_by_tap_serial = serial_twin(_max_by_tap)
_avg_pairs_serial = serial_twin(_avg_pairs)
_avg_by_tap_serial = serial_twin(_avg_by_tap)
_avg_by_window_serial = serial_twin(_avg_by_window)
