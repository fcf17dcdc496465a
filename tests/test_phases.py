"""Strides that skip input run as a stride-1 convolution of one phase: same results as torch.

:mod:`convlayers.functional._engine_phases` rewrites an axis with stride ``s > 1`` whose taps
all land on one stride phase (a one-tap kernel, or a dilation that is a multiple of the
stride) of a depthwise convolution. These cases cover a phase cropped at the end, one that
needs padding after, padding before of more than a stride, every tap in the padding for some
outputs, and a channel multiplier, against torch forward and backward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from convlayers import config
from convlayers import functional as F
from convlayers.functional._engine_phases import reduce_phases
from oracle import assert_close, random_array, torch_grads

CASES = [
    # (input NCHW, weight, stride, padding, dilation, groups): depthwise, the rewritten kind
    ((2, 5, 39, 39), (5, 1, 3, 1), (3, 3), (0, 0), (2, 1), 5),  # 3x1, the width skips
    ((1, 4, 23, 19), (8, 1, 3, 2), (2, 2), (3, 1), (4, 2), 4),  # multiplier 2, dilation 2x
    ((3, 3, 16, 16), (3, 1, 2, 2), (3, 3), (4, 4), (3, 6), 3),  # wide padding before
    ((1, 2, 9, 10), (2, 1, 1, 3), (3, 2), (2, 0), (5, 1), 2),  # 1-tap rows, height only
    ((2, 4, 12, 12), (4, 1, 3, 3), (2, 2), (1, 1), (2, 2), 4),  # both axes
]


@pytest.fixture(params=[False, True], ids=["in-place", "reduced"])
def reduction(request):
    """Both ways of running a skipping stride: the kernels reading it in place (the default)
    and the rewrite to the phase its taps read (``config.engine.reduce_skipping_strides``)."""
    with config.engine_settings(reduce_skipping_strides=request.param):
        yield request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_skipping_strides_match_torch_forward_and_backward(case, dtype, reduction) -> None:
    xs, ws, stride, padding, dilation, groups = case
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w, b = random_array(rng, xs, dtype), random_array(rng, ws, dtype), random_array(
        rng, ws[:1], dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out_shape = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), **kwargs).shape[2:]
    pairs = tuple((p, p) for p in padding)
    assert reduce_phases(xs, ws, stride, dilation, pairs, tuple(out_shape)) is not None
    expected, g, (gx, gw, gb) = torch_grads(
        lambda a, c, d: tF.conv2d(a, c, d, **kwargs), [x, w, b])
    assert_close(F.conv2d(x, w, b, **kwargs), expected, "forward")
    our_gx, our_gw, our_gb = F.conv_backward(g, x, w, stride, padding, dilation, groups,
                                             with_bias=True)
    assert_close(our_gx, gx, "grad_input")
    assert_close(our_gw, gw, "grad_weight")
    assert_close(our_gb, gb, "grad_bias")


def test_depthwise_1x1_strides_are_read_in_place() -> None:
    """A strided, padded depthwise 1x1 layer is not rewritten (its forward reads its one tap
    in place, at any stride) and matches torch forward and backward."""
    xs, ws, stride, padding = (2, 6, 20, 17), (12, 1, 1, 1), (2, 3), (1, 2)
    rng = np.random.default_rng(4)
    x, w, b = (random_array(rng, s, np.float32) for s in (xs, ws, ws[:1]))
    kwargs = dict(stride=stride, padding=padding, groups=6)
    assert reduce_phases(xs, ws, stride, (1, 1), ((1, 1), (2, 2)), (11, 7)) is None
    expected, g, (gx, gw, gb) = torch_grads(
        lambda a, c, d: tF.conv2d(a, c, d, **kwargs), [x, w, b])
    assert_close(F.conv2d(x, w, b, **kwargs), expected, "forward")
    our_gx, our_gw, our_gb = F.conv_backward(g, x, w, stride, padding, 1, 6, with_bias=True)
    assert_close(our_gx, gx, "grad_input")
    assert_close(our_gw, gw, "grad_weight")
    assert_close(our_gb, gb, "grad_bias")


def test_conv1d_skipping_stride_matches_torch(reduction) -> None:
    rng = np.random.default_rng(3)
    x, w = random_array(rng, (2, 3, 31), np.float32), random_array(rng, (6, 1, 2), np.float32)
    expected = tF.conv1d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=3,
                         dilation=4, groups=3).numpy()
    assert_close(F.conv1d(x, w, stride=2, padding=3, dilation=4, groups=3), expected)


def test_other_geometries_are_left_alone() -> None:
    # overlapping taps (dilation not a multiple of the stride) read every phase
    assert reduce_phases((1, 1, 9, 9), (1, 1, 3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)),
                         (5, 5)) is None
    # dense and grouped convolutions: their GEMMs read only what the taps need already
    assert reduce_phases((1, 4, 9, 9), (2, 2, 1, 1), (2, 2), (1, 1), ((0, 0), (0, 0)),
                         (5, 5)) is None
    # stride 1: nothing to skip
    assert reduce_phases((1, 1, 9, 9), (1, 1, 1, 1), (1, 1), (1, 1), ((0, 0), (0, 0)),
                         (9, 9)) is None


def test_non_finite_values_at_skipped_positions_stay_out(reduction) -> None:
    # torch never reads the positions between the phases: an inf there changes nothing
    rng = np.random.default_rng(5)
    x = random_array(rng, (1, 2, 12, 12), np.float32)
    x[:, :, :, 1::3] = np.inf
    w = random_array(rng, (2, 1, 3, 1), np.float32)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=3, dilation=(2, 1),
                         groups=2).numpy()
    ours = F.conv2d(x, w, stride=3, dilation=(2, 1), groups=2)
    assert np.isfinite(expected).all()
    assert_close(ours, expected)
