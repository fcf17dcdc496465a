"""Where the window is at every step of a convolution or pooling: pure data, no drawing.

:func:`sliding_plan` lays out the grid a kernel slides over (the input with its padding, or for
a transposed convolution the equivalent zero-inserted, padded input) and lists one
:class:`Frame` per output cell, in the row-major order the output fills in. The GIF writer in
:mod:`convlayers.viz.animate` draws these frames; :meth:`SlidingPlan.to_dict` gives the same
description as plain lists and dicts (JSON-ready) for any other front end.

Sizes come from :mod:`convlayers.shapes`, so a plan always has exactly as many frames as the
layer has output cells.

Examples
--------
>>> plan = sliding_plan("conv", 5, 3, stride=2, padding=1)
>>> plan.grid_shape, plan.output_shape, len(plan.frames)
((7, 7), (3, 3), 9)
>>> plan.frames[1].out_cell, plan.frames[1].window[:3]
((0, 1), ((0, 2), (0, 3), (0, 4)))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from convlayers import limits, shapes
from convlayers._validate import IntOrTuple, nonnegative_tuple, one_of, positive_tuple

__all__ = ["OPS", "Frame", "SlidingPlan", "sliding_plan"]

OPS = ("conv", "conv_transpose", "max_pool", "avg_pool")

# Kinds of grid cells: a real input element, padding, or a zero inserted between input elements
# (transposed convolution with stride > 1).
INPUT, PAD, ZERO = "input", "pad", "zero"


@dataclass(frozen=True)
class Frame:
    """One step: the output cell being computed and the grid cells its window reads.

    ``window[t]`` is the grid cell (row, col) multiplied by (or pooled with) kernel tap
    ``taps[t]``; taps that fall outside the grid (a ``ceil_mode`` pooling window hanging over
    the edge) are left out of both.
    """

    index: int
    out_cell: tuple[int, int]
    window: tuple[tuple[int, int], ...]
    taps: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SlidingPlan:
    """The grid a kernel slides over and every step of the slide.

    Attributes
    ----------
    op : str
        One of :data:`OPS`.
    input_shape, grid_shape, output_shape : tuple of int
        (rows, cols) of the user's input, of the grid drawn (input plus padding, plus inserted
        zeros for ``conv_transpose``) and of the output.
    cells : tuple of tuple of str
        Kind of each grid cell: ``"input"``, ``"pad"`` or ``"zero"``.
    sources : tuple of tuple of (tuple of int or None)
        For each grid cell, the input element (row, col) it shows, or None.
    kernel_size, stride, dilation : tuple of int
        The window as it slides over the grid (``conv_transpose`` slides with stride 1 and the
        kernel flipped, see ``kernel_flipped``).
    kernel_flipped : bool
        True for ``conv_transpose``: tap (a, b) multiplies ``weight[kh-1-a, kw-1-b]``.
    frames : tuple of Frame
        One per output cell, row-major.
    """

    op: str
    input_shape: tuple[int, int]
    grid_shape: tuple[int, int]
    output_shape: tuple[int, int]
    cells: tuple[tuple[str, ...], ...]
    sources: tuple[tuple[tuple[int, int] | None, ...], ...]
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    kernel_flipped: bool
    frames: tuple[Frame, ...]

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain lists, dicts, strings and ints (``json.dumps`` accepts it).

        >>> import json
        >>> d = sliding_plan("max_pool", 4, 2).to_dict()
        >>> d["output_shape"], d["frames"][3]["out_cell"], len(json.dumps(d)) > 0
        ([2, 2], [1, 1], True)
        """
        return {
            "op": self.op,
            "input_shape": list(self.input_shape),
            "grid_shape": list(self.grid_shape),
            "output_shape": list(self.output_shape),
            "cells": [list(row) for row in self.cells],
            "sources": [[None if s is None else list(s) for s in row] for row in self.sources],
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "dilation": list(self.dilation),
            "kernel_flipped": self.kernel_flipped,
            "frames": [
                {
                    "index": f.index,
                    "out_cell": list(f.out_cell),
                    "window": [list(c) for c in f.window],
                    "taps": [list(t) for t in f.taps],
                }
                for f in self.frames
            ],
        }


@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a plan: grid length, source of each grid index, slide, output."""

    kinds: tuple[str, ...]
    sources: tuple[int | None, ...]
    stride: int
    out: int


def _conv_axis(n: int, p: int, stride: int, out: int) -> _Axis:
    kinds = tuple(INPUT if 0 <= r - p < n else PAD for r in range(n + 2 * p))
    sources = tuple(r - p if 0 <= r - p < n else None for r in range(n + 2 * p))
    return _Axis(kinds, sources, stride, out)


def _transpose_axis(n: int, k: int, s: int, p: int, op: int, d: int) -> _Axis:
    out = shapes.conv_transpose_output_size(n, k, s, p, op, d)
    # Equivalent direct convolution: s-1 zeros between inputs, d*(k-1)-p padding on each side
    # (negative: cropped), output_padding more at the end, then stride 1 with the kernel flipped.
    edge = d * (k - 1) - p
    inserted = (n - 1) * s + 1
    length = inserted + 2 * edge + op
    kinds: list[str] = []
    sources: list[int | None] = []
    for r in range(length):
        z = r - edge
        if 0 <= z < inserted and z % s == 0:
            kinds.append(INPUT)
            sources.append(z // s)
        else:
            kinds.append(ZERO if 0 <= z < inserted else PAD)
            sources.append(None)
    return _Axis(tuple(kinds), tuple(sources), 1, out)


def sliding_plan(
    op: str,
    input_size: IntOrTuple,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    *,
    output_padding: IntOrTuple = 0,
    ceil_mode: bool = False,
    max_frames: int | None = None,
    max_cells: int | None = None,
) -> SlidingPlan:
    """Lay out every step of a 2-D convolution, transposed convolution or pooling.

    Parameters
    ----------
    op : {"conv", "conv_transpose", "max_pool", "avg_pool"}
        The layer.
    input_size, kernel_size : int or (int, int)
        Input and kernel sides (an int means square).
    stride : int, (int, int) or None, default None
        Step of the window; None means 1 for a convolution and the kernel size for a pooling
        (PyTorch's defaults).
    padding, dilation : int or (int, int)
        As in :func:`convlayers.functional.conv2d` and the pools.
    output_padding : int or (int, int), default 0
        ``conv_transpose`` only: extra rows/columns at the bottom/right.
    ceil_mode : bool, default False
        Pooling only: round the output size up, as PyTorch does.
    max_frames, max_cells : int, optional
        Refuse (before building anything) a plan with more frames (output cells) or more grid
        cells than these. Whatever they are, the plan's estimated memory is checked against
        :func:`convlayers.config.max_array_bytes` first.

    Returns
    -------
    SlidingPlan
        With ``len(plan.frames) == rows * cols`` of the output.

    Raises
    ------
    ValueError
        Sizes that do not fit (the kernel larger than the padded input, say), with the
        numbers in the message.

    Examples
    --------
    A transposed convolution is drawn as the convolution it equals: 2x2 input, stride 2 ->
    one zero between the inputs, and ``dilation*(k-1) - padding = 2`` cells of padding.

    >>> plan = sliding_plan("conv_transpose", 2, 3, stride=2)
    >>> plan.grid_shape, plan.output_shape, len(plan.frames)
    ((7, 7), (5, 5), 25)
    >>> plan.cells[2][1:6]
    ('pad', 'input', 'zero', 'input', 'pad')
    """
    one_of(op, OPS, "op")
    size = positive_tuple(input_size, 2, "input_size")
    k = positive_tuple(kernel_size, 2, "kernel_size")
    pool = op.endswith("_pool")
    default_stride = k if pool else (1, 1)
    s = default_stride if stride is None else positive_tuple(stride, 2, "stride")
    p = nonnegative_tuple(padding, 2, "padding")
    d = positive_tuple(dilation, 2, "dilation")
    out_pad = nonnegative_tuple(output_padding, 2, "output_padding")
    if op != "conv_transpose" and any(out_pad):
        raise ValueError(f"output_padding is for conv_transpose only, got {output_padding=}")
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    if ceil_mode and not pool:
        raise ValueError(f"ceil_mode is for pooling only, got {op=}")

    axes = []
    for n, kk, ss, pp, dd, oo in zip(size, k, s, p, d, out_pad, strict=True):
        if op == "conv":
            axes.append(_conv_axis(n, pp, ss, shapes.conv_output_size(n, kk, ss, pp, dd)))
        elif pool:
            out = shapes.pool_output_size(n, kk, ss, pp, dd, ceil_mode)
            axes.append(_conv_axis(n, pp, ss, out))
        else:
            axes.append(_transpose_axis(n, kk, ss, pp, oo, dd))
    rows, cols = axes
    grid = (len(rows.kinds), len(cols.kinds))
    _check_plan_size(grid, rows.out * cols.out, k, max_frames, max_cells,
                     f"input_size={size}, kernel_size={k}, stride={s}, padding={p}, "
                     f"dilation={d}")
    frames: list[Frame] = []
    for i in range(rows.out):
        for j in range(cols.out):
            window, taps = [], []
            for a in range(k[0]):
                r = i * rows.stride + a * d[0]
                for b in range(k[1]):
                    c = j * cols.stride + b * d[1]
                    if r < grid[0] and c < grid[1]:
                        window.append((r, c))
                        taps.append((a, b))
            frames.append(Frame(len(frames), (i, j), tuple(window), tuple(taps)))
    return SlidingPlan(
        op=op,
        input_shape=(size[0], size[1]),
        grid_shape=grid,
        output_shape=(rows.out, cols.out),
        cells=tuple(
            tuple(_cell_kind(kr, kc) for kc in cols.kinds) for kr in rows.kinds
        ),
        sources=tuple(
            tuple(
                None if sr is None or sc is None else (sr, sc) for sc in cols.sources
            )
            for sr in rows.sources
        ),
        kernel_size=(k[0], k[1]),
        stride=(rows.stride, cols.stride),
        dilation=(d[0], d[1]),
        kernel_flipped=op == "conv_transpose",
        frames=tuple(frames),
    )


#: Rough Python-object sizes of a plan: per grid cell, per window tap, per frame.
_CELL_BYTES, _TAP_BYTES, _FRAME_BYTES = 80, 150, 300


def _check_plan_size(grid: tuple[int, int], frames: int, k: tuple[int, ...],
                     max_frames: int | None, max_cells: int | None, args: str) -> None:
    """Refuse a plan too large to build (or to draw) before any of it is built."""
    cells = grid[0] * grid[1]
    limits.check_bytes(cells * _CELL_BYTES + frames * (k[0] * k[1] * _TAP_BYTES + _FRAME_BYTES),
                       f"a sliding plan with a {grid[0]}x{grid[1]} grid and {frames:,} frames "
                       f"({args})")
    if max_frames is not None and frames > max_frames:
        raise ValueError(f"the output has {frames:,} cells, more than max_frames={max_frames}; "
                         f"use smaller sizes ({args})")
    if max_cells is not None and cells > max_cells:
        raise ValueError(f"the padded input is a {grid[0]}x{grid[1]} grid, more than "
                         f"max_cells={max_cells:,} cells to draw; use smaller sizes ({args})")


def _cell_kind(row_kind: str, col_kind: str) -> str:
    if PAD in (row_kind, col_kind):
        return PAD
    if ZERO in (row_kind, col_kind):
        return ZERO
    return INPUT

