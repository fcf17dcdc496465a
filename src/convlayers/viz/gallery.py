"""Grids of images: a photo through a bank of filters, feature maps, and learned kernels."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convlayers._validate import as_int
from convlayers.viz._draw import new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["SEED_FILTERS", "filter_gallery", "plot_feature_maps", "plot_kernels", "save_figure"]

#: The six classic filters of the course chapter, in its order.
SEED_FILTERS = ("vertical", "horizontal", "sobel_x", "sobel_y", "blur", "laplacian")

_PANEL = 3.0  # inches per panel side


def to_gray(image: Any) -> np.ndarray:
    """Luminance of an ``(H, W, 3|4)`` image (ITU-R 601-2, Pillow's "L" weights), float64.

    A 2-D image is returned as float64 unchanged.

    >>> to_gray(np.full((1, 1, 3), 100, dtype=np.uint8))
    array([[100.]])
    """
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"image must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim == 2:
        return arr.astype(np.float64)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    rgb = arr[:, :, :3].astype(np.float64)
    return rgb @ np.array([0.299, 0.587, 0.114])


def _grid(n: int, ncols: int | None, aspect: float, title_in: float = 0.35,
          max_width: float = 16.0) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` image panels of height/width ratio ``aspect`` in a grid."""
    cols = max(1, min(n, as_int(ncols, "ncols") if ncols is not None else math.ceil(n ** 0.5)))
    rows = math.ceil(n / cols)
    panel = min(_PANEL, max_width / cols)
    fig = new_figure(cols * panel, rows * (panel * aspect + title_in))
    axes = [fig.add_subplot(rows, cols, k + 1) for k in range(rows * cols)]
    for ax in axes:
        ax.axis("off")
    return fig, axes[:n]


def _finish(fig: Figure) -> Figure:
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93, wspace=0.04, hspace=0.18)
    return fig


def filter_gallery(
    image: Any,
    names: Sequence[str] | Mapping[str, Any] = SEED_FILTERS,
    *,
    gray: bool = True,
    boundary: str = "symm",
    ncols: int = 4,
    cmap: str = "gray",
    display: str = "auto",
) -> Figure:
    """The original photo next to its responses to a bank of filters, one panel each.

    Each response is ``convlayers.filters.apply_filter(image, kernel, mode="same",
    boundary=boundary)`` (a true convolution, SciPy's recipe) shown with its own scale, chosen
    by ``display`` (see :mod:`convlayers.viz.display`): by default an edge filter (weights
    summing to 0) shows ``|response|``, bright edges on black, and a smoothing filter its 1st to
    99th percentiles. Signed grey panels get a colorbar.

    Parameters
    ----------
    image : array_like, shape (H, W) or (H, W, 3)
        The photo (uint8 or float).
    names : sequence of str or mapping of str to kernel, default the seed's six
        Filter names from :data:`convlayers.filters.FILTERS`, or ``{title: kernel}``.
    gray : bool, default True
        Filter the luminance (as the classic recipe does); False filters each color channel
        and shows the three responses as one color picture.
    boundary : {"symm", "fill", "wrap"}, default "symm"
        Edge handling, as in ``scipy.signal.convolve2d``.
    ncols : int, default 4
        Panels per row.
    cmap : str, default "gray"
        Colormap of the grey panels (a signed panel uses "RdBu_r" unless another is given).
    display : {"auto", "abs", "signed", "percentile", "minmax"}, default "auto"
        How a response becomes grey levels, see :mod:`convlayers.viz.display`.

    Returns
    -------
    matplotlib.figure.Figure
        ``1 + len(names)`` panels.

    Examples
    --------
    >>> img = np.zeros((16, 16)); img[:, 8:] = 1.0
    >>> fig = filter_gallery(img, ["sobel_x", "blur"])
    >>> [ax.get_title() for ax in fig.axes if ax.get_title()]
    ['Original', '|Sobel x|', 'Blur']
    """
    from convlayers.filters import apply_filter
    from convlayers.viz.display import display_mode

    arr = np.asarray(image)
    base = to_gray(arr) if gray else arr
    items = list(names.items()) if isinstance(names, Mapping) else [(n, n) for n in names]
    if not items:
        raise ValueError("names must list at least one filter, got none")
    modes = [display_mode(display, k) for _, k in items]
    responses = [apply_filter(base, k, boundary=boundary) for _, k in items]
    h, w = base.shape[:2]
    fig, axes = _grid(1 + len(items), ncols, h / w)
    bars = "signed" in modes and any(r.ndim == 2 for r in responses)
    if bars:  # room beside each panel for its colorbar and tick labels
        width, height = fig.get_size_inches()
        fig.set_size_inches(width * 1.2, height)
    shown = arr if (not gray and arr.ndim == 3) else base
    axes[0].imshow(shown, cmap=cmap if shown.ndim == 2 else None)
    axes[0].set_title("Original")
    for ax, (title, _), resp, mode in zip(axes[1:], items, responses, modes, strict=True):
        _show_response(fig, ax, resp, mode, cmap)
        name = str(title).replace("_", " ").capitalize()
        ax.set_title(f"|{name}|" if mode == "abs" else name)
    _finish(fig)
    if bars:
        fig.subplots_adjust(right=0.95, wspace=0.3)
    return fig


def _show_response(fig: Figure, ax: Axes, resp: np.ndarray, mode: str, cmap: str) -> None:
    """One response panel: grey with its limits (and a colorbar when signed), or RGB."""
    from convlayers.viz.display import display_limits, to_unit

    if resp.ndim == 3:  # one color picture, one scale over the three channels
        ax.imshow(to_unit(resp, mode))
        return
    lo, hi = display_limits(resp, mode)
    shown = np.abs(resp) if mode == "abs" else resp
    image = ax.imshow(shown, cmap="RdBu_r" if mode == "signed" and cmap == "gray" else cmap,
                      vmin=lo, vmax=hi)
    if mode == "signed":
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)


def plot_feature_maps(
    maps: Any, *, ncols: int | None = None, titles: Sequence[str] | None = None,
    cmap: str = "viridis", max_maps: int = 64, title: str | None = None,
) -> Figure:
    """Show the channels of a feature map ``(C, H, W)`` (or ``(1, C, H, W)``) side by side.

    All panels share one color scale, drawn as a colorbar, so a bright panel is a strongly
    responding channel. The figure's title says what is shown and how many of the channels:
    ``"<title>: 32 of 96 channels, 56x56"``.

    Parameters
    ----------
    maps : array_like, shape (C, H, W) or (1, C, H, W)
    ncols : int, optional
        Panels per row (default about square).
    titles : sequence of str, optional
        One per panel shown (default ``"channel k"``).
    cmap : str, default "viridis"
    max_maps : int, default 64
        Draw the first ``max_maps`` channels at most.
    title : str, optional
        What the maps are, e.g. ``"blocks.1 of cat.jpg"`` (default ``"feature maps"``).

    Examples
    --------
    >>> fig = plot_feature_maps(np.random.default_rng(0).random((6, 8, 8)), max_maps=4,
    ...                         title="stem of cat.jpg")
    >>> len([ax for ax in fig.axes if ax.images]), fig._suptitle.get_text()
    (4, 'stem of cat.jpg: 4 of 6 channels, 8x8')
    """
    arr = np.asarray(maps)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.size == 0 or arr.dtype.kind not in "biuf":
        raise ValueError(f"maps must be a real (C, H, W) array, got shape {arr.shape}")
    c = min(arr.shape[0], as_int(max_maps, "max_maps"))
    if titles is not None and len(titles) < c:
        raise ValueError(f"titles must name the {c} maps shown, got {len(titles)} titles")
    fig, axes = _grid(c, ncols, arr.shape[1] / arr.shape[2], max_width=14.0)
    shown = arr[:c].astype(np.float64)
    finite = shown[np.isfinite(shown)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image: Any = None
    for k, ax in enumerate(axes):
        image = ax.imshow(shown[k], cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1.0)
        ax.set_title(titles[k] if titles is not None else f"channel {k}", fontsize=9)
    size = f"{arr.shape[1]}x{arr.shape[2]}"
    width, height = (float(v) for v in fig.get_size_inches())
    fig.set_size_inches(width + 1.0, height)  # room on the right for the colorbar
    top = 1.0 - 0.55 / height  # room for the title line and the first panels' labels only
    what = (title or "feature maps").replace("$", r"\$")  # a name, never mathtext
    fig.suptitle(f"{what}: {c} of {arr.shape[0]} channels, {size}",
                 fontsize=11, y=1.0 - 0.08 / height, va="top")
    fig.subplots_adjust(left=0.01, right=1.0 - 1.05 / (width + 1.0), bottom=0.01, top=top,
                        wspace=0.04, hspace=0.2)
    bar = fig.add_axes((1.0 - 0.95 / (width + 1.0), 0.05, 0.15 / (width + 1.0), top - 0.08))
    fig.colorbar(image, cax=bar, label="activation")
    return fig


def plot_kernels(
    weight: Any, *, max_out: int = 32, max_in: int = 8, annotate: bool | None = None,
    cmap: str = "RdBu_r",
) -> Figure:
    """Draw convolution weights ``(O, I, kh, kw)``: a row per output channel, a column per input.

    A 2-D ``(kh, kw)`` kernel is drawn alone. Colors are symmetric around 0 (red positive, blue
    negative) on one scale for all panels; small kernels get their values written in.

    Examples
    --------
    >>> fig = plot_kernels(np.stack([[[[1, 0, -1]] * 3], [[[1, 1, 1], [0, 0, 0], [-1, -1, -1]]]]))
    >>> len(fig.axes)
    2
    """
    w = np.asarray(weight, dtype=np.float64) if np.asarray(weight).dtype.kind in "biuf" else None
    if w is None or w.ndim not in (2, 4) or w.size == 0:
        raise ValueError(
            f"weight must be a real (O, I, kh, kw) or (kh, kw) array, got shape "
            f"{np.shape(weight)}"
        )
    if w.ndim == 2:
        w = w[None, None]
    o, i = min(w.shape[0], as_int(max_out, "max_out")), min(w.shape[1], as_int(max_in, "max_in"))
    kh, kw = w.shape[2:]
    scale = float(np.abs(w[:o, :i]).max()) or 1.0
    write = (kh * kw <= 25 and o * i <= 64) if annotate is None else annotate
    panel = min(1.6, 12.0 / i, 12.0 / o)
    fig = new_figure(i * panel, o * panel * kh / kw + 0.3)
    for r in range(o):
        for c in range(i):
            ax = fig.add_subplot(o, i, r * i + c + 1)
            ax.imshow(w[r, c], cmap=cmap, vmin=-scale, vmax=scale)
            ax.set_xticks([])
            ax.set_yticks([])
            if write:
                for (a, b), v in np.ndenumerate(w[r, c]):
                    shade = "white" if abs(v) > 0.6 * scale else "black"
                    ax.text(b, a, f"{v:.2g}", ha="center", va="center", fontsize=7, color=shade)
            if r == 0 and i > 1:
                ax.set_title(f"in {c}", fontsize=8)
            if c == 0 and o > 1:
                ax.set_ylabel(f"out {r}", fontsize=8)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: float | None = None) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix: .png, .svg, .pdf, ...).

    The file appears complete or not at all; an existing file is replaced only on success.
    The picture is ``fig.get_size_inches() * dpi`` pixels (``dpi`` defaults to ``fig.dpi``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> fig = plot_kernels(np.eye(3))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_figure(fig, pathlib.Path(d) / "k.png").stat().st_size > 0
    True
    """
    from convlayers.io import atomic_write

    target = Path(os.fspath(path))
    fmt = target.suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"path must end in one of {', '.join('.' + s for s in sorted(supported))}, "
            f"got {str(target)!r}"
        )
    with atomic_write(target, "wb") as f:
        fig.savefig(f, format=fmt, dpi=fig.dpi if dpi is None else dpi)
    return target
