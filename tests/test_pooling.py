"""Max, average and adaptive pooling (and their backward) against torch.nn.functional."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import given
from hypothesis import strategies as st

from convlayers import functional as F
from oracle import assert_close, torch_grads


@dataclass
class PoolCase:
    n: int
    shape: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...] | None
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool
    dtype: type
    values: str  # "normal", "ties" (many equal values) or "nan" (some NaN and -inf)
    unbatched: bool


@st.composite
def pool_cases(draw: st.DrawFn, dilated: bool = True) -> PoolCase:
    n = draw(st.sampled_from([1, 2, 2, 2, 3]))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    stride = None if draw(st.booleans()) else tuple(draw(st.integers(1, 4)) for _ in range(n))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = tuple(draw(st.integers(1, 3)) if dilated else 1 for _ in range(n))
    spatial = []
    for k, p, d in zip(kernel, padding, dilation, strict=True):
        need = max(1, d * (k - 1) + 1 - 2 * p)
        spatial.append(draw(st.integers(need, need + 6)))
    batch = draw(st.sampled_from([0, 1, 2]))
    return PoolCase(
        n=n, shape=(batch, draw(st.integers(1, 3)), *spatial), kernel=kernel, stride=stride,
        padding=padding, dilation=dilation, ceil_mode=draw(st.booleans()),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        values=draw(st.sampled_from(["normal", "ties", "nan"])), unbatched=draw(st.booleans()),
    )


def _input(case: PoolCase, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if case.values == "ties":
        x = rng.integers(0, 3, case.shape).astype(case.dtype)
    else:
        x = rng.standard_normal(case.shape).astype(case.dtype)
    if case.values == "nan":
        x[rng.random(case.shape) < 0.15] = np.nan
        x[rng.random(case.shape) < 0.1] = -np.inf
    if case.unbatched and case.shape[0] >= 1:
        return x[0]
    return x


def _fns(n: int):
    return (
        {1: tF.max_pool1d, 2: tF.max_pool2d, 3: tF.max_pool3d}[n],
        {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n],
    )


@given(case=pool_cases(), seed=st.integers(0, 2**16))
def test_max_pool_values_indices_and_gradient_match_torch(case: PoolCase, seed: int) -> None:
    x = _input(case, seed)
    theirs, ours = _fns(case.n)
    kwargs = dict(kernel_size=case.kernel, stride=case.stride, padding=case.padding,
                  dilation=case.dilation, ceil_mode=case.ceil_mode)
    t_out, t_idx = theirs(torch.tensor(x), return_indices=True, **kwargs)
    out, idx = ours(x, return_indices=True, **kwargs)
    assert_close(out, t_out, "max values")
    np.testing.assert_array_equal(idx, t_idx.numpy(), err_msg="argmax indices")
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(ours(x, **kwargs), out)  # same values without indices
    if case.values != "nan":
        _, g, (t_gx,) = torch_grads(lambda t: theirs(t, **kwargs), [x], seed)
        assert_close(F.max_pool_backward(g, x, idx, spatial_dims=case.n), t_gx, "grad_input")


@given(case=pool_cases(dilated=False), seed=st.integers(0, 2**16),
       count_include_pad=st.booleans(), divisor=st.sampled_from([None, None, 3, -2]))
def test_avg_pool_and_gradient_match_torch(
    case: PoolCase, seed: int, count_include_pad: bool, divisor: int | None
) -> None:
    x = _input(case, seed)
    theirs = {1: tF.avg_pool1d, 2: tF.avg_pool2d, 3: tF.avg_pool3d}[case.n]
    ours = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[case.n]
    kwargs = dict(kernel_size=case.kernel, stride=case.stride, padding=case.padding,
                  ceil_mode=case.ceil_mode, count_include_pad=count_include_pad)
    if case.n > 1:
        kwargs["divisor_override"] = divisor
    if case.stride is None:
        kwargs["stride"] = None
    expected, g, (t_gx,) = torch_grads(lambda t: theirs(t, **kwargs), [x], seed)
    assert_close(ours(x, **kwargs), expected, "avg values")
    kwargs.pop("kernel_size")
    ours_g = F.avg_pool_backward(g, x, case.kernel, **kwargs)
    assert_close(ours_g, t_gx, "grad_input")


@given(n=st.sampled_from([1, 2, 3]), data=st.data(), seed=st.integers(0, 2**16),
       values=st.sampled_from(["normal", "ties", "nan"]))
def test_adaptive_pools_match_torch(n: int, data: st.DataObject, seed: int, values: str) -> None:
    spatial = tuple(data.draw(st.integers(1, 9)) for _ in range(n))
    out_size = tuple(data.draw(st.one_of(st.none(), st.integers(1, 10)) if n > 1 else st.integers(1, 10))
                     for _ in range(n))
    case = PoolCase(n, (2, 3, *spatial), (1,) * n, None, (0,) * n, (1,) * n, False,
                    np.float64, values, False)
    x = _input(case, seed)
    t_max = {1: tF.adaptive_max_pool1d, 2: tF.adaptive_max_pool2d, 3: tF.adaptive_max_pool3d}[n]
    t_avg = {1: tF.adaptive_avg_pool1d, 2: tF.adaptive_avg_pool2d, 3: tF.adaptive_avg_pool3d}[n]
    o_max = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}[n]
    o_avg = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[n]
    size = out_size if n > 1 else out_size[0]
    t_out, t_idx = t_max(torch.tensor(x), size, return_indices=True)
    out, idx = o_max(x, size, return_indices=True)
    assert_close(out, t_out, "adaptive max")
    np.testing.assert_array_equal(idx, t_idx.numpy())
    expected, g, (t_gx,) = torch_grads(lambda t: t_avg(t, size), [x], seed)
    assert_close(o_avg(x, size), expected, "adaptive avg")
    assert_close(F.adaptive_avg_pool_backward(g, x, spatial_dims=n), t_gx, "adaptive avg grad")
    if values != "nan":
        _, g, (t_gx,) = torch_grads(lambda t: t_max(t, size), [x], seed)
        assert_close(F.max_pool_backward(g, x, idx, spatial_dims=n), t_gx, "adaptive max grad")


SEED_IMAGE = np.array([[1, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16]], float)


def test_seed_max_pooling_example() -> None:
    # each 2x2 block by hand: max(1,2,3,4)=4, max(5,6,7,8)=8, ...
    np.testing.assert_array_equal(F.max_pool2d(SEED_IMAGE[None], 2)[0], [[4, 8], [12, 16]])


def test_seed_average_pooling_example() -> None:
    # (1+2+3+4)/4 = 2.5, (5+6+7+8)/4 = 6.5, (9+10+11+12)/4 = 10.5, (13+14+15+16)/4 = 14.5
    np.testing.assert_array_equal(F.avg_pool2d(SEED_IMAGE[None], 2)[0], [[2.5, 6.5], [10.5, 14.5]])


def test_float32_stays_float32() -> None:
    x = np.ones((1, 1, 4, 4), np.float32)
    assert F.max_pool2d(x, 2).dtype == np.float32
    assert F.avg_pool2d(x, 2).dtype == np.float32
    assert F.adaptive_avg_pool2d(x, 3).dtype == np.float32


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: F.max_pool2d(np.ones((1, 1, 4, 4)), 2, padding=2), ValueError,
         "padding should be at most half of kernel_size"),
        (lambda: F.max_pool2d(np.ones((1, 1, 2, 2)), 3), ValueError, "larger than the padded input"),
        (lambda: F.max_pool2d(np.ones((4, 4)), 2), ValueError, "input must have 3 or 4 dimensions"),
        (lambda: F.max_pool2d(np.ones((1, 1, 4, 4)), 0), ValueError, "kernel_size must be >= 1"),
        (lambda: F.avg_pool2d(np.ones((1, 1, 4, 4)), 2, stride=0), ValueError, "stride must be >= 1"),
        (lambda: F.avg_pool2d(np.ones((1, 1, 4, 4)), 2, divisor_override=0), ValueError,
         "divisor_override must be a non-zero integer"),
        (lambda: F.avg_pool2d(np.ones((1, 1, 4, 4), int), 2), TypeError, "float32 or float64"),
        (lambda: F.adaptive_avg_pool2d(np.ones((1, 1, 4, 4)), 0), ValueError, "output_size must be >= 1"),
        (lambda: F.max_pool_backward(np.ones((1, 1, 2)), np.ones((1, 1, 4)), np.full((1, 1, 2), 9),
                                     spatial_dims=1), ValueError, "indices must lie in [0, 4)"),
    ],
)
def test_bad_arguments_are_named(call, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_nan_propagates_through_max_and_avg() -> None:
    x = np.zeros((1, 1, 2, 2))
    x[0, 0, 1, 0] = np.nan
    assert np.isnan(F.max_pool2d(x, 2)).all()
    assert np.isnan(F.avg_pool2d(x, 2)).all()
