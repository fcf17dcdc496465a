"""How a filter response becomes a picture: absolute value, signed, percentiles or min-max.

A filter response is a float array; how it is mapped to grey levels decides whether an edge
filter looks like edges or like flat grey. The modes, in the words image people use:

``"abs"``
    The absolute value (for a derivative filter, the gradient magnitude along its direction),
    from 0 (black) up to the 99.5th percentile (white). Edges are bright on black.
``"signed"``
    Zero is mid-grey (white with a diverging colormap); positive and negative responses go
    the two ways, symmetric around zero, up to the 99.5th percentile of ``|response|``.
``"percentile"``
    The 1st..99th percentiles stretched to black..white (a few outliers cannot wash it out).
``"minmax"``
    The smallest value is black, the largest white.
``"auto"``
    ``"abs"`` for a kernel whose weights sum to 0 (edges, Laplacian), else ``"percentile"``.

Examples
--------
>>> display_mode("auto", [[1, 0, -1]] * 3), display_mode("auto", np.ones((3, 3)) / 9)
('abs', 'percentile')
>>> to_unit(np.array([[-2.0, 0.0, 2.0]]), "abs")
array([[1., 0., 1.]])
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DISPLAY_MODES", "display_limits", "display_mode", "to_unit"]

#: The ways to show a response; see the module docstring.
DISPLAY_MODES = ("auto", "abs", "signed", "percentile", "minmax")

_HIGH = 99.5  # percentile of |response| that is drawn at full strength


def display_mode(mode: str, kernel: Any = None) -> str:
    """Resolve ``"auto"`` for ``kernel`` (a 2-D array); other modes are returned as given.

    >>> display_mode("auto", "laplacian"), display_mode("signed", "blur")
    ('abs', 'signed')
    """
    if mode not in DISPLAY_MODES:
        raise ValueError(f"display must be one of {', '.join(DISPLAY_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    if kernel is None:
        return "percentile"
    if isinstance(kernel, str):
        from convlayers.filters import get_filter

        kernel = get_filter(kernel)
    w = np.asarray(kernel, dtype=np.float64)
    scale = float(np.abs(w).sum()) or 1.0
    return "abs" if abs(float(w.sum())) <= 1e-6 * scale else "percentile"


def display_limits(response: Any, mode: str) -> tuple[float, float]:
    """The values drawn black and white (``vmin, vmax``) for a resolved ``mode``.

    For ``"abs"`` the limits apply to ``|response|``.

    >>> display_limits(np.array([-4.0, 1.0, 2.0]), "minmax")
    (-4.0, 2.0)
    >>> display_limits(np.array([-4.0, 1.0, 2.0]), "signed")[0] < 0
    True
    """
    r = np.asarray(response, dtype=np.float64)
    finite = r[np.isfinite(r)]
    if finite.size == 0:
        return 0.0, 1.0
    if mode == "abs":
        hi = float(np.percentile(np.abs(finite), _HIGH))
        return 0.0, hi if hi > 0 else (float(np.abs(finite).max()) or 1.0)
    if mode == "signed":
        hi = float(np.percentile(np.abs(finite), _HIGH))
        hi = hi if hi > 0 else (float(np.abs(finite).max()) or 1.0)
        return -hi, hi
    if mode == "percentile":
        lo, hi = (float(v) for v in np.percentile(finite, [1.0, 99.0]))
    elif mode == "minmax":
        lo, hi = float(finite.min()), float(finite.max())
    else:
        raise ValueError(f"mode must be abs, signed, percentile or minmax, got {mode!r}")
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def to_unit(response: Any, mode: str, kernel: Any = None) -> np.ndarray:
    """``response`` mapped to [0, 1] by ``mode`` (see the module docstring), float64.

    One scale serves all channels of an ``(H, W, 3)`` response, so colours keep their ratios.

    >>> to_unit(np.array([[-1.0, 0.0, 3.0]]), "signed")
    array([[0.33..., 0.5       , 1.        ]])
    """
    resolved = display_mode(mode, kernel)
    r = np.asarray(response, dtype=np.float64)
    lo, hi = display_limits(r, resolved)
    if resolved == "abs":
        r = np.abs(r)
    return np.clip((r - lo) / (hi - lo), 0.0, 1.0)
