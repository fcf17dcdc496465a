"""Batch-1 weight gradients whose units write the gradient themselves.

With one image in one slab, the lowered and implicit weight gradients split the input channels
among units that own their rows of the product outright; each unit then writes its columns of
the weight's layout itself, chunk by chunk (``convlayers.kernels.conv.OWNED_ROWS`` rows of
its product, transposed while in cache), instead of a whole accumulator transposed afterwards.
Held here to torch's autograd on shapes whose products cut into a partial last chunk, with
output channels that fill no whole vector, with groups, on one to three threads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlayers import config
from convlayers import functional as F
from convlayers.kernels import conv as conv_kernels
from convlayers.kernels import implicit as implicit_kernels

CASES = [
    # (c_in, c_out, kernel, stride, dilation, padding, groups, hw)
    (207, 67, 5, 2, 2, 4, 1, 11),   # 207*25 rows: 81 chunks, the last of 55 rows
    (96, 35, 3, 1, 1, 1, 1, 9),     # 35 output channels: two whole vectors and 3 lanes
    (128, 96, 2, 2, 1, 0, 2, 12),   # two groups
    (70, 513, 1, 1, 1, 0, 1, 6),    # more output channels than a chunk has rows
    (160, 67, 3, 1, 1, 1, 1, 10),   # 1440 rows: 22 chunks and one of 32
]
#: The cases whose implicit weight gradient splits its input channels into owned blocks on two
#: threads or more (the others: slabs too short for the cap, or few output channels, which
#: take the channels-last gradient).
IMPLICIT_OWNED = {CASES[2], CASES[3], CASES[4]}


def _torch_weight_grad(x, w, gy, stride, dilation, padding, groups):  # type: ignore[no-untyped-def]
    tw = torch.from_numpy(w).requires_grad_()
    torch.nn.functional.conv2d(torch.from_numpy(x), tw, None, stride, padding, dilation,
                               groups).backward(torch.from_numpy(gy))
    return tw.grad.numpy()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("strategy", ["lowered", "implicit"])
@pytest.mark.parametrize("case", CASES)
def test_owned_weight_gradients_match_torch(case, strategy: str, threads: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    c_in, c_out, k, stride, dilation, padding, groups, hw = case
    rng = np.random.default_rng(c_in + c_out + threads)
    x = rng.standard_normal((1, c_in, hw, hw)).astype(np.float32)
    w = rng.standard_normal((c_out, c_in // groups, k, k)).astype(np.float32)
    ho = (hw + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    gy = rng.standard_normal((1, c_out, ho, ho)).astype(np.float32)
    owned: list[bool] = []
    module, name = ((conv_kernels, "lowered_weight_grad") if strategy == "lowered"
                    else (implicit_kernels, "implicit_weight_grad"))
    kernel = getattr(module, name)

    def spy(*args):  # type: ignore[no-untyped-def]
        owned.append(args[-2].shape[0] == 0)  # no accumulators: the units write gw
        return kernel(*args)

    monkeypatch.setattr(module, name, spy)
    with config.settings(threads=threads), config.engine_settings(force=strategy):
        _, gw, _ = F.conv_backward(gy, x, w, stride, padding, dilation, groups,
                                   with_bias=False)
    expected = _torch_weight_grad(x, w, gy, stride, dilation, padding, groups)
    np.testing.assert_allclose(gw, expected, rtol=1e-4, atol=1e-3)
    if strategy == "lowered" or (case in IMPLICIT_OWNED and threads >= 2):
        assert owned == [True]


def test_an_owned_gradient_keeps_non_finite_values_where_torch_has_them() -> None:
    """An inf in the input reaches the gradient's entries that torch's has (NaN and inf as
    torch, the finite ones equal), through the chunks' transposes."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 80, 9, 9)).astype(np.float32)
    x[0, 5, 4, 4] = np.inf
    x[0, 70, 0, 8] = np.nan
    w = rng.standard_normal((40, 80, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((1, 40, 9, 9)).astype(np.float32)
    expected = _torch_weight_grad(x, w, gy, 1, 1, 1, 1)
    for strategy in ("lowered", "implicit"):
        with config.engine_settings(force=strategy):
            _, gw, _ = F.conv_backward(gy, x, w, 1, 1, with_bias=False)
        np.testing.assert_array_equal(np.isnan(gw), np.isnan(expected))
        np.testing.assert_array_equal(np.isinf(gw), np.isinf(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(gw[finite], expected[finite], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 130, 37), (2, 3, 64, 16), (3, 2, 200, 507),
                                   (2, 1, 5, 3)])
def test_threads_accumulators_sum_and_transpose_as_numpy(shape: tuple[int, ...],
                                                         dtype: type) -> None:
    """``sum_transposed``: ``out[g] = (sum over threads of acc[t, g]).T``, NumPy's sum over
    the first axis in the same order, exactly; rows of ``K`` that are and are not whole
    units, output channels that fill no whole vector."""
    acc = np.random.default_rng(sum(shape)).standard_normal(shape).astype(dtype)
    expected = acc[0].copy()
    for t in range(1, shape[0]):
        expected = expected + acc[t]
    expected = np.ascontiguousarray(expected.swapaxes(1, 2))
    out = np.full((shape[1], shape[3], shape[2]), np.nan, dtype)
    conv_kernels.sum_transposed(acc.copy(), out)
    np.testing.assert_array_equal(out, expected)
