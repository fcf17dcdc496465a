"""Steps of a plan's channels-last segments (values chosen by :mod:`convlayers.inference.layout`).

A channels-last value's views are ``(N, H, W, C)`` and ``(N, H*W, C)``; the kernels are in
:mod:`convlayers.inference.channels_last` and :mod:`convlayers.inference.conv_last`. Weights
are packed once: a convolution of one group as strips of output channels, each strip's
``(kh*kw*C_in)`` rows contiguous (:func:`convlayers.kernels.simd.pack_conv_weights`; a
Winograd step's 16 transformed matrices alike, :mod:`convlayers.inference.winograd_last`), a
depthwise one's as ``(kh, kw, C)`` (a row of channels per tap), a stem's as
``(C_in*kh*kw, C_out)``.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from convlayers.functional._compiled import _numba_threads
from convlayers.inference import channels_last as CL
from convlayers.inference import conv_last
from convlayers.inference import kernels as K
from convlayers.inference import winograd_last as WL
from convlayers.inference.graph import Graph, Node
from convlayers.inference.steps import Step, Views, _Conv

__all__ = ["BlockLast", "DenseLast", "DepthwiseLast", "GlobalAvgPoolLast", "MaxPoolLast", "StemLast",
           "ToChannelsFirst", "ToChannelsLast", "WinogradLast"]


def _threads() -> int:
    """numba's thread count through its fast getter (``numba.get_num_threads`` checks the pool
    and takes a lock: about 0.8 us, against 0.1, on each of a plan's steps)."""
    return _numba_threads()


class DenseLast(_Conv):
    strategy = ("conv channels-last (one group): direct, each register tile of pixels x output "
                "channels summed over every tap, epilogue per unit")

    def __init__(self, node: Node, g: Graph, dtype: np.dtype, reads_nchw: bool = False) -> None:
        super().__init__(node, g, dtype)
        from convlayers.kernels.simd import pack_conv_weights

        self.packed = pack_conv_weights(np.ascontiguousarray(node.attrs["weight"], dtype))
        self.reads_nchw = reads_nchw  # a stem: its copy transposes the NCHW image too
        self.padded = any(node.attrs["pads"]) or reads_nchw
        # rows and columns any window reads, and those the padded copy holds
        self.hp = max(self.pt + self.h, (self.ho - 1) * self.sh + (self.kh - 1) * self.dh + 1)
        self.wp = max(self.pl + self.w, (self.wo - 1) * self.sw + (self.kw - 1) * self.dw + 1)
        if not self.padded:
            self.hp, self.wp = self.h, self.w
        else:
            self.strategy = "zero-padded copy in scratch, then " + self.strategy
        self.toffs = conv_last.window_taps(self.kh, self.kw, self.dh, self.dw, self.wp, self.c_in)
        self.row_taps = conv_last.row_taps(self.ho, self.h, self.pt if self.padded else 0,
                                           self.sh, self.kh, self.dh,
                                           self.toffs.size // self.kh)
        self._offs: dict[int, np.ndarray] = {}
        self._units: dict[tuple[int, int], tuple[int, int]] = {}

    def scratch_elements(self, n: int) -> int:
        return n * self.hp * self.wp * self.c_in if self.padded else 0

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x, out = v[self.inp][0], v[self.out][1]
        n = x.shape[0]
        pixels = n * self.ho * self.wo
        if self.padded:
            assert scratch is not None
            xp = scratch[:n * self.hp * self.wp * self.c_in].reshape(n, self.hp, self.wp,
                                                                      self.c_in)
            if self.reads_nchw:
                conv_last.pad_to_channels_last(x, self.pt, self.pl, xp)
            else:
                conv_last.pad_channels_last(x, self.pt, self.pl, xp)
            x = xp
        offs = self._offs.get(n)
        if offs is None:
            offs = self._offs[n] = conv_last.pixel_offsets(n, self.ho, self.wo, self.hp,
                                                           self.wp, self.c_in, self.sh, self.sw)
        key = (pixels, _threads())
        if key not in self._units:
            self._units[key] = conv_last.dense_units(pixels, self.c_out, key[1],
                                                      weight_bytes=self.packed.nbytes)
        rows, cols = self._units[key]
        res, has = self._res(v, True)
        conv_last.dense(x.reshape(-1), self.packed, offs, self.toffs, self.row_taps, self.wo,
                        self.bias,
                        res.reshape(pixels, self.c_out), has, self.act, rows, cols, key[1],
                        out.reshape(pixels, self.c_out))


class WinogradLast(_Conv):
    """A 3x3 stride-1 convolution of one group by Winograd F(2x2, 3x3)
    (:mod:`convlayers.inference.winograd_last`), the direct kernel (:class:`DenseLast`) on
    calls of fewer than :data:`~convlayers.inference.winograd_last.MIN_TILES` tiles (the
    transformed weights, 16/9 of the direct ones, would stream for too little work) and on
    calls whose sums met an inf or NaN (computed again, as torch's direct sum would)."""

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        self.direct = DenseLast(node, g, dtype)
        self.u = WL.transformed_weights(node.attrs["weight"], dtype)
        self.th, self.tw = WL.tile_counts(self.ho, self.wo)
        self.hp, self.wp = 2 * self.th + 2, 2 * self.tw + 2
        self.threads = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
        self.strategy = (f"zero-padded copy in scratch, then Winograd F(2x2,3x3) channels-last: "
                         f"input transform, 16 products on the direct kernel's tiles, output "
                         f"transform and epilogue per unit of tiles; direct below "
                         f"{WL.MIN_TILES} tiles ({self.th * self.tw} an image) or on inf/NaN")
        self._units: dict[tuple[int, int], tuple[int, int, np.ndarray, np.ndarray]] = {}

    def _few(self, n: int) -> bool:
        return n * self.th * self.tw < WL.MIN_TILES

    def _sizes(self, n: int) -> tuple[int, int, int]:
        """Elements of the padded input, of one thread's transforms, and of all scratch."""
        padded = n * self.hp * self.wp * self.c_in
        per_thread = 16 * (WL.plane_elements(WL.UNIT_TILES, self.c_in)
                           + WL.plane_elements(WL.UNIT_TILES, self.c_out))
        return padded, per_thread, padded + self.threads * (per_thread + 1)

    def scratch_elements(self, n: int) -> int:
        return max(self.direct.scratch_elements(n), 0 if self._few(n) else self._sizes(n)[2])

    def scratch_per_image(self) -> int:
        """The padded copy of an image: the transforms' scratch is per thread, not per image."""
        return max(self.direct.scratch_elements(1), self.hp * self.wp * self.c_in)

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x, out = v[self.inp][0], v[self.out][0]
        n = x.shape[0]
        if self._few(n):
            self.direct.run(v, scratch)
            return
        assert scratch is not None
        key = (n, _threads())
        if key not in self._units:
            tiles, cols = WL.units(n * self.th * self.tw, self.c_out, key[1], self.u.itemsize)
            self._units[key] = (tiles, cols, WL.offsets(self.wp, self.c_in, self.wo, self.c_out,
                                                        tiles),
                                np.arange(tiles, dtype=np.int64) * self.c_in)
        tiles, cols, table, rows = self._units[key]
        padded, per_thread, _ = self._sizes(n)
        xp = scratch[:padded].reshape(n, self.hp, self.wp, self.c_in)
        nt, pv = self.threads, 16 * WL.plane_elements(tiles, self.c_in)
        pm = 16 * WL.plane_elements(tiles, self.c_out)
        vbuf = scratch[padded:padded + nt * pv].reshape(nt, pv)
        mbuf = scratch[padded + nt * pv:padded + nt * (pv + pm)].reshape(nt, pm)
        bad = scratch[padded + nt * per_thread:][:nt]
        bad[:] = 0
        conv_last.pad_channels_last(x, self.pt, self.pl, xp)
        res, has = self._res(v, False)
        WL.forward(xp, self.u, self.bias, res, has, self.act, tiles, cols, key[1], table, rows,
                   vbuf, mbuf, out, bad)
        if bad.any():
            self.direct.run(v, scratch)


class MaxPoolLast(Step):
    strategy = "max pool channels-last: a select per tap along vectors of channels (numba)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        a = self.node.attrs
        (kh, kw), (sh, sw), (dh, dw), (pt, pl) = a["kernel"], a["stride"], a["dilation"], a["pads"]
        conv_last.max_pool(v[self.inp][0], kh, kw, sh, sw, dh, dw, pt, pl, v[self.out][0])


class DepthwiseLast(_Conv):
    strategy = "depthwise channels-last: vectors of channels per tap, epilogue per pixel (numba)"

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        self.packed = np.ascontiguousarray(node.attrs["weight"][:, 0].transpose(1, 2, 0), dtype)
        self._blocks: dict[tuple[int, int], int] = {}

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x, out = v[self.inp][0], v[self.out][0]
        key = (x.shape[0], _threads())
        if key not in self._blocks:
            self._blocks[key] = CL.depthwise_channel_block(self.c_out, key[0] * self.ho, key[1])
        res, has = self._res(v, False)
        CL.depthwise(x, self.packed, self.bias, self.sh, self.sw, self.dh, self.dw, self.pt,
                     self.pl, res, has, self.act, self._blocks[key], key[1], out)


class StemLast(_Conv):
    strategy = ("dense conv of few input channels, NCHW in, channels-last out: a splat input "
                "value per tap against rows of output channels (numba)")

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        w = node.attrs["weight"]  # (C_out, C_in, kh, kw) -> (C_in*kh*kw, C_out)
        self.packed = np.ascontiguousarray(w.reshape(w.shape[0], -1).T, dtype)

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        CL.dense_to_channels_last(v[self.inp][0], self.packed, self.kh, self.kw, self.bias,
                                  self.sh, self.sw, self.dh, self.dw, self.pt, self.pl, self.act,
                                  _threads(), v[self.out][0])


class ToChannelsLast(Step):
    strategy = "NCHW -> NHWC copy (numba)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        # the one NCHW -> NHWC transpose, with no padding
        conv_last.pad_to_channels_last(v[self.inp][0], 0, 0, v[self.out][0])


class ToChannelsFirst(Step):
    strategy = "NHWC -> NCHW copy (numba)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        CL.to_channels_first(v[self.inp][0], v[self.out][0])


class GlobalAvgPoolLast(Step):
    strategy = "global average pool of a channels-last map (numba, float64 sums)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        out = v[self.out][0]
        CL.global_avg_pool(v[self.inp][1], out.reshape(out.shape[0], -1))


class BlockLast(Step):
    """An expand 1x1 -> depthwise -> project 1x1 run (either 1x1 layer may be missing) in one
    step that never writes its wide maps to the arena (:mod:`convlayers.inference.block_last`).

    By rows (:func:`~convlayers.inference.block_last.block`): each thread expands the rows
    its band of output rows reads into a buffer of its own, filters and projects them. Units
    are whole images when there are at least as many as threads; fewer images are split into
    chunks of rows, each of which expands the rows its first windows share with the chunk
    before it again. By channels
    (:func:`~convlayers.inference.block_last.block_channels`), where chunks would repeat more
    than :data:`MAX_REPEATED` of the expansion (a 7x7 map at batch 1 on two threads: 9 rows
    for 7): each thread expands, filters and projects a part of the expanded channels of
    every pixel, and the parts' projections are added."""

    #: Fraction of the expansion's rows a split into chunks may compute twice.
    MAX_REPEATED = 0.2

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g)
        from convlayers.inference.block_last import band_rows
        from convlayers.kernels.simd import conv_strip

        a = node.attrs
        self.expand = DenseLast(a["expand"], g, dtype) if a["expand"] is not None else None
        self.depthwise = DepthwiseLast(a["depthwise"], g, dtype)
        self.project = DenseLast(a["project"], g, dtype) if a["project"] is not None else None
        d = self.depthwise
        self.n_in, self.h, self.w = g.shapes[self.inp]
        self.c, self.ho, self.wo = d.out_shape
        self.itemsize = dtype.itemsize
        self.strip = conv_strip() // dtype.itemsize  # the packed weights' columns
        self.band = band_rows(self.ho, self.wo, self.c, self.itemsize)
        self.threads = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
        self.doffs = np.arange(self.band * self.wo, dtype=np.int64) * self.c
        # the kernels' operands for a missing 1x1 layer (typed as the real ones, never read)
        self._no_weights, self._no_bias = np.zeros((1, 1), dtype), np.zeros(1, dtype)
        self._offsets: dict[tuple[str, int], np.ndarray] = {}
        self._chunks: dict[tuple[int, int], int] = {}
        self._parts: dict[int, np.ndarray] = {}
        self._calls: dict[tuple[int, int], tuple[Any, ...]] = {}
        act = {v: k for k, v in K.ACT.items()}
        parts = []
        if self.expand is not None:
            parts.append(f"expand 1x1 to {self.c}" + (f" + {act[self.expand.act]}"
                                                      if self.expand.act else ""))
        parts.append(f"depthwise {d.kh}x{d.kw}" + (f" stride {d.sh}" if d.sh > 1 else "")
                     + (f" + {act[d.act]}" if d.act else ""))
        if self.project is not None:
            parts.append(f"project 1x1 to {self.out_shape[0]}" + (
                f" + {act[self.project.act]}" if self.project.act else ""))
        self.strategy = (f"one pass channels-last ({', '.join(parts)}): per thread, bands of "
                         f"{self.band} output rows from a buffer of the expanded rows they "
                         f"read; by parts of the channels where chunks of rows would repeat "
                         f"over {self.MAX_REPEATED:.0%} of the expansion")

    def weight_elements(self) -> int:
        return sum(int(np.size(s.node.attrs["weight"]))
                   for s in (self.expand, self.depthwise, self.project) if s is not None)

    def _bounds(self, threads: int) -> np.ndarray:
        """The parts' channel bounds on ``threads`` threads (kept: a call allocates nothing)."""
        from convlayers.inference.block_last import channel_parts

        if threads not in self._parts:
            self._parts[threads] = channel_parts(self.c, threads, self.strip)
        return self._parts[threads]

    def chunk_rows(self, n: int, threads: int) -> int:
        """Output rows per unit by rows: whole images, or ``ho / ceil(threads / n)``; 0 when
        the block runs by parts of its channels instead."""
        key = (n, threads)
        if key not in self._chunks:
            d = self.depthwise
            chunk = self.ho if n >= threads else -(-self.ho // -(-threads // n))
            if self.expand is not None and int(np.count_nonzero(np.diff(self._bounds(threads)))) > 1:
                rows = sum(min(self.h, (min(self.ho, a + chunk) - 1) * d.sh - d.pt
                               + (d.kh - 1) * d.dh + 1) - max(0, a * d.sh - d.pt)
                           for a in range(0, self.ho, chunk))
                whole = min(self.h, (self.ho - 1) * d.sh - d.pt + (d.kh - 1) * d.dh + 1) \
                    - max(0, -d.pt)
                if rows > (1 + self.MAX_REPEATED) * max(1, whole):
                    chunk = 0
            self._chunks[key] = chunk
        return self._chunks[key]

    def _row_sizes(self) -> tuple[int, int]:
        """Elements of one thread's expanded rows and depthwise band (by rows)."""
        from convlayers.inference.block_last import buffer_rows

        d = self.depthwise
        rows = buffer_rows(self.band, d.kh, d.sh, d.dh, self.h, self.w, self.c, self.itemsize)
        return (rows * self.w * self.c if self.expand is not None else 0,
                self.band * self.wo * self.c if self.project is not None else 0)

    def _channel_sizes(self, n: int, threads: int) -> tuple[int, int, int]:
        """Elements of the expanded map, the filtered map and the parts' sums (by channels)."""
        return (n * self.h * self.w * self.c if self.expand is not None else 0,
                n * self.ho * self.wo * self.c if self.project is not None else 0,
                threads * n * self.ho * self.wo * self.out_shape[0]
                if self.project is not None else 0)

    def scratch_elements(self, n: int) -> int:
        size = sum(self._row_sizes()) * self.threads
        for t in range(1, self.threads + 1):  # numba's thread count may drop at run time
            if self.chunk_rows(n, t) == 0:
                size = max(size, sum(self._channel_sizes(n, t)))
        return size

    def scratch_per_image(self) -> int:
        return 0  # per thread, not per image (by channels only at fewer images than threads)

    def _offs(self, kind: str, n: int, count: int, stride: int) -> np.ndarray:
        if (kind, n) not in self._offsets:
            self._offsets[(kind, n)] = np.arange(count, dtype=np.int64) * stride
        return self._offsets[(kind, n)]

    def _call(self, n: int, threads: int) -> tuple[Any, ...]:
        """What a call on ``n`` images and ``threads`` threads passes besides its views,
        worked out once (at batch 1 the Python around a block's kernel took 11 us of its
        190; MobileNetV2 runs 17 of them)."""
        key = (n, threads)
        if key not in self._calls:
            from convlayers.inference.block_last import block, block_channels

            ex, d, pr = self.expand, self.depthwise, self.project
            none, no_bias = self._no_weights, self._no_bias
            layers = (ex is not None, ex.packed if ex else none, ex.bias if ex else no_bias,
                      ex.act if ex else 0, d.packed, d.bias, d.act, d.sh, d.sw, d.dh, d.dw,
                      d.pt, d.pl, pr is not None, pr.packed if pr else none,
                      pr.bias if pr else no_bias, pr.act if pr else 0)
            xoffs = self._offs("x", n, n * self.h * self.w, self.n_in)
            chunk = self.chunk_rows(n, threads)
            kernel: Any
            if chunk == 0:
                sizes: tuple[int, ...] = self._channel_sizes(n, threads)
                tail: tuple[Any, ...] = (self._bounds(threads), xoffs,
                                         self._offs("d", n, n * self.ho * self.wo, self.c))
                kernel = block_channels
            else:
                sizes = self._row_sizes()
                tail = (chunk, self.band, threads, xoffs, self.doffs)
                kernel = block
            self._calls[key] = (kernel, chunk, sizes, layers, tail)
        return self._calls[key]

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x, out = v[self.inp][0], v[self.out][0]
        n = x.shape[0]
        threads = _threads()
        kernel, chunk, sizes, layers, tail = self._call(n, threads)
        assert scratch is not None
        res, has = (self.project if self.project is not None else self.depthwise)._res(v, False)
        if chunk == 0:
            e, m, p = sizes
            kernel(x, *layers, res, has, *tail, scratch[:e], scratch[e:e + m],
                   scratch[e + m:e + m + p].reshape(threads, n * self.ho * self.wo, -1), out)
            return
        e, m = sizes
        ebuf = scratch[:self.threads * e].reshape(self.threads, e)
        dbuf = scratch[self.threads * e:self.threads * (e + m)].reshape(self.threads, m)
        kernel(x, *layers, res, has, *tail, ebuf, dbuf, out)
