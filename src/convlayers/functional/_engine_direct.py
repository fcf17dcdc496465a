"""The engine's ``direct`` strategy: a dense forward on the channels-last direct kernel of
compiled plans (:func:`convlayers.inference.conv_last.dense`).

The NCHW input is copied once into a zero-padded channels-last (NHWC) buffer, the weights are
packed into strips of output channels (:func:`convlayers.kernels.simd.pack_conv_weights_into`),
and each register tile of output pixels by vectors of output channels sums every tap and input
channel before it is stored; the result is transposed back to NCHW. Unlike the implicit GEMM it
computes no position it drops (a row's ``(kw-1)*dw // sw`` extra positions there: 14% more
work for a 5x5 kernel on 28-pixel rows, 29% on 14), and unlike im2col it copies no window: its
vectors run along the output channels, so a row's length never leaves lanes idle. What it adds
is the two transposes and the weights' packing on every call: a few percent of a layer on
large maps, as much as the product itself for one small map under large weights (420 -> 127
7x7 on 1x420x7x7: 2.6M weights for 128M multiply-adds), where the measurement keeps the
planner's choice.

Where padding is wide against the map, the pixels run in classes that sum only their
windows' taps inside the input, or, on maps of a few pixels a side, in blocks of a tile's
neighbouring pixels that sum the union of their windows' taps, both kernel row by kernel row
(:func:`convlayers.inference.conv_last.dense_blocks`); :func:`padding_mode` chooses, as
torch's direct kernels leave those taps out too.

The weight gradient alone (:func:`_gw_direct`) runs on the same register tiles: each tap's
``(C_in, C_out)`` slice is a product of the input's zero-padded planes, split into column
phases at a stride, by the output gradient packed like weights, over the output positions whose
windows read that tap inside the input (:mod:`convlayers.kernels.direct_grad`). With the input
gradient as the forward of the flipped weights it also serves both gradients at stride 1.

The planner never picks it by rule: a dense (one-group) float32 forward planned ``implicit`` or
``lowered`` measures it against that strategy once, from 16 input channels, or on fewer where
it skips the padding, and a dense float32 weight gradient always
(:mod:`convlayers.functional._measured`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from convlayers import config
from convlayers.functional._compiled import _numba_threads
from convlayers.functional._engine_shared import _finite, remembered
from convlayers.functional._scratch import take
from convlayers.functional.plan import Geometry

__all__ = ["GRADIENT_CHUNK_BYTES", "direct_fits", "direct_planar_fits", "direct_planar_pays",
           "direct_weight_grad_fits", "forward_window", "packed_width", "padded_extent",
           "padding_mode", "ready_direct", "skips_padding", "tall_channels"]


def _weight_bytes(g: Geometry) -> int:
    """Bytes of the weights a direct forward streams (for :func:`conv_last.dense_units`)."""
    return g.c_out * g.c_in * g.kh * g.kw * g.itemsize


def padded_extent(g: Geometry) -> tuple[int, int]:
    """``(Hp, Wp)``: rows and columns of the zero-padded channels-last copy, every row and
    column some window reads and the whole input."""
    hp = max(g.pt + g.h, (g.ho - 1) * g.sh + (g.kh - 1) * g.dh + 1)
    wp = max(g.pl + g.w, (g.wo - 1) * g.sw + (g.kw - 1) * g.dw + 1)
    return hp, wp


def direct_fits(g: Geometry) -> str | None:
    """Why ``direct`` cannot run the forward of ``g`` (None: it can): one group, float32, and
    its padded copy and channels-last output each within ``config.scratch_bytes()``."""
    return _tiles_fit(g, "direct")


def _tiles_fit(g: Geometry, name: str) -> str | None:
    """What ``direct`` and ``direct-planar`` (``name``) both need: one group, float32, and
    the padded copy and channels-last output each within ``config.scratch_bytes()``."""
    if g.groups != 1:
        return f"{name} needs one group"
    if g.itemsize != 4:
        return f"{name} needs float32"
    hp, wp = padded_extent(g)
    cap = config.scratch_bytes()
    if max(g.n * hp * wp * g.c_in, g.n * g.ho * g.wo * g.c_out) * g.itemsize > cap:
        return f"{name}'s copies would pass the scratch cap ({cap} bytes)"
    return None


def tall_channels(itemsize: int) -> int:
    """Output channels one tall tile holds: three vectors with AVX-512, two with AVX2
    (:func:`convlayers.kernels.simd.band_pixels`)."""
    from convlayers.kernels.simd import VECTOR_BYTES

    return (3 if VECTOR_BYTES == 64 else 2) * VECTOR_BYTES // itemsize


def packed_width(g: Geometry) -> int:
    """Columns of the packed weights' strips: the direct kernel's strip
    (:func:`convlayers.kernels.simd.conv_strip`), or, for at most two vectors of output
    channels (three with AVX-512), those vectors only: such a block runs on the tall tiles,
    which read a strip by its row stride and never past the block's columns, so a full strip
    packed zeros nobody reads (224 -> 15 7x7: 15 of 64 columns, the packing 0.18 ms of a 1.1 ms call)."""
    from convlayers.kernels.simd import VECTOR_BYTES, conv_strip

    strip = conv_strip() // g.itemsize
    lanes = VECTOR_BYTES // g.itemsize
    if g.c_out > tall_channels(g.itemsize):
        return strip
    return min(strip, lanes * -(-g.c_out // lanes))


@remembered
def _layout(g: Geometry, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int,
                                                int]:
    """Each output pixel's window start and each tap's offset in the flat padded copy, the
    taps each output row sums (those not only on the zero padding), the kernel's units
    ``(rows, cols)`` and the packed weights' rows."""
    from convlayers.inference import conv_last

    hp, wp = padded_extent(g)
    offs = conv_last.pixel_offsets(g.n, g.ho, g.wo, hp, wp, g.c_in, g.sh, g.sw)
    # undilated columns: a kernel row is one tap of kw*c_in values (conv_last.window_taps;
    # 1-4% faster products than a tap a kernel column, on 3 -> 64 7x7 stride 2 to 15 -> 48 5x5)
    toffs = conv_last.window_taps(g.kh, g.kw, g.dh, g.dw, wp, g.c_in)
    row_taps = conv_last.row_taps(g.ho, g.h, g.pt, g.sh, g.kh, g.dh, 1 if g.dw == 1 else g.kw)
    rows, cols = conv_last.dense_units(g.n * g.ho * g.wo, g.c_out, threads, g.itemsize,
                                       weight_bytes=_weight_bytes(g))
    strips = -(-g.c_out // packed_width(g))
    return offs, toffs, row_taps, rows, cols, strips * g.kh * g.kw * g.c_in


#: A class's fixed cost for each part it sums (its tiles' sums stored and loaded again), in
#: multiply-adds of one tap per input channel: about four steps of a tile's inner loop.
PART_STEPS = 4
#: The share of the plain tiles' work (each band of pixels summing its rows' kernel rows
#: that read input, every column) under which the classes run instead.
CLASS_SHARE = 0.85
#: The same share for the blocks (of :func:`_plain_cost`, the plain tiles' bands), from
#: :data:`BLOCK_MIN_CHANNELS` input channels: a part's stores and loads weigh on few
#: channels. On 110 random layers of small maps under wide padding the blocks took
#: 0.56-1.06x the plain tiles' time from 64 channels below 0.85 of the cost (geo-mean 0.83),
#: 0.81-1.10x at 0.85-0.95 (112 -> 338 4x4 dilation 3 padding 4 on 2x112x8x8, 0.91 of the
#: cost: 0.84x), and 1.05-1.19x on 8 of 11 layers of fewer channels.
BLOCK_SHARE = 0.92
#: Input channels from which :func:`padding_mode` considers the blocks.
BLOCK_MIN_CHANNELS = 64


@remembered
def _runs(g: Geometry) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]],
                                int]:
    """The runs of output rows and of columns whose windows read the same taps
    (:func:`convlayers.inference.conv_last.inside_runs`), and the pixels of a tile."""
    from convlayers.inference import conv_last
    from convlayers.kernels.simd import VECTOR_BYTES, band_pixels

    return (conv_last.inside_runs(g.ho, g.h, g.kh, g.sh, g.pt, g.dh),
            conv_last.inside_runs(g.wo, g.w, g.kw, g.sw, g.pl, g.dw),
            int(band_pixels(min(g.c_out, 256), VECTOR_BYTES // g.itemsize)))


@remembered
def padding_mode(g: Geometry) -> str:
    """How ``direct`` runs the forward of ``g``: ``"plain"`` (the tiles of
    :func:`convlayers.inference.conv_last.dense`, each output row summing its kernel rows
    that read input, every column), ``"classes"`` (classes of pixels that sum only their
    windows' taps inside the input) or ``"blocks"`` (a tile's worth of neighbouring pixels
    summing the union of their windows' taps inside), both run by
    :func:`convlayers.inference.conv_last.dense_blocks`.

    Costed in multiply-adds per input channel: the plain tiles sum, for each output row, its
    kernel rows that read input by every column; classes and blocks fill whole tiles (a
    class's pixels class by class, a block's few pixels), and each kernel row of a class or
    block (a part) stores its sums and loads them again (:data:`PART_STEPS`). Classes pay
    where padding is wide against a small map and the classes are large (12 -> 52 7x7
    dilation 2 padding 6 on 19x12x11x11, where 41% of the taps read input: 0.93 -> 0.57 ms,
    torch 0.43-0.53); blocks where the classes are a few pixels each (a map of 7-10 pixels a
    side under wide dilated padding: 192 -> 506 5x5 dilation 3 padding 6 on 1x192x7x7, where
    289 of 1225 pixel-taps read input, the plain bands sum 720 and blocks of 2x3 pixels 598;
    1.43x torch's time plain, 1.29x by blocks). Classes run below :data:`CLASS_SHARE` of the
    plain tiles' kernel rows per output row (the rule they were tuned by) and when no dearer
    than the blocks; blocks below :data:`BLOCK_SHARE` of the plain bands' cost
    (:func:`_plain_cost`), from :data:`BLOCK_MIN_CHANNELS` input channels."""
    if direct_fits(g) is not None:
        return "plain"
    row_runs, col_runs, tile = _runs(g)
    if all(i1 - i0 == g.kh for _, _, i0, i1 in row_runs) and all(
            j1 - j0 == g.kw for _, _, j0, j1 in col_runs):
        return "plain"  # no window reads the padding
    # the classes' rule as tuned: the plain tiles' kernel rows per output row, every column
    plain = sum(g.n * (b - a) * g.wo * max(1, i1 - i0) * g.kw for a, b, i0, i1 in row_runs)
    classes = 0.0
    for ya, yb, i0, i1 in row_runs:
        for xa, xb, j0, j1 in col_runs:
            pixels = g.n * (yb - ya) * (xb - xa)
            classes += -(-pixels // tile) * tile * ((i1 - i0) * (j1 - j0)
                                                    + (i1 - i0) * PART_STEPS / g.c_in)
    # blocks from BLOCK_MIN_CHANNELS input channels only: below, the classes' rule as before;
    # from there blocks replace classes where they cost less (on 20 random layers the classes
    # took before: 0.72-1.00x the classes' time, geo-mean 0.88)
    blocks = _block_shape(g)[2] if g.c_in >= BLOCK_MIN_CHANNELS else float("inf")
    if classes < CLASS_SHARE * plain and classes <= blocks:
        return "classes"
    if blocks < BLOCK_SHARE * _plain_cost(g):
        return "blocks"
    return "plain"


def _plain_cost(g: Geometry) -> float:
    """The plain tiles' cost in :func:`padding_mode`'s units: bands of a tile's consecutive
    pixels (across rows and images, as :func:`convlayers.inference.conv_last.dense` runs
    them), each summing every column of the kernel rows any of its pixels' rows reads."""
    from convlayers.inference.conv_last import tap_ranges

    _, _, tile = _runs(g)
    r0, r1 = tap_ranges(g.ho, g.h, g.kh, g.sh, g.pt, g.dh)
    rows = (np.arange(g.n * g.ho * g.wo, dtype=np.int64) // g.wo) % g.ho
    starts = np.arange(0, rows.size, tile)
    union = np.maximum.reduceat(r1[rows], starts) - np.minimum.reduceat(r0[rows], starts)
    return float(tile * np.maximum(union, 1).sum() * g.kw)


def skips_padding(g: Geometry) -> bool:
    """Whether ``direct`` runs ``g`` by classes or blocks of pixels that sum only their
    windows' taps inside the input (:func:`padding_mode`), not the plain tiles."""
    return padding_mode(g) != "plain"


@remembered
def _block_shape(g: Geometry) -> tuple[int, int, float]:
    """``(rows, cols, cost)``: the shape of :func:`padding_mode`'s blocks of output pixels
    (at most a tile's pixels, rows by columns of one image) that costs the least, and that
    cost (a whole tile per block, the union of its windows' taps inside the input, and
    :data:`PART_STEPS` per kernel row)."""
    from convlayers.inference.conv_last import tap_ranges

    _, _, tile = _runs(g)
    r0, r1 = tap_ranges(g.ho, g.h, g.kh, g.sh, g.pt, g.dh)
    c0, c1 = tap_ranges(g.wo, g.w, g.kw, g.sw, g.pl, g.dw)
    best = (1, 1, float("inf"))
    for bw in range(1, min(tile, g.wo) + 1):
        bh = max(1, min(g.ho, tile // bw))
        ys, xs = np.arange(0, g.ho, bh), np.arange(0, g.wo, bw)
        rows = np.maximum(np.maximum.reduceat(r1, ys) - np.minimum.reduceat(r0, ys), 0)
        cols = np.maximum(np.maximum.reduceat(c1, xs) - np.minimum.reduceat(c0, xs), 0)
        # blocks are the grid of row bands by column bands: sum of rows x cols over the grid
        cost = g.n * tile * (rows.sum() * cols.sum() + rows.sum() * xs.size * PART_STEPS / g.c_in)
        if cost < best[2]:
            best = (bh, bw, float(cost))
    return best


@remembered
def _classes(g: Geometry, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray, np.ndarray]:
    """The layout of :func:`convlayers.inference.conv_last.dense_blocks` for a ``g`` whose
    :func:`padding_mode` is ``"classes"``: each pixel's window start, class by class, the row
    of that order each pixel in NCHW order takes, each tap's offset (every tap: a class sums a
    run of kernel columns), the blocks (a class's pixels in bands of the plain kernel's units'
    rows, rounded to whole tiles) and the units (a block by the plain units' columns)."""
    from convlayers.inference import conv_last

    row_runs, col_runs, tile = _runs(g)
    rows, cols = conv_last.dense_units(g.n * g.ho * g.wo, g.c_out, threads, g.itemsize,
                                       weight_bytes=_weight_bytes(g))
    rows = max(tile, rows // tile * tile)
    order, blocks = [], []
    index = np.arange(g.n * g.ho * g.wo, dtype=np.int64).reshape(g.n, g.ho, g.wo)
    start = 0
    for ya, yb, i0, i1 in row_runs:
        for xa, xb, j0, j1 in col_runs:
            members = index[:, ya:yb, xa:xb].reshape(-1)
            order.append(members)
            blocks += [(p0, min(start + members.size, p0 + rows), i0, i1, j0, j1)
                       for p0 in range(start, start + members.size, rows)]
            start += members.size
    units = [(b, b + 1, c0, min(g.c_out, c0 + cols))
             for b in range(len(blocks)) for c0 in range(0, g.c_out, cols)]
    return _ordered(g, order, blocks, units)


def _ordered(g: Geometry, order: list[np.ndarray], blocks: Sequence[tuple[int, ...]],
             units: Sequence[tuple[int, int, int, int]],
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_classes`' and :func:`_blocks`' layout from their pixels' ``order`` (NCHW
    indices, block by block): the window starts in that order, where each pixel went, the
    taps' offsets, and the blocks and units as arrays."""
    from convlayers.inference import conv_last

    hp, wp = padded_extent(g)
    offs = conv_last.pixel_offsets(g.n, g.ho, g.wo, hp, wp, g.c_in, g.sh, g.sw)
    dest = np.concatenate(order)
    src = np.empty_like(dest)
    src[dest] = np.arange(dest.size, dtype=np.int64)
    toffs = conv_last.tap_offsets(g.kh, g.kw, g.dh, g.dw, wp, g.c_in)
    return (np.ascontiguousarray(offs[dest]), src, toffs, np.array(blocks, dtype=np.int64),
            np.array(units, dtype=np.int64))


@remembered
def _blocks(g: Geometry, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                np.ndarray, np.ndarray]:
    """The layout of :func:`convlayers.inference.conv_last.dense_blocks` (for a ``g`` whose
    :func:`padding_mode` is ``"blocks"``): each pixel's window start, block by block, the row
    of that order each pixel in NCHW order takes, each tap's offset, the blocks and the units
    (strips of output channels by all the blocks, the blocks split in as many groups as give
    the threads two units each)."""
    from convlayers.inference import conv_last

    bh, bw, _ = _block_shape(g)
    r0, r1 = conv_last.tap_ranges(g.ho, g.h, g.kh, g.sh, g.pt, g.dh)
    c0, c1 = conv_last.tap_ranges(g.wo, g.w, g.kw, g.sw, g.pl, g.dw)
    index = np.arange(g.n * g.ho * g.wo, dtype=np.int64).reshape(g.n, g.ho, g.wo)
    order, blocks = [], []
    start = 0
    for image in range(g.n):
        for y in range(0, g.ho, bh):
            for x in range(0, g.wo, bw):
                block = index[image, y:y + bh, x:x + bw].reshape(-1)
                order.append(block)
                blocks.append((start, start + block.size, r0[y:y + bh].min(),
                               r1[y:y + bh].max(), c0[x:x + bw].min(), c1[x:x + bw].max()))
                start += block.size
    strip = packed_width(g)
    strips = -(-g.c_out // strip)
    groups = max(1, min(len(blocks), -(-2 * threads // strips)))
    per_group = -(-len(blocks) // groups)
    units = [(b, min(len(blocks), b + per_group), c, min(g.c_out, c + strip))
             for b in range(0, len(blocks), per_group) for c in range(0, g.c_out, strip)]
    return _ordered(g, order, blocks, units)


def _fwd_direct(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                g: Geometry) -> np.ndarray:
    return ready_direct(g, _numba_threads())(x, w, bias)


@remembered
def ready_direct(g: Geometry, threads: int) -> Callable[[np.ndarray, np.ndarray,
                                                          np.ndarray | None], np.ndarray]:
    """The forward of ``g`` by ``direct`` on ``threads`` threads, as ``run(x, w, bias)``
    (the engine's runner of a remembered call, :func:`convlayers.functional._engine.
    ready_forward`), in :func:`padding_mode`'s layout.

    Classes and blocks leave out the padding's taps: where a weight is inf or NaN, the plain
    tiles multiply the zeros as before (the pattern the non-finite tests hold each strategy
    to). A non-finite weight makes some output non-finite, so the output is checked, not the
    weights: NumPy's check of 110 -> 182 7x7's weights took 0.22 ms of a 0.8 ms call, the
    output's (100 x 182) a few microseconds."""
    mode = padding_mode(g)
    run = _prepared(g, threads, None, mode)
    if mode == "plain":
        return run
    plain = _prepared(g, threads, None, "plain")

    def checked(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        out = run(x, w, bias)
        return out if _finite(out) else plain(x, w, bias)

    return checked


def forward_window(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, g: Geometry,
                   window: tuple[int, int, int, int]) -> np.ndarray:
    """The forward of ``g`` by ``direct`` with the taps ``window`` ``(r0, c0, kh, kw)`` of the
    larger kernel of ``w`` (a kernel cropped to the taps that reach the input,
    :mod:`convlayers.functional._engine_crop`), packed from ``w`` in place
    (:func:`convlayers.kernels.simd.pack_conv_weights_into`). Classes or blocks run wherever
    they pay, the weights taken as finite: the caller checks the output (an inf or NaN weight
    makes some output non-finite) and runs the call again by the whole path if it is not."""
    return _prepared(g, _numba_threads(), window, padding_mode(g))(x, w, bias)


def _direct(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, g: Geometry,
            window: tuple[int, int, int, int] | None, mode: str) -> np.ndarray:
    """The forward of ``g`` by ``direct`` in ``mode`` (``"plain"``, ``"classes"`` or
    ``"blocks"``), unchecked (the tests' way to run each layout)."""
    return _prepared(g, _numba_threads(), window, mode)(x, w, bias)


@remembered
def _prepared(g: Geometry, threads: int, window: tuple[int, int, int, int] | None,
              mode: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]:
    """``run(x, w, bias)``: the forward of ``g`` by ``direct`` in ``mode`` on ``threads``
    threads, with the taps ``window`` of ``w``'s kernel (or all of them), and everything that
    depends only on the geometry worked out here once: the layouts, the buffers' shapes, the
    zero bias. A call then makes its four kernel calls and little else. Asked again on every
    call, those answers took 40-70 us of Python a call on layers of about a millisecond
    (333 -> 95 3x3 stride 3 on 5x333x20x20, 287 -> 98 3x3 on 1x287x20x20: the interpreter's
    lines and objects evicted by the last call's kernels), 3-4% of the layer."""
    from convlayers.inference import channels_last, conv_last
    from convlayers.kernels.simd import PACK_SPARE_ROWS, pack_conv_weights_into

    offs, toffs, row_taps, rows, cols, k_rows = _layout(g, threads)
    layout = (_classes(g, threads) if mode == "classes" else
              _blocks(g, threads) if mode == "blocks" else None)
    hp, wp = padded_extent(g)
    padded = (g.n, hp, wp, g.c_in)
    # a window's other taps go to spare rows past the packed ones
    weights = (k_rows + (PACK_SPARE_ROWS if window is not None else 0), packed_width(g))
    pixels = (g.n * g.ho * g.wo, g.c_out)
    last_shape = (g.n, g.ho, g.wo, g.c_out)
    out_shape = (g.n, g.c_out, g.ho, g.wo)
    zeros = np.zeros(g.c_out, np.float32)
    pt, pl, wo, kw, plane = g.pt, g.pl, g.wo, g.kw, g.ho * g.wo
    pad, dense, dense_blocks = (conv_last.pad_to_channels_last, conv_last.dense,
                                conv_last.dense_blocks)
    to_channels_first, rows_to_channels_first = (channels_last.to_channels_first,
                                                 conv_last.rows_to_channels_first)

    def run(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        xp = take("direct_input", padded, np.float32)
        pad(np.ascontiguousarray(x), pt, pl, xp)
        spare = take("direct_weights", weights, np.float32)
        pack_conv_weights_into(np.ascontiguousarray(w), spare, window)
        packed = spare[:k_rows]
        b = zeros if bias is None else np.ascontiguousarray(bias, np.float32)
        last = take("direct_output", pixels, np.float32)
        out = np.empty(out_shape, np.float32)
        if layout is None:
            dense(xp.reshape(-1), packed, offs, toffs, row_taps, wo, b, last, False, 0, rows,
                  cols, threads, last)
            to_channels_first(last.reshape(last_shape), out)
        else:  # classes or blocks of pixels
            block_offs, src, block_toffs, blocks, units = layout
            dense_blocks(xp.reshape(-1), packed, block_offs, block_toffs, kw, blocks, units, b,
                         threads, last)
            rows_to_channels_first(last, src, plane, out)
        return out

    return run


# ----------------------------------------------------------------------------- direct-planar

def direct_planar_fits(g: Geometry) -> str | None:
    """Why ``direct-planar`` cannot run the forward of ``g`` (None: it can): one group,
    float32, at most the tall tiles' vectors of output channels (three with AVX-512, two with
    AVX2), padding of zero or more, and its padded copy within ``config.scratch_bytes()``."""
    most = tall_channels(g.itemsize)
    if g.itemsize == 4 and g.c_out > most:
        return f"direct-planar needs at most {most} output channels (one tall tile)"
    if min(g.pt, g.pb, g.pl, g.pr) < 0:  # its copy places the input whole
        return "direct-planar needs padding of zero or more"
    return _tiles_fit(g, "direct-planar")


def direct_planar_pays(g: Geometry) -> bool:
    """Whether ``direct-planar`` is worth measuring for the forward of ``g``: no padding (it
    reads the input in place) and an input of more values than its output, so the
    channels-last copy it spares is much of the work around the product (thin strided
    layers). With padding its copy and tiles lost everywhere: 384 -> 15 3x3 stride 2
    padding 1 on 2x384x70x70 2.6x torch's time, the implicit GEMM 1.4x."""
    return not g.padded and g.c_in * g.h * g.w >= g.c_out * g.ho * g.wo


@remembered
def _planar_layout(g: Geometry, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                       int, int, int]:
    """Each output pixel's window start and each (input channel, tap) pair's offset in the
    flat padded NCHW input, every output row's pairs (all of them), the units and the packed
    weights' width (whole vectors)."""
    from convlayers.inference import conv_last

    hp, wp = padded_extent(g)
    img = np.arange(g.n, dtype=np.int64)[:, None, None] * (g.c_in * hp * wp)
    rows = np.arange(g.ho, dtype=np.int64)[None, :, None] * (g.sh * wp)
    cols = np.arange(g.wo, dtype=np.int64)[None, None, :] * g.sw
    offs = np.ascontiguousarray((img + rows + cols).reshape(-1))
    channel = np.arange(g.c_in, dtype=np.int64)[:, None, None] * (hp * wp)
    i = np.arange(g.kh, dtype=np.int64)[None, :, None] * (g.dh * wp)
    j = np.arange(g.kw, dtype=np.int64)[None, None, :] * g.dw
    toffs = np.ascontiguousarray((channel + i + j).reshape(-1))
    pairs = np.tile(np.array([[0, toffs.size]], np.int64), (g.ho, 1))
    units = conv_last.dense_units(g.n * g.ho * g.wo, g.c_out, threads, g.itemsize,
                                  weight_bytes=_weight_bytes(g))
    return offs, toffs, pairs, units[0], units[1], packed_width(g)


def _fwd_direct_planar(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                       g: Geometry) -> np.ndarray:
    """The forward of ``g`` by ``direct-planar``: :func:`convlayers.inference.conv_last.dense`
    on the NCHW input itself (zero-padded into a copy only when there is padding), each
    (input channel, tap) pair one tap of a single channel, in the weight's own column order,
    so the weights pack as a plain transpose. It spares the channels-last copy of a large
    input whose output is small (500 -> 14 5x5 stride 3 on 5x500x37x37: 13.7 MB in, 0.17 MB
    out)."""
    from convlayers.inference import channels_last, conv_last
    from convlayers.kernels.simd import PACK_CHUNK

    threads = _numba_threads()
    offs, toffs, pairs, rows, cols, width = _planar_layout(g, threads)
    x = np.ascontiguousarray(x)
    if g.padded:
        hp, wp = padded_extent(g)
        xp = take("planar_input", (g.n, g.c_in, hp, wp), x.dtype)
        top, left = g.pt, g.pl
        xp[:, :, :top] = 0
        xp[:, :, top + g.h:] = 0
        xp[:, :, top:top + g.h, :left] = 0
        xp[:, :, top:top + g.h, left + g.w:] = 0
        xp[:, :, top:top + g.h, left:left + g.w] = x
        x = xp
    packed = take("planar_weights", (toffs.size, width), x.dtype)
    conv_last.pack_rows_transposed(np.ascontiguousarray(w).reshape(g.c_out, -1), packed,
                                   PACK_CHUNK)
    b = np.zeros(g.c_out, x.dtype) if bias is None else np.ascontiguousarray(bias, x.dtype)
    last = take("direct_output", (g.n * g.ho * g.wo, g.c_out), x.dtype)
    out = np.empty((g.n, g.c_out, g.ho, g.wo), x.dtype)
    conv_last.dense(x.reshape(-1), packed, offs, toffs, pairs, g.wo, b, last, False, 0, rows,
                    cols, threads, last)
    channels_last.to_channels_first(last.reshape(g.n, g.ho, g.wo, g.c_out), out)
    return out


# ----------------------------------------------------------------------------- weight gradient

#: Bytes of the packed output gradient one call of the weight gradient's kernel sums over: its
#: rows stay in L2 while every band of the unit's input channels passes over them.
GRADIENT_CHUNK_BYTES = 256 * 1024


def direct_weight_grad_fits(g: Geometry) -> str | None:
    """Why ``direct`` cannot run the weight gradient of ``g`` alone (None: it can): one group,
    float32, padding of zero or more, and the phase-split input and packed output gradient
    each within ``config.scratch_bytes()``."""
    if g.groups != 1:
        return "direct's weight gradient needs one group"
    if g.itemsize != 4:
        return "direct's weight gradient needs float32"
    if min(g.pt, g.pb, g.pl, g.pr) < 0:
        return "direct's weight gradient needs padding of zero or more"
    hp, wq = _phase_extent(g)
    strips = -(-g.c_out // packed_width(g))
    cap = config.scratch_bytes()
    biggest = max(g.n * g.c_in * hp * g.sw * wq, strips * packed_width(g) * g.n * g.ho * g.wo,
                  g.kh * g.kw * g.c_in * g.c_out)
    if biggest * g.itemsize > cap:
        return f"direct's weight gradient copies would pass the scratch cap ({cap} bytes)"
    return None


def _phase_extent(g: Geometry) -> tuple[int, int]:
    """``(Hp, Wq)``: rows of the padded input and columns of each of its ``sw`` column phases
    (:mod:`convlayers.kernels.direct_grad`)."""
    hp, wp = padded_extent(g)
    return hp, -(-wp // g.sw)


@remembered
def _grad_layout(g: Geometry, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray, int]:
    """The weight gradient kernel's row offsets per tap, output rows' offsets, each tap's span
    of output rows and columns inside the input, its units and the output rows a call sums
    (:func:`convlayers.kernels.direct_grad.weight_grad_taps`)."""
    from convlayers.inference.conv_last import tap_ranges
    from convlayers.kernels.simd import VECTOR_BYTES, band_pixels

    hp, wq = _phase_extent(g)
    plane = hp * g.sw * wq  # one input channel's rows, each its sw phases of wq columns
    i = np.repeat(np.arange(g.kh, dtype=np.int64), g.kw)
    j = np.tile(np.arange(g.kw, dtype=np.int64), g.kh)
    start = i * g.dh * g.sw * wq + (j * g.dw) % g.sw * wq + (j * g.dw) // g.sw
    offs = np.ascontiguousarray(np.arange(g.c_in, dtype=np.int64)[None, :] * plane
                                + start[:, None])
    rows = np.arange(g.ho, dtype=np.int64) * (g.sh * g.sw * wq)
    toffs = np.ascontiguousarray((np.arange(g.n, dtype=np.int64)[:, None] * (g.c_in * plane)
                                  + rows[None, :]).reshape(-1))
    # tap (i, j) reads the input at output rows y with 0 <= y*sh - pt + i*dh < h (tap_ranges
    # gives each output's taps inside; a tap's outputs are those whose range holds it)
    r0, r1 = tap_ranges(g.ho, g.h, g.kh, g.sh, g.pt, g.dh)
    c0, c1 = tap_ranges(g.wo, g.w, g.kw, g.sw, g.pl, g.dw)
    spans = np.zeros((g.kh * g.kw, 4), dtype=np.int64)
    for t in range(g.kh * g.kw):
        ys = np.flatnonzero((r0 <= i[t]) & (i[t] < r1))
        xs = np.flatnonzero((c0 <= j[t]) & (j[t] < c1))
        if ys.size and xs.size:  # contiguous: an output's taps inside shift with it
            spans[t] = (ys[0], ys[-1] + 1, xs[0], xs[-1] + 1)
    width = packed_width(g)
    band = int(band_pixels(min(g.c_out, width), VECTOR_BYTES // g.itemsize))
    cols = width * max(1, 192 // width)
    blocks = -(-g.c_out // cols)
    # enough units that the threads end together; each a whole number of bands
    want = 8 * threads if threads > 1 else 1
    split = max(1, min(-(-g.c_in // band), -(-want // (g.kh * g.kw * blocks))))
    per_unit = -(-g.c_in // split)
    step = -(-per_unit // band) * band
    units = np.array([(t, r, min(g.c_in, r + step), c, min(g.c_out, c + cols))
                      for t in range(g.kh * g.kw) for r in range(0, g.c_in, step)
                      for c in range(0, g.c_out, cols)], dtype=np.int64)
    chunk = max(1, GRADIENT_CHUNK_BYTES // (g.wo * width * g.itemsize))
    return offs, toffs, spans, units, chunk


def _gw_direct(x: np.ndarray, gy: np.ndarray, g: Geometry) -> np.ndarray:
    """The weight gradient of ``g`` by :func:`convlayers.kernels.direct_grad.weight_grad_taps`:
    the input copied once into zero-padded planes split into ``sw`` column phases, the output
    gradient packed like weights, each tap's slice a product over the output positions whose
    windows read it inside the input."""
    from convlayers.kernels.direct_grad import taps_to_weights, weight_grad_taps
    from convlayers.kernels.simd import pack_conv_weights_into

    threads = _numba_threads()
    offs, toffs, spans, units, chunk = _grad_layout(g, threads)
    hp, wq = _phase_extent(g)
    padded = take("direct_grad_input", (g.n, g.c_in, hp, wq * g.sw), x.dtype)
    padded[...] = 0
    padded[:, :, g.pt:g.pt + g.h, g.pl:g.pl + g.w] = x
    if g.sw > 1:
        phases = take("direct_grad_phases", (g.n, g.c_in, hp, g.sw, wq), x.dtype)
        phases[...] = padded.reshape(g.n, g.c_in, hp, wq, g.sw).transpose(0, 1, 2, 4, 3)
        padded = phases
    # the output gradient as the weights of one input channel and an (n*ho) x wo kernel
    grad = np.ascontiguousarray(gy.transpose(1, 0, 2, 3) if g.n > 1 else gy)
    width = packed_width(g)
    k_rows = g.n * g.ho * g.wo
    packed = take("direct_grad_packed", (-(-g.c_out // width) * k_rows, width), x.dtype)
    pack_conv_weights_into(grad.reshape(g.c_out, 1, g.n * g.ho, g.wo), packed)
    out = take("direct_grad_taps", (g.kh * g.kw, g.c_in, g.c_out), x.dtype)
    weight_grad_taps(padded.reshape(-1), packed, offs, toffs, spans, units, g.n, chunk,
                     np.zeros(g.c_out, x.dtype), threads, out)
    gw = np.empty((g.c_out, g.c_in, g.kh * g.kw), x.dtype)
    taps_to_weights(out, gw)
    return gw.reshape(g.c_out, g.c_in, g.kh, g.kw)
