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
) -> Figure:
    """The original photo next to its responses to a bank of filters, one panel each.

    Each response is ``convlayers.filters.apply_filter(image, kernel, mode="same",
    boundary=boundary)`` (a true convolution, SciPy's recipe) shown with its own color scale,
    so signed edge responses and blurs are equally visible.

    Parameters
    ----------
    image : array_like, shape (H, W) or (H, W, 3)
        The photo (uint8 or float).
    names : sequence of str or mapping of str to kernel, default the seed's six
        Filter names from :data:`convlayers.filters.FILTERS`, or ``{title: kernel}``.
    gray : bool, default True
        Filter the luminance (as the classic recipe does); False filters each color channel
        and shows the response of the first one.
    boundary : {"symm", "fill", "wrap"}, default "symm"
        Edge handling, as in ``scipy.signal.convolve2d``.
    ncols : int, default 4
        Panels per row.
    cmap : str, default "gray"
        Colormap of the panels.

    Returns
    -------
    matplotlib.figure.Figure
        ``1 + len(names)`` panels.

    Examples
    --------
    >>> img = np.zeros((16, 16)); img[:, 8:] = 1.0
    >>> fig = filter_gallery(img, ["sobel_x", "blur"])
    >>> [ax.get_title() for ax in fig.axes if ax.get_title()]
    ['Original', 'Sobel x', 'Blur']
    """
    from convlayers.filters import apply_filter

    arr = np.asarray(image)
    base = to_gray(arr) if gray else arr
    items = list(names.items()) if isinstance(names, Mapping) else [(n, n) for n in names]
    if not items:
        raise ValueError("names must list at least one filter, got none")
    responses = [(str(title), apply_filter(base, k, boundary=boundary)) for title, k in items]
    h, w = base.shape[:2]
    fig, axes = _grid(1 + len(items), ncols, h / w)
    shown = arr if (not gray and arr.ndim == 3) else base
    axes[0].imshow(shown, cmap=cmap if shown.ndim == 2 else None)
    axes[0].set_title("Original")
    for ax, (title, resp) in zip(axes[1:], responses, strict=True):
        ax.imshow(resp if resp.ndim == 2 else resp[:, :, 0], cmap=cmap)
        ax.set_title(title.replace("_", " ").capitalize())
    return _finish(fig)


def plot_feature_maps(
    maps: Any, *, ncols: int | None = None, titles: Sequence[str] | None = None,
    cmap: str = "viridis", max_maps: int = 64,
) -> Figure:
    """Show the channels of a feature map ``(C, H, W)`` (or ``(1, C, H, W)``) side by side.

    Examples
    --------
    >>> fig = plot_feature_maps(np.random.default_rng(0).random((6, 8, 8)))
    >>> len([ax for ax in fig.axes if ax.images])
    6
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
    for k, ax in enumerate(axes):
        ax.imshow(arr[k], cmap=cmap)
        ax.set_title(titles[k] if titles is not None else f"channel {k}", fontsize=9)
    return _finish(fig)


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
