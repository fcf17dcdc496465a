"""The engine's ``lowered`` strategy: im2col and register-tiled GEMMs in one parallel region a pass.

Forward units are (image, group, slab of output rows, block of output channels), weight-gradient
units (image, group, slab) with per-thread sums, input-gradient units (image, group, block of
input channels), so one image keeps every thread busy too (:func:`_lowered_units`); the kernels
are in :mod:`convlayers.kernels.conv`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from convlayers import config
from convlayers.functional._compiled import _numba_threads, kernels
from convlayers.functional._engine_shared import (
    _bias_arg,
    _quiet,
    costed_units,
    remembered,
    units_for_threads,
)
from convlayers.functional.plan import Geometry, _copy_price, few_positions


@remembered
def _lowered_units(g: Geometry, threads: int, pass_: str) -> tuple[int, int]:
    """``(R, B)``: output rows and channels (output channels for the forward, input channels
    for the input gradient) per unit of the lowered kernels.

    A unit's scratch (its columns, ``K x R*Wo``) stays under ``config.engine.lowered_column_bytes``
    (and the scratch cap; a forward slab under twice that, in as few slabs as the cap
    takes); then, while there are fewer units than twice the threads, the
    forward takes the slabs and blocks of output channels that cost the least
    (:func:`convlayers.functional._engine_shared.costed_units`: on 50 random batch-1/2 layers
    0.69-0.77x the time of shortening the slabs first, geo-mean, down to 0.24x; four slower,
    1.10-1.35x), the weight gradient shortens its slabs (down to
    ``config.engine.lowered_min_columns`` output positions). The forward's sums run in the
    same order whatever the units, so its result never depends on them."""
    e = config.engine
    kk = g.kh * g.kw
    want = 2 * threads if threads > 1 else 1
    images = g.n * g.groups
    cap = max(1, min(e.lowered_column_bytes, config.scratch_bytes()))
    if pass_ == "input_grad":
        block = g.c_in_g
        if images < want:
            block = max(1, -(-g.c_in_g // -(-want // images)))
        rows = max(1, min(g.ho, cap // max(1, block * kk * g.wo * g.itemsize)))
        return rows, block
    row_bytes = max(1, g.c_in_g * kk * g.wo * g.itemsize)
    rows = max(1, min(g.ho, cap // row_bytes))
    if pass_ == "forward":
        # as few slabs as the cap takes, each at most twice it (the count rounded down, not
        # up): with deep columns a slab's product costs as much for a row as for a few, and
        # 1x395x9x9 6x6 (512 KB of columns a row) in slabs of 4, 4 and 1 rows ran 1.45x the
        # time of 5 and 4; 0.84-0.94x on three of 67 random lowered layers, the rest unmoved
        rows = -(-g.ho // max(1, g.ho // rows))
        return costed_units(g, rows, threads, g.wo, 0, _copy_price(g) * g.c_in_g * kk * g.wo)
    # the weight gradient's slabs each add a product onto the whole (C_in*kh*kw x C_out)
    # gradient: slabs of a few positions pass over it again and again for a product whose
    # inner dimension is those positions. They take lowered_min_columns positions (or the
    # map), past the column cap while the scratch allows: 303->199 7x7 on 1x303x7x7 (an 11.8
    # MB gradient) ran 2.7x torch's time in slabs of 5 and 2 rows, 1.4x in one of 7.
    # Nor, with 16 or more input channels a thread, are slabs shortened to give every thread
    # one: too few (image, group, slab) units split the input channels instead (_gw_lowered),
    # each unit its own rows of one gradient (batch 1, 3x3 256->256 on 14x14: 1.6x torch's
    # time in slabs of 7 rows, 1.0x whole). On 22 random batch-1-3 layers: 0.76-0.91x the
    # time on most, 1.17-1.28x on four of 3-29 input channels (hence the floor; 17 and 28
    # channels had gained 0.9x), 1.09x on 83.
    least = min(g.ho, -(-e.lowered_min_columns // g.wo),
                max(1, config.scratch_bytes() // (threads * row_bytes)))
    rows = max(rows, least)
    if g.c_in_g >= 16 * threads:
        return rows, g.c_out_g
    return units_for_threads(g, rows, threads, False)


def _fwd_lowered(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                 g: Geometry) -> np.ndarray:
    k = kernels()
    threads = _numba_threads()
    rows, block = _lowered_units(g, threads, "forward")
    out = np.empty((g.n, g.c_out, g.ho * g.wo), dtype=x.dtype)
    taps = np.ascontiguousarray(w.reshape(g.groups, g.c_out_g, g.c_in_g * g.kh * g.kw))
    images = _merged_images(g, threads, block)
    if images:
        k.conv.lowered_forward_merged(x, taps, _bias_arg(bias, x.dtype), g.kh, g.kw, g.sh,
                                      g.sw, g.dh, g.dw, g.pt, g.pl, g.wo, images,
                                      _channel_block(g, threads), threads, out)
    else:
        k.conv.lowered_forward(x, taps, _bias_arg(bias, x.dtype), g.kh, g.kw, g.sh, g.sw,
                               g.dh, g.dw, g.pt, g.pl, g.wo, rows, block, threads, out)
    return out.reshape(g.n, g.c_out, g.ho, g.wo)


def ready_lowered(g: Geometry, threads: int,
                  ) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]:
    """:func:`_fwd_lowered` of ``g`` on ``threads`` threads with its kernel, units and shapes
    worked out once (:mod:`convlayers.functional._ready`). Planned for one thread, the slab
    units run with no parallel region, so the call needs no thread setting
    (:func:`lowered_alone`: entering and leaving it took 3 of a 1x59x8x8 3x3 layer's 16 us,
    torch 10). The sums run in the same order as :func:`_fwd_lowered`'s, whatever the units."""
    conv = kernels().conv
    rows, block = _lowered_units(g, threads, "forward")
    images = _merged_images(g, threads, block)
    geometry = (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.wo)
    kernel = conv.lowered_forward_merged if images else conv.lowered_forward
    units = (images, _channel_block(g, threads)) if images else (rows, block)
    scalars: tuple[int, ...] = (*geometry, *units, threads)
    taps = (g.groups, g.c_out_g, g.c_in_g * g.kh * g.kw)
    shape, result = (g.n, g.c_out, g.ho * g.wo), (g.n, g.c_out, g.ho, g.wo)

    def forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        out = np.empty(shape, dtype=x.dtype)
        kernel(x, np.ascontiguousarray(w.reshape(taps)), _bias_arg(bias, x.dtype), *scalars,
               out)
        return out.reshape(result)

    return forward


def ready_lowered_input_grad(g: Geometry, threads: int,
                             ) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None],
                                           np.ndarray]:
    """:func:`_gx_lowered` of ``g`` on ``threads`` threads plus a bias on its output (``C_in``
    entries), worked out once as :func:`ready_lowered` (a transposed convolution's forward)."""
    conv = kernels().conv
    merged = _merged_gradient_block(g, threads)
    geometry = (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.wo)
    kernel = conv.lowered_input_grad_merged if merged else conv.lowered_input_grad
    units = (merged,) if merged else _lowered_units(g, threads, "input_grad")
    scalars: tuple[int, ...] = (*geometry, *units, threads)
    taps = (g.groups, g.c_out_g, g.c_in_g * g.kh * g.kw)
    grads, result = (g.n, g.c_out, g.ho * g.wo), (g.n, g.c_in, g.h, g.w)
    shift = (1, g.c_in, 1, 1)

    def input_grad(gy: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        gx = np.empty(result, dtype=gy.dtype)
        kernel(gy.reshape(grads), np.ascontiguousarray(w.reshape(taps)), *scalars, gx)
        if bias is not None:
            gx += bias.reshape(shift)
        return gx

    return input_grad


def lowered_alone(g: Geometry, pass_: str) -> bool:
    """Whether the lowered ``pass_`` (``"forward"`` or ``"input_grad"``) of ``g`` planned for
    one thread runs without a parallel region (:func:`ready_lowered`), so that it needs no
    thread setting: the slab and block units do on one thread; the merged kernels' units
    still run on every thread of the pool, in scratch sized for the threads they are told."""
    if pass_ == "forward":
        return not _merged_images(g, 1, _lowered_units(g, 1, "forward")[1])
    return not _merged_gradient_block(g, 1)


def _merged_images(g: Geometry, threads: int, block: int) -> int:
    """Images per pass of :func:`convlayers.kernels.conv.lowered_forward_merged`, or 0 for the
    slab units: merged when the slab units would split one image's output channels (a batch
    too small for the threads: ``block`` short of them all) or an image has at most a quarter
    of a vector's lanes of output positions (its own product would run masked tiles), as many
    images as fit the scratch the slab units would take (``config.engine.lowered_column_bytes``
    a thread; 0 when one does not). Wider maps keep the slab units: merging two images of 7x7
    outputs ran 1.1x slower (the columns each thread reads are then half made by the other),
    and so did 15 of 17 random layers of 6-15 output positions (batches of 2-25: 1.07-1.5x,
    the others 0.89x and 1.01x), while maps of 1-3 positions gained on 4 of 5 (0.62-0.95x;
    1.8x with 16 groups), and a pass of fewer than ``config.engine.merged_min_positions``
    positions in all keeps them too. One image keeps the slab units, each thread making the
    columns of its own blocks: on 65 random layers of the lowered forward, the nine of batch 1
    that merged ran 0.77-0.93x the time (none slower beyond noise): the merged columns are
    made in a parallel pass of their own, half by the other thread."""
    from convlayers.kernels.simd import VECTOR_BYTES

    narrow = 4 * g.ho * g.wo <= VECTOR_BYTES // g.itemsize
    if g.n == 1 or (block == g.c_out_g and not narrow):
        return 0
    per_image = (g.c_in_g * g.kh * g.kw + g.c_out_g) * g.ho * g.wo * g.itemsize
    budget = min(threads * config.engine.lowered_column_bytes, config.scratch_bytes())
    images = min(g.n, budget // per_image)
    # too few positions in all: the units of one image (config.engine.merged_min_positions)
    return images if images * g.ho * g.wo >= config.engine.merged_min_positions else 0


def _channel_block(g: Geometry, threads: int) -> int:
    """Output channels per unit of the merged kernel: two units a thread, in whole
    register-tile bands."""
    from convlayers.kernels.simd import TILE_ROWS

    per = -(-g.c_out_g // (2 * threads))
    return max(TILE_ROWS, -(-per // TILE_ROWS) * TILE_ROWS)


def _gx_lowered(gy: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    k = kernels()
    threads = _numba_threads()
    rows, block = _lowered_units(g, threads, "input_grad")
    kk = g.kh * g.kw
    taps = np.ascontiguousarray(w).reshape(g.groups, g.c_out_g, g.c_in_g * kk)
    gx = np.empty((g.n, g.c_in, g.h, g.w), dtype=gy.dtype)
    merged = _merged_gradient_block(g, threads)
    if merged:
        k.conv.lowered_input_grad_merged(gy.reshape(g.n, g.c_out, g.ho * g.wo), taps, g.kh,
                                         g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.wo,
                                         merged, threads, gx)
        return gx
    k.conv.lowered_input_grad(gy.reshape(g.n, g.c_out, g.ho * g.wo), taps, g.kh, g.kw,
                              g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.wo, rows, block, threads,
                              gx)
    return gx


def _merged_gradient_block(g: Geometry, threads: int) -> int:
    """Input channels per unit of :func:`convlayers.kernels.conv.lowered_input_grad_merged`
    and ``lowered_weight_grad_merged``, or 0 for the per-image units: merged where
    :func:`convlayers.functional.plan.few_positions` says (one image's products would be that
    narrow), in blocks that give every thread two units and keep a unit's columns (all the
    images') within ``config.engine.lowered_column_bytes``."""
    if not few_positions(g):
        return 0
    per_channel = g.kh * g.kw * g.n * g.ho * g.wo * g.itemsize
    cap = max(1, min(config.engine.lowered_column_bytes, config.scratch_bytes()))
    want = max(1, -(-2 * threads // g.groups))
    return max(1, min(-(-g.c_in_g // want), cap // per_channel))


@_quiet
def _gw_lowered(x: np.ndarray, gy: np.ndarray, g: Geometry) -> np.ndarray:
    k = kernels()
    threads = _numba_threads()
    merged = _merged_gradient_block(g, threads)
    if merged:  # as the input gradient: one product over all the images per block
        gw = np.empty((g.groups, g.c_out_g, g.c_in_g * g.kh * g.kw), dtype=x.dtype)
        k.conv.lowered_weight_grad_merged(x, gy.reshape(g.n, g.c_out, g.ho * g.wo), g.groups,
                                          g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
                                          g.wo, merged, threads, gw)
        return gw.reshape(g.c_out, g.c_in_g, g.kh, g.kw)
    rows, _ = _lowered_units(g, threads, "weight_grad")
    kk = g.kh * g.kw
    units = g.n * g.groups * -(-g.ho // rows)
    want = 2 * threads if threads > 1 else 1
    # too few (image, group, slab) units for the threads (batch 1, small maps): each also takes
    # a block of input channels, its own rows of the gradient
    block = g.c_in_g if units >= want else max(1, -(-g.c_in_g // -(-want // units)))
    # one image in one slab: the units write their rows of the gradient themselves
    owned = g.n == 1 and rows >= g.ho
    acc = np.empty((0 if owned else threads, g.groups, g.c_in_g * kk, g.c_out_g), dtype=x.dtype)
    gw = np.empty((g.groups, g.c_out_g, g.c_in_g * kk), dtype=x.dtype)
    k.conv.lowered_weight_grad(x, gy.reshape(g.n, g.c_out, g.ho * g.wo), g.groups, g.kh,
                               g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.wo, rows, block,
                               threads, acc, gw)
    if not owned:
        k.conv.sum_transposed(acc, gw)
    return gw.reshape(g.c_out, g.c_in_g, g.kh, g.kw)
