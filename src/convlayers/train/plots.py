"""Pictures of a training run: loss and accuracy curves, and the confusion matrix.

The figures are matplotlib Figures on an Agg canvas (matplotlib is imported on first use); write
them with :func:`convlayers.viz.save_figure` (atomic).

Examples
--------
>>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]))
array([[1, 0],
       [1, 1]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from convlayers.train.loop import History
from convlayers.viz._draw import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["confusion_matrix", "plot_confusion", "plot_curves"]

_METRICS = ("loss", "accuracy")


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int | None = None) -> np.ndarray:
    """Counts ``M[i, j]`` of examples of class ``i`` predicted as ``j`` (int64, ``(C, C)``).

    ``num_classes`` defaults to one more than the largest label seen.
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of the same length, got {t.shape} and {p.shape}")
    if t.size and (t.dtype.kind not in "iu" or p.dtype.kind not in "iu" or min(t.min(), p.min()) < 0):
        raise ValueError("y_true and y_pred must hold non-negative integer class labels")
    c = int(max(t.max(initial=-1), p.max(initial=-1)) + 1) if num_classes is None else num_classes
    if isinstance(c, bool) or not isinstance(c, int) or c < 1 or (t.size and max(t.max(), p.max()) >= c):
        raise ValueError(f"num_classes must be an int above every label, got {num_classes!r}")
    out = np.zeros((c, c), np.int64)
    np.add.at(out, (t, p), 1)
    return out


def plot_curves(history: History, metric: str = "loss") -> Figure:
    """Training and test ``metric`` ("loss" or "accuracy") against the epoch.

    >>> plot_curves(History(epoch=[1, 2], train_loss=[1.0, 0.5], test_loss=[1.1, 0.7])).axes[0].get_ylabel()
    'loss'
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    if not isinstance(history, History):
        raise TypeError(f"history must be a History, got {type(history).__name__}")
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(5.0, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    curves = {}
    for split in ("train", "test"):
        values = np.asarray(getattr(history, f"{split}_{metric}"), dtype=float)
        if values.size and np.isfinite(values).any():
            curves[split] = values
    if len(history.epoch) == 1:  # one epoch: two bars with their values, not two lone dots
        names = list(curves)
        heights = [float(curves[n][0]) for n in names]
        bars = ax.bar(names, heights, color=["C0", "C1"][: len(names)], width=0.5)
        ax.bar_label(bars, labels=[f"{h:.1%}" if metric == "accuracy" else f"{h:.4g}"
                                   for h in heights])
        ax.set_title(f"{metric} after 1 epoch")
    else:
        for split, values in curves.items():
            ax.plot(history.epoch[: values.size], values, marker="o", markersize=3, label=split)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.legend()
        ax.set_title(f"{metric} per epoch")
    ax.set_ylabel(metric)
    if metric == "accuracy":
        ax.set_ylim(top=1.0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_confusion(matrix: Any, classes: Sequence[str] | None = None) -> Figure:
    """The confusion matrix as a heat map with the counts written in the cells.

    >>> plot_confusion(np.eye(3, dtype=int)).axes[0].get_xlabel()
    'predicted'
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.dtype.kind not in "iu":
        raise ValueError(f"matrix must be a square integer array, got {m.dtype} {m.shape}")
    names = [str(i) for i in range(len(m))] if classes is None else [str(c) for c in classes]
    if len(names) != len(m):
        raise ValueError(f"classes has {len(names)} names for a {len(m)}x{len(m)} matrix")
    side = 1.2 + 0.45 * len(m)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(m, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(m))
    ax.set_xticks(ticks, names)
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = m.max() / 2 if m.size else 0
    for i in range(len(m)):
        for j in range(len(m)):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > threshold else "black")
    total = m.sum()
    accuracy = np.trace(m) / total if total else float("nan")
    ax.set_title(f"confusion matrix (accuracy {accuracy:.1%})")
    fig.tight_layout()
    return fig
