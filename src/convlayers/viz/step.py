"""One step of a convolution, drawn: the window on the padded input, the kernel, the output cell
and the sum of products that fills it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from convlayers import functional as F
from convlayers._validate import IntOrTuple, as_int
from convlayers.viz._draw import (
    COLORS,
    CONV_OP,
    TIMES,
    CellGrid,
    as_matrix,
    cell_inches,
    fmt,
    grid_axes,
    new_figure,
)
from convlayers.viz.frames import sliding_plan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_conv_step", "step_terms"]


def step_terms(
    input2d: Any, kernel: Any, i: int, j: int, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
) -> tuple[list[tuple[float, float]], float]:
    """The (input value, weight) pairs that output cell ``(i, j)`` sums, and that output.

    The output value is the one :func:`convlayers.functional.conv2d` computes; the pairs are
    read from the zero-padded input, to be written out next to it.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.arange(1.0, 17.0).reshape(4, 4)
    >>> pairs, value = step_terms(image, [[1, 0, -1]] * 3, 0, 1)
    >>> pairs[:3], value
    ([(2.0, 1.0), (3.0, 0.0), (4.0, -1.0)], -6.0)
    """
    x = as_matrix(input2d, "input2d")
    w = as_matrix(kernel, "kernel")
    plan = sliding_plan("conv", x.shape, w.shape, stride, padding, dilation)
    oh, ow = plan.output_shape
    i, j = as_int(i, "i"), as_int(j, "j")
    if not (0 <= i < oh and 0 <= j < ow):
        raise ValueError(f"(i, j) must be an output cell of the {oh}x{ow} output, got ({i}, {j})")
    out = F.conv2d(x[None, None], w[None, None], stride=stride, padding=padding,
                   dilation=dilation)[0, 0]
    frame = plan.frames[i * ow + j]
    pairs = []
    for (r, c), (a, b) in zip(frame.window, frame.taps, strict=True):
        src = plan.sources[r][c]
        pairs.append((0.0 if src is None else float(x[src]), float(w[a, b])))
    return pairs, float(out[i, j])


def _sum_text(i: int, j: int, pairs: list[tuple[float, float]], value: float) -> str:
    terms = [f"{fmt(v)}{TIMES}{fmt(wt) if wt >= 0 else '(' + fmt(wt) + ')'}" for v, wt in pairs]
    lines, per_line = [], 6
    for start in range(0, len(terms), per_line):
        lines.append(" + ".join(terms[start:start + per_line]))
    return f"out[{i}, {j}] = " + "\n    + ".join(lines) + f"\n  = {fmt(value)}"


def plot_conv_step(
    input2d: Any,
    kernel: Any,
    i: int,
    j: int,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
) -> Figure:
    """Draw how output cell ``(i, j)`` of a 2-D convolution (no kernel flip) is computed.

    Left: the input with its zero padding (grey, dashed) and the window's taps highlighted.
    Middle: the kernel. Right: the output, cells already computed in green, ``(i, j)`` in
    orange. Below: the sum of products written out, equal to the output value.

    Parameters
    ----------
    input2d : array_like, shape (H, W)
    kernel : array_like, shape (kh, kw)
    i, j : int
        The output cell.
    stride, padding, dilation : int or (int, int)
        As in :func:`convlayers.functional.conv2d`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> fig = plot_conv_step(np.arange(1.0, 17.0).reshape(4, 4), [[1, 0, -1]] * 3, 1, 1)
    >>> fig.texts[0].get_text().splitlines()[-1].strip()
    '= -6'
    """
    pairs, value = step_terms(input2d, kernel, i, j, stride, padding, dilation)
    x = as_matrix(input2d, "input2d")
    w = as_matrix(kernel, "kernel")
    plan = sliding_plan("conv", x.shape, w.shape, stride, padding, dilation)
    out = F.conv2d(x[None, None], w[None, None], stride=stride, padding=padding,
                   dilation=dilation)[0, 0]
    (gh, gw), (kh, kw), (oh, ow) = plan.grid_shape, w.shape, plan.output_shape
    n_lines = 2 + (len(pairs) - 1) // 6
    width, height = gw + kw + ow + 5.0, max(gh, kh, oh) + 1.8 + 0.5 * n_lines
    cell = cell_inches(width, height)
    fig = new_figure(width * cell, height * cell)
    ax = grid_axes(fig, width, height)
    font = max(4.0, min(11.0, cell * 72 * 0.36))
    top = 1.0
    grid = CellGrid(ax, (gh, gw), (0.5, top), plan.cells, fontsize=font)
    kx = gw + 2.0
    kern = CellGrid(ax, (kh, kw), (kx, top + (gh - kh) / 2), None, fontsize=font)
    ox = kx + kw + 1.5
    outg = CellGrid(ax, (oh, ow), (ox, top + (gh - oh) / 2), None, fontsize=font)
    for r in range(gh):
        for c in range(gw):
            src = plan.sources[r][c]
            grid.label(r, c, "0" if src is None else fmt(x[src]))
    frame = plan.frames[i * ow + j]
    for r, c in frame.window:
        grid.color(r, c, COLORS["window" if plan.cells[r][c] == "input" else "window_pad"])
    grid.outline(ax, frame.window)
    for a in range(kh):
        for b in range(kw):
            kern.label(a, b, fmt(w[a, b]))
            kern.color(a, b, COLORS["window"])
    for r in range(oh):
        for c in range(ow):
            done = r * ow + c <= frame.index
            outg.color(r, c, COLORS["out_done"] if done else COLORS["out_empty"])
            if done:
                outg.label(r, c, fmt(out[r, c]))
    outg.color(i, j, COLORS["out_now"])
    mid = top + gh / 2
    ax.text(kx - 0.75, mid, CONV_OP, ha="center", va="center", fontsize=font * 1.6)
    ax.text(ox - 0.75, mid, "=", ha="center", va="center", fontsize=font * 1.6)
    ax.text(0.5, 0.5, f"input (padding {padding}, stride {stride}, dilation {dilation})",
            fontsize=font, va="center")
    fig.text(0.02, 0.02, _sum_text(i, j, pairs, value), fontsize=font, family="monospace",
             va="bottom")
    return fig
