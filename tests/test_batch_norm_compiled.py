"""Training-mode batch norm on the compiled kernels (inputs of 16 k elements and more) against
torch: outputs, running statistics and all three gradients, float32 and float64, with and
without the affine parameters, and non-finite inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlayers.functional import batch_norm, batch_norm_backward
from convlayers.functional.normalization import COMPILED_BATCH_NORM_ELEMENTS


def _torch_reference(x, g, w, b, rm, rv):  # type: ignore[no-untyped-def]
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = None if w is None else torch.from_numpy(w).requires_grad_(True)
    tb = None if b is None else torch.from_numpy(b).requires_grad_(True)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    out = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training=True, momentum=0.1, eps=1e-5)
    out.backward(torch.from_numpy(g))
    return (out.detach().numpy(), tx.grad.numpy(), None if tw is None else tw.grad.numpy(),
            None if tb is None else tb.grad.numpy(), trm.numpy(), trv.numpy())


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
    out = batch_norm(x, rm, rv, w, b, training=True)
    gx, gw, gb = batch_norm_backward(g, x, None, None, w, training=True, with_bias=affine)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}
    assert out.dtype == dtype and gx.dtype == dtype
    np.testing.assert_allclose(out, out_t, **tol)
    np.testing.assert_allclose(rm, rm_t, **tol)
    np.testing.assert_allclose(rv, rv_t, **tol)
    np.testing.assert_allclose(gx, gx_t, **tol)
    if affine:
        assert gw is not None and gb is not None
        np.testing.assert_allclose(gw, gw_t, rtol=tol["rtol"], atol=tol["atol"] * x.size ** 0.5)
        np.testing.assert_allclose(gb, gb_t, rtol=tol["rtol"], atol=tol["atol"] * x.size ** 0.5)
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
    for ours, theirs in ((out, out_t), (gx, gx_t), (gw, gw_t), (gb, gb_t)):
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
        finite = np.isfinite(theirs)
        np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-4, atol=1e-4)
