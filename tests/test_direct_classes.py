"""The ``direct`` strategy's classes and blocks of pixels that sum only their windows' taps
inside the input (:func:`convlayers.inference.conv_last.dense_blocks`), where padding is wide
against the map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from convlayers import config
from convlayers import functional as F
from convlayers.functional import _engine_direct, _measured
from convlayers.functional.plan import Geometry, geometry
from convlayers.inference import conv_last
from oracle import assert_close


@pytest.mark.parametrize("seed", range(20))
def test_inside_runs_are_the_taps_each_output_reads(seed: int) -> None:
    """Each output's run holds exactly the taps ``j`` with ``0 <= o*s - p + j*d < size``,
    counted one by one; the runs cover every output once, in order."""
    rng = np.random.default_rng(seed)
    size, k, s, d = (int(v) for v in (rng.integers(1, 12), rng.integers(1, 8), rng.integers(1, 4),
                                      rng.integers(1, 4)))
    p = int(rng.integers(0, 2 * k * d))
    n_out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    if n_out < 1:
        p = d * k
        n_out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    runs = conv_last.inside_runs(n_out, size, k, s, p, d)
    assert [o for a, b, _, _ in runs for o in range(a, b)] == list(range(n_out))
    for a, b, j0, j1 in runs:
        for o in range(a, b):
            inside = [j for j in range(k) if 0 <= o * s - p + j * d < size]
            assert inside == list(range(j0, j1)), (o, inside, (j0, j1))


def _geometry(case: tuple) -> Geometry:
    """The forward geometry of a case ``(C_in, C_out, kernel, stride, padding, dilation, N,
    H, W)``."""
    c_in, c_out, kernel, stride, padding, dilation, n, h, w = case
    return geometry((n, c_in, h, w), (c_out, c_in, *kernel), stride, dilation, 1,
                    tuple((p, p) for p in padding),
                    tuple((s + 2 * p - d * (k - 1) - 1) // t + 1 for s, p, d, k, t in
                          zip((h, w), padding, dilation, kernel, stride, strict=True)),
                    np.float32)


# padding wide against small maps, where the classes pay (checked below): (C_in, C_out, kernel,
# stride, padding, dilation, N, H, W)
CASES = [(12, 52, (7, 7), (1, 1), (6, 6), (2, 2), 19, 11, 11),
         (9, 229, (7, 7), (1, 1), (6, 6), (2, 2), 6, 7, 7),
         (3, 17, (3, 3), (1, 1), (5, 5), (1, 1), 7, 5, 5),
         (20, 70, (5, 3), (2, 1), (4, 2), (3, 2), 9, 13, 6),
         (33, 300, (4, 6), (1, 2), (3, 5), (2, 1), 8, 6, 9),
         (5, 8, (7, 7), (3, 3), (9, 9), (1, 1), 12, 4, 4)]


@pytest.mark.parametrize("case", CASES)
def test_direct_by_classes_matches_torch(case: tuple) -> None:
    """Forced ``direct`` on layers where the classes pay: torch's result, bias included, for
    pixels whose windows read only padding too (the bias alone), narrow output blocks (8
    channels: the tall tiles) and more than one block of channels (300)."""
    c_in, c_out, kernel, stride, padding, dilation, n, h, w = case
    g = _geometry(case)
    assert _engine_direct.skips_padding(g)
    rng = np.random.default_rng(c_out)
    x = rng.standard_normal((n, c_in, h, w)).astype(np.float32)
    weight = rng.standard_normal((c_out, c_in, *kernel)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    want = tF.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias),
                     stride, padding, dilation).numpy()
    # the whole kernel: cropping the taps that read only padding would leave the classes less
    with config.engine_settings(force="direct", crop_padding_taps=False):
        got = F.conv2d(x, weight, bias, stride, padding, dilation)
    assert_close(got, want, f"direct by classes {case}")


@pytest.mark.parametrize("mode", ["classes", "blocks"])
def test_direct_by_classes_keeps_the_non_finite_pattern(mode: str) -> None:
    """An inf or NaN input reaches the outputs whose windows hold it; an inf weight takes the
    plain tiles (which multiply the padding's zeros), whose non-finite outputs are torch's.
    The same for the blocks."""
    case = CASES[0] if mode == "classes" else BLOCK_CASES[0]
    c_in, c_out, kernel, stride, padding, dilation, n, h, w = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c_in, h, w)).astype(np.float32)
    x[0, 2, 0, 0], x[n - 1, 7, 5, 9] = np.inf, np.nan
    weight = rng.standard_normal((c_out, c_in, *kernel)).astype(np.float32)
    for w_case in (weight, weight.copy()):
        if w_case is not weight:
            w_case[4, 1, 0, 6] = np.inf
        want = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w_case), None, stride, padding,
                         dilation).numpy()
        with config.engine_settings(force="direct", crop_padding_taps=False), \
                np.errstate(invalid="ignore"):
            got = F.conv2d(x, w_case, None, stride, padding, dilation)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        finite = np.isfinite(want)
        assert_close(got[finite], want[finite], "non-finite pattern")


def test_direct_is_measured_where_it_skips_the_padding() -> None:
    """A forward of fewer input channels than ``direct_min_channels`` measures ``direct`` where
    its classes pay, not where they do not (a padding of 1 on a large map)."""
    wide = geometry((19, 12, 11, 11), (52, 12, 7, 7), (1, 1), (2, 2), 1, ((6, 6), (6, 6)),
                    (11, 11), np.float32)
    narrow = geometry((2, 12, 40, 40), (52, 12, 3, 3), (1, 1), (1, 1), 1, ((1, 1), (1, 1)),
                      (40, 40), np.float32)
    assert _engine_direct.skips_padding(wide) and not _engine_direct.skips_padding(narrow)
    with config.engine_settings(direct_min_channels=16):  # 12 channels: below it
        assert "direct" in _measured.candidates(wide, "lowered", "forward")
        assert "direct" not in _measured.candidates(narrow, "lowered", "forward")


# maps of a few pixels a side under wide dilated padding, where the blocks pay (checked below):
# three strips and a part (338), one narrow tile (11 channels), a stride, several images, and
# blocks whose windows read only padding (their outputs the bias alone)
BLOCK_CASES = [(110, 182, (7, 7), (1, 1), (9, 9), (3, 3), 1, 10, 10),
               (112, 338, (4, 4), (1, 1), (4, 4), (3, 3), 2, 8, 8),
               (258, 62, (7, 3), (1, 1), (8, 8), (1, 1), 1, 12, 4),
               (142, 18, (4, 2), (1, 2), (6, 4), (2, 1), 1, 29, 4),
               (253, 35, (2, 7), (2, 2), (8, 5), (3, 1), 1, 16, 26),
               (286, 43, (7, 4), (2, 2), (8, 3), (1, 3), 1, 5, 5)]


@pytest.mark.parametrize("case", BLOCK_CASES)
def test_direct_by_blocks_matches_torch(case: tuple) -> None:
    """Forced ``direct`` where its blocks of a few pixels pay
    (:func:`convlayers.inference.conv_last.dense_blocks`): torch's result, bias included, on
    one and two threads."""
    c_in, c_out, kernel, stride, padding, dilation, n, h, w = case
    g = _geometry(case)
    assert _engine_direct.padding_mode(g) == "blocks"
    rng = np.random.default_rng(c_in)
    x = rng.standard_normal((n, c_in, h, w)).astype(np.float32)
    weight = rng.standard_normal((c_out, c_in, *kernel)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    want = tF.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias),
                     stride, padding, dilation).numpy()
    for threads in (1, 2):
        with config.settings(threads=threads), \
                config.engine_settings(force="direct", crop_padding_taps=False):
            got = F.conv2d(x, weight, bias, stride, padding, dilation)
        assert_close(got, want, f"direct by blocks {case}, {threads} threads")


def test_the_blocks_cover_every_pixel_once_with_its_windows_taps() -> None:
    """Each block is at most a tile's pixels of one image, the blocks list every output pixel
    once, and a block's taps are the union of its pixels' windows' taps inside the input,
    counted one by one."""
    _, _, kernel, stride, padding, dilation, n, h, w = BLOCK_CASES[1]
    g = _geometry(BLOCK_CASES[1])
    ho, wo = g.ho, g.wo
    _, src, _, blocks, _ = _engine_direct._blocks(g, 2)
    tile = _engine_direct._runs(g)[2]
    order = np.empty(n * ho * wo, dtype=np.int64)
    order[src] = np.arange(n * ho * wo)  # position in block order -> pixel (NCHW order)
    assert sorted(order.tolist()) == list(range(n * ho * wo))
    for p0, p1, i0, i1, j0, j1 in blocks.tolist():
        assert 0 < p1 - p0 <= tile
        pixels = order[p0:p1]
        assert len({int(q) // (ho * wo) for q in pixels}) == 1  # one image
        rows = [i for q in pixels for i in range(kernel[0])
                if 0 <= (q % (ho * wo)) // wo * stride[0] - padding[0] + i * dilation[0] < h]
        cols = [j for q in pixels for j in range(kernel[1])
                if 0 <= q % wo * stride[1] - padding[1] + j * dilation[1] < w]
        assert (i0, i1) == ((min(rows), max(rows) + 1) if rows else (i0, i0))
        assert (j0, j1) == ((min(cols), max(cols) + 1) if cols else (j0, j0))
