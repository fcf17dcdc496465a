"""The channels-last Winograd F(2x2, 3x3) of compiled plans against torch's direct convolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tf

import convlayers
from convlayers import nn
from convlayers.inference import conv_last
from convlayers.inference import winograd_last as WL
from convlayers.inference.steps_channels_last import WinogradLast
from oracle import assert_close
from test_channels_last import TORCH_ACT, _nhwc


def _winograd(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, pads: tuple[int, int, int, int],
              res: np.ndarray, has_res: bool, act: int, tiles: int, cols: int,
              threads: int) -> tuple[np.ndarray, bool]:
    """``WL.forward`` on the NHWC ``x``: the output (NHWC) and whether it flagged inf/NaN."""
    n, h, w, c_in = x.shape
    c_out = weight.shape[0]
    pt, pb, pl, pr = pads
    ho, wo = h + pt + pb - 2, w + pl + pr - 2
    th, tw = WL.tile_counts(ho, wo)
    padded = np.empty((n, 2 * th + 2, 2 * tw + 2, c_in), x.dtype)
    conv_last.pad_channels_last(x, pt, pl, padded)
    pool = 8  # numba's thread ids index the scratch: room for any
    vbuf = np.full((pool, 16 * WL.plane_elements(tiles, c_in)), np.nan, x.dtype)
    mbuf = np.full((pool, 16 * WL.plane_elements(tiles, c_out)), np.nan, x.dtype)
    bad = np.zeros(pool, x.dtype)
    out = np.empty((n, ho, wo, c_out), x.dtype)
    WL.forward(padded, WL.transformed_weights(weight, x.dtype), bias,
               res if has_res else out, has_res, act, tiles, cols, threads,
               WL.offsets(2 * tw + 2, c_in, wo, c_out, tiles),
               np.arange(tiles, dtype=np.int64) * c_in, vbuf, mbuf, out, bad)
    return out, bool(bad.any())


def _accumulation(x: torch.Tensor, weight: np.ndarray, bias: np.ndarray,
                  pads: tuple[int, int, int, int], res: torch.Tensor | None) -> np.ndarray:
    """``sum |x| |w| + |bias| (+ |res|)`` per output, in float64 (the oracle's magnitude)."""
    pt, pb, pl, pr = pads
    acc = tf.conv2d(tf.pad(x.double().abs(), (pl, pr, pt, pb)),
                    torch.from_numpy(np.abs(weight).astype(np.float64)),
                    torch.from_numpy(np.abs(bias).astype(np.float64)))
    if res is not None:
        acc = acc + res.double().abs()
    return _nhwc(acc)


@pytest.mark.parametrize("seed", range(30))
def test_winograd_matches_torch(seed: int) -> None:
    """Maps of odd and even sizes (partial tiles on the bottom and right edges), uneven
    padding, channels on and off the vector width and the packed strips, units of few tiles
    (ragged last unit) and of part of the output channels, 1-4 threads, a residual and every
    activation, float32 and float64."""
    rng = np.random.default_rng(3000 + seed)
    c_in = int(rng.choice([1, 3, 16, 33, 40, 64, 70]))
    c_out = int(rng.choice([1, 5, 16, 24, 33, 64, 96, 100, 144]))
    n = int(rng.integers(1, 4))
    pt, pb, pl, pr = (int(v) for v in rng.integers(0, 3, 4))
    h = int(rng.integers(max(1, 3 - pt - pb), 16))
    w = int(rng.integers(max(1, 3 - pl - pr), 16))
    act = int(rng.integers(0, 7))
    dtype = np.float32 if seed % 4 else np.float64
    x = torch.from_numpy(rng.standard_normal((n, c_in, h, w)).astype(dtype))
    weight = rng.standard_normal((c_out, c_in, 3, 3)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    want = tf.conv2d(tf.pad(x, (pl, pr, pt, pb)), torch.from_numpy(weight), torch.from_numpy(bias))
    residual = torch.from_numpy(rng.standard_normal(tuple(want.shape)).astype(dtype))
    has_res = bool(seed % 3 == 0)
    scale = _accumulation(x, weight, bias, (pt, pb, pl, pr), residual if has_res else None)
    want = TORCH_ACT[act](want + residual if has_res else want)
    tiles = int(rng.choice([1, 5, 6, 36]))
    strip = 64 if dtype == np.float32 else 32  # a packed strip's columns (AVX-512; wider ok)
    cols = int(rng.choice([c_out, strip]))
    got, bad = _winograd(_nhwc(x), weight, bias, (pt, pb, pl, pr), _nhwc(residual), has_res, act,
                         tiles, cols, int(rng.integers(1, 5)))
    assert not bad
    assert_close(got, _nhwc(want), f"winograd seed {seed}", scale=scale)


def test_winograd_flags_non_finite_and_overflow() -> None:
    """An inf input, a NaN weight, or finite inputs whose transforms overflow: the kernel
    flags the call (the plan then runs the direct kernel); finite inputs are not flagged."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 8, 9, 40)).astype(np.float32)
    weight = rng.standard_normal((48, 40, 3, 3)).astype(np.float32)
    bias = np.zeros(48, np.float32)
    args = ((1, 1, 1, 1), np.zeros(1, np.float32), False, 0, 6, 48, 2)
    assert not _winograd(x, weight, bias, *args)[1]
    hot = x.copy()
    hot[0, 3, 4, 7] = np.inf
    assert _winograd(hot, weight, bias, *args)[1]
    nan_w = weight.copy()
    nan_w[5, 2, 1, 1] = np.nan
    assert _winograd(x, nan_w, bias, *args)[1]
    big = x.copy()
    big[0, 2, 2, 0], big[0, 4, 2, 0] = 2.0e38, -2.0e38  # d0 - d2 overflows; 0.1 * 2e38 does not
    assert _winograd(big, weight * np.float32(0.1), bias, *args)[1]


def _twin(c_in: int, c_out: int) -> tuple[nn.Sequential, torch.nn.Sequential]:
    rng = np.random.default_rng(c_in + c_out)
    ours = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, rng=rng), nn.BatchNorm2d(c_out),
                         nn.ReLU())
    ours.eval()
    twin = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 3, padding=1),
                               torch.nn.BatchNorm2d(c_out), torch.nn.ReLU()).eval()
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in ours.state_dict().items()}
    twin.load_state_dict(state)
    return ours, twin


def _winograd_step(plan: convlayers.inference.plan.Plan) -> WinogradLast:
    return next(s for s in plan._steps if isinstance(s, WinogradLast))


@pytest.mark.parametrize(("batch", "hw"), [(1, (11, 13)), (2, (11, 8)), (5, (9, 9)),
                                           (1, (7, 9)), (1, (4, 4))])
def test_compiled_winograd_matches_torch(batch: int, hw: tuple[int, int]) -> None:
    """A compiled Conv-BN-ReLU of 48 -> 56 channels takes Winograd (the plan says so) and
    matches torch at batch 1, 2 and 5 and odd sizes; calls of fewer tiles than
    ``WL.MIN_TILES`` (7x9 and 4x4 at batch 1) take the direct kernel."""
    ours, twin = _twin(48, 56)
    x = np.random.default_rng(batch).standard_normal((batch, 48, *hw)).astype(np.float32)
    plan = convlayers.compile(ours, x)
    assert "Winograd F(2x2,3x3) channels-last" in plan.explain()
    tiles = batch * -(-hw[0] // 2) * -(-hw[1] // 2)
    assert _winograd_step(plan)._few(batch) == (tiles < WL.MIN_TILES)
    with torch.no_grad():
        want = twin(torch.from_numpy(x)).numpy()
    assert_close(plan(x), want, f"compiled winograd {batch} {hw}")


def test_compiled_winograd_keeps_torch_non_finite_pattern() -> None:
    """inf and NaN inputs, and finite inputs whose transforms would overflow: the plan's
    outputs are non-finite exactly where torch's are (the direct kernel reruns the call)."""
    ours, twin = _twin(48, 56)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 48, 12, 12)).astype(np.float32)
    plan = convlayers.compile(ours, x)
    assert not _winograd_step(plan)._few(2)
    x[0, 3, 4, 4], x[1, 7, 0, 8], x[1, 30, 11, 11] = np.inf, np.nan, -np.inf
    big = rng.standard_normal((2, 48, 12, 12)).astype(np.float32)
    big[0, 0, 2, 2], big[0, 0, 4, 2] = 3.0e38, -3.0e38
    for inp in (x, big):
        with torch.no_grad():
            want = twin(torch.from_numpy(inp)).numpy()
        got = plan(inp)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        finite = np.isfinite(want)
        assert_close(got[finite], want[finite], "compiled winograd, finite outputs")


def test_winograd_takes_3x3_stride_1_convs_of_enough_channels() -> None:
    """The rule of :func:`WL.fits`, against its definition: 3x3, stride 1, no dilation, one
    group, at least ``MIN_CHANNELS`` input and output channels."""
    least = WL.MIN_CHANNELS
    assert WL.fits((3, 3), (1, 1), (1, 1), 1, least, least)
    for kernel, stride, dilation, groups, c_in, c_out in (
            ((3, 3), (1, 1), (1, 1), 1, least - 1, least), ((3, 3), (1, 1), (1, 1), 1, least, 1),
            ((5, 5), (1, 1), (1, 1), 1, 64, 64), ((3, 1), (1, 1), (1, 1), 1, 64, 64),
            ((3, 3), (2, 2), (1, 1), 1, 64, 64), ((3, 3), (1, 1), (2, 2), 1, 64, 64),
            ((3, 3), (1, 1), (1, 1), 2, 64, 64)):
        assert not WL.fits(kernel, stride, dilation, groups, c_in, c_out)
