"""Training-mode batch norm on the compiled kernels (inputs of 16 k elements and more) against
torch: outputs, running statistics and all three gradients, float32 and float64, with and
without the affine parameters, and non-finite inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlayers.functional import batch_norm, batch_norm_backward
from convlayers.functional.normalization import COMPILED_BATCH_NORM_ELEMENTS
from oracle import assert_close


def _torch_reference(x, g, w, b, rm, rv):  # type: ignore[no-untyped-def]
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = None if w is None else torch.from_numpy(w).requires_grad_(True)
    tb = None if b is None else torch.from_numpy(b).requires_grad_(True)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    out = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training=True, momentum=0.1, eps=1e-5)
    out.backward(torch.from_numpy(g))
    return (out.detach().numpy(), tx.grad.numpy(), None if tw is None else tw.grad.numpy(),
            None if tb is None else tb.grad.numpy(), trm.numpy(), trv.numpy())


def _accumulations(x, g, w, b, rm, rv):  # type: ignore[no-untyped-def]
    """Each result's accumulation (the sum of the |terms| it adds up, in float64), for the
    oracle's one per-element tolerance: ``out = (x - mean) * invstd * w + b``, the running
    statistics' blends, ``gx = w * invstd * (g - mean(g) - xhat * mean(g * xhat))``, ``gw =
    sum(g * xhat)``, ``gb = sum(g)``."""
    axes = (0, *range(2, x.ndim))
    at = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    x64, g64 = x.astype(np.float64), np.abs(g.astype(np.float64))
    with np.errstate(invalid="ignore"):  # inf - inf in a channel holding inf: NaN there
        mean, var = x64.mean(axis=axes), x64.var(axis=axes)
        invstd = (1 / np.sqrt(var + 1e-5)).reshape(at)
        xhat = np.abs(x64 - mean.reshape(at)) * invstd
    w_ = np.ones(at) if w is None else np.abs(w.astype(np.float64)).reshape(at)
    b_ = np.zeros(at) if b is None else np.abs(b.astype(np.float64)).reshape(at)
    count = x.size // x.shape[1]
    return {
        "output": (np.abs(x64) + np.abs(mean).reshape(at)) * invstd * w_ + b_,
        "running_mean": 0.9 * np.abs(rm) + 0.1 * np.abs(x64).mean(axis=axes),
        "running_var": 0.9 * np.abs(rv) + 0.1 * var * count / (count - 1),
        "grad_input": w_ * invstd * (g64 + g64.mean(axis=axes, keepdims=True)
                                     + xhat * (g64 * xhat).mean(axis=axes, keepdims=True)),
        "grad_weight": (g64 * xhat).sum(axis=axes),
        "grad_bias": g64.sum(axis=axes),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(8, 16, 12, 12), (3, 24, 230), (600, 40)])
def test_compiled_batch_norm_matches_torch(dtype: type, affine: bool, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(dtype)
    assert x.size >= COMPILED_BATCH_NORM_ELEMENTS
    g = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    w = rng.uniform(0.5, 1.5, c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    out_t, gx_t, gw_t, gb_t, rm_t, rv_t = _torch_reference(x, g, w, b, rm, rv)
    rm0, rv0 = rm.copy(), rv.copy()
    out = batch_norm(x, rm, rv, w, b, training=True)
    gx, gw, gb = batch_norm_backward(g, x, None, None, w, training=True, with_bias=affine)
    scale = _accumulations(x, g, w, b, rm0, rv0)
    assert out.dtype == dtype and gx.dtype == dtype
    for name, ours, theirs in (("output", out, out_t), ("running_mean", rm, rm_t),
                               ("running_var", rv, rv_t), ("grad_input", gx, gx_t)):
        assert_close(ours, theirs, name, scale=scale[name])
    if affine:
        assert gw is not None and gb is not None
        assert_close(gw, gw_t, "grad_weight", scale=scale["grad_weight"])
        assert_close(gb, gb_t, "grad_bias", scale=scale["grad_bias"])
    else:
        assert gw is None and gb is None


def test_non_finite_values_spread_as_in_torch() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8, 32, 32)).astype(np.float32)
    x[1, 2, 3, 4] = np.nan
    x[2, 5, 0, 0] = np.inf
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    out_t, gx_t, gw_t, gb_t, _, _ = _torch_reference(x, g, w, b, np.zeros(8, np.float32),
                                                     np.ones(8, np.float32))
    out = batch_norm(x, np.zeros(8, np.float32), np.ones(8, np.float32), w, b, training=True)
    gx, gw, gb = batch_norm_backward(g, x, None, None, w, training=True)
    scale = _accumulations(x, g, w, b, np.zeros(8), np.ones(8))
    for name, ours, theirs in (("output", out, out_t), ("grad_input", gx, gx_t),
                               ("grad_weight", gw, gw_t), ("grad_bias", gb, gb_t)):
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs), err_msg=name)
        assert_close(ours, theirs, name, scale=scale[name])  # NaN and inf in the same places


def test_the_forwards_statistics_serve_the_backward() -> None:
    """The autograd rule hands the forward's batch statistics to the backward (which then
    reads the input twice less): its gradients are bit for bit those of a backward that finds
    them again, and torch's within rounding. Wrong shapes are refused by name."""
    from convlayers.functional import batch_norm_with_statistics

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 16, 12, 12)) * 2 + 1).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
    out, stats = batch_norm_with_statistics(x, rm.copy(), rv.copy(), w, b, training=True)
    assert stats is not None and stats[0].dtype == np.float64
    np.testing.assert_array_equal(out, batch_norm(x, rm.copy(), rv.copy(), w, b, training=True))
    given_stats = batch_norm_backward(g, x, None, None, w, training=True, batch_statistics=stats)
    found = batch_norm_backward(g, x, None, None, w, training=True)
    for a, b_ in zip(given_stats, found, strict=True):
        np.testing.assert_array_equal(a, b_)
    _, t_gx, t_gw, t_gb, _, _ = _torch_reference(x, g, w, b, rm, rv)
    acc = _accumulations(x, g, w, b, rm, rv)
    for name, ours, theirs in (("grad_input", given_stats[0], t_gx), ("grad_weight", given_stats[1], t_gw),
                               ("grad_bias", given_stats[2], t_gb)):
        assert_close(ours, theirs, name, scale=acc[name])
    with pytest.raises(ValueError, match="batch_statistics must be two"):
        batch_norm_backward(g, x, None, None, w, training=True, batch_statistics=(stats[0][:3], stats[1]))


def test_batch_statistics_stay_exact_far_from_zero_and_with_an_outlier_first() -> None:
    """The one-pass float32 statistics (shifted by each channel's first value) against float64
    NumPy: a mean of 1e4 with a spread of 1e-2, and a channel whose first value is an outlier a
    million away (the cancellation check sends it to two passes). Relative errors far below
    float32's rounding."""
    from convlayers.kernels import batchnorm

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((16, 3, 500)) * 1e-2 + 1e4).astype(np.float32)
    x[:, 1] = rng.standard_normal((16, 500)).astype(np.float32)
    x[0, 1, 0] = 1e6
    x[:, 2] = rng.standard_normal((16, 500)).astype(np.float32)
    mean, var = np.empty(3), np.empty(3)
    batchnorm.channel_statistics(x, mean, var)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-10)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2)), rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(1, 7, 49, 49), (3, 160, 7, 7), (3, 64, 40, 40), (5, 33, 2000)])
def test_inference_batch_norm_on_the_compiled_pass_matches_torch(
        dtype: type, affine: bool, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference mode (running statistics) from 16 k elements: one compiled pass, on one
    thread below 256 k elements and on all from there (the shapes fall on both sides), NaN and
    inf in the input where torch has them."""
    from convlayers.functional import normalization

    rng = np.random.default_rng(sum(shape))
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    x.reshape(-1)[rng.choice(x.size, 4, replace=False)] = [np.nan, np.inf, -np.inf, np.nan]
    assert x.size >= COMPILED_BATCH_NORM_ELEMENTS
    rm, rv = rng.normal(0, 1, c).astype(dtype), rng.uniform(0.2, 3, c).astype(dtype)
    w = rng.normal(1, 0.5, c).astype(dtype) if affine else None
    b = rng.normal(0, 0.5, c).astype(dtype) if affine else None
    calls = []
    real = normalization._inference_compiled

    def spy(*args):  # type: ignore[no-untyped-def]
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(normalization, "_inference_compiled", spy)
    got = batch_norm(x, rm.copy(), rv.copy(), w, b, training=False)
    assert calls == [shape]
    expected = torch.nn.functional.batch_norm(
        torch.from_numpy(x), torch.from_numpy(rm), torch.from_numpy(rv),
        None if w is None else torch.from_numpy(w), None if b is None else torch.from_numpy(b),
        training=False, eps=1e-5).numpy()
    assert got.dtype == dtype and got.shape == shape
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(got), test(expected))
    finite = np.isfinite(expected)
    at = (1, c) + (1,) * (len(shape) - 2)
    scale = np.abs(x.astype(np.float64) - rm.reshape(at)) / np.sqrt(rv.reshape(at) + 1e-5)
    scale = scale * (1 if w is None else np.abs(w).reshape(at)) + (0 if b is None else np.abs(b).reshape(at))
    eps = np.finfo(dtype).eps
    np.testing.assert_array_less(np.abs(got[finite] - expected[finite]), 4 * eps * (scale[finite] + 1))
