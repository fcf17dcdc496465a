"""A stride-1 input gradient alone as a forward: the output gradient correlated with the
flipped, transposed weights (:func:`convlayers.functional.plan.full_geometry`).

A transposed convolution of stride 1 is that gradient, and a gradient kernel's sums over the
output gradient are the taps of an ordinary forward: padded by ``(k-1)*d - p`` on each side,
its weights ``w[o, i, kh-1-a, kw-1-b]`` as ``(C_in, C_out/g, kh, kw)``. Run so, it takes the
forward strategies the gradient kernels lack, Winograd and ``direct``
(:data:`convlayers.functional.plan.FLIPPED_FORWARDS`); the engine measures them against the
implicit GEMM and im2col (:mod:`convlayers.functional._measured`). On the sweeps' slow
stride-1 transposed convolutions (48 -> 151 3x3 padding 1 on 4x48x14x14, 30 -> 137 4x4 on
3x30x19x19, ...) the gradient kernels took 1.17-1.51x torch's time, the measured choice
0.85-1.10x.

The forward multiplies the output gradient's zero padding by the weights: a non-finite
weight takes ``lowered`` (whose col2im drops the taps in the padding), as Winograd's own value
check does when it flags an inf or NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from convlayers import config
from convlayers.functional._engine_implicit import _transposed_taps
from convlayers.functional._engine_lowered import _gx_lowered
from convlayers.functional._engine_shared import _finite
from convlayers.functional.plan import Geometry, full_geometry

__all__ = ["flipped_input_grad", "flipped_weights"]

Forward = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", Geometry], "np.ndarray | None"]


def flipped_weights(w: np.ndarray, g: Geometry) -> np.ndarray:
    """The weights ``(C_out, C_in/g, kh, kw)`` of ``g`` as those of its input gradient's
    forward: ``(C_in, C_out/g, kh, kw)``, each group's transposed, every kernel flipped."""
    w5 = w.reshape(g.groups, g.c_out_g, g.c_in_g, g.kh, g.kw)
    return _transposed_taps(w5[..., ::-1, ::-1]).reshape(g.c_in, g.c_out_g, g.kh, g.kw)


def flipped_input_grad(forward: Forward) -> Callable[[np.ndarray, np.ndarray, Geometry],
                                                     np.ndarray]:
    """The input gradient ``(N, C_in, H, W)`` of the stride-1 ``g`` from the output gradient
    by the forward strategy ``forward`` (``_FORWARD[name]`` of the engine), ``lowered``'s where
    a weight is non-finite or the forward declines (Winograd's value check)."""
    def input_grad(gy: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
        if config.engine.check_values and not _finite(w):
            return _gx_lowered(gy, w, g)
        out = forward(np.ascontiguousarray(gy), flipped_weights(w, g), None, full_geometry(g))
        return _gx_lowered(gy, w, g) if out is None else out

    return input_grad
