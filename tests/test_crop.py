"""Kernels cropped to the taps that reach the input (:mod:`convlayers.functional._engine_crop`):
taps that read only the zero padding are left out of every pass, with the same results as
torch's, forward and backward, on every strategy that serves the cropped call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import given, settings
from hypothesis import strategies as st

from convlayers import config
from convlayers import functional as F
from convlayers.functional._engine_crop import crop_padding_taps, planned_crop
from convlayers.functional.plan import STRATEGIES, cannot_serve, geometry
from oracle import assert_close, random_array, torch_grads


def _reads_input(size: int, s: int, d: int, before: int, n_out: int, tap: int) -> bool:
    return any(0 <= o * s + tap * d - before < size for o in range(n_out))


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 12), k=st.integers(1, 7), s=st.integers(1, 3), d=st.integers(1, 4),
       before=st.integers(0, 20), after=st.integers(0, 20))
def test_the_dropped_taps_read_only_padding_and_the_output_size_stays(
        size: int, k: int, s: int, d: int, before: int, after: int) -> None:
    """Counted one output at a time: every dropped tap reads no input, the first and last
    kept ones do (unless no tap does), the padding before stays >= 0, and the cropped call
    reaches every position its outputs read."""
    n_out = (size + before + after - d * (k - 1) - 1) // s + 1
    if n_out < 1:
        return
    cropped = crop_padding_taps((size,), (k,), (s,), (d,), ((before, after),), (n_out,))
    reading = [t for t in range(k) if _reads_input(size, s, d, before, n_out, t)]
    if cropped is None:
        start, stop, pad_before = 0, k, before
    else:
        (start,), (stop,), ((pad_before, pad_after),) = (cropped.starts, cropped.stops,
                                                         cropped.pairs)
        assert pad_before == before - start * d >= 0 and pad_after >= 0
        # the last output's last kept tap lies inside the input or the padding after it
        assert (n_out - 1) * s + (stop - 1 - start) * d - pad_before <= size - 1 + pad_after
    for t in [*range(start), *range(stop, k)]:
        assert t not in reading, (t, reading)
    # the last kept tap reads input, or its positions step over the input (a stride longer
    # than the input: kept, as the module says)
    last = stop - 1
    assert last in reading or ((n_out - 1) * s + last * d - before > size - 1
                               and last * d - before < 0) or not reading


# (input NCHW or NCW, weight, stride, padding, dilation, groups): taps in the padding
CASES = [
    ((2, 9, 8, 8), (11, 9, 6, 6), (1, 1), (7, 7), (3, 3), 1),  # 4x4 of 6x6 taps kept
    ((3, 6, 3, 4), (8, 6, 5, 5), (1, 1), (4, 4), (2, 2), 1),  # dilated 5x5 on a small map
    ((2, 16, 1, 6), (16, 16, 5, 5), (1, 1), (3, 2), (1, 1), 1),  # 3x5 left: rows cropped
    ((2, 8, 3, 4), (6, 4, 7, 5), (2, 3), (9, 6), (2, 1), 2),  # grouped, strided
    ((1, 5, 2, 9), (7, 5, 3, 4), (3, 1), (5, 0), (3, 1), 1),  # strided, padding after grows
    ((2, 20, 1, 1), (24, 20, 5, 5), (1, 1), (3, 3), (1, 1), 1),  # 5x5 -> 3x3: Winograd serves
    ((2, 6, 3), (5, 6, 5), (1,), (5,), (2,), 1),  # 1-D
    ((2, 9, 4, 4), (70, 9, 5, 5), (1, 1), (4, 4), (2, 2), 1),  # two strips of packed weights
]


def _forced_strategies(xs, ws, stride, padding, dilation, groups
                       ) -> list[tuple[str | None, bool]]:
    """``(name, backward)``: None (the planner) and every strategy that serves the cropped
    call's forward, each with whether it serves the backward pass too."""
    x = np.zeros(xs, np.float32)
    pairs = tuple((p, p) for p in padding)
    out = tuple(tF.conv1d(torch.zeros(xs), torch.zeros(ws), None, stride, padding, dilation,
                          groups).shape[2:] if len(xs) == 3 else
                tF.conv2d(torch.zeros(xs), torch.zeros(ws), None, stride, padding, dilation,
                          groups).shape[2:])
    with config.engine_settings(crop_copy_macs=0):
        cropped = planned_crop(xs, ws, stride, dilation, pairs, out)
    assert cropped is not None
    g = geometry(x.shape, (*ws[:2], *cropped.kernel()), stride, dilation, groups,
                             cropped.pairs, out, np.float32)
    return [(None, True)] + [(name, cannot_serve(name, g, "backward") is None)
                             for name in STRATEGIES if cannot_serve(name, g, "forward") is None]


@pytest.mark.parametrize("case", CASES)
def test_cropped_kernels_match_torch_on_every_strategy(case: tuple) -> None:
    """Forward (three calls: the remembered runner too) and both gradients against torch,
    the planner's strategy and each forced one that serves the cropped call, the dropped
    taps' weight gradient zero."""
    xs, ws, stride, padding, dilation, groups = case
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w, b = (random_array(rng, xs, np.float32), random_array(rng, ws, np.float32),
               random_array(rng, ws[:1], np.float32))
    conv, tconv = (F.conv1d, tF.conv1d) if len(xs) == 3 else (F.conv2d, tF.conv2d)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    expected, g, (gx, gw, gb) = torch_grads(lambda a, c, e: tconv(a, c, e, **kwargs), [x, w, b])
    for name, backward in _forced_strategies(xs, ws, stride, padding, dilation, groups):
        with config.engine_settings(force=name, crop_copy_macs=0):
            for call in range(3):
                assert_close(conv(x, w, b, **kwargs), expected, f"forward {name} call {call}")
            if not backward:  # a forward-only strategy (direct, dot): no gradient to compare
                continue
            grads = F.conv_backward(g, x, w, stride, padding, dilation, groups)
        for got, want, what in zip(grads, (gx, gw, gb), ("input", "weight", "bias"),
                                   strict=True):
            assert_close(got, want, f"grad {what} {name}")


def test_the_crop_is_planned_and_said() -> None:
    """``plan`` describes the cropped call, and the cost guard leaves a kernel whole where
    the copy would cost what the dropped taps save."""
    p = F.plan((16, 64, 8, 8), (96, 64, 6, 6), padding=7, dilation=3)
    assert "kernel cropped to 4x4" in str(p)
    pairs = ((7, 7), (7, 7))
    assert planned_crop((16, 64, 8, 8), (96, 64, 6, 6), (1, 1), (3, 3), pairs, (7, 7))
    # one image of one output position: 20 dropped taps save 20 multiply-adds per weight
    assert planned_crop((1, 64, 1, 1), (96, 64, 6, 6), (1, 1), (3, 3), pairs, (1, 1)) is None
    with config.engine_settings(crop_padding_taps=False):
        assert planned_crop((16, 64, 8, 8), (96, 64, 6, 6), (1, 1), (3, 3), pairs,
                            (7, 7)) is None


def test_a_non_finite_weight_in_a_dropped_tap_adds_nothing() -> None:
    """An inf or NaN weight on a tap that reads only padding is never multiplied: the outputs
    stay finite, as the NumPy strategy and torch (on two images) have them."""
    rng = np.random.default_rng(5)
    x = random_array(rng, (2, 9, 8, 8), np.float32)
    w = random_array(rng, (11, 9, 6, 6), np.float32)
    w[3, 2, 0, 0], w[5, 1, 5, 3] = np.nan, np.inf
    kwargs = dict(padding=7, dilation=3)
    want = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), **kwargs).numpy()
    assert np.isfinite(want).all()
    with config.engine_settings(crop_copy_macs=0):
        got = F.conv2d(x, w, **kwargs)
        gx, gw, _ = F.conv_backward(np.ones_like(want), x, w, **kwargs)
    assert_close(got, want, "forward")
    assert np.isfinite(gx).all() and np.isfinite(gw).all()
    assert (gw[:, :, 0] == 0).all() and (gw[:, :, 5] == 0).all()


def test_conv_transpose_with_padding_drops_the_same_taps() -> None:
    """A transposed convolution's padding crops its output: taps that only ever write into the
    cropped border are left out (its forward is the input gradient with that padding)."""
    rng = np.random.default_rng(8)
    x = random_array(rng, (2, 7, 3, 3), np.float32)
    w = random_array(rng, (7, 5, 6, 6), np.float32)
    want = tF.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), padding=7,
                               dilation=3).numpy()
    with config.engine_settings(crop_copy_macs=0):
        for call in range(3):  # the remembered runner too
            assert_close(F.conv_transpose2d(x, w, padding=7, dilation=3), want,
                         f"conv_transpose call {call}")
