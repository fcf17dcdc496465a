"""The engine's ``pointwise`` strategy: 1x1 kernels by the register-tiled GEMM over pixel columns.

The images are viewed as ``(N, g, C_in/g, H*W)`` (no copy at stride 1) and multiplied by
:func:`convlayers.kernels.conv.pointwise`; the input gradient is the same kernel with the
weights transposed, the weight gradient per-thread ``grad @ x^T`` sums.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from convlayers import config
from convlayers.functional._common import pad_pairs
from convlayers.functional._compiled import _numba_threads, kernels
from convlayers.functional._engine_shared import _bias_arg, _quiet, remembered
from convlayers.functional._scratch import take
from convlayers.functional._strided import _index, put_phase, take_phase
from convlayers.functional.plan import Geometry


def _subsampled(xp: np.ndarray, stride: tuple[int, int], out_shape: tuple[int, int],
                scratch: str | None = None) -> np.ndarray:
    """The pixels a 1x1 kernel reads: every ``stride``-th, ``out_shape`` of them (copied into
    this thread's ``scratch`` buffer of that name when given)."""
    if stride == (1, 1) and xp.shape[2:] == out_shape:
        return xp
    return take_phase(xp, (0, 0), stride, out_shape, scratch)


#: The scratch buffer of the pixels a strided 1x1 forward reads: a new array on every call was
#: fresh pages each time past glibc's mmap threshold (8x64x56x56 -> 4 at stride 2: 0.67 ms,
#: 0.27 in kept pages; torch 0.34-0.38).
PHASE_SCRATCH = "pointwise.phase"


def _fwd_pointwise(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                   g: Geometry) -> np.ndarray:
    if _tiny(g):
        return _tiny_product(g)(x, w, bias)
    if _few(g) and min(g.pt, g.pl) >= 0:
        return _fwd_few(x, w, bias, g)
    taps = w.reshape(g.groups, g.c_out_g, g.c_in_g)
    out = np.empty((g.n, g.groups, g.c_out_g, g.ho * g.wo), dtype=x.dtype)
    xp = pad_pairs(x, ((g.pt, g.pb), (g.pl, g.pr)))
    xs = _subsampled(xp, (g.sh, g.sw), (g.ho, g.wo), PHASE_SCRATCH).reshape(
        g.n, g.groups, g.c_in_g, -1)
    _pointwise(xs, np.ascontiguousarray(taps), _bias_arg(bias, x.dtype), out)
    return out.reshape(g.n, g.c_out, g.ho, g.wo)


def ready_pointwise(g: Geometry, threads: int,
                    ) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]:
    """:func:`_fwd_pointwise` of ``g`` for a call that runs on ``threads`` threads, with the
    kernel's units and views worked out once (:mod:`convlayers.functional._ready`): an
    unpadded layer of many channels straight to the kernel (through a strided copy of the
    pixels it reads at a stride; on the calling thread by the kernel's serial twin when
    ``threads`` is 1, see :func:`ready_alone`), any other as :func:`_fwd_pointwise`."""
    if _tiny(g):
        return _tiny_product(g)
    if _few(g) or g.padded:
        return functools.partial(_fwd_pointwise, g=g)
    length = g.ho * g.wo
    block, rows = _pointwise_units(g.n, g.c_in_g, length, g.c_out_g, g.itemsize, threads)
    k = kernels().conv
    kernel = k.pointwise_serial if threads == 1 else k.pointwise
    columns = (g.n, g.groups, g.c_in_g, length)
    products = (g.n, g.groups, g.c_out_g, length)
    taps = (g.groups, g.c_out_g, g.c_in_g)
    result = (g.n, g.c_out, g.ho, g.wo)
    strided = (g.sh, g.sw) != (1, 1) or (g.h, g.w) != (g.ho, g.wo)
    stride, pixels = (g.sh, g.sw), (g.ho, g.wo)
    panel = _panel_elements(g.c_in_g, length, block, rows, g.itemsize)

    def forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        out = np.empty(products, dtype=x.dtype)
        xs = take_phase(x, (0, 0), stride, pixels, PHASE_SCRATCH) if strided else x
        kernel(xs.reshape(columns), np.ascontiguousarray(w.reshape(taps)),
               _bias_arg(bias, x.dtype), block, rows,
               take(PANEL_SCRATCH, (threads, panel), x.dtype), out)
        return out.reshape(result)

    return forward


def _tiny(g: Geometry) -> bool:
    """Whether the forward of ``g`` is one small product (:func:`_tiny_product`): unpadded, at
    most ``config.engine.pointwise_numpy_macs`` multiply-adds, and not depthwise. NumPy's
    batched ``matmul`` runs a depthwise layer as one product of a row or two per image and
    channel, a microsecond each, where :func:`_fwd_few` scales the planes in place: 62 -> 186
    (a multiplier of 3) on 1x62x21x21, 115 us against 17; 64 -> 64 on 4x64x28x28, 312 us
    against 27 (torch 169); 414 -> 414 at stride 2 on 6x414x13x13, 336 against 133 (torch
    222)."""
    return (not g.padded and g.macs <= config.engine.pointwise_numpy_macs
            and g.c_in_g > 1)


@functools.lru_cache(maxsize=1024)
def _tiny_product(g: Geometry) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None],
                                           np.ndarray]:
    """The forward of an unpadded 1x1 layer of at most ``config.engine.pointwise_numpy_macs``
    multiply-adds as one ``matmul`` of the weights ``(g, C_out/g, C_in/g)`` by a view of the
    pixels it reads ``(N, g, C_in/g, Ho*Wo)``: a call of a few microseconds, where the compiled
    kernel's own costs are several times the product's. The first call and the remembered ones
    (:func:`ready_pointwise`) both take it, so they give the same bits, on any thread count."""
    pick = _index((0, 0), (g.sh, g.sw), (g.ho, g.wo))  # the pixels take_phase would copy
    columns = (g.n, g.groups, g.c_in_g, g.ho * g.wo)
    taps = (g.groups, g.c_out_g, g.c_in_g)
    shift = (1, g.groups, g.c_out_g, 1)
    result = (g.n, g.c_out, g.ho, g.wo)

    @_quiet  # inf and NaN as the kernels give them, without NumPy's warnings
    def forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        out = np.matmul(w.reshape(taps), x[pick].reshape(columns))
        if bias is not None:
            out += bias.reshape(shift)
        return out.reshape(result)

    return forward


def ready_alone(g: Geometry) -> bool:
    """Whether :func:`ready_pointwise` calls the kernel itself (so that, planned for one
    thread, it runs on the calling thread with no thread setting to apply): an unpadded layer
    that :func:`_few` leaves to the register tiles, or one small product (:func:`_tiny`,
    NumPy's, on the calling thread)."""
    return _tiny(g) or not (_few(g) or g.padded)


def _few(g: Geometry) -> bool:
    """Whether a 1x1 layer has so few channels per group that summing rows in place beats
    the register tiles: a depthwise one (any multiplier, any stride), one output channel a
    group (two at a stride: a product of one or two rows on tiles of four wastes the rest,
    and needs a strided copy first; on 60 random grouped layers 0.27-0.7x the tiles' time
    where this admits them), or, where the columns are read one after another (``stride`` 1
    along the width), ``config.engine.pointwise_few_macs`` multiply-adds or fewer per output
    pixel and group."""
    return (g.c_in_g == 1 or g.c_out_g == 1 or (g.c_out_g == 2 and g.sw > 1)
            or (g.sw == 1 and g.c_in_g * g.c_out_g <= config.engine.pointwise_few_macs))


def _fwd_few(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
             g: Geometry) -> np.ndarray:
    """A 1x1 forward with few channels per group (any stride and padding): each output plane
    the bias plus a scaled row of each of its group's input planes, read in place
    (:func:`convlayers.kernels.conv.pointwise_few`). As register-tiled products of a few rows
    per group, a depthwise 1x1 layer 7x139x18x56 at stride 2 ran 1.7x torch's time (a strided
    copy of the input first), a grouped one 32->16 with 16 groups 1.5-1.9x."""
    out = np.empty((g.n, g.c_out, g.ho, g.wo), dtype=x.dtype)
    _few_sums(x, w.reshape(g.c_out, g.c_in_g), _bias_arg(bias, x.dtype), (g.sh, g.sw),
              (g.pt, g.pl), out)
    return out


def _few_sums(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: tuple[int, int],
              pads: tuple[int, int], out: np.ndarray) -> None:
    """:func:`convlayers.kernels.conv.pointwise_few` into ``out (N, C_out, Ho, Wo)``, in units
    of whole output planes unless there are fewer than four a thread (then of fewer rows)."""
    planes, rows = out.shape[0] * out.shape[1], out.shape[2]
    parts = min(rows, -(-4 * _numba_threads() // planes))
    kernels().conv.pointwise_few(np.ascontiguousarray(x), np.ascontiguousarray(w), bias,
                                 *stride, *pads, -(-rows // parts), out)


def _gx_pointwise(gy: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    taps_t = w.reshape(g.groups, g.c_out_g, g.c_in_g).swapaxes(1, 2)
    if _few(g):  # the transposed sums of few rows, in place too
        part = np.empty((g.n, g.c_in, g.ho, g.wo), dtype=gy.dtype)
        _few_sums(gy, np.ascontiguousarray(taps_t).reshape(g.c_in, g.c_out_g),
                  np.empty(0, dtype=gy.dtype), (1, 1), (0, 0), part)
    else:
        gyg = gy.reshape(g.n, g.groups, g.c_out_g, g.ho * g.wo)
        part4 = np.empty((g.n, g.groups, g.c_in_g, g.ho * g.wo), dtype=gy.dtype)
        # the transposed view, not a copy: the tiles read a strided left operand, and a copy
        # of a large weight took as long as the product at batch 1
        _pointwise(gyg, taps_t, np.empty(0, dtype=gy.dtype), part4)
        part = part4.reshape(g.n, g.c_in, g.ho, g.wo)
    hp, wp = g.h + g.pt + g.pb, g.w + g.pl + g.pr
    if (g.sh, g.sw) == (1, 1) and (hp, wp) == (g.ho, g.wo) and not g.padded:
        return part
    gxp = np.zeros((g.n, g.c_in, hp, wp), dtype=gy.dtype)
    put_phase(np.ascontiguousarray(part), (0, 0), (g.sh, g.sw), gxp)
    return np.ascontiguousarray(gxp[:, :, g.pt: g.pt + g.h, g.pl: g.pl + g.w])


@_quiet
def _gw_pointwise(x: np.ndarray, gy: np.ndarray, g: Geometry) -> np.ndarray:
    k = kernels()
    gyg = gy.reshape(g.n, g.groups, g.c_out_g, g.ho * g.wo)
    xp = pad_pairs(x, ((g.pt, g.pb), (g.pl, g.pr)))
    xs = _subsampled(xp, (g.sh, g.sw), (g.ho, g.wo)).reshape(g.n, g.groups, g.c_in_g, -1)
    block = _pointwise_block(g.c_in_g + g.c_out_g, g.ho * g.wo, x.itemsize)
    xs, gyg = np.ascontiguousarray(xs), np.ascontiguousarray(gyg)
    if _few(g):  # one dot product per weight, over every image and pixel
        gw = np.empty((g.c_out, g.c_in_g), dtype=x.dtype)
        k.conv.pointwise_few_weight_grad(xs.reshape(g.n, g.c_in, -1),
                                         gyg.reshape(g.n, g.c_out, -1), gw)
        return gw.reshape(g.c_out, g.c_in_g, 1, 1)
    if block < config.engine.pointwise_weight_grad_tiled_columns:
        acc = np.empty((_numba_threads(), g.groups, g.c_in_g, g.c_out_g), dtype=x.dtype)
        k.conv.pointwise_weight_grad_tiled(xs, gyg, block, acc)
        return np.ascontiguousarray(acc.sum(axis=0).swapaxes(1, 2)).reshape(
            g.c_out, g.c_in_g, 1, 1)
    acc = np.empty((_numba_threads(), g.groups, g.c_out_g, g.c_in_g), dtype=x.dtype)
    k.conv.pointwise_weight_grad(xs, gyg, block, acc)
    return acc.sum(axis=0).reshape(g.c_out, g.c_in_g, 1, 1)


def _pointwise_block(k_rows: int, length: int, itemsize: int) -> int:
    """Pixel columns per unit of the 1x1 kernels (a multiple of 16, at least 64): the unit's
    block of the right-hand operand fits ``config.engine.pointwise_block_bytes``, the blocks
    of a map as even as that allows (1600 pixels in 4 blocks of 400, not 3 of 512 and one of
    64, which left one of two threads a 64-column unit beside its 512)."""
    cols = max(64, config.engine.pointwise_block_bytes // max(1, k_rows * itemsize) // 16 * 16)
    if cols >= length:
        return length
    each = -(-length // -(-length // cols))
    return int(max(64, -(-each // 16) * 16))


def _pointwise(xs: np.ndarray, taps: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
    """``out[n, g] = taps[g] @ xs[n, g]`` (+ bias) by :func:`convlayers.kernels.conv.pointwise`:
    ``xs (N, G, K, L)`` C-contiguous, ``taps (G, P, K)`` C-contiguous or a transposed view of
    a C-contiguous weight (then by :func:`~convlayers.kernels.conv.pointwise_strided`),
    ``out (N, G, P, L)``."""
    k = kernels()
    threads = _numba_threads()
    block, rows = _pointwise_units(xs.shape[0], xs.shape[2], xs.shape[3], taps.shape[1],
                                   xs.itemsize, threads)
    panel = _panel_elements(xs.shape[2], xs.shape[3], block, rows, xs.itemsize)
    panels = take(PANEL_SCRATCH, (threads, panel), xs.dtype)
    xs = np.ascontiguousarray(xs)
    if taps.flags.c_contiguous:
        k.conv.pointwise(xs, taps, bias, block, rows, panels, out)
        return
    flat, strides = _flat_taps(taps)
    k.conv.pointwise_strided(xs, flat, strides, bias, block, rows, panels, out)


def _flat_taps(taps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(flat, strides)``: ``taps`` as the 1-D buffer its elements fill and its strides in
    elements, as :func:`convlayers.kernels.conv.pointwise_strided` reads it: a view whose
    elements fill one block (a transposed C-contiguous weight) in place, anything else
    copied first."""
    step = taps.itemsize
    for axis in sorted(range(taps.ndim), key=lambda a: taps.strides[a]):
        if taps.shape[axis] > 1 and taps.strides[axis] != step:
            taps = np.ascontiguousarray(taps)
            break
        step *= taps.shape[axis]
    flat = np.lib.stride_tricks.as_strided(taps, shape=(taps.size,), strides=(taps.itemsize,))
    return flat, np.array([s // taps.itemsize for s in taps.strides], dtype=np.int64)


#: The scratch of the 1x1 kernel's packed panels (one a thread).
PANEL_SCRATCH = "pointwise.panels"


def _panel_elements(k_rows: int, length: int, block: int, rows: int, itemsize: int) -> int:
    """Elements of a thread's packed panel in :func:`convlayers.kernels.conv.pointwise`: the
    unit's ``block`` columns of each of the ``k_rows`` rows, each row a whole, odd number of
    cache lines apart (so a tile's loads down them spread over every set of the L1 cache);
    0 when the kernel reads the input in place (:func:`pointwise_packs`, for ``rows`` output
    rows a unit)."""
    if not pointwise_packs(length, k_rows, rows, itemsize):
        return 0
    from convlayers.kernels._bounds import line_stride

    return k_rows * int(line_stride.py_func(min(block, length), itemsize))


def pointwise_packs(length: int, k_rows: int, rows: int, itemsize: int) -> bool:
    """Whether the 1x1 kernel copies each unit's pixel columns into a panel of its own
    (:func:`convlayers.kernels.conv.pointwise`) before its tiles read them down ``k_rows``
    input rows of ``length`` pixels, for ``rows`` output rows a unit: where the input's rows
    lie so near a multiple of 4 KiB apart that a tile's loads down them fall in a few sets of
    the L1 and L2 caches and evict each other. Rows ``S`` bytes apart share
    ``gcd(S, 4096)``: 2 KiB or more, with 64 input rows or more; 256 bytes or more (1 in 16
    lines' sets), with 128 input and 128 output rows or more (fewer output rows do not
    repay the copy).

    Measured (2 threads, turns of each kernel interleaved, medians; the packed kernel's time
    over the in-place one's): 32x32 maps (4 KiB rows) 0.47x for 512 -> 512, 0.56-0.61x at
    64 channels, 1.04x for 32 channels on 64x64; 16x32 (2 KiB) 0.61x at 256, 0.80x at 128;
    16x16 (1 KiB) 0.76x for 1x512 -> 512 (1.05x at batch 4), 0.91-0.98x at 128-256;
    56x56 (share 256) 0.78x for 128 -> 128, 1.03-1.10x with 24-64 output or 64 input
    channels; 24x24 0.76x; rows sharing 64 bytes or less (7x7, 14x14, 28x28, 30x30,
    45x45) 1.03-1.38x."""
    share = math.gcd(length * itemsize, 4096)
    if share >= 2048:
        return k_rows >= 64
    return share >= 256 and k_rows >= 128 and rows >= 128


@remembered
def _pointwise_units(n: int, k_rows: int, length: int, c_out_g: int, itemsize: int,
                     threads: int) -> tuple[int, int]:
    """``(block, rows)`` of :func:`_pointwise` for ``n`` images of ``length`` pixels, per
    thread count (and engine settings: a small layer's call took 1.5 us to work them out)."""
    block = _pointwise_block(k_rows, length, itemsize)
    return block, _pointwise_rows(c_out_g, n * -(-length // block), threads)


def _pointwise_rows(c_out_g: int, column_units: int, threads: int) -> int:
    """Output rows per unit of the 1x1 kernel: all of them, unless the column units leave the
    ``threads`` unevenly loaded; then the rows are split too (whole register-tile bands, at
    least two). Uneven: fewer units than twice the threads, or a count that is not a multiple
    of them while under :data:`EVEN_UNITS` a thread (5 units on 2 threads keep one busy for 3,
    1.2x the even share: 1x303x31x31 -> 486 ran 1.28x torch's time)."""
    from convlayers.kernels.simd import TILE_ROWS

    def uneven(units: int) -> bool:
        return units < 2 * threads or (units % threads != 0 and units < EVEN_UNITS * threads)

    parts = 1
    while uneven(column_units * parts) and parts * 2 * TILE_ROWS < c_out_g:
        parts += 1
    if parts == 1:
        return c_out_g
    rows = max(2 * TILE_ROWS, -(-c_out_g // parts))
    return min(c_out_g, -(-rows // TILE_ROWS) * TILE_ROWS)


#: Units a thread from which the 1x1 kernel's units need not divide evenly between the threads
#: (one more than another thread's is then at most a sixth more work).
EVEN_UNITS = 6
