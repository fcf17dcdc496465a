"""Executable steps of a plan: each reads and writes views of the arena, allocating nothing.

A step is built once per node from the fused graph, with the weights pre-packed in the order
its product reads them:

* ``depthwise``: taps ``(C, kh, kw)``; a numba direct kernel with the epilogue inside;
* ``pointwise``: ``W (C_out, C_in)``, one GEMM ``W @ X[n]`` per image on the NCHW planes
  (no copy; stride > 1 subsamples into scratch first), the epilogue in each unit;
* ``im2col``: ``W (groups, C_out/g, C_in/g*kh*kw)``; each image is unfolded into scratch
  ``(C_in*kh*kw, Ho*Wo)`` and multiplied per group, then the fused epilogue;
* ``implicit``: where the eager planner takes the implicit GEMM or lowers a dense (ungrouped)
  conv (and for Winograd's layers on calls of fewer tiles than its threshold), the engine's
  kernel with its slab and product scratch in the arena, then the fused epilogue.

The GEMMs run on the register tiles of :mod:`convlayers.kernels.simd` inside numba kernels
(:mod:`convlayers.inference.gemm`), bias, residual and activation applied to each finished
block in cache. Nothing calls BLAS, so no call waits for OpenBLAS's threads to wake.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from convlayers.inference import gemm
from convlayers.inference import kernels as K
from convlayers.inference.graph import Graph, Node

__all__ = ["Step", "make_step"]

Views = list[Any]  # per value id: (view with batch axis, 3-D view (N, C, L))


class Step:
    """One node of the fused graph, ready to run on the views of an arena."""

    strategy = ""

    def __init__(self, node: Node, g: Graph) -> None:
        self.node, self.inp, self.out = node, node.inputs[0], node.output
        self.out_shape = g.shapes[node.output]
        self.act = K.ACT[node.attrs.get("act")]
        self.scratch = 0  # elements per call (not per image) of scratch space it needs

    def scratch_elements(self, n: int) -> int:
        return 0

    def weight_elements(self) -> int:
        """Elements of the weights it reads (1 for a step without)."""
        return int(np.size(self.node.attrs.get("weight", 0)))

    def scratch_per_image(self) -> int:
        """Elements of scratch that one image adds: its share of the working set, which sets
        how many images a run of steps takes at a time (:mod:`convlayers.inference.batching`)."""
        return self.scratch_elements(1)

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        raise NotImplementedError


class _Conv(Step):
    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g)
        a = node.attrs
        self.c_in, self.h, self.w = g.shapes[self.inp]
        self.c_out, self.ho, self.wo = self.out_shape
        self.sh, self.sw = a["stride"]
        self.dh, self.dw = a["dilation"]
        self.pt, _, self.pl, _ = a["pads"]
        self.groups = a["groups"]
        bias = a["bias"] if a["bias"] is not None else np.zeros(self.c_out)
        self.bias = np.ascontiguousarray(bias, dtype)
        self.residual = a["residual"]
        self.kh, self.kw = a["weight"].shape[2:]

    def _res(self, v: Views, flat: bool) -> tuple[np.ndarray, bool]:
        """The residual's view, or the output's (never read) when there is none."""
        source = self.out if self.residual is None else self.residual
        return v[source][1 if flat else 0], self.residual is not None


class Depthwise(_Conv):
    strategy = "depthwise direct (numba, epilogue in-row)"
    LAST = "depthwise channels-last in scratch (small maps), then the numba epilogue"

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        self.taps = np.ascontiguousarray(node.attrs["weight"][:, 0], dtype)
        from convlayers.functional.plan import channels_last_fits

        self.last = channels_last_fits(self.c_in, (self.h, self.w), (self.pt, self.pl),
                                       (self.ho, self.wo), (self.kh, self.kw),
                                       (self.sh, self.sw), (self.dh, self.dw),
                                       dtype.itemsize)  # the engine's rule
        if self.last:
            from convlayers.functional._engine_depthwise import channels_last_taps

            self.strategy = self.LAST
            cb = self._shapes()[2]
            self.taps_last, self.zero = channels_last_taps(self.taps, None, cb, dtype)

    def _shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        from convlayers.kernels.depthwise_nhwc import channels_last_shapes

        return channels_last_shapes(numba.config.NUMBA_NUM_THREADS,  # type: ignore[attr-defined]
                                    self.c_in, (self.h, self.w), (self.pt, self.pl),
                                    (self.ho, self.wo), (self.kh, self.kw), (self.sh, self.sw),
                                    (self.dh, self.dw))

    def scratch_elements(self, n: int) -> int:
        if not self.last:
            return 0
        padded, result, _ = self._shapes()
        return int(np.prod(padded)) + int(np.prod(result))

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x = v[self.inp][0]
        if not self.last:
            res, has = self._res(v, False)
            K.depthwise(x, self.taps, self.bias, self.sh, self.sw, self.dh, self.dw,
                        self.pt, self.pl, res, has, self.act, v[self.out][0])
            return
        from convlayers.kernels.depthwise_nhwc import depthwise_channels_last

        assert scratch is not None
        padded, result, _ = self._shapes()
        size = int(np.prod(padded))
        xt = scratch[:size].reshape(padded)
        ot = scratch[size:size + int(np.prod(result))].reshape(result)
        depthwise_channels_last(x, self.taps_last, self.zero, self.sh, self.sw, self.dh,
                                self.dw, self.pt, self.pl, numba.get_num_threads(), xt, ot,
                                v[self.out][0])
        res, has = self._res(v, True)
        K.epilogue(v[self.out][1], self.bias, res, has, self.act)


class Pointwise(_Conv):
    strategy = ("pointwise: register-tiled GEMM W @ X on NCHW planes with bias, residual and "
                "activation in each unit (the eager 1x1 kernel's units)")

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        self.taps = np.ascontiguousarray(node.attrs["weight"][None, :, :, 0, 0], dtype)
        self.strided = (self.sh, self.sw) != (1, 1)
        if self.strided:
            self.strategy = "subsample to scratch, then " + self.strategy
        self._units: dict[tuple[int, int], tuple[int, int]] = {}

    def scratch_elements(self, n: int) -> int:
        return n * self.c_in * self.ho * self.wo if self.strided else 0

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x = v[self.inp][0]
        n = x.shape[0]
        if self.strided:
            assert scratch is not None
            sub = scratch[:n * self.c_in * self.ho * self.wo].reshape(n, self.c_in, self.ho, self.wo)
            np.copyto(sub, x[:, :, :self.sh * self.ho:self.sh, :self.sw * self.wo:self.sw])
            x = sub
        out = v[self.out][1]
        length = self.ho * self.wo
        res, has = self._res(v, True)
        key = (n, numba.get_num_threads())
        if key not in self._units:
            # the eager 1x1 kernel's units (blocks of columns whose operand fits the L2 cache,
            # rows split when there are few): with the epilogue in each unit they took 0.80-0.86x
            # the time of that kernel followed by a pass of the epilogue (ResNet-50's 1x1 layers)
            from convlayers.functional._engine_pointwise import _pointwise_units

            self._units[key] = _pointwise_units(n, self.c_in, length, self.c_out, x.itemsize,
                                                key[1])
        block, rows = self._units[key]
        gemm.gemm_epilogue(x.reshape(n, 1, self.c_in, length), self.taps, self.bias, res, has,
                           self.act, block, rows, out.reshape(n, 1, self.c_out, length))


class Im2col(_Conv):
    strategy = "im2col to scratch + GEMM (simd register tiles)"

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        w = node.attrs["weight"]
        self.rows = w.shape[1] * self.kh * self.kw  # per group
        self.packed = np.ascontiguousarray(w.reshape(self.groups, self.c_out // self.groups,
                                                     self.rows), dtype)

    def scratch_elements(self, n: int) -> int:
        per_image = self.c_in * self.kh * self.kw * self.ho * self.wo
        return per_image * (numba.get_num_threads() if n > 1 else 1)

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        assert scratch is not None
        x, out = v[self.inp][0], v[self.out][1]
        n, length = x.shape[0], self.ho * self.wo
        rows = self.c_in * self.kh * self.kw
        res, has = self._res(v, True)
        threads = numba.get_num_threads()
        geometry = (self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.pt, self.pl,
                    self.ho, self.wo)
        if n > 1 and scratch.size >= threads * rows * length:  # one image per thread
            gemm.im2col_gemm_images(x, self.packed, self.bias, *geometry, res, has, self.act,
                                    scratch[:threads * rows * length].reshape(threads, rows, length),
                                    out)
            return
        cols = scratch[:rows * length].reshape(rows, length)
        per = self.c_out // self.groups
        b, r = gemm.units(per, length, self.rows, 1, threads)
        for i in range(n):  # batch 1: unfold in parallel, then channel x column units
            K.im2col(x[i], *geometry, cols)
            gemm.gemm_epilogue(cols.reshape(1, self.groups, self.rows, length), self.packed,
                               self.bias, res[i:i + 1], has, self.act, b, r,
                               out[i:i + 1].reshape(1, self.groups, per, length))


class Implicit(_Conv):
    """A dense convolution on the eager engine's implicit GEMM (:mod:`convlayers.kernels.implicit`),
    its slab and product scratch in the arena, then the numba epilogue. Its units and chunks are
    the engine's for the call's batch size (``slab_rows``)."""

    strategy = ("implicit GEMM (the engine's kernel: phase-split input slabs read as the "
                "product's rows, scratch in the arena) + numba epilogue")

    def __init__(self, node: Node, g: Graph, dtype: np.dtype,
                 taps: np.ndarray | None = None) -> None:
        super().__init__(node, g, dtype)
        w = node.attrs["weight"]
        # (groups, C_out/g, C_in/g*kh*kw), as im2col packs them (a Winograd step shares its)
        self.taps = taps if taps is not None else np.ascontiguousarray(
            w.reshape(self.groups, self.c_out // self.groups, -1), dtype)
        self.zero = np.zeros(self.c_out, dtype)
        self.itemsize = dtype.itemsize
        self.pb, self.pr = node.attrs["pads"][1], node.attrs["pads"][3]

    def geometry(self, n: int) -> Any:
        from convlayers.functional.plan import Geometry

        return Geometry(n, self.c_in, self.h, self.w, self.c_out, self.kh, self.kw, self.sh,
                        self.sw, self.dh, self.dw, self.pt, self.pb, self.pl, self.pr,
                        self.groups, self.ho, self.wo, self.itemsize, True)

    def engine_choice(self) -> str:
        """The eager planner's forward strategy for this convolution at batch 1 (asymmetric
        padding included, which the eager API cannot say)."""
        from convlayers.functional.plan import choose

        threads = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
        return choose(self.geometry(1), "forward", threads)[0]

    def _units(self, n: int) -> tuple[int, int, int, bool, tuple[int, int], int]:
        from convlayers.functional._engine_implicit import scratch_sizes, slab_rows
        from convlayers.functional.plan import column_planes

        threads = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
        g = self.geometry(n)
        rows, block, chunk = slab_rows(g, threads)
        return rows, block, chunk, column_planes(g), scratch_sizes(g, threads), threads

    def scratch_elements(self, n: int) -> int:
        _, _, _, _, (slab, product), threads = self._units(n)
        return threads * (slab + product)

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        from convlayers.kernels.implicit import implicit_forward

        assert scratch is not None
        x, out = v[self.inp][0], v[self.out][1]
        rows, block, chunk, columns, (slab, product), threads = self._units(x.shape[0])
        if scratch.size < threads * (slab + product):  # settings changed since the arena
            scratch = np.empty(threads * (slab + product), x.dtype)
        xbuf = scratch[:threads * slab].reshape(threads, slab)
        obuf = scratch[threads * slab:threads * (slab + product)].reshape(threads, product)
        implicit_forward(x, self.taps, self.bias, self.kh, self.kw, self.sh, self.sw, self.dh,
                         self.dw, self.pt, self.pl, self.ho, self.wo, rows, block, chunk,
                         columns, xbuf, obuf, out, 0, self.wo, 1)
        if self.residual is not None or self.act:
            res, has = self._res(v, True)
            K.epilogue(out, self.zero, res, has, self.act)


class Winograd(_Conv):
    strategy = ("Winograd F(2x2,3x3) (the engine's kernel: weights pre-transformed, transform "
                "scratch allocated per call) + numba epilogue")

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        from convlayers import config
        from convlayers.functional._engine_winograd import _winograd_rows, _winograd_weights

        self.u = np.ascontiguousarray(_winograd_weights(node.attrs["weight"], self.groups), dtype)
        self.rows = _winograd_rows(-(-self.wo // 2), config.engine.winograd_block_tiles)
        self.zero = np.zeros(self.c_out, dtype)
        self.needs_epilogue = self.residual is not None or self.act != 0
        # the engine's kernel is its own to change: if a call no longer fits, im2col takes over
        self.fallback: Im2col | None = None
        self._im2col = Im2col(node, g, dtype)
        # calls of fewer tiles than the engine's threshold take its implicit GEMM, as eager
        # calls do (ResNet-18's 512-channel 7x7 layers at batch 1: 13 ms Winograd, 5 implicit)
        self.tiles = -(-self.ho // 2) * -(-self.wo // 2)
        self.implicit = Implicit(node, g, dtype, self._im2col.packed)
        self.strategy = (f"{Winograd.strategy}; the implicit GEMM on calls of fewer tiles than "
                         f"the engine's threshold ({self.tiles} an image)")

    def _few_tiles(self, n: int) -> bool:
        from convlayers.functional.plan import winograd_min_tiles

        return n * self.tiles < winograd_min_tiles()

    def _transforms(self) -> tuple[int, int]:
        """Elements per thread of the kernel's transforms and products (units of tile rows
        by all output channels of a group)."""
        from convlayers.kernels.winograd import forward_scratch

        return forward_scratch(self.c_in, (self.ho, self.wo), self.rows, self.c_out // self.groups)

    def scratch_elements(self, n: int) -> int:
        if self._few_tiles(n):
            return self.implicit.scratch_elements(n)
        threads = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
        return max(self._im2col.scratch_elements(n), threads * sum(self._transforms()))

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        if self.fallback is not None:
            self.fallback.run(v, scratch)
            return
        if self._few_tiles(v[self.inp][0].shape[0]):
            self.implicit.run(v, scratch)
            return
        from convlayers.kernels.winograd import forward_fused

        threads = numba.get_num_threads()
        bad = np.zeros(threads, np.bool_)  # inf/NaN flags: the eager engine's concern, not read
        out = v[self.out][0]
        tv, tm = self._transforms()
        if scratch is None or scratch.size < threads * (tv + tm):  # settings since the arena
            scratch = np.empty(threads * (tv + tm), out.dtype)
        vbuf = scratch[:threads * tv].reshape(threads, tv)
        mbuf = scratch[threads * tv:threads * (tv + tm)].reshape(threads, tm)
        try:  # units of tile rows by all output channels of a group
            forward_fused(v[self.inp][0], self.u, self.bias, self.pt, self.pl, self.rows,
                          self.c_out // self.groups, threads, out, bad, vbuf, mbuf)
        except TypeError:  # the engine changed the kernel's arguments
            self.fallback = self._im2col
            self.strategy = self._im2col.strategy + " (Winograd kernel's signature changed)"
            self.fallback.run(v, scratch)
            return
        if self.needs_epilogue:
            res, has = self._res(v, True)
            K.epilogue(v[self.out][1], self.zero, res, has, self.act)


class Linear(Step):
    """A fully connected layer: one dot product per output below :attr:`MIN_GEMM_ROWS`
    images, else the direct convolution's register tiles (:func:`conv_last.dense`, a 1x1
    convolution of a 1x1 map) on weights packed at the first such call."""

    strategy = ("dot products over contiguous weight rows (numba) + epilogue; from "
                "4 images the direct convolution's register tiles (weights packed once)")
    #: Images from which the tiles run: each weight row then serves a tile's rows from
    #: registers, where a dot product loads it again for every image (MobileNetV2's
    #: 1280 -> 1000 classifier: 0.58x the time at 4 images, 0.41x at 16; 1.3-1.6x at 1-2).
    MIN_GEMM_ROWS = 4

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g)
        self.matrix = np.ascontiguousarray(node.attrs["weight"], dtype)
        b = node.attrs["bias"]
        self.bias = np.ascontiguousarray(np.zeros(self.out_shape[0]) if b is None else b, dtype)
        self._packed: np.ndarray | None = None
        self._one_tap = np.zeros(1, np.int64)
        self._row_taps = np.array([[0, 1]], np.int64)
        self._offsets: dict[int, np.ndarray] = {}
        self._units: dict[tuple[int, int], tuple[int, int]] = {}

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x, out = v[self.inp][0], v[self.out][0]
        n = x.shape[0]
        if n < self.MIN_GEMM_ROWS:
            K.linear(x, self.matrix, self.bias, self.act, out)
            return
        from convlayers.inference import conv_last
        from convlayers.kernels.simd import pack_conv_weights

        packed = self._packed
        if packed is None:  # packed by whichever call gets here first (the same either way)
            packed = self._packed = pack_conv_weights(self.matrix[:, :, None, None])
        threads = numba.get_num_threads()
        if n not in self._offsets:
            self._offsets[n] = np.arange(n, dtype=np.int64) * self.matrix.shape[1]
        if (n, threads) not in self._units:
            self._units[(n, threads)] = conv_last.dense_units(
                n, self.matrix.shape[0], threads, weight_bytes=self.matrix.nbytes)
        rows, cols = self._units[(n, threads)]
        conv_last.dense(x.reshape(-1), packed, self._offsets[n], self._one_tap, self._row_taps,
                        1, self.bias, out, False, self.act, rows, cols, threads, out)


class MaxPool(Step):
    strategy = "max pool: the engine's kernels (convlayers.kernels.pooling)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        from convlayers.kernels import pooling

        a = self.node.attrs
        (kh, kw), (sh, sw), (dh, dw), (pt, pl) = a["kernel"], a["stride"], a["dilation"], a["pads"]
        x, out = v[self.inp][0], v[self.out][0]  # arena views: contiguous, so these are views
        pooling.max_pool2d(x.reshape(-1, *x.shape[2:]), kh, kw, sh, sw, pt, pl, dh, dw,
                           out.reshape(-1, *out.shape[2:]))


class GlobalAvgPool(Step):
    strategy = "global average pool (numba, float64 sums)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x = v[self.inp][1]
        K.global_avg_pool(x.reshape(-1, x.shape[2]), v[self.out][1].reshape(-1))


class Affine(Step):
    strategy = "BatchNorm as per-channel affine (numba)"

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g)
        self.scale = np.ascontiguousarray(node.attrs["scale"], dtype)
        self.shift = np.ascontiguousarray(node.attrs["shift"], dtype)

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        K.affine(v[self.inp][1], self.scale, self.shift, self.act, v[self.out][1])


class Activation(Step):
    strategy = "activation (numba)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        K.activation(v[self.inp][1], self.act, v[self.out][1])


class Add(Step):
    strategy = "add (numba)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        K.add(v[self.node.inputs[0]][1], v[self.node.inputs[1]][1], self.act, v[self.out][1])


class Pad(Step):
    strategy = "zero pad copy"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        top, _, left, _ = self.node.attrs["pads"]
        x, out = v[self.inp][0], v[self.out][0]
        out[...] = 0
        out[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x


class Flatten(Step):
    strategy = "view (no copy)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        pass  # its output is a view of its input (see Plan)


def _engine_picks_winograd(node: Node, g: Graph) -> bool:
    """Ask the eager engine's planner (``convlayers.functional.plan``) about a symmetric pad,
    leaving out its tile threshold (``config.engine.winograd_min_tiles``): that one weighs
    Winograd against the eager implicit GEMM, while a compiled plan's other choice is its im2col
    step (ResNet-18 at batch 1, compiled, ran 84.6 ms with Winograd on every 3x3 stride-1 layer
    and 110 ms with im2col below 768 tiles)."""
    a = node.attrs
    pt, pb, pl, pr = a["pads"]
    if ((pt, pl) != (pb, pr) or a["weight"].shape[2:] != (3, 3) or a["stride"] != (1, 1)
            or a["dilation"] != (1, 1)):
        return False
    try:
        from convlayers.functional import plan
        from convlayers.kernels.winograd import forward_fused  # noqa: F401
    except ImportError:
        return False
    from convlayers import config
    from convlayers.functional.plan import winograd_channels_pay

    choice = plan((1, *g.shapes[node.inputs[0]]), a["weight"].shape, a["stride"], (pt, pl),
                  a["dilation"], a["groups"], g.dtype).forward
    if choice == "winograd" or config.engine.force is not None or choice == "numpy":
        return bool(choice == "winograd")
    c_out, c_in_g = a["weight"].shape[:2]
    ho, wo = g.shapes[node.output][1:]
    return winograd_channels_pay(c_in_g, c_out // a["groups"], ho, wo)


def make_step(node: Node, g: Graph) -> Step:
    """The step that runs ``node`` (weights packed for it, in ``g.dtype``)."""
    dtype = g.dtype
    if node.output in g.channels_last or node.op in ("to_nhwc", "to_nchw") or (
            node.op == "gap" and node.inputs[0] in g.channels_last):
        from convlayers.inference import steps_channels_last as last

        if node.op == "block":
            return last.BlockLast(node, g, dtype)
        if node.op == "conv":
            from convlayers.inference.layout import is_depthwise, reads_nchw

            if is_depthwise(node, g):
                return last.DepthwiseLast(node, g, dtype)
            if reads_nchw(node, g):
                # a stem: the direct kernel on a transposed padded copy of the image where its
                # output channels fill a tile (ResNet's 3 -> 64 7x7: 1.7 ms at batch 1 against
                # 2.8-3.7 splatting input values), else splats (MobileNetV2's 3 -> 32 3x3:
                # 0.29 ms against 0.62: a half tile, and the copy is most of its work)
                from convlayers.kernels.simd import conv_strip

                if node.attrs["weight"].shape[0] >= conv_strip() // dtype.itemsize:
                    return last.DenseLast(node, g, dtype, reads_nchw=True)
                return last.StemLast(node, g, dtype)
            from convlayers.inference import winograd_last

            a = node.attrs
            if winograd_last.fits(a["weight"].shape[2:], a["stride"], a["dilation"], a["groups"],
                                  g.shapes[node.inputs[0]][0], a["weight"].shape[0]):
                return last.WinogradLast(node, g, dtype)
            return last.DenseLast(node, g, dtype)
        kinds: dict[str, type[Step]] = {"to_nhwc": last.ToChannelsLast, "gap": last.GlobalAvgPoolLast,
                                        "to_nchw": last.ToChannelsFirst, "act": Activation, "add": Add,
                                        "maxpool": last.MaxPoolLast}
        return kinds[node.op](node, g)
    if node.op == "conv":
        w, groups = node.attrs["weight"], node.attrs["groups"]
        c_in = g.shapes[node.inputs[0]][0]
        if groups == c_in and w.shape[0] == c_in and w.shape[1] == 1:
            return Depthwise(node, g, dtype)
        if w.shape[2:] == (1, 1) and groups == 1 and not any(node.attrs["pads"]):
            return Pointwise(node, g, dtype)
        if _engine_picks_winograd(node, g):
            return Winograd(node, g, dtype)
        implicit = Implicit(node, g, dtype)
        choice = implicit.engine_choice()
        # where the eager planner lowers a dense conv (im2col chunks), the implicit kernel still
        # beat this module's im2col step: ResNet-18's 256->512 stride-2 3x3 at batch 1 1.64
        # against 3.17 ms, ResNet-50's 512->512 one 3.3 against 11.7 (batch 16: 0.83-0.97x)
        if choice == "implicit" or (choice == "lowered" and groups == 1):
            return implicit
        return Im2col(node, g, dtype)
    simple: dict[str, type[Step]] = {"maxpool": MaxPool, "gap": GlobalAvgPool, "act": Activation,
                                     "add": Add, "pad": Pad, "flatten": Flatten}
    if node.op in simple:
        return simple[node.op](node, g)
    if node.op == "linear":
        return Linear(node, g, dtype)
    return Affine(node, g, dtype)
