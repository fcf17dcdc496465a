"""A channels-last inverted-residual block in one pass: expand 1x1, depthwise, project 1x1.

MobileNetV2's and EfficientNet-Lite's blocks widen a map by a 1x1 convolution (16 -> 96
channels on 112x112 maps), filter each channel with a depthwise kernel, and narrow it again by
a second 1x1 convolution. Run as three steps, the two wide maps go out to memory and come
back: 4.8 MB each way for the first such block of MobileNetV2, more than the two cores' L2
caches hold, so the steps wait on the shared cache (the compiled MobileNetV2's layers ran
1.2-1.6x slower in the network than each alone on the same buffers).

:func:`block` never writes a wide map. Each thread takes a chunk of output rows of one image
and walks it in bands: it expands only the input rows the band's windows read, into a buffer
of rows of its own (kept across bands: the rows two bands share are expanded once), filters
them into a band of depthwise rows, and projects those into the output (bias, residual and
activation in the tiles' registers). The buffers stay in the core's L2; only the block's
input, output and weights travel. The products run on the direct convolution's register
tiles (:func:`convlayers.kernels.simd.conv_band`), the depthwise rows on
:func:`convlayers.inference.channels_last.depthwise_row`. This is the fused inverted residual
of XNNPACK's and TFLite's "depth-first" schedules, written with the kernels the separate steps
use, so its sums are theirs.

Either 1x1 layer may be absent (a block of expansion 1 has no expansion; a depthwise layer
followed by something other than a 1x1 one has no projection).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from convlayers.inference.channels_last import (
    _finish_row,
    depthwise_row,
    inner_tap_offsets,
    row_lists_size,
)
from convlayers.kernels._typed import FALSE as _NO
from convlayers.kernels._typed import UNFINISHED as _UNFINISHED
from convlayers.kernels._typed import ZERO as _ZERO
from convlayers.kernels.queue import claim, new_queue
from convlayers.kernels.simd import NC, conv_band, conv_rows, conv_slab

__all__ = ["BUFFER_BYTES", "band_rows", "block", "block_channels", "buffer_rows", "channel_parts"]

#: Bytes of expanded rows one thread keeps (its band's rows and those kept for the next band):
#: half a core's L2 on the machines measured (2 MiB), beside the weights being read.
BUFFER_BYTES = 512 * 1024
#: Bytes of one band's depthwise rows (the projection's left operand, read once per block of
#: its output channels).
BAND_BYTES = 96 * 1024


def band_rows(ho: int, wo: int, channels: int, itemsize: int) -> int:
    """Output rows per band: the map's depthwise rows in as many bands as their bytes fill
    :data:`BAND_BYTES` (rounded up), as even as whole rows allow (at most ``ho``). Filled
    bands first left a short last one on small maps, MobileNetV2's 7x7 maps of 960 channels
    in bands of 3, 3 and 1 rows, whose last projection was a tile and a row: as bands of 4
    and 3 its three such blocks ran 0.94-0.96x the time at batch 16 (the same at batch 1)."""
    row = max(1, wo * channels * itemsize)
    bands = max(1, -(-ho * row // BAND_BYTES))
    return max(1, -(-ho // bands))


def buffer_rows(band: int, kh: int, sh: int, dh: int, h: int, w: int, channels: int,
                itemsize: int) -> int:
    """Rows of expanded input one thread's buffer holds: at least a band's windows' rows (at
    most the map's ``h``), more up to :data:`BUFFER_BYTES` (the buffer is compacted when full,
    so more rows mean fewer copies of the rows bands share)."""
    need = min(h, (band - 1) * sh + (kh - 1) * dh + 1)
    return max(need, min(h, BUFFER_BYTES // max(1, w * channels * itemsize)))


@njit(cache=True, fastmath=True)
def _product(xf, offs, w, bias, act, res, has_res, m, j0, j1, k0, k1, toffs):
    """Columns ``j0 .. j1`` (``j0`` a multiple of a packed strip) of
    ``m = act(X @ W + bias (+ res))``, summed over input channels ``k0 .. k1``, for the pixels
    ``p < m.shape[0]`` whose rows of input channels start at ``xf[offs[p]]``, ``W`` packed by
    :func:`convlayers.kernels.simd.pack_conv_weights` (one tap), as
    :func:`convlayers.inference.conv_last.dense` sums a unit: blocks of ``NC`` columns, slabs of
    input channels, bands of a tile's pixels, the epilogue in registers (ReLU, ReLU6, none)
    or per band while in L1 (other activations). With ``act`` below 0 the sums are stored as
    they are, added onto ``m`` when ``k0 > 0`` (a part of the input channels). ``toffs``: the
    caller's one-element int64 zero (the one tap's offset), kept across calls."""
    pixels = m.shape[0]
    kc = conv_slab(xf, 1, j1 - j0)
    for c0 in range(j0, j1, NC):
        c1 = min(j1, c0 + NC)
        b = bias[c0:c1]
        for s0 in range(k0, k1, kc):
            s1 = min(k1, s0 + kc)
            last = s1 == k1 and act >= 0
            finish = (act | (8 if has_res else 0)) if last and act <= 2 else -1
            # one call for all the pixels, unless bands are finished here
            tall = conv_rows(xf, c1 - c0) if last and finish < 0 else max(1, pixels)
            for p in range(0, pixels, tall):
                band = min(tall, pixels - p)
                conv_band(xf, w, m, offs, toffs, p, band, c0, c1, s0, s1, bias, res, finish)
                if last and finish < 0:
                    for q in range(p, p + band):
                        _finish_row(m[q, c0:c1], b, res[q, c0:c1], has_res, act)


@njit(parallel=True, cache=True)  # no fastmath: SiLU's exp overflows to inf for v < -88
def block(x, expand, w1, b1, act1, taps, b2, act2, sh, sw, dh, dw, pt, pl, project, w3, b3,
          act3, res, has_res, chunk, band, threads, xoffs, doffs, ebuf, dbuf, out):
    """``out = P(D(E(x)))`` for ``x (N, H, W, C_in)`` channels-last, where ``E`` is
    ``act1(x @ W1 + b1)`` (when ``expand``; else ``x``), ``D`` the depthwise convolution by
    ``taps (kh, kw, C)`` with ``b2``, ``act2``, stride ``sh, sw``, dilation ``dh, dw`` and
    zero padding ``pt`` rows above, ``pl`` columns left, and ``P`` is
    ``act3(D @ W3 + b3 (+ res))`` (when ``project``; else the residual, if any, is the
    depthwise layer's). ``W1, W3`` are packed by
    :func:`convlayers.kernels.simd.pack_conv_weights`; ``out, res (N, Ho, Wo, C_out)``.

    Units: ``chunk`` output rows of one image, handed out in order to the first free of
    ``threads`` threads, each walked in bands of ``band`` rows. ``xoffs``: each input pixel's
    offset in ``x`` (``N*H*W``); ``doffs``: ``p * C`` for a band's ``band*Wo`` pixels;
    ``ebuf (threads, R*W*C)`` and ``dbuf (threads, band*Wo*C)``: each thread's expanded rows
    (``R`` of them, :func:`buffer_rows`) and depthwise band."""
    n_img, h, w, c_in = x.shape
    kh, kw, c = taps.shape
    ho, wo, c_out = out.shape[1], out.shape[2], out.shape[3]
    xf, tf = x.reshape(x.size), taps.reshape(taps.size)
    of, rf = out.reshape(out.size), res.reshape(res.size)
    out2, res2 = out.reshape(n_img * ho * wo, c_out), res.reshape(n_img * ho * wo, c_out)
    capacity = ebuf.shape[1] // (w * c)
    per_image = (ho + chunk - 1) // chunk
    inner_offs, inner_taps = inner_tap_offsets(kh, kw, dh, dw, w, c)
    queue = new_queue()
    for t in prange(threads):
        eflat = ebuf[t]
        e2 = eflat[:capacity * w * c].reshape(capacity * w, c)
        dflat = dbuf[t]
        lists = np.empty(row_lists_size(wo, kh, kw), np.int64)  # kept across the thread's rows
        toffs = np.zeros(1, np.int64)
        while True:
            unit = claim(queue)
            if unit >= n_img * per_image:
                break
            n = unit // per_image
            oy_a = (unit % per_image) * chunk
            oy_b = min(ho, oy_a + chunk)
            top, held = 0, 0  # the buffer's first row (of the image) and how many it holds
            for ob in range(oy_a, oy_b, band):
                oe = min(oy_b, ob + band)
                if expand:
                    lo = max(0, ob * sh - pt)
                    hi = min(h, (oe - 1) * sh - pt + (kh - 1) * dh + 1)
                    if held == 0 or lo >= top + held:
                        top, held = lo, 0
                    elif hi - top > capacity:  # compact: keep the rows from ``lo`` on
                        drop = lo - top
                        for i in range((held - drop) * w * c):
                            eflat[i] = eflat[drop * w * c + i]
                        top, held = lo, held - drop
                    if hi > top + held:
                        first = top + held
                        m = e2[held * w:(hi - top) * w]
                        at = (n * h + first) * w
                        _product(xf, xoffs[at:at + (hi - first) * w], w1, b1, act1, m, _NO, m,
                                 _ZERO, c, _ZERO, c_in, toffs)
                        held = hi - top
                    src, s0, sh_rows, y_shift = eflat, 0, held, top
                else:
                    src, s0, sh_rows, y_shift = xf, n * h * w * c, h, 0
                for oy in range(ob, oe):
                    y0 = oy * sh - pt - y_shift
                    if project:
                        depthwise_row(src, s0, sh_rows, w, c, y0, tf, kh, kw, dh, dw, sw, pl, b2,
                                      dflat, _NO, act2, dflat, (oy - ob) * wo * c, wo, _ZERO, c,
                                      inner_offs, inner_taps, lists)
                    else:
                        depthwise_row(src, s0, sh_rows, w, c, y0, tf, kh, kw, dh, dw, sw, pl, b2,
                                      rf, has_res, act2, of, (n * ho + oy) * wo * c, wo, _ZERO, c,
                                      inner_offs, inner_taps, lists)
                if project:
                    q0, q1 = (n * ho + ob) * wo, (n * ho + oe) * wo
                    _product(dflat, doffs[:q1 - q0], w3, b3, act3, res2[q0:q1], has_res,
                             out2[q0:q1], _ZERO, c_out, _ZERO, c, toffs)


def channel_parts(channels: int, parts: int, strip: int) -> np.ndarray:
    """``parts + 1`` bounds splitting ``channels`` into parts of whole strips of ``strip``
    channels (the packed weights' columns), as even as the strips allow."""
    strips = -(-channels // strip)
    bounds = [min(channels, (strips * i // parts) * strip) for i in range(parts + 1)]
    return np.array(bounds, dtype=np.int64)


@njit(parallel=True, cache=True)  # no fastmath: SiLU's exp overflows to inf for v < -88
def block_channels(x, expand, w1, b1, act1, taps, b2, act2, sh, sw, dh, dw, pt, pl, project,
                   w3, b3, act3, res, has_res, bounds, xoffs, doffs, emap, dmap, partial, out):
    """:func:`block`'s result with the expanded channels split between the threads instead
    of the rows: part ``t`` (channels ``bounds[t] .. bounds[t+1]``, whole strips) expands,
    filters and projects its channels of every pixel, the projection a partial sum over its
    channels into ``partial[t]``; then the pixels' rows add the parts and finish (bias,
    residual, activation). For small maps at small batch sizes, where chunks of rows would
    expand the rows their windows share more than once: nothing is computed twice, and each
    thread reads its share of the weights only.

    ``emap (N*H*W*C)``, ``dmap (N*Ho*Wo*C)``: the expanded and filtered maps (each part
    writes its channels); ``doffs``: ``p * C`` for all ``N*Ho*Wo`` pixels; ``partial
    (parts, N*Ho*Wo, C_out)``. Without a projection the filtered map is ``out`` and nothing is
    added."""
    n_img, h, w, c_in = x.shape
    kh, kw, c = taps.shape
    ho, wo, c_out = out.shape[1], out.shape[2], out.shape[3]
    parts = bounds.size - 1
    xf, tf = x.reshape(x.size), taps.reshape(taps.size)
    of, rf = out.reshape(out.size), res.reshape(res.size)
    out2, res2 = out.reshape(n_img * ho * wo, c_out), res.reshape(n_img * ho * wo, c_out)
    e2 = emap.reshape(n_img * h * w, c)
    inner_offs, inner_taps = inner_tap_offsets(kh, kw, dh, dw, w, c)
    for t in prange(parts):
        j0, j1 = bounds[t], bounds[t + 1]
        if j1 <= j0:
            continue
        lists = np.empty(row_lists_size(wo, kh, kw), np.int64)
        toffs = np.zeros(1, np.int64)
        if expand:
            _product(xf, xoffs, w1, b1, act1, e2, _NO, e2, j0, j1, _ZERO, c_in, toffs)
            src = emap
        else:
            src = xf
        for n in range(n_img):
            for oy in range(ho):
                if project:
                    depthwise_row(src, n * h * w * c, h, w, c, oy * sh - pt, tf, kh, kw, dh, dw,
                                  sw, pl, b2, dmap, _NO, act2, dmap, (n * ho + oy) * wo * c,
                                  wo, j0, j1, inner_offs, inner_taps, lists)
                else:
                    depthwise_row(src, n * h * w * c, h, w, c, oy * sh - pt, tf, kh, kw, dh, dw,
                                  sw, pl, b2, rf, has_res, act2, of, (n * ho + oy) * wo * c,
                                  wo, j0, j1, inner_offs, inner_taps, lists)
        if project:
            part = partial[t]
            if j0 > 0:  # its first slab adds onto the part
                part[:, :] = 0
            _product(dmap, doffs, w3, b3, _UNFINISHED, part, _NO, part, _ZERO, c_out, j0, j1, toffs)
    if project:
        for p in prange(n_img * ho * wo):
            row = out2[p]
            row[:] = 0
            for t in range(parts):
                if bounds[t + 1] > bounds[t]:  # an empty part wrote nothing
                    for j in range(c_out):
                        row[j] += partial[t, p, j]
            _finish_row(row, b3, res2[p], has_res, act3)
