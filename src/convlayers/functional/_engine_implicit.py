"""The engine's ``implicit`` strategy: the GEMM reads windows of a padded, phase-split copy of
the input (:mod:`convlayers.kernels.implicit`), no im2col.

Every pass of any 2-D kernel, stride, dilation and group count. The input gradient of a
stride-1 convolution is the forward kernel run on the output gradient with the weights flipped
and transposed (a "full" correlation: padding ``(k-1)*d - p`` before each axis); with a stride,
each stride phase of the input (the positions ``i`` with one ``(i + p) % s``) receives a subset
of the taps, so it is one such stride-1 forward per phase pair (:func:`_phases`), written into
every ``s``-th row and column.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

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
from convlayers.functional._scratch import take
from convlayers.functional.plan import Geometry, column_planes, full_geometry


@remembered
def slab_rows(g: Geometry, threads: int) -> tuple[int, int, int]:
    """``(R, B, Cq)``: output rows, output channels and input channels (a chunk) per unit of
    the implicit forward.

    A unit's slab (its input rows, a chunk of the group's input channels by the phase planes
    some tap reads) stays under ``config.engine.implicit_slab_bytes`` (and the scratch cap).
    All input channels make one chunk while the slab still holds enough rows for a block of
    ``NC`` product columns (or the whole map); past that, the slab keeps those rows and the
    channels come in chunks whose products add up. Then, while there are fewer units than
    twice the threads, the slabs and blocks of output channels that cost the least are chosen
    (:func:`_units`). The sums run in the same order whatever the units and chunks."""
    from convlayers.kernels.simd import NC

    wq, halo, per_channel_row, cap = _slab_sizes(g)
    rows = max(_whole_slab_rows(g), min(g.ho, -(-NC // wq)))
    rows, block = _units(g, rows, threads)
    chunk = max(1, min(g.c_in_g, cap // max(1, (rows + halo) * per_channel_row)))
    chunks = -(-g.c_in_g // chunk)
    return rows, block, -(-g.c_in_g // chunks)


def _units(g: Geometry, rows: int, threads: int) -> tuple[int, int]:
    """``(R, B)`` of the implicit forward's units (:func:`costed_units`): slabs of ``Wq``
    positions a row and ``halo`` rows more, the copy of each channel's phase planes."""
    from convlayers.functional.plan import _copy_price

    wq, halo, per_channel_row, _ = _slab_sizes(g)
    copy_row = _copy_price(g) * g.c_in_g * per_channel_row // g.itemsize
    return costed_units(g, rows, threads, wq, halo, copy_row)


def _slab_sizes(g: Geometry) -> tuple[int, int, int, int]:
    """``(Wq, halo, bytes, cap)``: a slab's row length and extra rows (:mod:`implicit
    <convlayers.kernels.implicit>`), the bytes one channel's phase planes (or column planes,
    :func:`convlayers.functional.plan.column_planes`) take per output row, and the slab's
    cap."""
    halo = (g.kh - 1) * g.dh // g.sh
    cap = max(1, min(config.engine.implicit_slab_bytes, config.scratch_bytes()))
    if column_planes(g):
        planes = g.kw * min(g.sh, g.kh)
        return g.wo, halo, planes * g.wo * g.itemsize, cap
    wq = g.wo + (g.kw - 1) * g.dw // g.sw
    planes = min(g.sh * g.sw, g.kh * g.kw)
    return wq, halo, planes * wq * g.itemsize, cap


def _whole_slab_rows(g: Geometry) -> int:
    """Output rows of a slab that holds all of a group's input channels within the cap (one at
    least)."""
    _, halo, per_channel_row, cap = _slab_sizes(g)
    return max(1, min(g.ho, cap // max(1, g.c_in_g * per_channel_row) - halo))


def _run(x: np.ndarray, taps: np.ndarray, bias: np.ndarray | None, g: Geometry) -> np.ndarray:
    """``(N, C_out, Ho*Wo)``: :func:`convlayers.kernels.implicit.implicit_forward` of ``g``
    with ``taps (G, C_out/g, C_in/g*kh*kw)``."""
    return _runner(g, _numba_threads())(x, taps, bias)


class Run(Protocol):
    """A planned implicit forward: ``run(x, taps, bias)`` returns ``(N, C_out, Ho*Wo)``;
    ``into=(out, o0, orow, ocol)`` stores output ``(oh, ow)`` of channel ``c`` at ``out[n, c,
    o0 + oh*orow + ow*ocol]`` instead (``out`` is ``(N, C_out, P)``) and returns ``out``."""

    def __call__(self, x: np.ndarray, taps: np.ndarray, bias: np.ndarray | None,
                 into: tuple[np.ndarray, int, int, int] | None = None) -> np.ndarray: ...


@remembered
def _runner(g: Geometry, threads: int) -> Run:
    """:func:`_run` of ``g`` on ``threads`` threads, its units and scratch sizes worked out
    once."""
    kernel = kernels().implicit.implicit_forward
    rows, block, chunk = slab_rows(g, threads)
    slab, product = scratch_sizes(g, threads)
    scalars = (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.ho, g.wo, rows, block, chunk,
               column_planes(g))
    shape = (g.n, g.c_out, g.ho * g.wo)

    def run(x: np.ndarray, taps: np.ndarray, bias: np.ndarray | None,
            into: tuple[np.ndarray, int, int, int] | None = None) -> np.ndarray:
        out, place = (np.empty(shape, dtype=x.dtype), (0, g.wo, 1)) if into is None else (
            into[0], into[1:])
        kernel(x, taps, _bias_arg(bias, x.dtype), *scalars,
               take("implicit.slab", (threads, slab), x.dtype),
               take("implicit.product", (threads, product), x.dtype), out, *place)
        return out

    return run


def ready_implicit(g: Geometry, threads: int,
                   ) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]:
    """:func:`_fwd_implicit` of ``g`` for a call that runs on ``threads`` threads, worked out
    once (:mod:`convlayers.functional._ready`)."""
    run = _runner(g, threads)
    taps = (g.groups, g.c_out_g, g.c_in_g * g.kh * g.kw)
    result = (g.n, g.c_out, g.ho, g.wo)

    def forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        return run(x, np.ascontiguousarray(w.reshape(taps)), bias).reshape(result)

    return forward


def ready_implicit_input_grad(g: Geometry, threads: int,
                              ) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]:
    """The stride-1 :func:`_gx_implicit` of ``g`` plus a bias on its output (``C_in``
    entries, added in the kernel), for a call that runs on ``threads`` threads, worked out
    once (:mod:`convlayers.functional._ready`)."""
    run = _runner(full_geometry(g), threads)
    weights = (g.groups, g.c_out_g, g.c_in_g, g.kh, g.kw)
    result = (g.n, g.c_in, g.h, g.w)

    def input_grad(gy: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        taps = _transposed_taps(w.reshape(weights)[..., ::-1, ::-1])
        return run(gy, taps, bias).reshape(result)

    return input_grad


@remembered
def scratch_sizes(g: Geometry, threads: int) -> tuple[int, int]:
    """Elements per thread of the implicit forward's slab and product scratch for ``g``."""
    from convlayers.kernels.implicit import forward_scratch

    rows, block, chunk = slab_rows(g, threads)
    return forward_scratch(chunk, (g.kh, g.kw), (g.sh, g.sw), (g.dh, g.dw), rows, block, g.wo,
                           column_planes(g))


def _fwd_implicit(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                  g: Geometry) -> np.ndarray:
    taps = np.ascontiguousarray(w.reshape(g.groups, g.c_out_g, g.c_in_g * g.kh * g.kw))
    return _run(x, taps, bias, g).reshape(g.n, g.c_out, g.ho, g.wo)


def _gx_implicit(gy: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    gy = np.ascontiguousarray(gy)
    w5 = w.reshape(g.groups, g.c_out_g, g.c_in_g, g.kh, g.kw)
    if g.sh == g.sw == 1:
        full = full_geometry(g)
        taps = _transposed_taps(w5[..., ::-1, ::-1])
        return _run(gy, taps, None, full).reshape(g.n, g.c_in, g.h, g.w)
    gx = (np.empty if _covered(g) else np.zeros)((g.n, g.c_in, g.h, g.w), dtype=gy.dtype)
    flat = gx.reshape(g.n, g.c_in, g.h * g.w)
    threads = _numba_threads()
    for (rows, cols, sub), taps in zip(_phase_geometries(g), _phase_taps(w5, g), strict=True):
        _runner(sub, threads)(gy, taps, None, (flat, rows.first * g.w + cols.first,
                                               g.sh * g.w, g.sw))
    return gx


@functools.lru_cache(maxsize=1024)
def _phase_geometries(g: Geometry) -> tuple[tuple[_Phase, _Phase, Geometry], ...]:
    """``(row phase, column phase, stride-1 forward geometry)`` of each stride phase pair of the
    input gradient of ``g`` that some tap reaches."""
    return tuple(
        (rows, cols, replace(g, c_in=g.c_out, h=g.ho, w=g.wo, c_out=g.c_in, kh=len(rows.taps),
                             kw=len(cols.taps), sh=1, sw=1, dh=rows.dilation, dw=cols.dilation,
                             pt=rows.pad, pb=0, pl=cols.pad, pr=0, ho=rows.count,
                             wo=cols.count))
        for rows in _phases(g.kh, g.dh, g.sh, g.pt, g.h)
        for cols in _phases(g.kw, g.dw, g.sw, g.pl, g.w))


@functools.lru_cache(maxsize=1024)
def _covered(g: Geometry) -> bool:
    """Whether the phases some tap reaches cover every input position (else the rest stay
    zero)."""
    return (sum(p.count for p in _phases(g.kh, g.dh, g.sh, g.pt, g.h)) == g.h
            and sum(p.count for p in _phases(g.kw, g.dw, g.sw, g.pl, g.w)) == g.w)


def _phase_taps(w5: np.ndarray, g: Geometry) -> list[np.ndarray]:
    """The taps (:func:`_transposed_taps`) of each phase of :func:`_phase_geometries`, in one
    pass over the weights ``(G, C_out/g, C_in/g, kh, kw)``
    (:func:`convlayers.kernels.implicit.phase_taps`; a gather of each axis per phase, then a
    transposed copy of each, took 0.27-0.85 ms of 1.4-4.3 ms calls)."""
    groups, cog, cig, kh, kw = w5.shape
    index, lengths = _tap_index(g)
    out = np.empty(groups * cig * cog * int(lengths.sum()), dtype=w5.dtype)
    k = kernels().implicit
    parallel = out.size >= config.engine.parallel_phase_taps
    gather = k.phase_taps_parallel if parallel else k.phase_taps
    gather(np.ascontiguousarray(w5).reshape(groups, cog, cig, kh * kw), index, lengths, out)
    parts, start = [], 0
    for length in lengths.tolist():
        size = groups * cig * cog * length
        parts.append(out[start:start + size].reshape(groups, cig, cog * length))
        start += size
    return parts




@functools.lru_cache(maxsize=1024)
def _tap_index(g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(index, lengths)`` for :func:`convlayers.kernels.implicit.phase_taps`: the flat ``(a,
    b)`` taps of each phase of :func:`_phase_geometries`, both axes reversed (the phase's
    correlation reads them in that order), one phase after another."""
    index = [a * g.kw + b for rows, cols, _ in _phase_geometries(g)
             for a in rows.taps[::-1] for b in cols.taps[::-1]]
    lengths = [len(rows.taps) * len(cols.taps) for rows, cols, _ in _phase_geometries(g)]
    return np.array(index, dtype=np.int64), np.array(lengths, dtype=np.int64)


def _transposed_taps(w5: np.ndarray) -> np.ndarray:
    """``(G, C_in/g, C_out/g * kh * kw)``: the taps of the input gradient's forward, from the
    (already flipped) weights ``(G, C_out/g, C_in/g, kh, kw)``."""
    groups, cog, cig, kh, kw = w5.shape
    return np.ascontiguousarray(w5.swapaxes(1, 2)).reshape(groups, cig, cog * kh * kw)


@dataclass(frozen=True)
class _Phase:
    """One stride phase of an axis of the input gradient: the input positions ``first,
    first + s, ...`` (``count`` of them) receive the taps ``taps`` only, as a stride-1 forward
    over the output gradient with ``dilation`` and padding ``pad`` before."""

    first: int
    count: int
    taps: tuple[int, ...]
    dilation: int
    pad: int


@functools.lru_cache(maxsize=1024)
def _phases(k: int, d: int, s: int, p: int, size: int) -> tuple[_Phase, ...]:
    """The stride phases of one axis (kernel ``k``, dilation ``d``, stride ``s``, padding ``p``
    before, input ``size``) that some tap reaches.

    Input position ``i`` with ``i + p = s*t + r`` receives tap ``a`` exactly when ``a*d = r``
    (mod ``s``), from output ``t - e_a``, ``e_a = (a*d - r) // s``. Those taps are ``s / gcd(d,
    s)`` apart, so their ``e_a`` are ``d / gcd(d, s)`` apart: a correlation of the output
    gradient with the taps reversed, dilation ``d / gcd(d, s)``, output ``t`` reading ``t -
    e_last + j*dilation``."""
    phases = []
    for r in range(s):
        taps = tuple(a for a in range(k) if (a * d) % s == r)
        first = (r - p) % s
        if not taps or first >= size:
            continue
        t0 = (first + p - r) // s
        e_last = (taps[-1] * d - r) // s
        phases.append(_Phase(first, (size - first + s - 1) // s, taps, d // math.gcd(d, s),
                             e_last - t0))
    return tuple(phases)


def channels_last_pays(g: Geometry) -> bool:
    """Whether the implicit weight gradient runs
    :func:`convlayers.kernels.implicit.channels_last_weight_grad` (input channels as the
    product's columns) rather than ``implicit_weight_grad`` (output channels as its columns):
    fewer output channels than a register tile's columns, 64 input channels or more, a kernel
    of 6 taps or more (each channels-last copy serves them all), stride 2 or less (a copy of
    every input pixel for a quarter of them read) and a copy of at most 1 MiB a group (every tap
    reads all of it again). On 46 random layers with fewer than 48 output channels those the
    rule admits ran 0.33-0.97x the other kernel's time (one 1.04x); 2x2 kernels, strides of 3,
    6-49 input channels and 83x83-119x119 maps ran up to 2.1x.

    Also admitted: 24-63 input channels under a kernel of 24 taps or more at stride 1, with at
    most 32 output channels (``config.engine.channels_last_weight_grad_channels``, ``..._taps``
    and ``..._out_channels``). On 108 layers of the sweeps with
    12-63 input channels the kernels split about evenly (0.34-2.1x), the big stride-1 kernels
    mostly gaining; on 30 new random layers in the admitted range but any stride, the 19 of
    stride 1 ran 0.35-0.91x the other kernel's time but one (1.20x: 29->9 7x7 dilation 3 on
    58x58 maps), those of stride 2 0.58-1.39x (left out). 44->32 7x7 on 6x44x33x11: 3.0 ms ->
    1.6 ms (torch's whole backward 2.8)."""
    from convlayers.kernels.simd import TILE_VECTORS, VECTOR_BYTES

    hp = (g.ho - 1) * g.sh + (g.kh - 1) * g.dh + 1
    wp = (g.wo - 1) * g.sw + (g.kw - 1) * g.dw + 1
    taps = g.kh * g.kw
    many = g.c_in_g >= 64 and taps >= 6 and g.sh * g.sw <= 4
    e = config.engine
    big_kernel = (g.c_in_g >= e.channels_last_weight_grad_channels
                  and taps >= e.channels_last_weight_grad_taps
                  and g.c_out_g <= e.channels_last_weight_grad_out_channels
                  and g.sh == g.sw == 1)
    return (g.c_out_g < TILE_VECTORS * VECTOR_BYTES // g.itemsize and (many or big_kernel)
            and hp * wp * g.c_in_g * g.itemsize <= 2**20)




@remembered
def _weight_grad_units(g: Geometry, threads: int) -> tuple[int, int, bool]:
    """``(R, CB, owned)`` of the implicit weight gradient: slabs of ``R`` output rows, blocks
    of ``CB`` input channels, and whether the units own their rows of the gradient and write
    them themselves (``owned``: no accumulator) or each thread sums into its own.

    While the images, groups and whole slabs (all channels within the slab cap) give every
    thread two units, as they come. Else, with
    ``config.engine.implicit_weight_grad_split_channels`` input channels or more, the channels
    split into blocks, each unit its own rows of the gradient, and with one image in one slab
    the units write their rows of the gradient themselves (no per-thread copies to zero and
    sum):
    shorter slabs gave each unit a product of a few positions onto a whole per-thread
    gradient. On the 10 random batch-1-3 layers of 64 or more channels this moved: 0.79-1.06x
    the time (geo-mean 0.94); with fewer channels, larger slabs of fewer channels ran up to
    3x slower. Fewer: the slabs shorten (:func:`units_for_threads`)."""
    want = 2 * threads if threads > 1 else 1
    images = g.n * g.groups
    rows = _whole_slab_rows(g)
    slabs = -(-g.ho // rows)
    if images * slabs >= want:
        return rows, g.c_in_g, False
    if g.c_in_g < config.engine.implicit_weight_grad_split_channels:
        return units_for_threads(g, rows, threads, True)[0], g.c_in_g, False
    block = -(-g.c_in_g // min(g.c_in_g, -(-want // (images * slabs))))
    return rows, block, g.n == 1 and slabs == 1


def _gw_channels_last(x: np.ndarray, gy: np.ndarray, g: Geometry, threads: int) -> np.ndarray:
    k = kernels()
    kk = g.kh * g.kw
    want = 2 * threads if threads > 1 else 1
    hp = (g.ho - 1) * g.sh + (g.kh - 1) * g.dh + 1
    wp = (g.wo - 1) * g.sw + (g.kw - 1) * g.dw + 1
    image = g.c_in * hp * wp * g.itemsize  # one image's channels-last copy, every group
    cap = max(1, min(threads * config.engine.lowered_column_bytes, config.scratch_bytes()))
    images = max(1, min(g.n, cap // max(1, image)))
    blocks = min(kk, -(-want // (images * g.groups)))
    acc = np.empty((threads, g.groups, kk, g.c_out_g, g.c_in_g), dtype=x.dtype)
    k.implicit.channels_last_weight_grad(x, gy.reshape(g.n, g.c_out, g.ho * g.wo), g.groups,
                                         g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
                                         g.wo, images, -(-kk // blocks), acc)
    gw = acc.sum(axis=0).transpose(0, 2, 3, 1)  # (G, C_out/g, C_in/g, kk)
    return np.ascontiguousarray(gw).reshape(g.c_out, g.c_in_g, g.kh, g.kw)


@_quiet
def _gw_implicit(x: np.ndarray, gy: np.ndarray, g: Geometry) -> np.ndarray:
    k = kernels()
    threads = _numba_threads()
    if channels_last_pays(g):
        return _gw_channels_last(x, gy, g, threads)
    rows, block, owned = _weight_grad_units(g, threads)
    kk = g.kh * g.kw
    # owned: the units write their rows of the gradient themselves
    acc = np.empty((0 if owned else threads, g.groups, g.c_in_g * kk, g.c_out_g),
                   dtype=x.dtype)
    gw = np.empty((g.groups, g.c_out_g, g.c_in_g * kk), dtype=x.dtype)
    k.implicit.implicit_weight_grad(x, gy.reshape(g.n, g.c_out, g.ho * g.wo), g.groups,
                                    g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.wo,
                                    rows, block, column_planes(g), threads, acc, gw)
    if not owned:
        k.conv.sum_transposed(acc, gw)
    return gw.reshape(g.c_out, g.c_in_g, g.kh, g.kw)
