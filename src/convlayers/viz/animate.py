"""Convolution arithmetic as a GIF: the window sliding over your own sizes, step by step.

Each frame shows the grid the window slides over (input cells blue, padding cells grey and
dashed, for a transposed convolution also the zeros inserted between inputs, dotted), the
window's taps highlighted, and the output grid filling in one cell per frame. The steps come
from :func:`convlayers.viz.frames.sliding_plan`; the numbers written in the output come from
:mod:`convlayers.functional`.
"""

from __future__ import annotations

import io as _stdio
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from convlayers import functional as F
from convlayers._validate import IntOrTuple, as_int, positive_tuple
from convlayers.viz._draw import (
    COLORS,
    TIMES,
    CellGrid,
    as_matrix,
    cell_inches,
    fmt,
    grid_axes,
    new_figure,
    render_rgb,
)
from convlayers.viz.frames import SlidingPlan, sliding_plan

#: Most grid cells (padded input) an animation draws: each is a patch and a label per frame.
MAX_GRID_CELLS = 128 * 128

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["animate", "animation_frame", "output_values", "window_sum"]

_TITLES = {
    "conv": "convolution",
    "conv_transpose": "transposed convolution, drawn as the equivalent convolution",
    "max_pool": "max pooling",
    "avg_pool": "average pooling",
}


def output_values(
    op: str,
    values: Any,
    kernel: Any,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    *,
    output_padding: IntOrTuple = 0,
    ceil_mode: bool = False,
) -> np.ndarray | None:
    """The layer's 2-D output on a 2-D input, computed by :mod:`convlayers.functional`.

    ``kernel`` is ignored by the pools; a convolution without a kernel returns None.

    Examples
    --------
    >>> output_values("max_pool", [[1, 2, 5, 6], [3, 4, 7, 8]], None, 2)
    array([[4., 8.]])
    """
    x = as_matrix(values, "values")[None, None]
    if op == "max_pool":
        out = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)
    elif op == "avg_pool":
        if positive_tuple(dilation, 2, "dilation") != (1, 1):
            raise ValueError(f"avg_pool has no dilation, got dilation={dilation}")
        out = F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)
    elif kernel is None:
        return None
    else:
        w = as_matrix(kernel, "kernel")
        if w.shape != positive_tuple(kernel_size, 2, "kernel_size"):
            raise ValueError(f"kernel has shape {w.shape} but kernel_size is {kernel_size}")
        s = 1 if stride is None else stride  # None: PyTorch's default for the op
        if op == "conv":
            out = F.conv2d(x, w[None, None], stride=s, padding=padding, dilation=dilation)
        else:
            out = F.conv_transpose2d(x, w[None, None], stride=s, padding=padding,
                                     output_padding=output_padding, dilation=dilation)
    return np.asarray(out[0, 0])


def _caption(op: str, plan: SlidingPlan, stride: IntOrTuple | None, padding: IntOrTuple,
             dilation: IntOrTuple, output_padding: IntOrTuple) -> str:
    """The layer in one line: input, kernel, stride, padding, dilation (the user's numbers)."""
    def pair(v: Any) -> str:
        a, b = (v, v) if isinstance(v, int) else tuple(v)
        return str(a) if a == b else f"{a}x{b}"

    h, w = plan.input_shape
    kh, kw = plan.kernel_size
    default = (kh, kw) if op.endswith("_pool") else 1
    oh, ow = plan.output_shape
    text = (f"{_TITLES[op].split(',')[0]}: input {h}x{w} \u2192 output {oh}x{ow}\n"
            f"kernel {kh}x{kw}, stride {pair(default if stride is None else stride)}, "
            f"padding {pair(padding)}, dilation {pair(dilation)}")
    if op == "conv_transpose" and pair(output_padding) != "0":
        text += f", output_padding {pair(output_padding)}"
    return text


def window_sum(plan: SlidingPlan, step: int, grid: np.ndarray, kernel: np.ndarray | None,
               value: float | None) -> str:
    """What output cell ``step`` computes, written out: ``out[0, 1] = 2×1 + 3×0 + ... = -6``.

    ``grid`` holds the numbers of the drawn grid (padding and inserted zeros 0); a
    convolution multiplies each by its (for ``conv_transpose`` flipped) kernel weight, max
    pooling takes the largest input, average pooling the mean of the window.

    Examples
    --------
    >>> plan = sliding_plan("max_pool", 2, 2)
    >>> window_sum(plan, 0, np.array([[1.0, 4.0], [3.0, 2.0]]), None, 4.0)
    'out[0, 0] = max(1, 4, 3, 2) = 4'
    """
    frame = plan.frames[step]
    i, j = frame.out_cell
    vals = [float(grid[r, c]) for r, c in frame.window]
    result = "" if value is None else f" = {fmt(value)}"
    if plan.op == "max_pool":
        inside = [v for (r, c), v in zip(frame.window, vals, strict=True)
                  if plan.cells[r][c] == "input"]
        return f"out[{i}, {j}] = max({', '.join(fmt(v) for v in inside)}){result}"
    if plan.op == "avg_pool":
        return (f"out[{i}, {j}] = ({' + '.join(fmt(v) for v in vals)}) / {len(vals)}"
                f"{result}")
    if kernel is None:
        return f"out[{i}, {j}]"
    kh, kw = plan.kernel_size
    terms = []
    for v, (a, b) in zip(vals, frame.taps, strict=True):
        wt = kernel[kh - 1 - a, kw - 1 - b] if plan.kernel_flipped else kernel[a, b]
        terms.append(f"{fmt(v)}{TIMES}{fmt(wt) if wt >= 0 else '(' + fmt(wt) + ')'}")
    return f"out[{i}, {j}] = {' + '.join(terms)}{result}"


def _wrap(text: str, width: int) -> str:
    """Break ``text`` at `` + `` / ``, `` so that no line is longer than ``width`` characters."""
    lines, line = [], ""
    for token in re.split(r"(?<= \+ )|(?<=, )", text):
        if line and len(line) + len(token) > width:
            lines.append(line.rstrip())
            line = "    "
        line += token
    lines.append(line)
    return "\n".join(lines)


class _Scene:
    """The static picture (input grid, kernel, output, legend) that each frame updates."""

    def __init__(self, plan: SlidingPlan, labels: np.ndarray, kernel: np.ndarray | None,
                 caption: str) -> None:
        gh, gw = plan.grid_shape
        oh, ow = plan.output_shape
        kh, kw = plan.kernel_size
        conv = plan.op in ("conv", "conv_transpose")
        mid_w = kw if conv and kernel is not None else 2.0
        width = gw + mid_w + ow + 4.5
        height = max(gh, kh, oh) + 4.2
        cell = cell_inches(width, height)
        font = max(5.0, min(11.0, cell * 72 * 0.36))
        # room for the caption, then for the sum written out (monospace, ~0.6 em a character)
        width = max(width, 1.0 + 0.62 * font * max(map(len, caption.split("\n"))) / 72 / cell)
        self.chars = max(24, int(0.9 * (width - 1.0) / (0.6 * font * 0.9 / 72 / cell)))
        sum_chars = 16 + (kh * kw * (4 + 2 * len(fmt(float(np.abs(labels).max())))) if conv
                          else 8 + kh * kw * (2 + len(fmt(float(np.abs(labels).max())))))
        lines = 1 + sum_chars // self.chars
        height += 0.8 * lines
        self.fig = new_figure(width * cell, height * cell)
        self.ax = grid_axes(self.fig, width, height)
        self.font = font
        top = 2.6
        self.grid = CellGrid(self.ax, (gh, gw), (0.5, top), plan.cells, fontsize=font)
        self.values = np.zeros((gh, gw))
        for r in range(gh):
            for c in range(gw):
                src = plan.sources[r][c]
                kind = plan.cells[r][c]
                if src is not None:
                    self.values[r, c] = labels[src]
                    self.grid.label(r, c, fmt(labels[src]))
                elif kind == "zero" or (kind == "pad" and plan.op != "max_pool"):
                    self.grid.label(r, c, "0")
        mx = gw + 2.0
        mid = top + max(gh, kh, oh) / 2
        if conv and kernel is not None:
            shown = kernel[::-1, ::-1] if plan.kernel_flipped else kernel
            kern = CellGrid(self.ax, (kh, kw), (mx, mid - kh / 2), None, fontsize=font)
            for (a, b), v in np.ndenumerate(shown):
                kern.label(a, b, fmt(v))
                kern.color(a, b, COLORS["window"])
            name = "kernel, flipped" if plan.kernel_flipped else "kernel"
            self.ax.text(mx + kw / 2, mid + kh / 2 + 0.45, name, ha="center", va="center",
                         fontsize=font * 0.8, color="#555")
            self.ax.text(mx - 0.75, mid, TIMES, ha="center", va="center", fontsize=font * 1.5)
        else:
            self.ax.text(mx + mid_w / 2, mid, {"max_pool": "max", "avg_pool": "mean"}.get(
                plan.op, "?"), ha="center", va="center", fontsize=font * 1.3)
        ox = mx + mid_w + 1.5
        self.ax.text(ox - 0.75, mid, "=", ha="center", va="center", fontsize=font * 1.5)
        self.out = CellGrid(self.ax, (oh, ow), (ox, mid - oh / 2), None, font)
        for r in range(oh):
            for c in range(ow):
                self.out.color(r, c, COLORS["out_empty"])
        self.ax.text(0.5, 0.35, caption, fontsize=font * 0.95, va="top", weight="bold",
                     linespacing=1.4)
        self.title = self.ax.text(0.5, 2.0, "", fontsize=font * 0.95, va="center")
        self.sum = self.ax.text(0.5, top + max(gh, kh, oh) + 0.5, "", fontsize=font * 0.9,
                                va="top", family="monospace")
        kinds = {k for row in plan.cells for k in row}
        legend = ["blue: input"]
        if "pad" in kinds:
            legend.append("grey dashed: padding")
        if "zero" in kinds:
            legend.append("dotted: inserted zero")
        legend.append("orange: the window")
        self.ax.text(0.5, height - 0.45, "   ".join(legend), fontsize=font * 0.8,
                     va="center", color="#555")
        self.kernel = kernel

    def show(self, plan: SlidingPlan, step: int, outputs: np.ndarray | None) -> Figure:
        frame = plan.frames[step]
        self.grid.reset()
        for r, c in frame.window:
            inside = plan.cells[r][c] == "input"
            self.grid.color(r, c, COLORS["window" if inside else "window_pad"])
        ow = plan.output_shape[1]
        for k in range(step + 1):
            i, j = divmod(k, ow)
            self.out.color(i, j, COLORS["out_now"] if k == step else COLORS["out_done"])
            if outputs is not None:
                self.out.label(i, j, fmt(outputs[i, j]))
        i, j = frame.out_cell
        value = None if outputs is None else float(outputs[i, j])
        self.title.set_text(f"step {step + 1} of {len(plan.frames)}: output cell [{i}, {j}]")
        text = window_sum(plan, step, self.values, self.kernel, value)
        self.sum.set_text(_wrap(text, self.chars))
        return self.fig


def animate(
    op: str = "conv",
    input_size: IntOrTuple = 5,
    kernel_size: IntOrTuple = 3,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    path: str | os.PathLike[str] | None = None,
    values: Any = None,
    *,
    kernel: Any = None,
    output_padding: IntOrTuple = 0,
    ceil_mode: bool = False,
    fps: float = 2.0,
    max_frames: int = 400,
) -> bytes:
    """Write an animated GIF of a window sliding over an input, one frame per output cell.

    Parameters
    ----------
    op : {"conv", "conv_transpose", "max_pool", "avg_pool"}, default "conv"
        The layer drawn.
    input_size, kernel_size, stride, padding, dilation : int or (int, int)
        The layer's arithmetic; ``stride=None`` means 1 for a convolution and the kernel size
        for a pool, as in PyTorch.
    path : str or os.PathLike, optional
        Where to write the GIF (atomically). None: only return its bytes.
    values : array_like, optional
        The 2-D input written in the cells; default ``1, 2, ...`` row by row.
    kernel : array_like, optional
        The 2-D kernel of a convolution, drawn between the input and the output (default all
        ones). Every frame writes out its window's sum of products and the output value.
    output_padding, ceil_mode
        As in ``conv_transpose2d`` and the pools.
    fps : float, default 2.0
        Frames per second (the last frame stays three times as long).
    max_frames : int, default 400
        Refuse layers with more output cells than this (rendering takes ~20 ms a frame).

    Returns
    -------
    bytes
        The GIF file's contents; it has exactly ``out_h * out_w`` frames. Each frame names
        the layer (input, kernel, stride, padding, dilation) and the step, and writes out the
        window's sum (see :func:`window_sum`); :func:`animation_frame` draws one frame.

    Examples
    --------
    >>> from PIL import Image
    >>> import io
    >>> gif = animate("max_pool", 4, 2)
    >>> Image.open(io.BytesIO(gif)).n_frames
    4
    """
    if not float(fps) > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    scene, plan, outputs = _prepare(op, input_size, kernel_size, stride, padding, dilation,
                                    values, kernel, output_padding, ceil_mode, max_frames)
    from PIL import Image

    n = len(plan.frames)
    images = [Image.fromarray(render_rgb(scene.show(plan, t, outputs))) for t in range(n)]
    ms = max(20, round(1000 / float(fps)))
    buffer = _stdio.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=[ms] * (n - 1) + [3 * ms], loop=0)
    data = buffer.getvalue()
    if path is not None:
        from convlayers.io import atomic_write

        with atomic_write(path, "wb") as f:
            f.write(data)
    return data


def _prepare(op: str, input_size: IntOrTuple, kernel_size: IntOrTuple,
             stride: IntOrTuple | None, padding: IntOrTuple, dilation: IntOrTuple, values: Any,
             kernel: Any, output_padding: IntOrTuple, ceil_mode: bool,
             max_frames: int) -> tuple[_Scene, SlidingPlan, np.ndarray | None]:
    """Check the arguments, compute the outputs and build the scene that frames update."""
    plan = sliding_plan(op, input_size, kernel_size, stride, padding, dilation,
                        output_padding=output_padding, ceil_mode=ceil_mode,
                        max_frames=as_int(max_frames, "max_frames"), max_cells=MAX_GRID_CELLS)
    n = len(plan.frames)
    if n > as_int(max_frames, "max_frames"):
        raise ValueError(
            f"the output has {n} cells, more than max_frames={max_frames}; animate a smaller "
            f"input (input_size={input_size})"
        )
    h, w = plan.input_shape
    if values is None:
        labels = np.arange(1, h * w + 1, dtype=np.float64).reshape(h, w)
    else:
        labels = as_matrix(values, "values")
        if labels.shape != (h, w):
            raise ValueError(f"values must have shape {(h, w)} (input_size), got {labels.shape}")
    if kernel is not None:
        k: np.ndarray | None = as_matrix(kernel, "kernel")
    else:
        k = np.ones(plan.kernel_size) if op in ("conv", "conv_transpose") else None
    outputs = output_values(op, labels, k, kernel_size, stride, padding, dilation,
                            output_padding=output_padding, ceil_mode=ceil_mode)
    caption = _caption(op, plan, stride, padding, dilation, output_padding)
    return _Scene(plan, labels, k, caption), plan, outputs


def animation_frame(
    op: str = "conv",
    input_size: IntOrTuple = 5,
    kernel_size: IntOrTuple = 3,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    step: int = 0,
    values: Any = None,
    *,
    kernel: Any = None,
    output_padding: IntOrTuple = 0,
    ceil_mode: bool = False,
) -> Figure:
    """Frame ``step`` of :func:`animate` as a matplotlib Figure (same arguments).

    Its texts are the caption (the layer), the step, the numbers in the cells and the
    window's sum written out.

    Examples
    --------
    >>> fig = animation_frame("conv", 4, 3, step=1, kernel=[[1, 0, -1]] * 3)
    >>> texts = [t.get_text() for t in fig.axes[0].texts]
    >>> print(texts[-2])
    out[0, 1] = 2×1 + 3×0 + 4×(-1) + 6×1 + 7×0 + 8×(-1) + 10×1 + 11×0 +
        12×(-1) = -6
    """
    scene, plan, outputs = _prepare(op, input_size, kernel_size, stride, padding, dilation,
                                    values, kernel, output_padding, ceil_mode, 10**6)
    step = as_int(step, "step")
    if not 0 <= step < len(plan.frames):
        raise ValueError(f"step must be in 0..{len(plan.frames) - 1}, got {step}")
    return scene.show(plan, step, outputs)
