"""The channels-last kernels of compiled plans against torch, on shapes drawn at random."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tf

from convlayers.inference import channels_last as CL
from convlayers.inference import conv_last
from convlayers.inference.kernels import ACT
from convlayers.kernels.simd import pack_conv_weights
from oracle import assert_close

TORCH_ACT = {0: lambda t: t, 1: torch.relu, 2: lambda t: tf.hardtanh(t, 0.0, 6.0),
             3: tf.hardswish, 4: tf.silu, 5: torch.sigmoid, 6: torch.tanh}


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("seed", range(40))
def test_depthwise_matches_torch(seed: int) -> None:
    """Kernel sizes 1-7 (square or not), strides and dilations 1-3, uneven padding, channel
    counts off the vector width, blocks of channels, a residual and every activation."""
    rng = np.random.default_rng(seed)
    kh, kw = (int(v) for v in rng.integers(1, 8, 2))
    sh, sw, dh, dw = (int(v) for v in rng.integers(1, 4, 4))
    c = int(rng.choice([1, 5, 16, 24, 64, 72, 130]))
    n = int(rng.integers(1, 4))
    h, w = int(rng.integers(1, 16)), int(rng.integers(1, 16))
    pt, pb, pl, pr = (int(v) for v in rng.integers(0, 4, 4))
    if h + pt + pb < (kh - 1) * dh + 1 or w + pl + pr < (kw - 1) * dw + 1:
        pt, pb = kh * dh, kh * dh  # pad enough for one window
        pl, pr = kw * dw, kw * dw
    act = int(rng.integers(0, 7))
    dtype = np.float32 if seed % 4 else np.float64
    x = torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(dtype))
    weight = torch.from_numpy(rng.standard_normal((c, 1, kh, kw)).astype(dtype))
    bias = rng.standard_normal(c).astype(dtype)
    want = tf.conv2d(tf.pad(x, (pl, pr, pt, pb)), weight, torch.from_numpy(bias), (sh, sw),
                     0, (dh, dw), c)
    residual = torch.from_numpy(rng.standard_normal(tuple(want.shape)).astype(dtype))
    has_res = bool(seed % 3 == 0)
    want = TORCH_ACT[act](want + residual if has_res else want)
    out = np.empty(_nhwc(want).shape, dtype)
    cb = int(rng.choice([c, 16, 64]))
    threads = int(rng.integers(1, 4))  # each a share of the rows, their tap lists reused
    CL.depthwise(_nhwc(x), np.ascontiguousarray(weight[:, 0].permute(1, 2, 0).numpy()), bias,
                 sh, sw, dh, dw, pt, pl, _nhwc(residual), has_res, act, cb, threads, out)
    assert_close(out, _nhwc(want), f"depthwise seed {seed}")


@pytest.mark.parametrize(("k", "stride"), [(3, 1), (3, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("c", [16, 40, 130])
def test_depthwise_row_kernels_match_torch(k: int, stride: int, c: int) -> None:
    """The row kernels (3x3 and 5x5, stride 1 or 2): runs of every length mod 4 (widths 9-12),
    border pixels around them, row dilation, channels off the vector width, every epilogue the
    kernels are emitted for (with and without a residual: none, ReLU, ReLU6, and an activation
    applied after them), float32 and float64."""
    rng = np.random.default_rng(k * 100 + stride * 10 + c)
    for width, dh, act, has_res, dtype in ((9, 1, 2, False, np.float32),
                                           (10, 2, 0, True, np.float32),
                                           (11, 1, 1, True, np.float64),
                                           (12, 1, 5, False, np.float32),
                                           (9, 2, 1, False, np.float32),
                                           (10, 1, 2, True, np.float64),
                                           (11, 1, 0, False, np.float32),
                                           (12, 2, 5, True, np.float32)):
        x = torch.from_numpy(rng.standard_normal((2, c, 9, width)).astype(dtype))
        weight = torch.from_numpy(rng.standard_normal((c, 1, k, k)).astype(dtype))
        bias = rng.standard_normal(c).astype(dtype)
        pad = k // 2
        want = tf.conv2d(x, weight, torch.from_numpy(bias), stride, (pad * dh, pad), (dh, 1), c)
        residual = torch.from_numpy(rng.standard_normal(tuple(want.shape)).astype(dtype))
        want = TORCH_ACT[act](want + residual if has_res else want)
        out = np.empty(_nhwc(want).shape, dtype)
        CL.depthwise(_nhwc(x), np.ascontiguousarray(weight[:, 0].permute(1, 2, 0).numpy()), bias,
                     stride, stride, dh, 1, pad * dh, pad, _nhwc(residual), has_res, act, c, 1,
                     out)
        assert_close(out, _nhwc(want), f"row kernel {k}x{k} s{stride} c{c} w{width}")


def _depthwise_inside_taps(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int,
                           dh: int, pt: int, pl: int, ho: int, wo: int) -> np.ndarray:
    """The reference: each NHWC output the bias plus its window's taps inside the map, in
    row-major order (a tap on the padding is not multiplied), float64 sums."""
    n, h, w, c = x.shape
    k = weight.shape[1]
    out = np.broadcast_to(bias.astype(np.float64), (n, ho, wo, c)).copy()
    for i in range(k):
        for j in range(k):
            for oy in range(ho):
                iy = oy * stride - pt + i * dh
                if not 0 <= iy < h:
                    continue
                for ox in range(wo):
                    ix = ox * stride - pl + j
                    if 0 <= ix < w:
                        out[:, oy, ox] += x[:, iy, ix].astype(np.float64) * weight[i, j]
    return out


@pytest.mark.parametrize(("k", "stride"), [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_depthwise_sums_only_the_taps_inside_the_map(k: int, stride: int) -> None:
    """The kernels the row kernels serve (3x3 and 5x5, stride 1 or 2) on maps where most
    pixels are borders: 1-7 rows and columns (narrower than the kernel: no pixel's window
    inside), uneven padding from none to twice the kernel (rows and columns whose windows read
    only padding give the bias), row dilation, and inf/NaN in the weights and the input:
    against the sum of the taps inside the map (a weight meets no padding: a NaN or inf
    weight reaches only the outputs whose windows hold its tap on the map), and against
    torch where everything is finite."""
    rng = np.random.default_rng(k * 10 + stride)
    c = 40
    for case in range(36):
        h, w = int(rng.integers(1, 8)), int(rng.integers(1, 8))
        dh = int(rng.integers(1, 3))
        pt, pb, pl, pr = (int(v) for v in rng.integers(0, 2 * k + 1, 4))
        if h + pt + pb < (k - 1) * dh + 1 or w + pl + pr < k:
            pb, pr = (k - 1) * dh + 1, k  # enough for one window
        x = rng.standard_normal((1, h, w, c)).astype(np.float32)
        weight = rng.standard_normal((k, k, c)).astype(np.float32)
        if case % 3 == 1:
            weight[0, 0, 3], weight[k - 1, k - 1, 17], weight[k // 2, 0, 33] = np.inf, np.nan, -np.inf
        elif case % 3 == 2:
            x[0, 0, 0, 5], x[0, h - 1, w - 1, 21], x[0, h // 2, 0, 38] = np.inf, np.nan, -np.inf
        bias = rng.standard_normal(c).astype(np.float32)
        ho = (h + pt + pb - (k - 1) * dh - 1) // stride + 1
        wo = (w + pl + pr - k) // stride + 1
        want = _depthwise_inside_taps(x, weight, bias, stride, dh, pt, pl, ho, wo)
        out = np.empty((1, ho, wo, c), np.float32)
        with np.errstate(invalid="ignore"):
            CL.depthwise(x, weight, bias, stride, stride, dh, 1, pt, pl, out, False, 0, c, 2, out)
        label = f"row kernel {k}x{k} s{stride} map {h}x{w} d{dh} pads {pt, pb, pl, pr}"
        np.testing.assert_array_equal(np.isnan(out), np.isnan(want), label)
        np.testing.assert_array_equal(out[np.isinf(out)], want[np.isinf(want)], label)
        finite = np.isfinite(want)
        assert_close(out[finite], want[finite].astype(np.float32), label)
        if case % 3 == 0:
            theirs = tf.conv2d(tf.pad(torch.from_numpy(x).permute(0, 3, 1, 2), (pl, pr, pt, pb)),
                               torch.from_numpy(weight).permute(2, 0, 1)[:, None],
                               torch.from_numpy(bias), stride, 0, (dh, 1), c)
            assert_close(out, _nhwc(theirs), label)


def test_depthwise_keeps_torch_non_finite_pattern() -> None:
    """inf and NaN in the input reach exactly the outputs whose windows hold them."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 40, 9, 9)).astype(np.float32)
    x[0, 3, 0, 0], x[0, 20, 4, 5], x[0, 39, 8, 8] = np.inf, np.nan, -np.inf
    weight = rng.standard_normal((40, 1, 3, 3)).astype(np.float32)
    want = tf.conv2d(torch.from_numpy(x), torch.from_numpy(weight), None, 1, 1, 1, 40)
    out = np.empty((1, 9, 9, 40), np.float32)
    zero = np.zeros(40, np.float32)
    CL.depthwise(_nhwc(torch.from_numpy(x)), np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0)),
                 zero, 1, 1, 1, 1, 1, 1, out, False, 0, 40, 2, out)
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(_nhwc(want)))


def _dense_channels_last(x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                         stride: tuple[int, int], dilation: tuple[int, int],
                         pads: tuple[int, int, int, int], res: np.ndarray, has_res: bool,
                         act: int, out_hw: tuple[int, int], threads: int,
                         skip: bool = True) -> np.ndarray:
    """The channels-last direct convolution as a plan's step runs it: NHWC ``x``, the weights
    packed in strips, a zero-padded copy, pixel and tap offsets, units; each output row's
    taps only those that read input (``skip``), else every tap."""
    n, h, w, c_in = x.shape
    c_out, _, kh, kw = weight.shape
    (sh, sw), (dh, dw), (pt, _, pl, _) = stride, dilation, pads
    ho, wo = out_hw
    hp = max(pt + h, (ho - 1) * sh + (kh - 1) * dh + 1)
    wp = max(pl + w, (wo - 1) * sw + (kw - 1) * dw + 1)
    padded = np.empty((n, hp, wp, c_in), x.dtype)
    conv_last.pad_channels_last(x, pt, pl, padded)
    packed = pack_conv_weights(weight)
    strip = packed.shape[1]  # the packing against its definition
    w2 = weight.transpose(2, 3, 1, 0).reshape(-1, c_out)
    for s in range(-(-c_out // strip)):
        block = packed[s * w2.shape[0]:(s + 1) * w2.shape[0]]
        part = w2[:, s * strip:(s + 1) * strip]
        np.testing.assert_array_equal(block[:, :part.shape[1]], part)
        assert not block[:, part.shape[1]:].any()
    out = np.empty((n * ho * wo, c_out), x.dtype)
    rows, cols = conv_last.dense_units(n * ho * wo, c_out, threads, weight_bytes=packed.nbytes)
    toffs = conv_last.window_taps(kh, kw, dh, dw, wp, c_in)
    per_row = toffs.size // kh
    taps = (conv_last.row_taps(ho, h, pt, sh, kh, dh, per_row) if skip else
            np.tile(np.array([[0, kh * per_row]], np.int64), (ho, 1)))
    conv_last.dense(padded.reshape(-1), packed, conv_last.pixel_offsets(n, ho, wo, hp, wp, c_in, sh, sw),
                    toffs, taps, wo, bias, res.reshape(-1, c_out) if has_res else out, has_res, act,
                    rows, cols, threads, out)
    return out.reshape(n, ho, wo, c_out)


@pytest.mark.parametrize("seed", range(40))
def test_dense_matches_torch(seed: int) -> None:
    """The direct convolution: kernels 1-7 (square or not), strides and dilations 1-3, uneven
    padding, input channels 1-70 and output channels on and off the tiles' strips (masked
    last vectors, fewer than a vector, tall tiles of at most three vectors alone or past whole
    strips), units of few pixels, a residual and every activation,
    float32 and float64."""
    rng = np.random.default_rng(1000 + seed)
    kh, kw = (int(v) for v in rng.integers(1, 8, 2))
    sh, sw, dh, dw = (int(v) for v in rng.integers(1, 4, 4))
    c_in = int(rng.integers(1, 71))
    c_out = int(rng.choice([1, 5, 16, 24, 32, 33, 40, 48, 64, 96, 100, 144, 200, 300]))
    n = int(rng.integers(1, 4))
    h, w = int(rng.integers(1, 16)), int(rng.integers(1, 16))
    pt, pb, pl, pr = (int(v) for v in rng.integers(0, 4, 4))
    if h + pt + pb < (kh - 1) * dh + 1 or w + pl + pr < (kw - 1) * dw + 1:
        pt, pb = kh * dh, kh * dh
        pl, pr = kw * dw, kw * dw
    act = int(rng.integers(0, 7))
    dtype = np.float32 if seed % 4 else np.float64
    x = torch.from_numpy(rng.standard_normal((n, c_in, h, w)).astype(dtype))
    weight = rng.standard_normal((c_out, c_in, kh, kw)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    want = tf.conv2d(tf.pad(x, (pl, pr, pt, pb)), torch.from_numpy(weight), torch.from_numpy(bias),
                     (sh, sw), 0, (dh, dw))
    residual = torch.from_numpy(rng.standard_normal(tuple(want.shape)).astype(dtype))
    has_res = bool(seed % 3 == 0)
    want = TORCH_ACT[act](want + residual if has_res else want)
    got = _dense_channels_last(_nhwc(x), weight, bias, (sh, sw), (dh, dw), (pt, pb, pl, pr),
                               _nhwc(residual), has_res, act, tuple(want.shape[2:]),
                               int(rng.integers(1, 5)))
    assert_close(got, _nhwc(want), f"dense seed {seed}")


@pytest.mark.parametrize("seed", range(12))
def test_dense_skips_only_the_taps_on_the_padding(seed: int) -> None:
    """Padding as wide as the windows, dilations up to 3 and maps of 1-9 rows, so output rows
    sum from none of their kernel rows' input to all: the sums without the taps on the zero
    padding are those of every tap, bit for bit (``0 * w`` adds nothing), and torch's.
    Float32 and float64; 1-3 threads; one slab and several (300 input channels)."""
    rng = np.random.default_rng(2000 + seed)
    kh, kw = (int(v) for v in rng.integers(1, 8, 2))
    sh, sw, dh, dw = (int(v) for v in rng.integers(1, 4, 4))
    c_in = 300 if seed % 4 == 1 else int(rng.integers(1, 40))
    c_out = int(rng.choice([5, 16, 33, 100]))
    h, w = int(rng.integers(1, 10)), int(rng.integers(1, 10))
    pt, pb = (int(v) for v in rng.integers(0, kh * dh + 1, 2))
    pl, pr = (int(v) for v in rng.integers(0, kw * dw + 1, 2))
    if h + pt + pb < (kh - 1) * dh + 1:
        pb = (kh - 1) * dh + 1 - h - pt
    if w + pl + pr < (kw - 1) * dw + 1:
        pr = (kw - 1) * dw + 1 - w - pl
    dtype = np.float32 if seed % 3 else np.float64
    x = torch.from_numpy(rng.standard_normal((2, c_in, h, w)).astype(dtype))
    weight = rng.standard_normal((c_out, c_in, kh, kw)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    want = tf.conv2d(tf.pad(x, (pl, pr, pt, pb)), torch.from_numpy(weight),
                     torch.from_numpy(bias), (sh, sw), 0, (dh, dw))
    args = (_nhwc(x), weight, bias, (sh, sw), (dh, dw), (pt, pb, pl, pr),
            np.zeros(1, dtype), False, 0, tuple(want.shape[2:]),
            int(rng.integers(1, 4)))
    got = _dense_channels_last(*args)
    np.testing.assert_array_equal(got, _dense_channels_last(*args, skip=False))
    assert_close(got, _nhwc(want), f"dense skip seed {seed}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [1, 3, 4, 8, 16, 21, 37])
def test_pad_to_channels_last_transposes_and_pads(dtype: type, c: int) -> None:
    """A stem's or the direct strategy's copy: the NCHW input at row ``pt``, column ``pl`` of
    a zeroed NHWC buffer (against NumPy's transpose); RGB images by vectors of pixels, 8
    channels or more by transposed blocks of vectors (channels past whole vectors, widths
    that leave a last part shorter than a vector and one of fewer pixels than a vector)."""
    rng = np.random.default_rng(c)
    for n, h, w, pt, pl, extra in ((2, 5, 37, 1, 2, 1), (1, 3, 5, 0, 0, 0), (1, 4, 64, 3, 1, 2)):
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        out = np.full((n, pt + h + extra, pl + w + extra, c), np.nan, dtype)
        conv_last.pad_to_channels_last(x, pt, pl, out)
        want = np.zeros_like(out)
        want[:, pt:pt + h, pl:pl + w] = x.transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(out, want)


def test_row_taps_are_the_kernel_rows_that_read_input() -> None:
    """Against a direct count: kernel row ``i`` of output row ``y`` reads input row
    ``y*sh + i*dh - pt``; the range is those in ``0 .. h-1`` (one tap where there are none)."""
    for ho, h, pt, sh, kh, dh in ((11, 11, 9, 1, 7, 3), (4, 2, 5, 2, 3, 4), (7, 7, 3, 1, 7, 1),
                                  (3, 9, 0, 3, 3, 1), (5, 1, 4, 1, 9, 1)):
        for per_row in (1, 3):
            got = conv_last.row_taps(ho, h, pt, sh, kh, dh, per_row)
            for y in range(ho):
                rows = [i for i in range(kh) if 0 <= y * sh + i * dh - pt < h]
                lo, hi = (rows[0], rows[-1] + 1) if rows else (got[y, 0] // per_row,
                                                                got[y, 0] // per_row + 1)
                assert rows or 0 <= lo < kh
                assert (got[y, 0], got[y, 1]) == (lo * per_row, hi * per_row), (ho, h, pt, y)


@pytest.mark.parametrize(("c_in", "c_out"), [(600, 70), (300, 512), (1, 17), (700, 24)])
def test_dense_slabs_of_many_input_channels(c_in: int, c_out: int) -> None:
    """Input channels past one slab of the weight panel (several passes that add onto the
    output), and a 1x1 stride-2 convolution (ResNet's shortcut)."""
    rng = np.random.default_rng(c_in)
    for k, stride, pad in ((3, 1, 1), (1, 2, 0)):
        x = torch.from_numpy(rng.standard_normal((2, c_in, 7, 6)).astype(np.float32))
        weight = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32)
        bias = rng.standard_normal(c_out).astype(np.float32)
        want = torch.relu(tf.conv2d(x, torch.from_numpy(weight), torch.from_numpy(bias), stride, pad))
        got = _dense_channels_last(_nhwc(x), weight, bias, (stride, stride), (1, 1), (pad,) * 4,
                                   np.zeros(1, np.float32), False, ACT["relu"],
                                   tuple(want.shape[2:]), 2)
        assert_close(got, _nhwc(want), f"dense {c_in}->{c_out} k{k} s{stride}")


@pytest.mark.parametrize("c_out", [40, 24, 80])
@pytest.mark.parametrize(("act", "has_res"), [(0, False), (1, True), (2, False), (2, True)])
def test_dense_keeps_torch_non_finite_pattern(c_out: int, act: int, has_res: bool) -> None:
    """inf and NaN inputs, weights and residuals: non-finite exactly where torch's outputs
    are, through the epilogue the tiles apply in registers (ReLU and ReLU6 keep NaN)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 20, 9, 9)).astype(np.float32)
    x[0, 3, 4, 4], x[1, 7, 0, 8] = np.inf, np.nan
    weight = rng.standard_normal((c_out, 20, 3, 3)).astype(np.float32)
    weight[5, 2, 1, 1] = np.nan
    residual = rng.standard_normal((2, c_out, 9, 9)).astype(np.float32)
    residual[1, c_out - 1, 2, 2], residual[0, 3, 0, 0] = -np.inf, np.nan
    want = tf.conv2d(torch.from_numpy(x), torch.from_numpy(weight), None, 1, 1)
    want = TORCH_ACT[act](want + torch.from_numpy(residual) if has_res else want)
    got = _dense_channels_last(_nhwc(torch.from_numpy(x)), weight, np.zeros(c_out, np.float32),
                               (1, 1), (1, 1), (1, 1, 1, 1), _nhwc(torch.from_numpy(residual)),
                               has_res, act, (9, 9), 2)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(_nhwc(want)))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(_nhwc(want)))
    finite = np.isfinite(got)
    assert_close(got[finite], _nhwc(want)[finite], f"dense non-finite {c_out} act {act}")


@pytest.mark.parametrize("pixels, channels", [(196, 96), (49, 160), (784, 32), (196, 576),
                                             (49, 2048), (3136, 256)])
@pytest.mark.parametrize("weight_mib", [0.0625, 8])
def test_dense_units_share_the_vectors_between_two_threads(pixels: int, channels: int,
                                                            weight_mib: float) -> None:
    """Handed out in order to the first free thread, :func:`conv_last.dense`'s units give
    neither of two threads much more than half the work, counted in tiles of pixels by the
    vectors of channels each unit computes (a last part of a strip is fewer vectors: 96
    channels are one strip and a half), whether the weights stay in cache or not."""
    from convlayers.kernels.simd import VECTOR_BYTES, band_pixels

    lanes = VECTOR_BYTES // 4
    rows, cols = conv_last.dense_units(pixels, channels, 2,
                                       weight_bytes=int(weight_mib * 2**20))
    tile = band_pixels(channels, lanes)
    loads = [0, 0]
    for r0 in range(0, pixels, rows):
        for c0 in range(0, channels, cols):
            work = -(-min(rows, pixels - r0) // tile) * -(-min(cols, channels - c0) // lanes)
            loads[loads.index(min(loads))] += work
    assert max(loads) <= 0.56 * sum(loads), (rows, cols, loads)


@pytest.mark.parametrize("pixels, channels, c_in", [(49, 2048, 512), (49, 2048, 1024),
                                                     (16, 1024, 2304), (9, 768, 1536)])
def test_dense_units_read_streamed_weights_once(pixels: int, channels: int, c_in: int) -> None:
    """Weights larger than the inputs and than the threads' L2 caches are read once: every
    unit spans all the pixels (each band of pixels streams its columns' weights again), and
    the columns still give both threads work (units of part of the pixels had balanced the
    threads' work a little better, each band streaming all the weights)."""
    weight_bytes = channels * c_in * 4
    assert weight_bytes > 2 * conv_last.WEIGHTS_STAY_BYTES
    rows, cols = conv_last.dense_units(pixels, channels, 2, weight_bytes=weight_bytes)
    assert rows >= pixels and -(-channels // cols) >= 2, (rows, cols)


@pytest.mark.parametrize("pixels, channels, c_in", [(12544, 96, 16), (3136, 144, 24),
                                                     (12544, 16, 32), (3136, 256, 64),
                                                     (784, 512, 128)])
def test_dense_units_write_whole_rows_of_large_outputs(pixels: int, channels: int,
                                                       c_in: int) -> None:
    """Where there are many more tiles of pixels than threads and the weights stay in cache,
    a unit spans all of an output row's channels: units of part of each row wrote every
    output line in pieces, at different times, and read each band's input once a part
    (MobileNetV2's 16 -> 96 on 112x112 ran 0.79 ms in halves of the rows on AVX2, 0.48 in
    whole rows; ResNet-50's 64 -> 256 on 56x56, 0.60-0.62 in halves, 0.47-0.54 whole)."""
    rows, cols = conv_last.dense_units(pixels, channels, 2, weight_bytes=channels * c_in * 4)
    assert cols == channels, (rows, cols)


@pytest.mark.parametrize("seed", range(12))
def test_max_pool_matches_torch(seed: int) -> None:
    """Channels-last max pooling: kernels 1-4, strides and dilations 1-2, padding up to half
    the kernel, NaN and inf inputs."""
    rng = np.random.default_rng(2000 + seed)
    kh, kw = (int(v) for v in rng.integers(1, 5, 2))
    sh, sw, dh, dw = (int(v) for v in rng.integers(1, 3, 4))
    ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
    c = int(rng.choice([1, 16, 37, 64]))
    x = rng.standard_normal((2, c, 13, 11)).astype(np.float32)
    x.reshape(-1)[rng.integers(0, x.size, 3)] = [np.nan, np.inf, -np.inf]
    want = tf.max_pool2d(torch.from_numpy(x), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    out = np.empty(_nhwc(want).shape, np.float32)
    conv_last.max_pool(_nhwc(torch.from_numpy(x)), kh, kw, sh, sw, dh, dw, ph, pw, out)
    np.testing.assert_array_equal(out, _nhwc(want))


@pytest.mark.parametrize(("stride", "dilation", "pad"), [(2, 1, 1), (1, 1, 0), (1, 2, 1), (3, 1, 1)])
def test_max_pool_3x3_inside_windows_match_torch(stride: int, dilation: int, pad: int) -> None:
    """The 3x3 windows inside the map take their nine taps at once: the same values as torch,
    NaN where torch has NaN (a NaN in any tap, also after an inf or a larger value in an
    earlier tap), inf and -inf as torch, ties (of signed zeros too: the tap order shows), and
    border windows on the general path."""
    rng = np.random.default_rng(stride * 10 + dilation)
    x = rng.standard_normal((2, 37, 15, 14)).astype(np.float32)
    x[:, :, 4:9:2, 3:8:2] = 1.5  # ties
    # ties of signed zeros among negative values: the first tap in row-major order that
    # reaches the maximum wins, as in torch
    draw = rng.random((2, 37, 6, 14))
    x[:, :, 9:, :] = np.where(draw < 0.2, -0.0, np.where(draw < 0.4, 0.0, -1.0))
    flat = x.reshape(-1)
    flat[rng.integers(0, x.size, 40)] = np.nan
    flat[rng.integers(0, x.size, 20)] = np.inf
    flat[rng.integers(0, x.size, 20)] = -np.inf
    want = tf.max_pool2d(torch.from_numpy(x), 3, stride, pad, dilation)
    out = np.empty(_nhwc(want).shape, np.float32)
    conv_last.max_pool(_nhwc(torch.from_numpy(x)), 3, 3, stride, stride, dilation, dilation, pad,
                       pad, out)
    np.testing.assert_array_equal(out, _nhwc(want))
    np.testing.assert_array_equal(np.signbit(out), np.signbit(_nhwc(want)))
    assert np.isnan(out).any() and np.isinf(out).any() and np.signbit(out[out == 0]).any()


def test_conversions_and_global_pool() -> None:
    """Both conversions against NumPy's transpose (from 8 channels the way back transposes
    blocks of vectors: channels and pixels past whole vectors included), and the global
    pool against torch."""
    rng = np.random.default_rng(2)
    for shape, dtype in [((2, 21, 3, 19), np.float32), ((1, 40, 5, 33), np.float64),
                         ((1, 16, 2, 16), np.float32)]:
        x = rng.standard_normal(shape).astype(dtype)
        last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        back = np.full_like(x, np.nan)
        CL.to_channels_first(last, back)
        np.testing.assert_array_equal(back, x, err_msg=f"{shape} {dtype.__name__}")
    x = rng.standard_normal((3, 5, 4, 7)).astype(np.float32)
    last = np.empty((3, 4, 7, 5), np.float32)
    conv_last.pad_to_channels_last(x, 0, 0, last)
    np.testing.assert_array_equal(last, x.transpose(0, 2, 3, 1))
    back = np.empty_like(x)
    CL.to_channels_first(last, back)
    np.testing.assert_array_equal(back, x)
    pooled = np.empty((3, 5), np.float32)
    CL.global_avg_pool(last.reshape(3, 28, 5), pooled)
    assert_close(pooled, torch.from_numpy(x).mean((2, 3)).numpy(), "global pool")


@pytest.mark.parametrize("seed", range(16))
def test_stem_reads_nchw_and_writes_channels_last(seed: int) -> None:
    """A dense convolution of 1-4 input channels, NCHW in, NHWC out, against torch: kernels
    1-7, strides and dilations 1-3, uneven padding, 32 output channels (two vectors) or more
    (four-vector blocks and a masked rest), every activation."""
    rng = np.random.default_rng(100 + seed)
    c_in = int(rng.integers(1, 5))
    c_out = int(rng.choice([1, 8, 32, 70]))
    kh, kw = (int(v) for v in rng.integers(1, 8, 2))
    sh, sw, dh, dw = (int(v) for v in rng.integers(1, 4, 4))
    n, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 14)), int(rng.integers(1, 14))
    pt, pb, pl, pr = (int(v) for v in rng.integers(0, 4, 4))
    if h + pt + pb < (kh - 1) * dh + 1 or w + pl + pr < (kw - 1) * dw + 1:
        pt = pb = kh * dh
        pl = pr = kw * dw
    act = int(rng.integers(0, 7))
    x = torch.from_numpy(rng.standard_normal((n, c_in, h, w)).astype(np.float32))
    weight = rng.standard_normal((c_out, c_in, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    want = TORCH_ACT[act](tf.conv2d(tf.pad(x, (pl, pr, pt, pb)), torch.from_numpy(weight),
                                    torch.from_numpy(bias), (sh, sw), 0, (dh, dw)))
    out = np.empty(_nhwc(want).shape, np.float32)
    threads = int(rng.integers(1, 4))  # each a share of the rows, their tap lists reused
    CL.dense_to_channels_last(x.numpy(), np.ascontiguousarray(weight.reshape(c_out, -1).T), kh, kw,
                              bias, sh, sw, dh, dw, pt, pl, act, threads, out)
    assert_close(out, _nhwc(want), f"stem seed {seed}")


@pytest.mark.parametrize(("c_out", "k", "stride", "dilation", "act"),
                         [(32, 3, 2, 1, 2), (70, 3, 1, 2, 3), (8, 5, 1, 1, 1), (64, 7, 2, 1, 0)])
def test_stem_runs_of_inside_windows_match_torch(c_out: int, k: int, stride: int, dilation: int,
                                                 act: int) -> None:
    """Rows wide enough for several runs of ``RUN_PIXELS`` windows inside the map, and border
    pixels before, between (a row's last few) and after them: MobileNetV2's 3 -> 32 3x3 stride
    2 stem with ReLU6, a masked rest of channels with hardswish (finished after the run), one
    vector, ResNet's 7x7 stride 2."""
    from convlayers.kernels.simd import RUN_PIXELS

    rng = np.random.default_rng(c_out + k)
    x = torch.from_numpy(rng.standard_normal((2, 3, 23, 61)).astype(np.float32))
    weight = rng.standard_normal((c_out, 3, k, k)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    pad = (k // 2) * dilation
    want = TORCH_ACT[act](tf.conv2d(x, torch.from_numpy(weight), torch.from_numpy(bias), stride,
                                    pad, dilation))
    assert want.shape[3] >= 3 * RUN_PIXELS
    out = np.empty(_nhwc(want).shape, np.float32)
    CL.dense_to_channels_last(x.numpy(), np.ascontiguousarray(weight.reshape(c_out, -1).T), k, k,
                              bias, stride, stride, dilation, dilation, pad, pad, act, 2, out)
    assert_close(out, _nhwc(want), f"stem runs {c_out} k{k} s{stride} d{dilation}")
