"""What a trained network learned first: its stem kernels beside hand-made filters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from convlayers._validate import as_int
from convlayers.viz._draw import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["kernel_patches", "learned_vs_handmade"]

HANDMADE = ("sobel_x", "sobel_y", "vertical", "horizontal", "laplacian", "blur")


def kernel_patches(weight: Any) -> np.ndarray:
    """First-layer kernels ``(O, 3, k, k)`` as ``(O, k, k, 3)`` RGB patches in [0, 1].

    Each kernel is scaled on its own so that 0.5 (grey) is a zero weight: a patch that is
    red on the left and cyan on the right responds to red-to-cyan edges.

    >>> kernel_patches(np.ones((2, 3, 3, 3))).max()
    np.float64(1.0)
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 4 or w.shape[1] != 3:
        raise ValueError(f"weight must be a first-layer (O, 3, k, k) array, got shape {w.shape}")
    scale = np.abs(w).max(axis=(1, 2, 3), keepdims=True)
    scale[scale == 0] = 1.0
    return (0.5 + 0.5 * w / scale).transpose(0, 2, 3, 1)


def learned_vs_handmade(weight: Any, names: Sequence[str] = HANDMADE, ncols: int = 8) -> Figure:
    """The learned stem kernels (as RGB patches) above the seed's hand-made filters.

    Parameters
    ----------
    weight : ndarray
        A first convolution's weights ``(O, 3, k, k)``, e.g. EfficientNet-Lite0's stem
        (``model.stem[1].weight.data``, 32 kernels of 3x3).
    names : sequence of str
        Filters from :data:`convlayers.filters.FILTERS` to draw underneath.
    ncols : int
        Learned kernels per row.

    Examples
    --------
    >>> fig = learned_vs_handmade(np.random.default_rng(0).standard_normal((16, 3, 3, 3)))
    >>> len(fig.axes)
    22
    """
    from convlayers.filters import get_filter

    patches = kernel_patches(weight)
    cols = max(1, as_int(ncols, "ncols"))
    learned_rows = -(-len(patches) // cols)
    hand_rows = -(-len(names) // cols)
    rows = learned_rows + hand_rows
    panel = 1.2
    fig = new_figure(cols * panel, rows * panel + 0.9)
    fig.suptitle("learned by the network (RGB, grey = 0)  /  designed by hand (red +, blue -)",
                 fontsize=9)
    for k, patch in enumerate(patches):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(patch, interpolation="nearest")
        ax.set_title(f"#{k}", fontsize=7)
        ax.axis("off")
    for k, name in enumerate(names):
        kernel = get_filter(name)
        ax = fig.add_subplot(rows, cols, learned_rows * cols + k + 1)
        limit = float(np.abs(kernel).max()) or 1.0
        ax.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.15, hspace=0.35)
    return fig
