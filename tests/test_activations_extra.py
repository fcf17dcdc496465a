"""Clamps and the "hard" activations (functional, backward, tape, nn layers) against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import given
from hypothesis import strategies as st

from convlayers import functional as F
from convlayers import nn, tensor
from oracle import assert_close, torch_grads


def _torch_hardsigmoid(t: torch.Tensor) -> torch.Tensor:
    """torch's hardsigmoid written as its definition, ``relu6(x + 3) / 6``: ``tF.hardsigmoid``'s
    own float64 backward multiplies by a float32 ``1/6`` (off by 3e-8 relative)."""
    return tF.relu6(t + 3) / 6


# (ours, torch's, keyword arguments both take)
CASES = [
    (F.hardtanh, tF.hardtanh, {}),
    (F.hardtanh, tF.hardtanh, {"min_val": 0.0, "max_val": 6.0}),
    (F.hardtanh, tF.hardtanh, {"min_val": -0.5, "max_val": 0.25}),
    (F.hardswish, tF.hardswish, {}),
    (F.hardsigmoid, _torch_hardsigmoid, {}),
    (F.silu, tF.silu, {}),
    (F.sigmoid, torch.sigmoid, {}),
    (F.leaky_relu, tF.leaky_relu, {}),
    (F.leaky_relu, tF.leaky_relu, {"negative_slope": 0.2}),
    (F.clamp, torch.clamp, {"min": -0.3}),
    (F.clamp, torch.clamp, {"max": 0.7}),
    (F.clamp, torch.clamp, {"min": -2.0, "max": 1.0}),
]
BACKWARD = {F.hardtanh: F.hardtanh_backward, F.hardswish: F.hardswish_backward,
            F.hardsigmoid: F.hardsigmoid_backward, F.silu: F.silu_backward,
            F.leaky_relu: F.leaky_relu_backward, F.clamp: F.clamp_backward}


def _values(seed: int, dtype: type, shape: tuple[int, ...] = (2, 3, 5, 4)) -> np.ndarray:
    """Normal values scaled over the kinks, plus the kinks themselves (-3, 0, 3, the bounds)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    kinks = np.array([-3, 0, 3, -1, 1, 6, -0.5, 0.25, -0.3, 0.7, -2], dtype)
    x.flat[: kinks.size] = kinks
    return x


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), CASES)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from([np.float32, np.float64]))
def test_forward_backward_and_tape_match_torch(ours, theirs, kwargs: dict, seed: int, dtype: type) -> None:
    x = _values(seed, dtype)
    expected, g, (t_gx,) = torch_grads(lambda t: theirs(t, **kwargs), [x], seed)
    out = ours(x, **kwargs)
    assert_close(out, expected, f"{ours.__name__} forward")
    # sigmoid's gradient is g * (y - y*y) from the output: its accumulation is
    # |g| * (|y| + |y|^2), so one ulp between our y and torch's is not an error
    scale = None
    if ours in BACKWARD:
        assert_close(BACKWARD[ours](g, x, **kwargs), t_gx, f"{ours.__name__} backward")
    else:
        y_abs = np.abs(np.asarray(expected, dtype=np.float64))
        scale = np.abs(g) * (y_abs + y_abs * y_abs)
        assert_close(F.sigmoid_backward(g, out), t_gx, "sigmoid backward", scale=scale)
    xt = tensor(x, requires_grad=True)
    y = ours(xt, **kwargs)
    (y * tensor(g)).sum().backward()
    assert_close(y.data, expected, f"{ours.__name__} on the tape")
    assert_close(xt.grad, t_gx, f"{ours.__name__} gradient through the tape", scale=scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hardsigmoid_forward_is_torchs(dtype: type) -> None:
    x = _values(5, dtype)
    assert_close(F.hardsigmoid(x), tF.hardsigmoid(torch.tensor(x)), "hardsigmoid")


def test_nan_propagates() -> None:
    x = np.array([np.nan, 1.0])
    for f in (F.hardtanh, F.hardswish, F.hardsigmoid, F.silu, F.leaky_relu):
        assert np.isnan(f(x)[0]), f.__name__
    assert np.isnan(F.clamp(x, min=0.0)[0])


def test_onnx_hardsigmoid_alpha_beta_against_onnx_reference() -> None:
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.2, beta=0.4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    x = _values(3, np.float32)
    expected = ReferenceEvaluator(helper.make_model(graph)).run(None, {"x": x})[0]
    assert_close(F.hardsigmoid(x, alpha=0.2, beta=0.4), expected, "HardSigmoid(alpha=0.2, beta=0.4)")
    # its gradient: alpha inside (0, 1), zero outside, checked by central differences
    x64 = x.astype(np.float64).ravel()
    x64 = x64[np.abs(x64 * 0.2 + 0.4 - 0.5) < 0.45]  # away from the kinks
    numeric = (F.hardsigmoid(x64 + 1e-6, 0.2, 0.4) - F.hardsigmoid(x64 - 1e-6, 0.2, 0.4)) / 2e-6
    np.testing.assert_allclose(F.hardsigmoid_backward(np.ones_like(x64), x64, 0.2, 0.4), numeric, rtol=1e-6)


@pytest.mark.parametrize(("ours", "theirs"), [
    (nn.Hardtanh(0.0, 6.0), torch.nn.Hardtanh(0.0, 6.0)),
    (nn.Hardswish(), torch.nn.Hardswish()),
    (nn.Hardsigmoid(), torch.nn.Hardsigmoid()),
    (nn.SiLU(), torch.nn.SiLU()),
    (nn.LeakyReLU(0.1), torch.nn.LeakyReLU(0.1)),
])
def test_layers_match_torch_and_inplace_overwrites_only_untracked_input(ours, theirs) -> None:
    x = _values(0, np.float32)
    expected = theirs(torch.tensor(x)).numpy()
    assert_close(ours(x), expected, repr(ours))
    assert repr(ours).split("(")[0] == type(theirs).__name__
    ours.inplace = True
    y = x.copy()
    assert ours(y) is y
    assert_close(y, expected, f"{ours!r} in place")
    xt = tensor(x, requires_grad=True)
    out = ours(xt)
    out.sum().backward()
    np.testing.assert_array_equal(xt.data, x)  # a recorded call never overwrites its input
    assert_close(xt.grad, torch.func.grad(lambda t: theirs(t).sum())(torch.tensor(x)), "layer grad")


def test_layers_in_sequential_and_make_activation() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0), nn.BatchNorm2d(3),
                          nn.Hardtanh(0.0, 6.0, inplace=True), nn.Hardswish())
    model.eval()
    x = _values(1, np.float32, (1, 2, 5, 5))
    ref = F.hardswish(np.clip(model[1](model[0](x)), 0, 6))
    assert_close(model(x), ref, "fused clip in Sequential")
    assert isinstance(nn.activation.make_activation("hardswish"), nn.Hardswish)
    assert repr(nn.activation.make_activation("leaky_relu", inplace=True)) == "LeakyReLU(inplace=True)"


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: F.hardtanh(np.ones(2), 1.0, 0.0), ValueError, "min_val must not exceed max_val"),
    (lambda: F.clamp(np.ones(2)), ValueError, "at least one of min and max"),
    (lambda: F.leaky_relu(np.ones(2), "a"), TypeError, "negative_slope must be a real number"),
    (lambda: F.hardswish(np.ones(2, int)), TypeError, "input must be a float32 or float64 array"),
    (lambda: nn.Hardtanh(2.0, 1.0), ValueError, "min_val must not exceed max_val"),
])
def test_bad_arguments_are_named(call, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("compiled", [False, True])
def test_relu_and_relu6_gradients_select_as_torch(dtype: type, compiled: bool) -> None:
    """The gradients of ReLU and ReLU6, in NumPy (small arrays) and in the compiled one-pass
    kernel (large ones, forced here by the threshold): torch's values bit for bit, with
    inputs at the clip edges (0 and 6 pass nothing) and inf/NaN incoming gradients, which stay
    out of the zeros (a mask product would make ``NaN * 0 = NaN``). A NaN input passes the
    gradient (torch's rule, which its vectorised ReLU6 backward does not always keep)."""
    from convlayers import config

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 5, 40, 41)) * 5).astype(dtype)
    x.flat[:6] = [0.0, 6.0, -0.0, 6.5, -1.0, 3.0]
    g = rng.standard_normal(x.shape).astype(dtype)
    g.flat[3:8] = [np.nan, np.inf, -np.inf, np.nan, 1.0]  # over x = 6.5, -1, 3 and beyond
    threshold = 0 if compiled else 1 << 40
    with config.engine_settings(parallel_elementwise=threshold):
        for ours, theirs in ((F.relu_backward, torch.relu), (F.relu6_backward, tF.relu6)):
            xt = torch.from_numpy(x).requires_grad_()
            theirs(xt).backward(torch.from_numpy(g))
            assert np.array_equal(ours(g, x), xt.grad.numpy(), equal_nan=True), ours.__name__
        x_nan = x.copy()
        x_nan.flat[10] = np.nan
        for ours in (F.relu_backward, F.relu6_backward):
            assert ours(g, x_nan).flat[10] == g.flat[10]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("compiled", [False, True])
def test_relu_and_relu6_forwards_match_torch(dtype: type, compiled: bool) -> None:
    """ReLU and ReLU6 in NumPy (small arrays) and in the compiled one-pass kernel (large ones,
    forced here by the threshold): torch's values bit for bit, NaN, inf and the clip edges
    included, and the sign of a zero kept as torch keeps it."""
    from convlayers import config

    rng = np.random.default_rng(8)
    x = (rng.standard_normal((3, 5, 40, 41)) * 5).astype(dtype)
    x.flat[:8] = [0.0, 6.0, -0.0, 6.5, -np.inf, np.inf, np.nan, 3.0]
    threshold = 0 if compiled else 1 << 40
    with config.engine_settings(parallel_elementwise=threshold):
        for ours, theirs in ((F.relu, torch.relu), (F.relu6, tF.relu6)):
            got = ours(x)
            assert got.dtype == x.dtype
            expected = theirs(torch.from_numpy(x)).numpy()
            assert np.array_equal(got, expected, equal_nan=True), ours.__name__
            assert np.array_equal(np.signbit(got), np.signbit(expected)), ours.__name__


def test_a_relu_gradient_of_the_wrong_shape_is_named() -> None:
    """A grad_output that does not broadcast to the input is refused by name (NumPy's own
    broadcasting message named neither); a scalar still broadcasts."""
    with pytest.raises(ValueError, match=r"grad_output must have the input's shape \(3,\)"):
        F.relu_backward(np.ones(5), np.ones(3))
    with pytest.raises(ValueError, match="grad_output must have the input's shape"):
        F.relu6_backward(np.ones((2, 3)), np.ones(3))  # broadcasts, but to a larger shape
    np.testing.assert_array_equal(F.relu_backward(1.0, np.array([-1.0, 2.0])), [0.0, 1.0])
