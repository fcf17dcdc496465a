"""The direct convolution's last output channels past its whole strips, on every tile that takes
them (``kernels.simd.conv_band_taps_onto``): tiles of two and one vectors and a masked one, or
one wide tile with its last vector masked where the part is more than all but one vector of a
strip (60 channels of AVX-512's 64-channel strip); a block of 33-48 channels on one tile of
three vectors (AVX-512). Against torch, with the epilogue each tile
finishes in registers (bias, residual, ReLU) and without.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from convlayers import config
from convlayers import functional as F
from oracle import assert_close, random_array

# output channels: inside one strip (three vectors, part and whole; past three vectors), past
# whole strips by each kind of remainder, whole strips
CHANNELS = (33, 40, 48, 49, 60, 63, 64, 100, 112, 121, 127, 171)


@pytest.mark.parametrize("dilation", [(1, 2), (2, 1)])  # kernel columns dilated: a tap each
@pytest.mark.parametrize("c_out", CHANNELS)
def test_forced_direct_covers_every_channel_tail(c_out: int, dilation: tuple[int, int]) -> None:
    rng = np.random.default_rng(c_out)
    x = random_array(rng, (3, 19, 9, 8), np.float32)
    w = random_array(rng, (c_out, 19, 3, 2), np.float32)
    b = random_array(rng, (c_out,), np.float32)
    with config.engine_settings(force="direct"):
        ours = F.conv2d(x, w, b, padding=(1, 1), dilation=dilation)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                         padding=(1, 1), dilation=dilation).numpy()
    assert_close(ours, expected, f"{c_out} output channels, dilation {dilation}")


@pytest.mark.parametrize("c_out", CHANNELS)
def test_the_tiles_finish_residual_and_relu_on_every_channel_tail(c_out: int) -> None:
    """``conv_last.dense`` with its epilogue in the tiles (as compiled plans run it):
    ``relu(conv + bias + residual)`` on channels-last rows."""
    from convlayers.inference import conv_last
    from convlayers.kernels.simd import pack_conv_weights

    rng = np.random.default_rng(100 + c_out)
    n, c_in, h, w_in, k = 2, 24, 7, 9, 3
    x = random_array(rng, (n, c_in, h, w_in), np.float32)
    w = random_array(rng, (c_out, c_in, k, k), np.float32)
    b = random_array(rng, (c_out,), np.float32)
    ho, wo = h - k + 1, w_in - k + 1
    res = random_array(rng, (n * ho * wo, c_out), np.float32)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    offs = conv_last.pixel_offsets(n, ho, wo, h, w_in, c_in, 1, 1)
    toffs = conv_last.window_taps(k, k, 1, 1, w_in, c_in)
    row_taps = conv_last.row_taps(ho, h, 0, 1, k, 1, toffs.size // k)
    rows, cols = conv_last.dense_units(n * ho * wo, c_out, 2, weight_bytes=w.nbytes)
    out = np.full((n * ho * wo, c_out), np.nan, np.float32)
    with config.settings(threads=2):
        conv_last.dense(xl.reshape(-1), pack_conv_weights(w), offs, toffs, row_taps, wo, b, res,
                        True, 1, rows, cols, 2, out)
    conv = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)).numpy()
    expected = np.maximum(conv.transpose(0, 2, 3, 1).reshape(-1, c_out) + res, 0)
    assert_close(out, expected, f"{c_out} output channels")
