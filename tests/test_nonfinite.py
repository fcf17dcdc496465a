"""inf, NaN and huge values through every strategy: outputs are non-finite exactly where torch's
direct convolution makes them non-finite, and the finite ones match.

With a non-finite input, an output (or gradient) is non-finite exactly when one of its terms
holds a non-finite factor; with every weight and output gradient non-zero, that set is a
convolution of indicator arrays (computed here in float64 by torch: ``reach``). torch matches it
for non-finite inputs. For non-finite weights torch's direct (oneDNN) path skips taps in the
padding and matches it too, while its slower paths (grouped with few channels per group, a
depthwise channel multiplier, 1x1 with padding) multiply the padding and add NaN there, and
its input gradient can be NaN at input pixels no window reads; so the weights are held to
``reach``, and torch's mask must contain it. The finite outputs equal
torch's on the same arrays with the non-finite entries replaced by zero (they never reach them).

Huge values (near the float32 maximum) go with small partners so that every direct sum stays
finite, in any order: then every strategy must stay finite too (Winograd's transforms would
overflow; they flag it and the call is computed again without them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import given, settings
from hypothesis import strategies as st

from convlayers import config
from convlayers import functional as F
from oracle import assert_close, random_array
from test_plan import STRATEGY_NAMES, conv_cases, serves

HUGE = 3.0e38
KINDS = ["inf-x", "nan-x", "inf-w", "nan-w", "both", "huge-x", "huge-w"]


def _torch_run(tconv, args: tuple, x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
               g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = tconv(tx, tw, None if b is None else torch.tensor(b), *args)
    ty.backward(torch.tensor(g))
    assert tx.grad is not None and tw.grad is not None
    return ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy()


def _reach(tconv, args: tuple, bx: np.ndarray, bw: np.ndarray, g_shape: tuple[int, ...],
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the forward, input gradient and weight gradient have a non-finite term, given the
    indicators ``bx``, ``bw`` of the non-finite inputs and weights (all else non-zero)."""
    ones_x = torch.ones(bx.shape, dtype=torch.float64, requires_grad=True)
    ind_w = torch.tensor(bw, dtype=torch.float64)
    ind_x = torch.tensor(bx, dtype=torch.float64)
    ones_w = torch.ones(bw.shape, dtype=torch.float64, requires_grad=True)
    a = tconv(ones_x, ind_w, None, *args)  # terms with a non-finite weight
    c = tconv(ind_x, ones_w, None, *args)  # terms with a non-finite input
    (a.sum() + c.sum()).backward()
    fwd = (a + c).detach().numpy() > 0
    assert ones_x.grad is not None and ones_w.grad is not None
    return fwd, ones_x.grad.numpy() > 0, ones_w.grad.numpy() > 0


def _scatter(rng: np.random.Generator, a: np.ndarray, values: list[float], share: float) -> np.ndarray:
    """``a`` with a few entries (at least one) set to the given values."""
    a = a.copy()
    flat = a.reshape(-1)
    count = max(1, int(share * flat.size))
    where = rng.choice(flat.size, size=min(count, flat.size), replace=False)
    flat[where] = rng.choice(values, size=where.size)
    return a


def with_special_values(rng: np.random.Generator, x: np.ndarray, w: np.ndarray, kind: str,
                        case: dict) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``w`` with the values of ``kind`` (one of :data:`KINDS`): a few inf or NaN,
    or huge values whose partners are so small that every direct sum stays finite."""
    if kind in ("inf-x", "both"):
        x = _scatter(rng, x, [np.inf, -np.inf], 0.05)
    if kind == "nan-x":
        x = _scatter(rng, x, [np.nan], 0.05)
    if kind in ("inf-w", "both"):
        w = _scatter(rng, w, [np.inf, -np.inf, np.nan], 0.05)
    if kind == "nan-w":
        w = _scatter(rng, w, [np.nan], 0.05)
    if kind.startswith("huge"):
        taps = int(np.prod(case["kernel"]))
        big, small = (x, w) if kind == "huge-x" else (w, x)
        big[...] = _scatter(rng, big, [HUGE, -HUGE], 0.1)
        small /= 2 * taps * (case["c_in"] // case["groups"]) * np.abs(small).max()
    return x, w


@settings(max_examples=40, deadline=None)
@given(case=conv_cases(), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16))
def test_nonfinite_and_huge_values_follow_torch_on_every_strategy(case: dict, kind: str,
                                                                 seed: int) -> None:
    rng = np.random.default_rng(seed)
    dims, groups = case["dims"], case["groups"]
    x = random_array(rng, (case["batch"], case["c_in"], *case["spatial"]), np.float32)
    w = random_array(rng, (case["c_out"], case["c_in"] // groups, *case["kernel"]), np.float32)
    b = random_array(rng, (case["c_out"],), np.float32) if case["bias"] else None
    args = (case["stride"], case["padding"], case["dilation"], groups)
    conv = {1: F.conv1d, 2: F.conv2d}[dims]
    tconv = {1: tF.conv1d, 2: tF.conv2d}[dims]
    y_shape = tconv(torch.tensor(x), torch.tensor(w), None, *args).shape
    g = random_array(rng, tuple(y_shape), np.float32)
    x, w = with_special_values(rng, x, w, kind, case)
    if kind.startswith("huge"):
        taps = int(np.prod(case["kernel"]))
        terms = max(int(np.prod(y_shape)) // y_shape[1], (case["c_out"] // groups) * taps)
        g /= 2 * terms * np.abs(g).max()
    bx, bw = ~np.isfinite(x), ~np.isfinite(w)
    reach_y, reach_gx, reach_gw = _reach(tconv, args, bx, bw, tuple(y_shape))
    t_y, t_gx, t_gw = _torch_run(tconv, args, x, w, b, g)
    clean = _torch_run(tconv, args, np.where(bx, 0, x), np.where(bw, 0, w), b, g)
    if not bw.any():  # (with non-finite weights torch's slow paths add NaN, see above)
        np.testing.assert_array_equal(~np.isfinite(t_y), reach_y, "torch forward vs reach")
        np.testing.assert_array_equal(~np.isfinite(t_gx), reach_gx, "torch grad_input vs reach")
    assert (~np.isfinite(t_y))[reach_y].all(), "torch is non-finite wherever a term is"
    assert (~np.isfinite(t_gx))[reach_gx].all(), "torch is non-finite wherever a term is"
    np.testing.assert_array_equal(~np.isfinite(t_gw), reach_gw, "torch grad_weight vs reach")

    def check(what: str, ours: np.ndarray, reach: np.ndarray, expected: np.ndarray) -> None:
        np.testing.assert_array_equal(~np.isfinite(ours), reach, f"{what}: non-finite mask")
        assert_close(np.where(reach, 0, ours), np.where(reach, 0, expected), what)

    with config.settings(threads=case["threads"]):
        for name in ["auto", *STRATEGY_NAMES]:
            if name != "auto" and not serves(name, case, "backward"):
                continue
            with config.engine_settings(force=None if name == "auto" else name):
                y = conv(x, w, b, *args)
                gx, gw, _ = F.conv_backward(g, x, w, *args, with_bias=False)
            check(f"{name} forward ({kind})", y, reach_y, clean[0])
            check(f"{name} grad_input ({kind})", gx, reach_gx, clean[1])
            check(f"{name} grad_weight ({kind})", gw, reach_gw, clean[2])


@pytest.mark.parametrize("threads", [1, 2])
def test_the_issue_examples_one_inf_pixel_a_nan_weight_and_huge_inputs(threads: int) -> None:
    """The three Winograd findings of issue 14, now each the same as torch."""
    rng = np.random.default_rng(0)
    x = random_array(rng, (2, 16, 14, 14), np.float32)
    w = random_array(rng, (16, 16, 3, 3), np.float32)
    x_inf = x.copy()
    x_inf[0, 3, 5, 7] = np.inf
    w_nan = w.copy()
    w_nan[2, 4, 0, 0] = np.nan
    x_huge = x.copy()
    x_huge[:, :, ::2] = HUGE
    x_huge[:, :, 1::2] = -HUGE
    w_small = w / (4 * 9 * 16 * np.abs(w).max())
    # the value checks by NumPy (small arrays) and by the compiled parallel pass (large ones)
    for check_from in (config.engine.parallel_check_elements, 0):
        with config.settings(threads=threads), \
                config.engine_settings(parallel_check_elements=check_from):
            for xx, ww in ((x_inf, w), (x, w_nan), (x_huge, w_small)):
                ours = F.conv2d(xx, ww, padding=1)
                theirs = tF.conv2d(torch.tensor(xx), torch.tensor(ww), padding=1).numpy()
                np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
                finite = np.isfinite(theirs)
                assert_close(np.where(finite, ours, 0), np.where(finite, theirs, 0), "forward")
    assert np.isinf(F.conv2d(x_inf, np.abs(w), padding=1)).sum() == 16 * 9  # inf, not NaN


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_parallel_value_check_finds_every_inf_and_nan(dtype: type) -> None:
    """Each inf or NaN, at block edges and at the ends, against NumPy's ``isfinite``; huge
    finite values are not flagged (``a * 0`` stays 0)."""
    from convlayers.kernels.values import any_nonfinite

    rng = np.random.default_rng(2)
    a = rng.standard_normal(200_003).astype(dtype)
    block = 1 << 16
    assert not any_nonfinite(a, block)
    for pos in (0, 12_345, block - 1, block, 2 * block - 1, a.size - 1):
        for bad in (np.inf, -np.inf, np.nan):
            b = a.copy()
            b[pos] = bad
            assert any_nonfinite(b, block) == (not np.isfinite(b).all())
    huge = np.full(1001, np.finfo(dtype).max, dtype)
    huge[::2] *= -1
    assert not any_nonfinite(huge, 7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_the_engine_value_check_agrees_with_isfinite(dtype: type) -> None:
    """``_finite``, as the engine calls it on weights and inputs: small arrays take the serial
    compiled check, large ones the parallel one, strided views and float16 NumPy's; each inf
    or NaN is seen wherever it is, and huge finite values are finite."""
    from convlayers.functional._engine_shared import _finite

    rng = np.random.default_rng(3)
    for shape in [(1,), (4, 4, 3, 3), (64, 33, 5, 5), (1100, 1024)]:
        a = rng.standard_normal(shape).astype(dtype)
        for view in (a, a[..., ::2], np.swapaxes(a, 0, -1)):
            assert _finite(view)
            for bad in (np.inf, -np.inf, np.nan):
                for pos in (0, view.size // 2, view.size - 1):
                    b = view.copy(order="K")
                    b.flat[pos] = bad
                    assert not _finite(b)
                    assert not _finite(b if b.ndim < 2 else np.swapaxes(b, 0, -1))
    huge = np.full((9, 9), np.finfo(dtype).max, dtype)
    huge[::2] *= -1
    assert _finite(huge)


def test_value_checks_can_be_switched_off_to_measure_them() -> None:
    rng = np.random.default_rng(1)
    x = random_array(rng, (2, 16, 8, 8), np.float32)
    x[0, 0, 3, 3] = np.inf
    w = np.abs(random_array(rng, (16, 16, 3, 3), np.float32))
    with config.engine_settings(force="winograd"):
        assert not np.isnan(F.conv2d(x, w, padding=1)).any()  # recomputed without Winograd
        with config.engine_settings(check_values=False):
            assert np.isnan(F.conv2d(x, w, padding=1)).any()  # what the transforms make of it
