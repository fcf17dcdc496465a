"""``compile(model, example)``: a frozen whole-network inference plan, and its ``explain``.

Layout (:mod:`convlayers.inference.layout`): channels-last (NHWC) wherever a connected run of
layers holds a depthwise convolution or a convolution of one group (so the whole body of
MobileNetV2, EfficientNet-Lite0 and the ResNets), NCHW elsewhere (grouped convolutions, and
what only they feed), with a conversion where the layout changes. Channels-last, a depthwise
convolution works on whole vectors of channels, a 3x3 stride-1 one of 48 channels or more
runs Winograd F(2x2, 3x3) with both transforms along vectors of channels
(:mod:`convlayers.inference.winograd_last`), and every other convolution (1x1 included) is a
direct one whose register tiles of pixels by output channels sum every tap in place
(:mod:`convlayers.inference.conv_last`). An expand 1x1 -> depthwise -> project 1x1 run
(an inverted residual block) is one step that never writes its wide maps: each thread
expands, filters and projects bands of rows in its own cache
(:mod:`convlayers.inference.block_last`). In NCHW a 1x1 convolution is one GEMM
``W[C_out, C_in] @ X[C_in, H*W]`` on each image's planes with no copy, and the other
convolutions run the eager engine's kernels (Winograd, implicit GEMM, im2col).
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np

from convlayers.inference import pages
from convlayers.inference.arena import Buffer, plan_offsets
from convlayers.inference.batching import CHUNK_BYTES, Segment, segments
from convlayers.inference.fusion import fuse_blocks, fuse_graph
from convlayers.inference.graph import Graph, lower
from convlayers.inference.layout import choose_layouts
from convlayers.inference.steps import Flatten, Step, make_step

__all__ = ["Plan", "compile"]


def _gather_constants(steps: list[Step]) -> None:
    """Move every C-contiguous, writable array the steps hold (packed weights, biases and
    offset tables, constant once built; those of the steps they hold too) into one block of
    :mod:`convlayers.inference.pages`, on huge pages where the system has them: each call
    streams them all. Other arrays stay where they are, as the kernels were typed for them."""
    owners: list[tuple[Any, str, np.ndarray]] = []
    seen: set[int] = set()

    def collect(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for name, value in vars(obj).items():
            if (isinstance(value, np.ndarray) and value.flags.c_contiguous
                    and value.flags.writeable):
                owners.append((obj, name, value))
            elif isinstance(value, Step):
                collect(value)

    for step in steps:
        collect(step)
    unique = {id(a): a for _, _, a in owners}
    copies = dict(zip(unique, pages.gather(list(unique.values())), strict=True))
    for obj, name, value in owners:
        setattr(obj, name, copies[id(value)])


class _Arena:
    """One block and the views of it that one call at a time works in (batch size ``n``).

    ``chunks[k]`` lists, for segment ``k`` of :meth:`Plan._segments`, each chunk's first image
    and the views its steps work in: slices of the whole-batch values, and the values the
    segment keeps to itself sized for one chunk (every chunk reuses them)."""

    def __init__(self, plan: Plan, n: int) -> None:
        layout, self.total = plan._layout(n)
        self.block = pages.block(self.total)  # on huge pages from 2 MiB
        self.views: list[Any] = [None] * len(plan._graph.shapes)
        local = plan._local_roots(n)
        for value, root in plan._roots.items():
            if root in layout and root not in local:
                self.views[value] = plan._view(self.block, layout[root], value, n)
        self.scratch = [None if ("scratch", i) not in layout else
                        self.block[layout[("scratch", i)]:].view(plan.dtype)
                        for i in range(len(plan._steps))]
        self.n = n
        self.chunks: list[list[tuple[int, list[Any]]]] = []
        for seg in plan._segments(n):
            runs: list[tuple[int, list[Any]]] = []
            if seg.images < n:
                for first in range(0, n, seg.images):
                    count = min(seg.images, n - first)
                    views: list[Any] = [None] * len(self.views)
                    for value in plan._segment_values(seg):
                        root = plan._roots[value]
                        if root in local:
                            whole = plan._view(self.block, layout[root], value, seg.images)
                            views[value] = (whole[0][:count], whole[1][:count])
                        elif self.views[value] is not None:
                            views[value] = (self.views[value][0][first:first + count],
                                            self.views[value][1][first:first + count])
                    runs.append((first, views))
            self.chunks.append(runs)


class Plan:
    """A compiled network: call it on ``(N, C, H, W)`` arrays of the example's dtype and image size.

    Any batch size ``N >= 1`` works: the arena is planned per batch size on its first use and
    kept. Each call takes an arena from a pool (and makes one when all are busy, so calls
    from several threads run at once, each in its own arena); a steady-state call therefore
    allocates only its output, with two exceptions: NCHW Winograd steps (3x3 stride-1
    convolutions where the engine's planner picks Winograd, in plans compiled with
    ``channels_last=False``) run the eager engine's fused
    kernel, which allocates its per-thread transform buffers on each call (6.6 MiB for
    ResNet-18 at batch 1; ``explain()`` marks them), and the channels-last depthwise and stem
    kernels and the 3x3 stride-2 max pool make small lists and rows inside numba (the taps
    of a row's border pixels, a plane's row maxima: kilobytes per unit). The model is not
    referenced after compiling.
    """

    def __init__(self, graph: Graph, example_shape: tuple[int, ...],
                 chunk_bytes: int | None = None) -> None:
        self._graph = graph
        self.chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        self.dtype = graph.dtype
        self.example_shape = example_shape
        self._steps: list[Step] = [make_step(node, graph) for node in graph.nodes]
        _gather_constants(self._steps)
        self._roots = {v: v for v in graph.shapes}
        for step in self._steps:
            if isinstance(step, Flatten):
                self._roots[step.out] = self._roots[step.inp]
        self._out_root = self._roots[graph.output]
        self._pool: dict[int, list[_Arena]] = {}
        self._lock = threading.Lock()
        self._segment_cache: dict[int, list[Segment]] = {}
        # per (value, batch size): bytes and the two view shapes (``_view``, on every call)
        self._shapes: dict[tuple[int, int], tuple[int, tuple[int, ...], tuple[int, ...]]] = {}
        #: the values that are views of a call's input or output, not of the arena
        self._ends = [v for v, root in self._roots.items() if root in (0, self._out_root)]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-image input shape ``(C, H, W)``."""
        return self._graph.shapes[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-image output shape."""
        return self._graph.shapes[self._graph.output]

    def _elements(self, value: int, n: int) -> int:
        return n * int(np.prod(self._graph.shapes[value]))

    def _view(self, block: np.ndarray, offset: int, value: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(batched view, (N, C, L) view) of ``value`` at byte ``offset`` of ``block``."""
        size, whole, flat3 = self._view_shape(value, n)
        flat = block[offset:offset + size].view(self.dtype)
        return flat.reshape(whole), flat.reshape(flat3)

    def _view_shape(self, value: int, n: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """Bytes of ``value`` at batch size ``n`` and its two views' shapes (kept)."""
        key = (value, n)
        if key not in self._shapes:
            shape = self._graph.shapes[value]
            whole: tuple[int, ...]
            if value in self._graph.channels_last:
                c, h, w = shape
                whole, flat3 = (n, h, w, c), (n, h * w, c)
            else:
                rest = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                whole, flat3 = (n, *shape), (n, shape[0], rest)
            self._shapes[key] = (self._elements(value, n) * self.dtype.itemsize, whole, flat3)
        return self._shapes[key]

    @staticmethod
    def _reads(step: Step) -> list[int]:
        reads = list(step.node.inputs)
        if step.node.attrs.get("residual") is not None:
            reads.append(step.node.attrs["residual"])
        return reads

    def _segments(self, n: int) -> list[Segment]:
        """Runs of steps and the images each runs at a time (:mod:`convlayers.inference.batching`)."""
        if n not in self._segment_cache:
            size = self.dtype.itemsize
            per_image = [(sum(int(np.prod(self._graph.shapes[v])) for v in self._reads(step))
                          + int(np.prod(self._graph.shapes[step.out]))
                          + step.scratch_per_image()) * size for step in self._steps]
            weights = [step.weight_elements() * size for step in self._steps]
            self._segment_cache[n] = (segments(per_image, n, self.chunk_bytes, weights)
                                      if self.chunk_bytes else [Segment(0, len(self._steps), n)])
        return self._segment_cache[n]

    def _segment_values(self, seg: Segment) -> set[int]:
        return {v for step in self._steps[seg.start:seg.stop] for v in (*self._reads(step), step.out)}

    def _local_roots(self, n: int) -> dict[int, Segment]:
        """Arena roots written and read only inside one chunked segment (sized for a chunk)."""
        where: dict[int, set[int]] = {}
        for k, seg in enumerate(self._segments(n)):
            for value in self._segment_values(seg):
                where.setdefault(self._roots[value], set()).add(k)
        segs = self._segments(n)
        return {root: segs[min(ks)] for root, ks in where.items()
                if len(ks) == 1 and segs[min(ks)].images < n and root not in (0, self._out_root)}

    def _layout(self, n: int) -> tuple[dict[object, int], int]:
        """Byte offsets of every arena value and scratch buffer for batch size ``n``.

        A value lives from the step that writes it to the last that reads it. Inside a
        segment run in chunks, its own values and scratch are sized for one chunk; a
        whole-batch value it writes or reads stays live across the whole segment (a later
        chunk writes the segment's own values after an earlier one wrote or read it)."""
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        buffers: list[Buffer] = []
        segs = self._segments(n)
        local = self._local_roots(n)
        chunked = {i: seg for seg in segs if seg.images < n for i in range(seg.start, seg.stop)}
        for i, step in enumerate(self._steps):
            for value in self._reads(step):
                last[self._roots[value]] = i
            first.setdefault(self._roots[step.out], i)
            images = chunked[i].images if i in chunked else n
            if (extra := step.scratch_elements(images)):
                buffers.append(Buffer(("scratch", i), extra * self.dtype.itemsize, i, i))
        for root, start in first.items():
            if root in (0, self._out_root):
                continue
            end = last.get(root, start)
            if root in local:
                size = self._elements(root, local[root].images) * self.dtype.itemsize
            else:
                size = self._elements(root, n) * self.dtype.itemsize
                if start in chunked:
                    start = chunked[start].start
                if end in chunked:
                    end = chunked[end].stop - 1
            buffers.append(Buffer(root, size, start, end))
        total = plan_offsets(buffers)
        return {b.key: b.offset for b in buffers}, total

    def _acquire(self, n: int) -> _Arena:
        with self._lock:
            free = self._pool.setdefault(n, [])
            if free:
                return free.pop()
        return _Arena(self, n)

    def _release(self, arena: _Arena) -> None:
        with self._lock:
            self._pool[arena.n].append(arena)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run the network on ``x`` (N, C, H, W); return a new array of shape ``(N, *output_shape)``."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a NumPy array, got {type(x).__name__}")
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape or x.shape[0] < 1:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.input_shape))}) with "
                             f"N >= 1 (the example's image size), got {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"x must be {self.dtype} like the example, got {x.dtype}")
        x = np.ascontiguousarray(x)
        n = x.shape[0]
        if self._out_root == 0:
            return x.reshape(n, *self.output_shape).copy()
        out = np.empty(self._view_shape(self._out_root, n)[0] // self.dtype.itemsize, self.dtype)
        arena = self._acquire(n)
        views = arena.views
        ends = self._ends
        try:
            for value in ends:
                views[value] = self._view((x if self._roots[value] == 0 else out).reshape(-1)
                                          .view(np.uint8), 0, value, n)
            for seg, runs in zip(self._segments(n), arena.chunks, strict=True):
                steps = list(zip(self._steps[seg.start:seg.stop],
                                 arena.scratch[seg.start:seg.stop], strict=True))
                if not runs:
                    for step, scratch in steps:
                        step.run(views, scratch)
                    continue
                for first, chunk_views in runs:
                    count = min(seg.images, n - first)
                    for value in ends:
                        if (whole := views[value]) is not None:
                            chunk_views[value] = (whole[0][first:first + count],
                                                  whole[1][first:first + count])
                    for step, scratch in steps:
                        step.run(chunk_views, scratch)
        finally:
            for value in ends:
                views[value] = None
                for runs in arena.chunks:
                    for _, chunk_views in runs:
                        chunk_views[value] = None
            self._release(arena)
        return out.reshape(n, *self.output_shape)

    def explain(self, batch: int | None = None) -> str:
        """A table of the fused layers: strategy, layout, output shape, arena offset and size.

        ``batch`` defaults to the example's batch size (the offsets depend on it).
        """
        n = self.example_shape[0] if batch is None else int(batch)
        layout, total = self._layout(n)
        last = self._graph.channels_last
        converts = sum(step.node.op in ("to_nhwc", "to_nchw") for step in self._steps)
        lines = [f"Plan for input (N, {', '.join(map(str, self.input_shape))}) {self.dtype}, "
                 f"{len(self._steps)} steps; arena {total / 2**20:.2f} MiB at N={n}; "
                 f"{len(last)} values channels-last (NHWC), the rest NCHW; {converts} conversions"]
        for seg in self._segments(n):
            if seg.images < n:
                lines.append(f"steps {seg.start}-{seg.stop - 1} run {seg.images} of the {n} images "
                             f"at a time (their own values sized for a chunk, reused by each)")
        for i, step in enumerate(self._steps):
            root = self._roots[step.out]
            where = ("output" if root == self._out_root else "view of input" if root == 0
                     else f"arena @{layout[root]} ({self._elements(root, n) * self.dtype.itemsize} B)")
            if ("scratch", i) in layout:
                where += f", scratch @{layout[('scratch', i)]}"
            if step.node.op == "conv":
                where += f"; eager engine: {_engine_choice(step, self._graph, n)}"
            act = step.node.attrs.get("act")
            res = step.node.attrs.get("residual") is not None
            fused = " + residual" * res + (f" + {act}" if act else "")
            lines.append(f"{i:3d} {step.node.op}{fused} [{' + '.join(step.node.names)}] "
                         f"-> {self._graph.shapes[step.out]}: {step.strategy}; "
                         f"{'NHWC' if step.out in last else 'NCHW'}; {where}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.explain()


def _engine_choice(step: Step, graph: Graph, n: int) -> str:
    """What :func:`convlayers.functional.plan` picks for this convolution run eagerly."""
    from convlayers.functional import plan as engine_plan

    a = step.node.attrs
    pads = a["pads"]
    padding: Any = (pads[0], pads[2]) if (pads[0], pads[2]) == (pads[1], pads[3]) else "asymmetric"
    if padding == "asymmetric":
        return "n/a (asymmetric padding is a separate pad op there)"
    return str(engine_plan((n, *graph.shapes[step.inp]), a["weight"].shape, a["stride"], padding,
                           a["dilation"], a["groups"], graph.dtype).forward)


def compile(model: Any, example_input: np.ndarray, channels_last: bool = True,
            chunk_bytes: int | None = None, blocks: bool = True) -> Plan:
    """Compile ``model`` for inference on arrays shaped like ``example_input``.

    The model's eval-mode function (BatchNorm with running statistics, Dropout off, whatever
    its ``training`` flags) is lowered to primitive nodes; pads and BatchNorms fold into the
    convolutions (in float64, then cast), activations and residual adds run in the producing
    convolution's epilogue, weights are packed once for the product that reads them, and all
    intermediates live in one arena planned by liveness. ``model`` is not changed: the plan
    holds its own copies of the weights, so later changes to the model do not reach it. Those
    copies sit in one block, and each arena in another, on 2 MiB pages where the system
    allows (:mod:`convlayers.inference.pages`).

    Parameters
    ----------
    model : Module
        A convlayers model built from ``Conv2d``, ``BatchNorm2d``, activations, pads,
        ``MaxPool2d``, ``AdaptiveAvgPool2d(1)``, ``Flatten``, ``Linear``, ``Dropout``,
        ``Identity``, ``Sequential`` and the blocks and models of ``convlayers.nn``.
    example_input : ndarray
        ``(N, C, H, W)``; the plan accepts this image size and dtype at any batch size.
    channels_last : bool, default True
        Run the segments that hold depthwise convolutions channels-last (NHWC), converting at
        their ends (:mod:`convlayers.inference.layout`); False keeps every value NCHW.
    chunk_bytes : int, optional
        How many bytes of maps one step may read and write for one chunk of images: the
        first layers, whose maps are large, run a few images at a time through a run of
        steps, so each step finds its input in the cache (:mod:`convlayers.inference.batching`;
        default :data:`~convlayers.inference.batching.CHUNK_BYTES`, 8 MiB). 0 runs every
        step on the whole batch at once. Results do not depend on it.
    blocks : bool, default True
        Run each channels-last expand 1x1 -> depthwise -> project 1x1 run (an inverted
        residual block; either 1x1 layer may be missing) as one step that keeps its wide
        maps in each thread's cache (:mod:`convlayers.inference.block_last`); False runs
        the layers as separate steps. Results agree within float32 rounding either way.

    Returns
    -------
    Plan
        Callable on NumPy arrays; ``plan.explain()`` (or ``print(plan)``) lists its steps.

    Raises
    ------
    TypeError
        For a layer with no inference lowering, naming its path and type; for ``blocks``
        not a bool.

    Examples
    --------
    >>> from convlayers import nn
    >>> model = nn.ConvNormAct(3, 8, rng=0).eval()
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    >>> plan = compile(model, x)
    >>> bool(np.allclose(plan(x), model(x), atol=1e-5))
    True
    >>> print(plan.explain().splitlines()[1])  # doctest: +ELLIPSIS
      0 conv + relu [0 + 1 + 2] -> (8, 6, 6): implicit GEMM (...) + numba epilogue; NCHW; output...
    """
    from convlayers.nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"model must be a convlayers Module, got {type(model).__name__}")
    if not isinstance(example_input, np.ndarray) or example_input.ndim != 4:
        raise ValueError("example_input must be a 4-D (N, C, H, W) NumPy array, got "
                         f"{getattr(example_input, 'shape', type(example_input).__name__)}")
    if example_input.dtype.kind != "f":
        raise TypeError(f"example_input must be floating point, got {example_input.dtype}")
    if chunk_bytes is not None and (isinstance(chunk_bytes, bool)
                                    or not isinstance(chunk_bytes, (int, np.integer))
                                    or chunk_bytes < 0):
        raise ValueError(f"chunk_bytes must be a non-negative integer or None, got {chunk_bytes!r}")
    if not isinstance(blocks, (bool, np.bool_)):
        raise TypeError(f"blocks must be True or False, got {blocks!r}")
    graph = lower(model, tuple(example_input.shape[1:]), example_input.dtype)
    graph = choose_layouts(fuse_graph(copy.copy(graph)), channels_last)
    if blocks:
        graph = fuse_blocks(graph)
    return Plan(graph, tuple(example_input.shape), None if chunk_bytes is None else int(chunk_bytes))
