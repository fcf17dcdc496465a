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
from typing import Any

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

__all__ = ["animate", "output_values"]

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


class _Scene:
    """The static picture (grid, output, legend) whose colors and labels each frame updates."""

    def __init__(self, plan: SlidingPlan, labels: np.ndarray, kernel: np.ndarray | None) -> None:
        gh, gw = plan.grid_shape
        oh, ow = plan.output_shape
        width, height = gw + ow + 3.0, max(gh, oh) + 3.0
        cell = cell_inches(width, height)
        self.fig = new_figure(width * cell, height * cell)
        self.ax = grid_axes(self.fig, width, height)
        font = max(4.0, min(11.0, cell * 72 * 0.36))
        self.font = font
        top = 1.5
        self.grid = CellGrid(self.ax, (gh, gw), (0.5, top), plan.cells, fontsize=font)
        self.out = CellGrid(self.ax, (oh, ow), (gw + 2.5, top + (gh - oh) / 2), None, font)
        for r in range(oh):
            for c in range(ow):
                self.out.color(r, c, COLORS["out_empty"])
        for r in range(gh):
            for c in range(gw):
                src = plan.sources[r][c]
                kind = plan.cells[r][c]
                if src is not None:
                    self.grid.label(r, c, fmt(labels[src]))
                elif kind == "zero" or (kind == "pad" and plan.op in ("conv", "conv_transpose",
                                                                       "avg_pool")):
                    self.grid.label(r, c, "0")
        self.title = self.ax.text(0.5, 0.7, "", fontsize=font * 1.1, va="center")
        legend = "blue: input   grey dashed: padding"
        if plan.op == "conv_transpose":
            legend += "   dotted: inserted zero   (kernel flipped)"
        self.ax.text(0.5, height - 0.6, legend, fontsize=font * 0.9, va="center", color="#555")
        self.tap_texts: list[Any] = []
        self.kernel = kernel

    def show(self, plan: SlidingPlan, step: int, outputs: np.ndarray | None) -> np.ndarray:
        frame = plan.frames[step]
        self.grid.reset()
        for t in self.tap_texts:
            t.remove()
        self.tap_texts = []
        kh, kw = plan.kernel_size
        for (r, c), (a, b) in zip(frame.window, frame.taps, strict=True):
            inside = plan.cells[r][c] == "input"
            self.grid.color(r, c, COLORS["window" if inside else "window_pad"])
            if self.kernel is not None:
                w = self.kernel[kh - 1 - a, kw - 1 - b] if plan.kernel_flipped else self.kernel[a, b]
                x0, y0 = self.grid.patches[r][c].get_xy()
                self.tap_texts.append(self.ax.text(
                    x0 + 0.96, y0 + 0.96, f"{TIMES}{fmt(w)}", ha="right", va="bottom",
                    fontsize=self.font * 0.65, color="#8e3b00"))
        ow = plan.output_shape[1]
        for k in range(step + 1):
            i, j = divmod(k, ow)
            self.out.color(i, j, COLORS["out_now"] if k == step else COLORS["out_done"])
            if outputs is not None:
                self.out.label(i, j, fmt(outputs[i, j]))
        i, j = frame.out_cell
        value = "" if outputs is None else f" = {fmt(outputs[i, j])}"
        self.title.set_text(
            f"{_TITLES[plan.op]}: step {step + 1}/{len(plan.frames)}, out[{i}, {j}]{value}")
        return render_rgb(self.fig)


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
        The 2-D kernel of a convolution; when given, each tap's weight is written in the
        window and the output cells get their values. Pools always show their values.
    output_padding, ceil_mode
        As in ``conv_transpose2d`` and the pools.
    fps : float, default 2.0
        Frames per second (the last frame stays three times as long).
    max_frames : int, default 400
        Refuse layers with more output cells than this (rendering takes ~20 ms a frame).

    Returns
    -------
    bytes
        The GIF file's contents; it has exactly ``out_h * out_w`` frames.

    Examples
    --------
    >>> from PIL import Image
    >>> import io
    >>> gif = animate("max_pool", 4, 2)
    >>> Image.open(io.BytesIO(gif)).n_frames
    4
    """
    plan = sliding_plan(op, input_size, kernel_size, stride, padding, dilation,
                        output_padding=output_padding, ceil_mode=ceil_mode,
                        max_frames=as_int(max_frames, "max_frames"), max_cells=MAX_GRID_CELLS)
    n = len(plan.frames)
    if n > as_int(max_frames, "max_frames"):
        raise ValueError(
            f"the output has {n} cells, more than max_frames={max_frames}; animate a smaller "
            f"input (input_size={input_size})"
        )
    if not float(fps) > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    h, w = plan.input_shape
    if values is None:
        labels = np.arange(1, h * w + 1, dtype=np.float64).reshape(h, w)
    else:
        labels = as_matrix(values, "values")
        if labels.shape != (h, w):
            raise ValueError(f"values must have shape {(h, w)} (input_size), got {labels.shape}")
    k = None if kernel is None else as_matrix(kernel, "kernel")
    outputs = output_values(op, labels, k, kernel_size, stride, padding, dilation,
                            output_padding=output_padding, ceil_mode=ceil_mode)
    from PIL import Image

    scene = _Scene(plan, labels, k)
    images = [Image.fromarray(scene.show(plan, t, outputs)) for t in range(n)]
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
