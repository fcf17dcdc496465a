"""The depthwise kernels' register tiles (channels-last and planar) at every edge, against torch.

Float32 only here: the tiles' code comes from one generator for every vector width, and a
float64 build of the three kernels costs CI about a minute of compiling. The float64 tiles were
checked against torch on random layers when they were written; the core's hypothesis tests
draw float64 convolutions through whichever kernel the planner picks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from convlayers import config
from convlayers import functional as F
from oracle import assert_close, random_array, torch_grads


@pytest.mark.parametrize("strategy", ["depthwise-channels-last", "depthwise-planar"])
def test_depthwise_register_tiles_cover_every_row_and_lane_edge(strategy: str) -> None:
    """The channels-last tiles compute 8 consecutive output pixels (row-major, across rows) by
    one vector of lanes, a block's last 1-7 pixels in tiles of 8, 4, 2 or 1; the planar
    ones 8 or 4 vectors of a flat plane (forward and input gradient): rows of 1-17 outputs
    and planes whose pixel counts leave every remainder modulo 8, channel counts that end
    inside a vector, inside a block or on a block's edge, strides, dilations and kernels that
    are not square, with and without bias, several images (the scratch reused): torch's
    output, and non-finite values only where torch has them."""
    rng = np.random.default_rng(11)
    for case in range(24):
        c = [33, 64, 70, 100, 129, 200][case % 6]
        wo = 1 + case % 17
        kh, kw = [(3, 3), (1, 5), (5, 2), (7, 7)][case % 4]
        sh, sw = 1 + case % 2, 1 + case % 3
        dh, dw = 1 + case // 12, 1
        pt, pl = kh // 2, kw // 2
        h = max(1, (1 + case % 7 - 1) * sh + (kh - 1) * dh + 1 - 2 * pt)
        w_in = max(1, (wo - 1) * sw + (kw - 1) * dw + 1 - 2 * pl)
        x = random_array(rng, (3, c, h, w_in), np.float32)
        if case % 5 == 0:
            x[1, c - 1, 0, 0] = np.inf
            x[2, 0, h - 1, w_in - 1] = np.nan
        w = random_array(rng, (c, 1, kh, kw), np.float32)
        b = random_array(rng, (c,), np.float32) if case % 2 else None
        args = dict(stride=(sh, sw), padding=(pt, pl), dilation=(dh, dw), groups=c)
        with config.engine_settings(force=strategy):
            ours = F.conv2d(x, w, b, **args)
        expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                             None if b is None else torch.from_numpy(b), **args).numpy()
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(expected))
        finite = np.isfinite(expected)
        assert_close(ours[finite], expected[finite], f"case {case}")
        if case % 5:  # the gradients too (the planar gather and dot products, the channels-last
            # scatter of every output pixel's taps)
            _, g, (tgx, tgw, _) = torch_grads(lambda *t, a=args: tF.conv2d(*t, **a), [x, w, b],
                                              case)
            with config.engine_settings(force=strategy):
                gx, gw, _ = F.conv_backward(g, x, w, with_bias=b is not None, **args)
            assert_close(gx, tgx, f"case {case} input gradient")
            assert_close(gw, tgw, f"case {case} weight gradient")


@pytest.mark.parametrize("case", range(6))
def test_channels_last_block_holds_rows_no_tap_reads(case: int) -> None:
    """A stride that does not end on the map's last rows or columns leaves some no tap reads;
    the channels-last block holds them anyway (the whole map, copied a vector of positions by
    a vector of lanes at a time, the ragged ends one element at a time), and an inf or NaN
    there must not reach any output. Widths past and below a vector, channel counts inside a
    vector and past a block, unread rows, columns or both; forward and both gradients against
    torch, non-finite exactly where torch's are."""
    rng = np.random.default_rng(40 + case)
    c, h, w_in, (kh, kw), (sh, sw), (pt, pl) = [
        (70, 22, 38, (3, 3), (3, 3), (0, 0)),  # rows and columns unread
        (33, 9, 22, (5, 3), (2, 2), (1, 0)),  # columns unread
        (129, 14, 18, (3, 3), (3, 1), (0, 1)),  # rows unread, full width
        (16, 7, 40, (2, 4), (2, 3), (0, 0)),  # one vector of lanes
        (5, 30, 31, (3, 5), (3, 2), (1, 2)),  # fewer lanes than a vector
        (100, 11, 18, (1, 3), (1, 3), (0, 1)),  # 17 read columns: a vector and one more
    ][case]
    x = random_array(rng, (2, c, h, w_in), np.float32)
    x[0, c - 1, h - 1, w_in - 1] = np.inf  # the last pixel: unread in every case
    x[1, 0, h - 1, w_in - 1] = np.nan
    w = random_array(rng, (c, 1, kh, kw), np.float32)
    b = random_array(rng, (c,), np.float32)
    args = dict(stride=(sh, sw), padding=(pt, pl), groups=c)
    with config.engine_settings(force="depthwise-channels-last"):
        ours = F.conv2d(x, w, b, **args)
        _, g, (tgx, tgw, _) = torch_grads(lambda *t: tF.conv2d(*t, **args), [x, w, b], case)
        gx, gw, _ = F.conv_backward(g, x, w, with_bias=True, **args)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                         **args).numpy()
    assert np.isfinite(expected).all()
    assert_close(ours, expected, f"case {case}")
    assert np.isfinite(gw).all() and np.isfinite(gx).all()
    assert_close(gx, tgx, f"case {case} input gradient")
    assert_close(gw, tgw, f"case {case} weight gradient")
    ho = (h + 2 * pt - kh) // sh + 1
    wo = (w_in + 2 * pl - kw) // sw + 1
    assert h + pt > (ho - 1) * sh + kh or w_in + pl > (wo - 1) * sw + kw  # some are unread


def test_channels_last_weight_gradient_keeps_inf_out_of_the_padding() -> None:
    """An inf output gradient at a corner: its taps that fall on the zero padding would make
    ``0 * inf = NaN`` in the channels-last block, where torch (which never visits the padding)
    has finite sums; the engine sees it and takes the row kernels. Non-finite exactly where
    torch's are."""
    rng = np.random.default_rng(5)
    x = random_array(rng, (2, 72, 6, 6), np.float32)
    w = random_array(rng, (72, 1, 3, 3), np.float32)
    g = random_array(rng, (2, 72, 6, 6), np.float32)
    g[0, 3, 0, 0] = np.inf
    args = dict(padding=1, groups=72)
    assert F.plan(x.shape, w.shape, **args).weight_grad == "depthwise-channels-last"
    gx, gw, _ = F.conv_backward(g, x, w, with_bias=False, **args)
    tx, tw = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    tF.conv2d(tx, tw, **args).backward(torch.from_numpy(g))
    for ours, theirs in ((gx, tx.grad.numpy()), (gw, tw.grad.numpy())):
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        finite = np.isfinite(theirs)
        assert_close(ours[finite], theirs[finite], "finite gradients")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("with_inf", [False, True])
def test_channels_last_blocks_that_run_across_images(threads: int, with_inf: bool) -> None:
    """The channels-last kernels split the images' planes (flattened) into runs of whole
    vectors, one per thread, so a block holds the end of one image and the start of the next,
    its taps start inside the channels, and a thread's last block leaves lanes of its previous
    block in the scratch: 23 channels (no whole vector), 7 images, finite inputs or inf in
    several planes. Forward and both gradients against torch, non-finite exactly where
    torch's are."""
    rng = np.random.default_rng(71)
    x = random_array(rng, (7, 23, 9, 8), np.float32)
    if with_inf:
        for plane in (5, 40, 41, 100):
            x[plane // 23, plane % 23, 4, 3] = np.inf
    w = random_array(rng, (23, 1, 3, 3), np.float32)
    b = random_array(rng, (23,), np.float32)
    g = random_array(rng, (7, 23, 5, 4), np.float32)
    args = dict(stride=2, padding=1, groups=23)
    tx, tw = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    expected = tF.conv2d(tx, tw, torch.from_numpy(b), **args)
    expected.backward(torch.from_numpy(g))
    with config.settings(threads=threads), config.engine_settings(force="depthwise-channels-last"):
        ours = F.conv2d(x, w, b, **args)
        gx, gw, _ = F.conv_backward(g, x, w, with_bias=False, **args)
    for name, mine, theirs in (("output", ours, expected.detach().numpy()),
                               ("input gradient", gx, tx.grad.numpy()),
                               ("weight gradient", gw, tw.grad.numpy())):
        np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs), name)
        np.testing.assert_array_equal(np.isfinite(mine), np.isfinite(theirs), name)
        finite = np.isfinite(theirs)
        assert_close(mine[finite], theirs[finite], name)


@pytest.mark.parametrize("case", range(5))
def test_channels_last_tiles_skip_kernel_rows_on_the_padding(case: int) -> None:
    """Each channels-last tile sums only the kernel rows that reach the input from one of its
    pixels' rows. Padding wider than the map (output rows whose every tap reads padding: the
    tile is its bias), dilations and strides that put a tile's rows on different kernel rows,
    tiles across two or three output rows, an inf in the input: torch's output, non-finite
    exactly where torch's is."""
    rng = np.random.default_rng(70 + case)
    c, h, w_in, (kh, kw), (sh, sw), (dh, dw), (pt, pl) = [
        (70, 11, 11, (7, 7), (1, 1), (2, 2), (6, 6)),  # the sweep's layer, on fewer channels
        (33, 4, 4, (3, 3), (2, 1), (2, 1), (5, 2)),  # rows of only padding: bias alone
        (16, 2, 9, (5, 1), (1, 1), (1, 1), (4, 0)),  # 6 output rows from 2 input rows
        (100, 5, 3, (3, 2), (1, 2), (2, 1), (3, 1)),  # 3-pixel rows: a tile spans three
        (8, 6, 6, (4, 4), (3, 3), (1, 2), (3, 3)),  # stride 3: rows far apart
    ][case]
    x = random_array(rng, (2, c, h, w_in), np.float32)
    x[1, c // 2, h // 2, 0] = np.inf
    w = random_array(rng, (c, 1, kh, kw), np.float32)
    b = random_array(rng, (c,), np.float32)
    args = dict(stride=(sh, sw), padding=(pt, pl), dilation=(dh, dw), groups=c)
    with config.engine_settings(force="depthwise-channels-last"):
        ours = F.conv2d(x, w, b, **args)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                         **args).numpy()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(expected))
    finite = np.isfinite(expected)
    assert_close(ours[finite], expected[finite], f"case {case}")
    if case == 1:  # some output rows read padding only: their outputs are the bias
        assert np.allclose(expected[0, :, 0], b[:, None])
