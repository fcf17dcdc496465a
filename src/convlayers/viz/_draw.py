"""Drawing helpers shared by the viz modules: an Agg figure, number labels and cell grids.

matplotlib is imported here, inside functions, so that ``import convlayers`` stays fast; no
pyplot and no global backend switch: every figure owns an Agg canvas and is freed like any
other Python object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from matplotlib.text import Text

# One palette for every picture, so a padding cell looks the same in a still and in a GIF.
COLORS = {
    "input": "#dbe9f6",
    "pad": "#e6e6e6",
    "zero": "#ffffff",
    "window": "#f4a259",
    "window_pad": "#f9d3ad",
    "out_empty": "#ffffff",
    "out_done": "#cde8c5",
    "out_now": "#f4a259",
    "edge": "#4d4d4d",
}
EDGES = {"input": "-", "pad": "--", "zero": ":"}
TIMES = "\u00d7"  # multiplication sign
CONV_OP = "\u2217"  # asterisk operator, the convolution symbol


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A matplotlib Figure of about ``width`` x ``height`` inches drawn by Agg (no screen needed).

    The size is rounded to whole pixels at ``dpi``, so a saved PNG is exactly
    ``fig.get_size_inches() * dpi`` pixels.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a declared dependency
        raise ImportError("convlayers.viz needs matplotlib: pip install matplotlib") from exc
    px_w, px_h = max(1, round(width * dpi)), max(1, round(height * dpi))
    fig = Figure(figsize=(px_w / dpi, px_h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def render_rgb(fig: Figure) -> np.ndarray:
    """Draw ``fig`` and return its pixels as an ``(H, W, 3)`` uint8 array."""
    canvas: Any = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def fmt(value: float, digits: int = 3, whole_below: float = 1e6) -> str:
    """Short label for a number: ``4`` not ``4.0``, ``2.5``, ``-6``, ``0.333``.

    Whole numbers under ``whole_below`` are written out; others keep ``digits`` significant
    digits (``convlayers.explain`` prints 6).

    >>> fmt(4.0), fmt(1 / 3), fmt(1 / 3, digits=6), fmt(-np.inf), fmt(2e6), fmt(2e6, whole_below=1e15)
    ('4', '0.333', '0.333333', '-inf', '2e+06', '2000000')
    """
    v = float(value)
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "-inf" if v < 0 else "inf"
    if v == int(v) and abs(v) < whole_below:
        return str(int(v))
    return f"{v:.{digits}g}"


class CellGrid:
    """A rows x cols grid of labelled squares whose top-left corner is at ``(x0, y0)``.

    Coordinates are data units of one cell; the axes is expected to have its y axis pointing
    down (``ax.invert_yaxis()``), so row 0 is drawn at the top as in an array printout.
    """

    def __init__(
        self,
        ax: Axes,
        shape: tuple[int, int],
        origin: tuple[float, float],
        kinds: Any = None,
        fontsize: float = 10.0,
    ) -> None:
        from matplotlib.patches import Rectangle

        self.shape = shape
        self.kinds = kinds
        self.patches: list[list[Rectangle]] = []
        self.texts: list[list[Text]] = []
        x0, y0 = origin
        for r in range(shape[0]):
            row_p, row_t = [], []
            for c in range(shape[1]):
                kind = "input" if kinds is None else kinds[r][c]
                rect = Rectangle(
                    (x0 + c, y0 + r), 1, 1, facecolor=COLORS.get(kind, "#ffffff"),
                    edgecolor=COLORS["edge"], linewidth=0.8, linestyle=EDGES.get(kind, "-"),
                )
                ax.add_patch(rect)
                text = ax.text(x0 + c + 0.5, y0 + r + 0.5, "", ha="center", va="center",
                               fontsize=fontsize, color="#7a7a7a" if kind != "input" else "black")
                row_p.append(rect)
                row_t.append(text)
            self.patches.append(row_p)
            self.texts.append(row_t)

    def base_color(self, r: int, c: int) -> str:
        """The resting color of cell (r, c): its kind's color."""
        kind = "input" if self.kinds is None else self.kinds[r][c]
        return COLORS.get(kind, "#ffffff")

    def reset(self) -> None:
        """Give every cell its resting color back."""
        for r, row in enumerate(self.patches):
            for c, rect in enumerate(row):
                rect.set_facecolor(self.base_color(r, c))

    def color(self, r: int, c: int, color: str) -> None:
        """Fill cell (r, c) with ``color``."""
        self.patches[r][c].set_facecolor(color)

    def label(self, r: int, c: int, text: str) -> None:
        """Write ``text`` in cell (r, c)."""
        self.texts[r][c].set_text(text)

    def outline(self, ax: Axes, cells: Any, color: str = "#c0392b") -> None:
        """Draw a thick outline around the bounding box of ``cells`` (grid coordinates)."""
        from matplotlib.patches import Rectangle

        rows = [r for r, _ in cells]
        cols = [c for _, c in cells]
        x0, y0 = self.patches[0][0].get_xy()
        ax.add_patch(Rectangle((x0 + min(cols), y0 + min(rows)), max(cols) - min(cols) + 1,
                               max(rows) - min(rows) + 1, fill=False, edgecolor=color,
                               linewidth=2.0))


def grid_axes(fig: Figure, width: float, height: float) -> Axes:
    """One axes filling ``fig``, in cell units, y pointing down, no ticks or frame."""
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def cell_inches(width_cells: float, height_cells: float, max_w: float = 10.0,
                max_h: float = 7.0) -> float:
    """Size of one cell in inches so that the whole picture fits in ``max_w`` x ``max_h``."""
    return float(max(0.12, min(0.55, max_w / width_cells, max_h / height_cells)))


def as_matrix(x: Any, name: str) -> np.ndarray:
    """``x`` as a 2-D float64 array (nested lists of numbers welcome)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (rows, cols), got shape {arr.shape}")
    return arr.astype(np.float64)
