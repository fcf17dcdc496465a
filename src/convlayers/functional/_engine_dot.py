"""The engine's ``dot`` strategy: a forward whose vectors run along the input channels
(:mod:`convlayers.kernels.dot`).

Each output is a dot product of a window of a channels-last copy of the input with one output
channel's weights, register tiles of 4 positions by 4 channels (8 by 2 for a group's last one
or two) summing every tap inside the input and reducing across lanes once. It serves the
layers the GEMM strategies leave half idle: many input channels and few output channels per
group, where a tile of output channels is mostly empty lanes and the implicit GEMM's
dropped positions and the taps in the padding are most of its work (413 -> 5 7x7 dilation 3
padding 9 on 4x413x9x9: 3.4x torch's time on the implicit GEMM the planner chose, 0.6x here;
124 -> 4 2x7 dilation 2 on 5x124x8x8: 1.1x, 0.33x). Where its loads outrun the caches (many
channels of weights per tile: 96 -> 29 5x2 on 4x96x31x31, 2.0x torch against the implicit
GEMM's 1.45x) the measurement keeps the other strategy. And maps of a few output positions,
whatever the output channels: there the GEMMs' vectors of positions are part idle
(``config.engine.dot_max_positions``).

The planner never picks it by rule: a forward planned ``implicit`` or ``lowered`` with at least
``config.engine.dot_min_in_channels`` input channels per group, and at most
``dot_max_out_channels`` output channels per group or ``dot_max_positions`` output positions an
image (all :class:`convlayers.config.EngineSettings`), measures it against
that strategy once (:mod:`convlayers.functional._measured`).
"""

from __future__ import annotations

import numpy as np

from convlayers import config
from convlayers.functional._compiled import _numba_threads, kernels
from convlayers.functional._engine_shared import _bias_arg, remembered
from convlayers.functional._scratch import take
from convlayers.functional.plan import Geometry

__all__ = ["dot_fits", "positions_per_unit"]



def _scratch_elements(g: Geometry) -> tuple[int, int]:
    """Elements of the channels-last copies of the input (a zero row after each image's group)
    and of the weights."""
    from convlayers.kernels.dot import padded_channels

    cp = padded_channels(g.c_in_g, g.itemsize)
    return g.n * g.groups * (g.h * g.w + 1) * cp, g.c_out * g.kh * g.kw * cp


def dot_fits(g: Geometry) -> str | None:
    """Why ``dot`` cannot run the forward of ``g`` (None: it can): its channels-last copies
    within ``config.scratch_bytes()``."""
    cap = config.scratch_bytes()
    if max(_scratch_elements(g)) * g.itemsize > cap:
        return f"dot's channels-last copies would pass the scratch cap ({cap} bytes)"
    return None


@remembered
def positions_per_unit(g: Geometry, threads: int) -> int:
    """Output positions of one unit (group, run of positions, the images' one after another):
    a group's whole on one thread, else runs of a multiple of 8 positions giving every thread
    four units."""
    positions = g.n * g.ho * g.wo
    blocks = -(-4 * threads // g.groups)
    if threads <= 1 or blocks <= 1:
        return positions
    run = -(-positions // blocks)
    return -(-run // 8) * 8


def _fwd_dot(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, g: Geometry) -> np.ndarray:
    kernel = kernels().dot.dot_forward
    run = positions_per_unit(g, _numba_threads())
    copy, packed = _scratch_elements(g)
    out = np.empty((g.n, g.c_out, g.ho * g.wo), dtype=x.dtype)
    kernel(np.ascontiguousarray(x), np.ascontiguousarray(w), _bias_arg(bias, x.dtype),
           g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.wo, run,
           take("dot.input", (copy,), x.dtype), take("dot.weights", (packed,), x.dtype), out)
    return out.reshape(g.n, g.c_out, g.ho, g.wo)
