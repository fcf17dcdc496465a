"""Plain-text walk-throughs of pooling and convolution on a small 2-D input.

Every number printed is computed by :mod:`convlayers.functional` (``max_pool2d``,
``avg_pool2d``, ``conv2d``); the text only shows where it comes from: each window's values,
the value it produces, and the output-size formula of :mod:`convlayers.shapes` with the
numbers filled in. Called without an input, each function runs the course chapter's example.

Examples
--------
>>> print(explain_pool().splitlines()[-3])
Output size per axis: floor((in + 2*padding - kernel) / stride) + 1
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from convlayers import functional as F
from convlayers import shapes
from convlayers._validate import IntOrTuple, nonnegative_tuple, one_of, positive_tuple
from convlayers.viz._draw import as_matrix, fmt

__all__ = ["SEED_CONV_INPUT", "SEED_CONV_KERNEL", "SEED_POOL_INPUT", "explain_conv", "explain_pool"]

#: The chapter's pooling example: 2x2 max pooling gives 4, 8, 12, 16; average 2.5 ... 14.5.
SEED_POOL_INPUT = ((1, 2, 5, 6), (3, 4, 7, 8), (9, 10, 13, 14), (11, 12, 15, 16))
#: The chapter's convolution example: the numbers 1..16 and a vertical-edge kernel (all -6).
SEED_CONV_INPUT = tuple(tuple(range(r * 4 + 1, r * 4 + 5)) for r in range(4))
SEED_CONV_KERNEL = ((1, 0, -1), (1, 0, -1), (1, 0, -1))

_num = partial(fmt, digits=6, whole_below=1e15)


def _table(a: np.ndarray, indent: str = "  ") -> list[str]:
    cells = [[_num(v) for v in row] for row in a]
    width = max(len(c) for row in cells for c in row)
    return [indent + " ".join(c.rjust(width) for c in row) for row in cells]


def _size_lines(
    in_shape: tuple[int, ...], k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
    d: tuple[int, ...], pool: bool,
) -> list[str]:
    """The output-size formula, filled in per axis, with the size from :mod:`shapes`."""
    general = shapes.FORMULAS["conv" if d != (1, 1) else "conv_short"]
    lines = [f"Output size per axis: {general}"]
    for axis, n, kk, ss, pp, dd in zip(("height", "width"), in_shape, k, s, p, d, strict=True):
        formula = shapes.size_formula("pool" if pool else "conv", n, kk, ss, pp, dd, short=True)
        lines.append(f"  {axis + ':':7} {formula}")
    return lines


def _windows(
    padded: np.ndarray, out: np.ndarray, k: tuple[int, ...], s: tuple[int, ...],
    d: tuple[int, ...], p: tuple[int, ...], describe: Any,
) -> list[str]:
    """One line per output cell: the rows and columns read, the values, and the result."""
    lines = []
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            r0, c0 = i * s[0], j * s[1]
            win = padded[r0:r0 + d[0] * (k[0] - 1) + 1:d[0], c0:c0 + d[1] * (k[1] - 1) + 1:d[1]]
            rows = f"{r0 - p[0]}..{r0 - p[0] + d[0] * (k[0] - 1)}"
            cols = f"{c0 - p[1]}..{c0 - p[1] + d[1] * (k[1] - 1)}"
            lines.append(f"  out[{i},{j}]  rows {rows}, cols {cols}: {describe(win, out[i, j])}")
    return lines


def explain_pool(
    x: Any = None,
    kind: str = "max",
    kernel_size: IntOrTuple = 2,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
) -> str:
    """Explain 2-D max or average pooling window by window.

    Parameters
    ----------
    x : array_like, shape (H, W), optional
        The input; default the chapter's 4x4 example :data:`SEED_POOL_INPUT`.
    kind : {"max", "avg"}, default "max"
        Which pooling. Average pooling counts padding zeros (PyTorch's default
        ``count_include_pad=True``); max pooling never picks padding.
    kernel_size, stride, padding : int or (int, int)
        As in :func:`convlayers.functional.max_pool2d`; ``stride=None`` means the kernel size.

    Returns
    -------
    str
        The input, one line per window (its values, the value it produces), the output, and
        the output-size formula with the numbers filled in.

    Examples
    --------
    >>> print(explain_pool(kind="avg"))  # doctest: +ELLIPSIS
    Average pooling, kernel 2x2, stride 2x2, padding 0x0
    ...
      out[0,0]  rows 0..1, cols 0..1: [1 2 3 4] -> mean = 10/4 = 2.5
    ...
    Output (2x2):
       2.5  6.5
      10.5 14.5
    ...
    """
    one_of(kind, ("max", "avg"), "kind")
    a = as_matrix(SEED_POOL_INPUT if x is None else x, "x")
    k = positive_tuple(kernel_size, 2, "kernel_size")
    s = k if stride is None else positive_tuple(stride, 2, "stride")
    p = nonnegative_tuple(padding, 2, "padding")
    if kind == "max":
        out = F.max_pool2d(a[None, None], k, s, p)[0, 0]
        padded = np.pad(a, [(p[0],) * 2, (p[1],) * 2], constant_values=-np.inf)
    else:
        out = F.avg_pool2d(a[None, None], k, s, p)[0, 0]
        padded = np.pad(a, [(p[0],) * 2, (p[1],) * 2])

    def describe(win: np.ndarray, value: float) -> str:
        values = "[" + " ".join(_num(v) for v in win.ravel()) + "]"
        if kind == "max":
            return f"{values} -> max = {_num(value)}"
        return f"{values} -> mean = {_num(win.sum())}/{win.size} = {_num(value)}"

    title = "Max" if kind == "max" else "Average"
    lines = [f"{title} pooling, kernel {k[0]}x{k[1]}, stride {s[0]}x{s[1]}, "
             f"padding {p[0]}x{p[1]}"]
    lines += [f"Input ({a.shape[0]}x{a.shape[1]}):", *_table(a)]
    if any(p):
        pad_note = "-inf, never chosen" if kind == "max" else "0, counted in the mean"
        lines.append(f"Padding cells count as {pad_note}.")
    lines.append("Windows:")
    lines += _windows(padded, out, k, s, (1, 1), p, describe)
    lines += [f"Output ({out.shape[0]}x{out.shape[1]}):", *_table(out)]
    lines += _size_lines(a.shape, k, s, p, (1, 1), pool=True)
    return "\n".join(lines)


def explain_conv(
    x: Any = None,
    kernel: Any = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
) -> str:
    """Explain a 2-D convolution (deep-learning style, no kernel flip) window by window.

    Parameters
    ----------
    x : array_like, shape (H, W), optional
        The input; default the chapter's example, the numbers 1..16 in a 4x4 grid.
    kernel : array_like, shape (kh, kw), optional
        Default the chapter's vertical-edge kernel ``[[1, 0, -1]] * 3``.
    stride, padding, dilation : int or (int, int)
        As in :func:`convlayers.functional.conv2d` (zero padding).

    Returns
    -------
    str
        The input and kernel, one line per window with its sum of products, the output, and
        the output-size formula with the numbers filled in.

    Examples
    --------
    >>> text = explain_conv()
    >>> print(text.splitlines()[-5])
      -6 -6
    >>> print([line for line in text.splitlines() if "out[0,1]" in line][0])
      out[0,1]  rows 0..2, cols 1..3: 2*1 + 3*0 + 4*(-1) + 6*1 + 7*0 + 8*(-1) + 10*1 + 11*0 + 12*(-1) = -6
    """
    a = as_matrix(SEED_CONV_INPUT if x is None else x, "x")
    w = as_matrix(SEED_CONV_KERNEL if kernel is None else kernel, "kernel")
    s = positive_tuple(stride, 2, "stride")
    p = nonnegative_tuple(padding, 2, "padding")
    d = positive_tuple(dilation, 2, "dilation")
    k = (w.shape[0], w.shape[1])
    out = F.conv2d(a[None, None], w[None, None], stride=s, padding=p, dilation=d)[0, 0]
    padded = np.pad(a, [(p[0],) * 2, (p[1],) * 2])

    def describe(win: np.ndarray, value: float) -> str:
        terms = [f"{_num(v)}*{_num(t) if t >= 0 else '(' + _num(t) + ')'}"
                 for v, t in zip(win.ravel(), w.ravel(), strict=True)]
        return " + ".join(terms) + f" = {_num(value)}"

    lines = [f"Convolution (no kernel flip), kernel {k[0]}x{k[1]}, stride {s[0]}x{s[1]}, "
             f"padding {p[0]}x{p[1]}, dilation {d[0]}x{d[1]}"]
    lines += [f"Input ({a.shape[0]}x{a.shape[1]}):", *_table(a)]
    lines += [f"Kernel ({k[0]}x{k[1]}):", *_table(w)]
    if any(p):
        lines.append("Padding cells are zeros.")
    lines.append("Windows (input value * kernel weight, summed):")
    lines += _windows(padded, out, k, s, d, p, describe)
    lines += [f"Output ({out.shape[0]}x{out.shape[1]}):", *_table(out)]
    lines += _size_lines(a.shape, k, s, p, d, pool=False)
    return "\n".join(lines)
