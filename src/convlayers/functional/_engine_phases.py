"""Strides that skip input: a convolution whose taps, along some axis, all land on one stride
phase, run as a stride-1 convolution of that phase alone.

Along an axis with stride ``s > 1`` and dilation ``d`` a multiple of ``s`` (a kernel of one tap
counts, whatever its dilation), every tap of every output reads input positions ``i`` with
``i = -pad (mod s)``: the other ``s - 1`` of each ``s`` positions are never read. Then output
``o``, tap ``b`` reads ``x[s*j + r]`` with ``r = (-pad) mod s``, ``j = o + b*(d/s) - q`` and
``q = (pad + r) / s``: a convolution of the phase ``x[r::s]`` with stride 1, dilation ``d/s``
and padding ``q`` before. Every strategy then reads ``1/s`` of the input instead of all of it:
a depthwise 3x1 stride 3 dilation 2 layer on 6x143x39x39 copied whole planes channels-last to
compute 156 of 1521 positions each (3.4 ms against torch's 0.23).

The rewrite is off by default (``config.engine.reduce_skipping_strides``): the depthwise
kernels have since learnt to read strides in place, and without the copy the 12 layers of the
setting's notes ran 0.55-0.89x the time. Only depthwise convolutions are rewritten: their
kernels read or copy whole planes (not 1x1 ones: their forward reads each output's one tap in
place). The GEMM
strategies already read only the positions their taps need (im2col gathers them, the implicit
GEMM copies each stride phase apart), and the copy of the phase only added to them: a dense
1x4 stride-2 layer on 30x431x14x14 took 3.3x torch's time with it.

The sums, and so the outputs, are the same: nothing but the positions no tap reads is left
out. The input gradient is the phase's, scattered back into zeros.

Examples
--------
>>> from convlayers.functional._engine_phases import reduce_phases
>>> r = reduce_phases((1, 1, 9, 9), (1, 1, 3, 1), (3, 3), (2, 1), ((0, 0), (1, 1)), (2, 4))
>>> r.stride, r.dilation, r.pairs, r.starts, r.lengths
((3, 1), (2, 1), ((0, 0), (1, 0)), (0, 2), (9, 3))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convlayers.functional._common import Pairs
from convlayers.functional._strided import put_phase, take_phase

__all__ = ["Reduced", "planned_reduction", "reduce_phases"]


@dataclass(frozen=True)
class Reduced:
    """A convolution with its skipping axes reduced to one stride phase each.

    ``starts``, ``steps`` and ``lengths`` select the phase from the original input per spatial
    axis (``x[..., start : start + step*length : step]``; unreduced axes keep ``start`` 0,
    ``step`` 1 and their whole length); ``stride``, ``dilation`` and ``pairs`` are the new
    convolution's."""

    starts: tuple[int, ...]
    steps: tuple[int, ...]
    lengths: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pairs: Pairs

    def take(self, x: np.ndarray) -> np.ndarray:
        """The phase of ``x``, contiguous (:func:`~convlayers.functional._strided.take_phase`)."""
        return take_phase(x, self.starts, self.steps, self.lengths)

    def put(self, grad_phase: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The gradient of the whole input ``shape`` from that of its phase (zeros elsewhere)."""
        out = np.zeros(shape, dtype=grad_phase.dtype)
        put_phase(grad_phase, self.starts, self.steps, out)
        return out


def reduce_phases(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, ...],
                  dilation: tuple[int, ...], pairs: Pairs,
                  out_shape: tuple[int, ...]) -> Reduced | None:
    """The reduced convolution (see the module), or None when no axis skips input, an output
    is empty, or the convolution is not depthwise (one input channel per group)."""
    if min(out_shape, default=1) <= 0 or w_shape[1] != 1:
        return None
    if all(k == 1 for k in w_shape[2:]):
        return None  # a depthwise 1x1 forward reads its one tap in place, at any stride
    starts, steps, lengths, strides, dils, new_pairs = [], [], [], [], [], []
    changed = False
    for size, k, s, d, (before, after), n_out in zip(
            x_shape[2:], w_shape[2:], stride, dilation, pairs, out_shape, strict=True):
        if s > 1 and (k == 1 or d % s == 0):
            d_new = 1 if k == 1 else d // s
            r = (-before) % s
            q = (before + r) // s
            phase = max(0, -(-(size - r) // s))  # positions r, r+s, ... inside the input
            reach = n_out - 1 + (k - 1) * d_new  # last reduced index read, from -q
            last = reach - q  # index into the phase
            used = min(phase, last + 1)
            if used <= 0:
                return None  # every tap in the padding: leave it to the general path
            starts.append(r)
            steps.append(s)
            lengths.append(used)
            strides.append(1)
            dils.append(d_new)
            new_pairs.append((q, max(0, last + 1 - used)))
            changed = True
        else:
            starts.append(0)
            steps.append(1)
            lengths.append(size)
            strides.append(s)
            dils.append(d)
            new_pairs.append((before, after))
    if not changed:
        return None
    return Reduced(tuple(starts), tuple(steps), tuple(lengths), tuple(strides), tuple(dils),
                   tuple(new_pairs))


def planned_reduction(x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                      stride: tuple[int, ...], dilation: tuple[int, ...], pairs: Pairs,
                      out_shape: tuple[int, ...]) -> Reduced | None:
    """:func:`reduce_phases` where ``config.engine.reduce_skipping_strides`` asks for it (off
    by default: the depthwise kernels read strides in place faster), else None."""
    from convlayers import config

    if not config.engine.reduce_skipping_strides:
        return None
    return reduce_phases(x_shape, w_shape, stride, dilation, pairs, out_shape)
