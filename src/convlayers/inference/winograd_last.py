"""Winograd F(2x2, 3x3) for the 3x3 stride-1 convolutions of a plan's channels-last segments.

A 2x2 block of output pixels is ``Y = A^T [sum_c (G g G^T) * (B^T d B)] A`` where ``d`` is the
4x4 patch of input pixels it reads (:mod:`convlayers.kernels.winograd` has the algebra). In
NHWC every pixel is a row of channels, so both transforms run along whole vectors of channels,
and the sum over channels of the 16 elementwise products is 16 GEMMs
``M_e (tiles, C_out) = V_e (tiles, C_in) @ U_e (C_in, C_out)``, each run as a 1x1 convolution
of its plane on the direct kernel's register tiles (:func:`convlayers.kernels.simd.conv_band`,
``U_e`` packed like its weights): per channel pair, 16 multiplies for four output pixels where
the direct convolution does 36, 2.25x fewer.

A unit of work is a run of consecutive tiles (across rows and images) by a block of output
channels. Its transforms (``16 x tiles x channels`` each) stay in the core's cache between
the input transform, the products and the output transform, which also finishes each pixel
(bias, residual, activation) while its row of channels is in L1.

The transforms add and subtract neighbouring pixels, so an inf input becomes NaN where the
direct sum keeps inf, and values near the float maximum can overflow. Every output pixel's
sums are checked before the epilogue (:func:`convlayers.kernels.values.nonfinite_in`); a call
that made any inf or NaN is computed again by the direct kernel
(:class:`convlayers.inference.steps_channels_last.WinogradLast`).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from convlayers.inference.channels_last import _finish_row
from convlayers.kernels._typed import UNFINISHED as _UNFINISHED
from convlayers.kernels._typed import ZERO as _ZERO
from convlayers.kernels.queue import claim, new_queue
from convlayers.kernels.simd import _arrays, _Lanes, conv_band, masked_store
from convlayers.kernels.values import nonfinite_in

__all__ = ["MIN_CHANNELS", "MIN_TILES", "UNIT_COLUMNS", "UNIT_TILES", "fits", "forward",
           "offsets", "plane_elements", "tile_counts", "transformed_weights", "units"]

#: Tiles (2x2 output pixels) a call needs for Winograd. Few tiles make a call stream its
#: weights (16/9 as many transformed) for little work. ResNet's 512-channel 7x7 maps have 16
#: tiles at batch 1: once the direct kernel's units took all 49 pixels, its steps ran
#: 1.14-1.29 ms in the compiled ResNet-18 against Winograd's 1.29-1.34 (the whole model
#: 0.97-0.98x the time, ResNet-50 0.99x); at batch 2 (32 tiles) and 4 the two strategies
#: tied (whole models 0.998-1.002x), so Winograd starts at 32.
MIN_TILES = 32
#: Tiles in a unit of work at most: a multiple of the direct kernel's six rows; the unit's 16
#: planes of transforms stay in L2 with a block of the weights.
UNIT_TILES = 36
#: Input and output channels a convolution needs for Winograd (:func:`fits`): with 32 the
#: transforms cost what the products save (1.0-1.2x the direct kernel's time on 28x28 and
#: 56x56 maps), with 48 it took 0.89x.
MIN_CHANNELS = 48
#: Output channels in a unit at most.
UNIT_COLUMNS = 256


def fits(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
         groups: int, c_in: int, c_out: int) -> bool:
    """Whether a convolution runs as :func:`forward`: 3x3, stride 1, no dilation, one group,
    at least :data:`MIN_CHANNELS` input and output channels (fewer, and the transforms cost
    more than the multiplies they save)."""
    return (kernel == (3, 3) and stride == (1, 1) and dilation == (1, 1) and groups == 1
            and min(c_in, c_out) >= MIN_CHANNELS)


def units(tiles: int, channels: int, threads: int, itemsize: int = 4) -> tuple[int, int]:
    """``(tiles, columns)`` of :func:`forward`'s units for a call of ``tiles`` tiles and
    ``channels`` output channels: :data:`UNIT_TILES` tiles by up to :data:`UNIT_COLUMNS`
    channels, the channels halved (whole strips of the packed weights) while there are fewer
    than two units per thread."""
    from convlayers.kernels.simd import conv_strip

    strip = conv_strip() // itemsize
    cols = min(channels, UNIT_COLUMNS)
    rows = -(-tiles // UNIT_TILES)
    while rows * -(-channels // cols) < 2 * threads and cols > strip:
        cols = max(strip, -(-cols // 2 // strip) * strip)
    return min(UNIT_TILES, tiles), cols


def tile_counts(ho: int, wo: int) -> tuple[int, int]:
    """Rows and columns of 2x2 output tiles covering an ``ho x wo`` map."""
    return -(-ho // 2), -(-wo // 2)


def transformed_weights(w: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``U_e = (G g G^T)[e // 4, e % 4]`` of ``w (C_out, C_in, 3, 3)`` (``g = w[o, c]``), each
    ``(C_in, C_out)`` packed in strips of output channels as the direct kernel reads its
    weights (:func:`convlayers.kernels.simd.pack_conv_weights`): ``(16, strips * C_in,
    strip)``. Computed in float64 (:func:`convlayers.kernels.winograd.weight_transform`),
    rounded once to ``dtype``."""
    from convlayers.kernels.simd import pack_conv_weights
    from convlayers.kernels.winograd import weight_transform

    c_out, c_in = w.shape[:2]
    u = np.empty((16, c_out * c_in), dtype=np.float64)
    weight_transform(np.ascontiguousarray(w, np.float64).reshape(-1, 9), u)
    u = u.reshape(16, c_out, c_in, 1, 1).astype(dtype)
    return np.stack([pack_conv_weights(u[e]) for e in range(16)])


def plane_elements(tiles: int, channels: int) -> int:
    """Elements between consecutive planes ``V_e`` (or ``M_e``) of ``tiles`` rows of
    ``channels``: an odd number of blocks of 16 (a 64-byte line of float32) holding them, so
    never a multiple of 4 KiB. Planes a whole 4 KiB apart would all fall into the same sets of
    the L1 cache (64 channels, 64 tiles: 16 KiB, and the transforms ran 3x slower)."""
    lines = -(-tiles * channels // 16)
    return 16 * (lines + 1 - lines % 2)


def offsets(wp: int, c_in: int, wo: int, c_out: int, tiles: int) -> np.ndarray:
    """The four tables of element offsets :func:`forward` reads (int64, one row of 16 each):
    a tile's 16 input pixels from its first in a padded ``(.., wp, c_in)`` input; the 16
    planes ``V_e`` (``tiles`` rows of ``c_in``) of a thread's scratch; the 16 planes ``M_e``
    (``tiles`` rows of ``c_out``); and a tile's four output pixels from its first in ``(..,
    wo, c_out)``, then zeros (entry 4: the one tap of the products, 1x1 "convolutions")."""
    e = np.arange(16, dtype=np.int64)
    table = np.zeros((4, 16), dtype=np.int64)
    table[0] = (e // 4) * wp * c_in + (e % 4) * c_in
    table[1] = e * plane_elements(tiles, c_in)
    table[2] = e * plane_elements(tiles, c_out)
    table[3, :4] = (e[:4] // 2) * wo * c_out + (e[:4] % 2) * c_out
    return table


def _emit_transform(context: Any, builder: Any, signature: Any, args: Any, output: bool) -> Any:
    """``count`` channels of one tile, a vector of them at a time (the last masked): 16 vectors
    ``d_e = src[src_at + src_rel[e] + k:]`` in; out, the input transform ``B^T d B`` (16
    vectors to ``dst[dst_at + dst_rel[e] + k:]``) or, with ``output``, ``A^T d A`` (4 vectors,
    vector ``j`` stored only when bit ``j`` of ``keep`` is set)."""
    v = _Lanes(context, builder, signature.args[0].dtype)
    b = builder
    sa, ra, da, ta = _arrays(context, builder, signature, args, (0, 2, 3, 5))
    src_at, dst_at, count, keep = args[1], args[4], args[6], args[7]
    lanes = v.const(v.lanes)
    src = [b.add(src_at, b.load(b.gep(ra.data, [v.const(e)]))) for e in range(16)]
    dst = [b.add(dst_at, b.load(b.gep(ta.data, [v.const(e)]))) for e in range(4 if output else 16)]
    none = ir.Constant(ir.VectorType(ir.IntType(1), v.lanes), [0] * v.lanes)
    stored = [b.icmp_signed("!=", b.and_(keep, v.const(1 << j)), v.const(0)) for j in range(4)]
    with cgutils.for_range(b, b.sdiv(b.add(count, b.sub(lanes, v.const(1))), lanes)) as loop:
        k = b.mul(loop.index, lanes)
        mask = v.masks(b.sub(count, k), 1)[0]
        d = [v.load(sa, b.add(src[e], k), mask) for e in range(16)]

        def rows_of(q: list[Any], i: int) -> list[Any]:
            return q[4 * i: 4 * i + 4]

        if output:  # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], on the rows, then on each row
            top = [b.fadd(b.fadd(d[j], d[4 + j]), d[8 + j]) for j in range(4)]
            low = [b.fsub(b.fsub(d[4 + j], d[8 + j]), d[12 + j]) for j in range(4)]
            results = []
            for r in (top, low):
                results += [b.fadd(b.fadd(r[0], r[1]), r[2]), b.fsub(b.fsub(r[1], r[2]), r[3])]
            for j, value in enumerate(results):
                masked_store(b, v.mstore, value, v.ptr(da, b.add(dst[j], k)), v.align,
                             b.select(stored[j], mask, none))
        else:  # B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], likewise
            r0, r1, r2, r3 = (rows_of(d, i) for i in range(4))
            rows = [[b.fsub(r0[j], r2[j]) for j in range(4)], [b.fadd(r1[j], r2[j]) for j in range(4)],
                    [b.fsub(r2[j], r1[j]) for j in range(4)], [b.fsub(r1[j], r3[j]) for j in range(4)]]
            for i, r in enumerate(rows):
                for j, value in enumerate((b.fsub(r[0], r[2]), b.fadd(r[1], r[2]),
                                           b.fsub(r[2], r[1]), b.fsub(r[1], r[3]))):
                    masked_store(b, v.mstore, value, v.ptr(da, b.add(dst[4 * i + j], k)),
                                 v.align, mask)
    return context.get_dummy_value()


def _make_transform(output: bool) -> Any:
    """The intrinsic ``transform(src, src_at, src_rel, dst, dst_at, dst_rel, count, keep)`` of
    :func:`_emit_transform` (1-D C-contiguous float arrays of one dtype, int64 tables)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return _emit_transform(context, builder, signature, args, output)

    def typer(typingctx: Any, src: Any, src_at: Any, src_rel: Any, dst: Any, dst_at: Any,
              dst_rel: Any, count: Any, keep: Any) -> Any:
        floats = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                     and a.dtype == src.dtype and a.dtype in (types.float32, types.float64)
                     for a in (src, dst))
        ints = all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.int64
                   for a in (src_rel, dst_rel))
        if not (floats and ints):
            return None
        i = types.intp
        return types.void(src, i, src_rel, dst, i, dst_rel, i, i), codegen

    typer.__name__ = f"winograd_{'output' if output else 'input'}_vectors"
    return intrinsic(typer)


_input_vectors = _make_transform(False)
_output_vectors = _make_transform(True)


@njit(cache=True)
def _input_tiles(xf, hp, wp, c_in, q0, count, th, tw, table, vf):
    """The input transforms of tiles ``q0 .. q0+count`` (tile ``q``: image ``q // (th*tw)``,
    its tile row and column from the rest) of the flat zero-padded ``(N, hp, wp, c_in)`` input
    ``xf`` into the flat ``vf`` (``V_e`` of tile ``t`` at ``table[1, e] + t*c_in``)."""
    for t in range(count):
        q = q0 + t
        n = q // (th * tw)
        y = 2 * ((q // tw) % th)
        x = 2 * (q % tw)
        _input_vectors(xf, ((n * hp + y) * wp + x) * c_in, table[0], vf, t * c_in, table[1],
                       c_in, 15)


@njit(cache=True)
def _output_tiles(mf, bias, res, has_res, act, q0, count, th, tw, co0, co1, table, out):
    """Channels ``co0 .. co1`` of the output pixels of tiles ``q0 .. q0+count`` from the flat
    products ``mf`` (``M_e`` of tile ``t`` at ``table[2, e] + t*C_out``): ``act(A^T M A + bias
    (+ res))`` into ``out (N, Ho, Wo, C_out)`` (``res`` shaped like it), the pixels past the
    map's edge not stored. Returns whether any sum was inf or NaN (checked before the
    epilogue)."""
    ho, wo, c_out = out.shape[1], out.shape[2], out.shape[3]
    of = out.reshape(out.size)
    b = bias[co0:co1]
    bad = False
    for t in range(count):
        q = q0 + t
        n = q // (th * tw)
        y = 2 * ((q // tw) % th)
        x = 2 * (q % tw)
        keep = 1 | (2 if x + 1 < wo else 0)
        keep |= keep << 2 if y + 1 < ho else 0
        _output_vectors(mf, t * c_out + co0, table[2], of, ((n * ho + y) * wo + x) * c_out + co0,
                        table[3], co1 - co0, keep)
        for k in range(4):
            if keep & (1 << k):
                oy, ox = y + k // 2, x + k % 2
                part = out[n, oy, ox, co0:co1]
                if nonfinite_in(part):
                    bad = True
                _finish_row(part, b, res[n, oy, ox, co0:co1], has_res, act)
    return bad


@njit(parallel=True, cache=True)
def forward(xp, u, bias, res, has_res, act, tiles, cols, threads, table, rows, vbuf, mbuf, out,
            bad):
    """``out (N, Ho, Wo, C_out) = act(conv3x3(x) + bias (+ res))`` by Winograd F(2x2, 3x3), from
    the zero-padded channels-last input ``xp (N, 2*th + 2, 2*tw + 2, C_in)`` (the input at its
    top and left padding) and ``u``, the packed transforms of :func:`transformed_weights`.

    Units of ``tiles`` consecutive tiles by ``cols`` output channels go to the first free of
    ``threads`` threads (:mod:`convlayers.kernels.queue`); thread ``i`` (numba's thread id)
    works in ``vbuf[i]`` and ``mbuf[i]`` (16 planes of :func:`plane_elements` each), laid out
    as :func:`offsets` (``table``) says; ``rows`` are the tiles' offsets in a plane
    (``arange(tiles) * C_in``). ``bad[i]`` (zeroed by the caller) is set to 1 when thread ``i``
    met an inf or NaN sum."""
    n_img, ho, wo, c_out = out.shape
    hp, wp, c_in = xp.shape[1], xp.shape[2], xp.shape[3]
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    total = n_img * th * tw
    n_tiles = (total + tiles - 1) // tiles
    n_cols = (c_out + cols - 1) // cols
    xf = xp.reshape(xp.size)
    v_plane, m_plane = table[1, 1], table[2, 1]
    one_tap = table[3, 4:5]
    queue = new_queue()
    for _ in prange(threads):
        me = numba.get_thread_id()
        vf, mf = vbuf[me], mbuf[me]
        while True:
            unit = claim(queue)
            if unit >= n_tiles * n_cols:
                break
            q0 = (unit // n_cols) * tiles
            count = min(tiles, total - q0)
            co0 = (unit % n_cols) * cols
            co1 = min(c_out, co0 + cols)
            _input_tiles(xf, hp, wp, c_in, q0, count, th, tw, table, vf)
            for e in range(16):
                v_e = vf[e * v_plane: e * v_plane + count * c_in]
                m_e = mf[e * m_plane: e * m_plane + count * c_out].reshape(count, c_out)
                conv_band(v_e, u[e], m_e, rows, one_tap, _ZERO, count, co0, co1, _ZERO, c_in,
                          bias, m_e, _UNFINISHED)
            if _output_tiles(mf, bias, res, has_res, act, q0, count, th, tw, co0, co1, table,
                             out):
                bad[me] = 1
