"""Kernel taps that read only padding: a convolution run with its kernel cropped to the taps
that reach the input.

Along an axis of size ``n`` with kernel ``k``, stride ``s``, dilation ``d``, padding ``before``
and ``n_out`` outputs, tap ``t`` reads positions ``o*s + t*d - before`` for ``o < n_out``. A
tap whose positions all lie before the input (or all past it) only ever meets the zero padding:
its products are zeros, its weight gradient is zero. Wide padding on small maps makes many such
taps: a 6x6 kernel of dilation 3 with padding 7 on an 8x8 map has 20 of its 36 taps in the
padding, and every strategy but the NumPy one multiplied them (1x497x8x8 to 160 channels:
1.85x torch's forward time, 2.26x forward+backward in the sweep of seed 26077; torch skips
them). Cropping the kernel to the taps in between, with the padding before reduced by the
dropped taps' reach (``start * d``), gives the same sums, the same output size, and a problem
every strategy serves.

A tap that reads no input because the stride steps over the whole input (an input shorter
than the stride) is kept: only taps before the first or after the last that reach the input
are dropped, and leading ones only as far as the padding before stays non-negative.

The outputs are the same as the uncropped convolution's wherever its weights are finite, and
a non-finite weight in a dropped tap no longer meets the zero padding: as the NumPy strategy
and torch (beyond its batch-1 paths) have it, such a tap adds nothing.

Examples
--------
>>> from convlayers.functional._engine_crop import crop_padding_taps
>>> c = crop_padding_taps((8, 8), (6, 6), (1, 1), (3, 3), ((7, 7), (7, 7)), (7, 7))
>>> c.starts, c.stops, c.pairs
((1, 1), (5, 5), ((4, 4), (4, 4)))
>>> crop_padding_taps((8, 8), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (8, 8)) is None
True
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from convlayers.functional._common import Pairs
from convlayers.functional._strided import put_phase, take_phase

__all__ = ["Cropped", "crop_padding_taps", "planned_crop"]


@dataclass(frozen=True)
class Cropped:
    """A convolution's kernel cropped to ``[starts[i], stops[i])`` per spatial axis, with
    zero padding ``pairs`` (the padding before reduced by the dropped taps' reach)."""

    starts: tuple[int, ...]
    stops: tuple[int, ...]
    pairs: Pairs

    def kernel(self) -> tuple[int, ...]:
        """The cropped kernel's size per spatial axis."""
        return tuple(b - a for a, b in zip(self.starts, self.stops, strict=True))

    def weight(self, w: np.ndarray) -> np.ndarray:
        """The taps of ``w`` (``(C_out, C_in/g, *K)``) that are kept, C-contiguous (on every
        thread for large weights: NumPy's copy of 4x4 of 6x6 taps of a 160x497 weight took
        1.7 ms, as long as the convolution)."""
        return take_phase(w, self.starts, (1,) * len(self.starts), self.kernel())

    def weight_grad(self, grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The gradient of the whole weight ``shape`` from that of the kept taps (zeros for
        the dropped ones)."""
        out = np.zeros(shape, dtype=grad.dtype)
        put_phase(grad, self.starts, (1,) * len(self.starts), out)
        return out


def _reach(size: int, k: int, s: int, d: int, before: int, n_out: int) -> tuple[int, int, int]:
    """``(start, stop, after)`` of one axis: the kept taps and the padding after they need."""
    last = (n_out - 1) * s  # the last output's offset from the first
    start = 0
    # taps whose every position lies before the input, while the padding before stays >= 0
    while start < k - 1 and last + start * d - before < 0 and (start + 1) * d <= before:
        start += 1
    stop = k
    while stop - 1 > start and (stop - 1) * d - before > size - 1:
        stop -= 1
    pad_before = before - start * d
    after = max(0, last + (stop - 1 - start) * d - pad_before - (size - 1))
    return start, stop, after


@functools.lru_cache(maxsize=1024)
def crop_padding_taps(x_spatial: tuple[int, ...], kernel: tuple[int, ...],
                      stride: tuple[int, ...], dilation: tuple[int, ...], pairs: Pairs,
                      out_shape: tuple[int, ...]) -> Cropped | None:
    """The cropped convolution (see the module), or None when every tap of every axis reaches
    the input (or an output is empty)."""
    if min(out_shape, default=1) <= 0 or min(x_spatial, default=1) <= 0:
        return None
    starts, stops, new_pairs = [], [], []
    for size, k, s, d, (before, after), n_out in zip(x_spatial, kernel, stride, dilation,
                                                    pairs, out_shape, strict=True):
        start, stop, need = _reach(size, k, s, d, before, n_out)
        starts.append(start)
        stops.append(stop)
        new_pairs.append((before - start * d, need if (start, stop) != (0, k) else after))
    if all(a == 0 for a in starts) and stops == list(kernel):
        return None
    return Cropped(tuple(starts), tuple(stops), tuple(new_pairs))


def planned_crop(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, ...],
                 dilation: tuple[int, ...], pairs: Pairs | None,
                 out_shape: tuple[int, ...]) -> Cropped | None:
    """:func:`crop_padding_taps` of a call (``x_shape`` and ``w_shape`` batched, ``pairs`` its
    implicit zero padding) where ``config.engine.crop_padding_taps`` asks for it (the
    default) and the multiply-adds a pass saves come to ``config.engine.crop_copy_macs`` per
    weight element or more, else None: the cropped weight is a copy (and its gradient put
    back into the whole one), memory-bound, and on one image of a few output positions it
    costs as much as the dropped taps (1x497x8x8 to 160, 6x6 dilation 3 padding 7, 27
    multiply-adds saved per weight element: the forward 1.88 -> 1.68 ms with 0.64 ms of
    copy, the backward 5.6 -> 4.5)."""
    from convlayers import config

    if pairs is None or not config.engine.crop_padding_taps:
        return None
    cropped = crop_padding_taps(tuple(x_shape[2:]), tuple(w_shape[2:]), stride, dilation,
                                pairs, tuple(out_shape))
    if cropped is None:
        return None
    dropped = math.prod(w_shape[2:]) - math.prod(cropped.kernel())
    saved = x_shape[0] * math.prod(out_shape) * w_shape[0] * w_shape[1] * dropped
    if saved < config.engine.crop_copy_macs * math.prod(w_shape):
        return None  # the copy of the kept taps would cost about what they save
    return cropped
