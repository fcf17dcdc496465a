"""The tape and every Tensor-aware functional op against torch autograd (values and gradients)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from convlayers import Tensor, no_grad, tensor
from convlayers import functional as F
from convlayers.autograd import concatenate, is_grad_enabled
from oracle import assert_close, random_array, torch_grads


def _check(ours: Callable[..., Any], theirs: Callable[..., torch.Tensor],
           arrays: list[np.ndarray | None], what: str = "") -> None:
    """Run ``theirs`` in torch and ``ours`` on Tensors; compare output and every input grad."""
    expected, g, grads = torch_grads(theirs, arrays)
    inputs = [None if a is None else tensor(a, requires_grad=True) for a in arrays]
    out = ours(*inputs)
    assert isinstance(out, Tensor)
    assert_close(out.data, expected, f"{what} forward")
    out.backward(g)
    for i, (t, want) in enumerate(zip(inputs, grads, strict=True)):
        if t is not None:
            assert_close(t.grad, want, f"{what} grad of argument {i}")


# the tape itself


def test_arithmetic_with_broadcasting_matches_torch() -> None:
    rng = np.random.default_rng(0)
    a, b, w = random_array(rng, (3, 1), np.float64), random_array(rng, (4,), np.float64), \
        random_array(rng, (4, 2), np.float64)

    def expr(a: Any, b: Any, w: Any) -> Any:
        h = (a * b + b) / (a**2 + 1.5) - 2.0 * a + (1.0 - b) / 3.0 - (-a)
        h = 2.0 / (h * h + 1.0) + h[1:, ::2].sum() + h.exp().mean(axis=0, keepdims=True)
        return (h @ w).reshape(2, 3).transpose(1, 0)

    _check(expr, expr, [a, b, w], "arithmetic")


def test_reductions_indexing_concatenate_log_match_torch() -> None:
    rng = np.random.default_rng(1)
    x = np.abs(random_array(rng, (2, 3, 4), np.float32)) + 0.5
    idx = np.array([0, 2, 0])

    def ours(x: Any) -> Any:
        parts = concatenate([x.log(), x[:, idx] * 2.0], axis=1)
        m = parts.mean(axis=1).flatten()[:3]
        return parts.sum(axis=(0, 2)) + concatenate([m, m])

    def theirs(x: torch.Tensor) -> torch.Tensor:
        parts = torch.cat([x.log(), x[:, idx] * 2.0], dim=1)
        return parts.sum(dim=(0, 2))[:6] + torch.cat([parts.mean(dim=1).flatten()[:3]] * 2)

    expected, g, (gx,) = torch_grads(theirs, [x])
    t = tensor(x, requires_grad=True)
    out = ours(t)
    assert_close(out.data, expected, "forward")
    out.backward(g)
    assert_close(t.grad, gx, "grad")


def test_a_tensor_used_twice_gets_both_gradients_and_backward_accumulates() -> None:
    x = tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 5.0])
    (x * 1.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [4.0, 6.0])
    x.grad = None
    y = x + x
    (y * y).sum().backward()  # d/dx (2x)^2 = 8x
    np.testing.assert_array_equal(x.grad, [8.0, 16.0])


def test_arrays_on_the_left_dispatch_to_tensor_ops() -> None:
    x = tensor(np.ones(2, np.float32), requires_grad=True)
    y = np.full(2, 3.0, np.float32) * x + np.ones(2, np.float32)
    assert isinstance(y, Tensor) and y.dtype == np.float32
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


def test_no_grad_records_nothing_and_restores_the_mode() -> None:
    w = tensor(np.ones((1, 1, 2, 2)), requires_grad=True)
    with no_grad():
        assert not is_grad_enabled()
        out = F.conv2d(np.ones((1, 1, 3, 3)), w)
    assert is_grad_enabled()
    assert isinstance(out, Tensor) and not out.requires_grad and out.is_leaf


def test_plain_arrays_in_plain_arrays_out() -> None:
    out = F.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))
    assert type(out) is np.ndarray
    assert F.conv2d.__doc__ and "2-D convolution" in F.conv2d.__doc__
    assert F.conv2d.__wrapped__.__module__ == "convlayers.functional.conv"  # type: ignore[attr-defined]


def test_backward_errors() -> None:
    x = tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match="grad must be given for a non-scalar output"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match=r"grad must have the output's shape \(3,\)"):
        (x * 2.0).backward(np.ones(2))
    with pytest.raises(RuntimeError, match="does not require grad"):
        tensor(np.ones(1)).backward()
    with pytest.raises(TypeError, match="only floating-point tensors can require grad"):
        tensor(np.ones(2, np.int64), requires_grad=True)


def test_float32_stays_float32_through_the_tape() -> None:
    x = tensor(np.ones((1, 2, 4, 4), np.float32), requires_grad=True)
    w = tensor(np.ones((2, 2, 3, 3), np.float32), requires_grad=True)
    out = F.relu(F.conv2d(x, w, padding=1)).mean()
    assert out.dtype == np.float32
    out.backward()
    assert x.grad is not None and w.grad is not None
    assert x.grad.dtype == w.grad.dtype == np.float32


# every functional op through the tape

R = np.random.default_rng(7)


def _a(*shape: int, dtype: Any = np.float64) -> np.ndarray:
    return random_array(R, shape, dtype)


CASES: list[tuple[str, Callable[..., Any], Callable[..., Any], list[Any]]] = [
    ("conv1d", lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1, dilation=2),
     lambda x, w, b: tF.conv1d(x, w, b, stride=2, padding=1, dilation=2),
     [_a(2, 4, 9), _a(6, 4, 3), _a(6)]),
    ("conv2d groups", lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2),
     lambda x, w, b: tF.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2),
     [_a(2, 4, 7, 6), _a(6, 2, 3, 3), _a(6)]),
    ("conv2d reflect f32", lambda x, w: F.conv2d(x, w, padding=2, padding_mode="reflect"),
     lambda x, w: tF.conv2d(tF.pad(x, (2, 2, 2, 2), mode="reflect"), w),
     [_a(1, 2, 6, 6, dtype=np.float32), _a(3, 2, 3, 3, dtype=np.float32)]),
    ("conv2d unbatched same", lambda x, w: F.conv2d(x, w, padding="same"),
     lambda x, w: tF.conv2d(x, w, padding="same"), [_a(2, 5, 5), _a(3, 2, 3, 3)]),
    ("conv3d", lambda x, w, b: F.conv3d(x, w, b, padding=1),
     lambda x, w, b: tF.conv3d(x, w, b, padding=1), [_a(1, 2, 4, 4, 4), _a(3, 2, 3, 3, 3), _a(3)]),
    ("conv_transpose2d",
     lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=2),
     lambda x, w, b: tF.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=2),
     [_a(2, 4, 5, 5), _a(4, 3, 3, 3), _a(6)]),
    ("conv_transpose1d", lambda x, w: F.conv_transpose1d(x, w, stride=3),
     lambda x, w: tF.conv_transpose1d(x, w, stride=3), [_a(2, 3, 4), _a(3, 2, 2)]),
    ("max_pool2d", lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True),
     lambda x: tF.max_pool2d(x, 3, 2, padding=1, ceil_mode=True), [_a(2, 3, 8, 7)]),
    ("max_pool2d unbatched", lambda x: F.max_pool2d(x, 2), lambda x: tF.max_pool2d(x, 2), [_a(3, 6, 6)]),
    ("max_pool1d dilated", lambda x: F.max_pool1d(x, 2, 1, dilation=2),
     lambda x: tF.max_pool1d(x, 2, 1, dilation=2), [_a(2, 3, 9)]),
    ("max_pool3d", lambda x: F.max_pool3d(x, 2), lambda x: tF.max_pool3d(x, 2), [_a(1, 2, 4, 4, 4)]),
    ("avg_pool2d", lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
     lambda x: tF.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), [_a(2, 3, 8, 7)]),
    ("avg_pool2d unbatched divisor", lambda x: F.avg_pool2d(x, 2, divisor_override=3),
     lambda x: tF.avg_pool2d(x, 2, divisor_override=3), [_a(3, 6, 6)]),
    ("avg_pool1d", lambda x: F.avg_pool1d(x, 3, 2, 1), lambda x: tF.avg_pool1d(x, 3, 2, 1), [_a(2, 3, 9)]),
    ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (3, 2)),
     lambda x: tF.adaptive_avg_pool2d(x, (3, 2)), [_a(2, 3, 7, 5)]),
    ("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, (3, 2)),
     lambda x: tF.adaptive_max_pool2d(x, (3, 2)), [_a(2, 3, 7, 5)]),
    ("adaptive_max_pool1d", lambda x: F.adaptive_max_pool1d(x, 4),
     lambda x: tF.adaptive_max_pool1d(x, 4), [_a(2, 3, 9)]),
    ("pad reflect", lambda x: F.pad(x, (2, 1, 1, 0), mode="reflect"),
     lambda x: tF.pad(x, (2, 1, 1, 0), mode="reflect"), [_a(2, 2, 4, 5)]),
    ("pad constant crop", lambda x: F.pad(x, (1, -1, 2, 0), value=3.0),
     lambda x: tF.pad(x, (1, -1, 2, 0), value=3.0), [_a(2, 2, 4, 5)]),
    ("relu", F.relu, tF.relu, [_a(3, 4)]),
    ("relu6", F.relu6, tF.relu6, [_a(3, 4) * 5]),
    ("sigmoid", F.sigmoid, torch.sigmoid, [_a(3, 4)]),
    ("tanh f32", F.tanh, torch.tanh, [_a(3, 4, dtype=np.float32)]),
    ("softmax", lambda x: F.softmax(x, 1), lambda x: tF.softmax(x, 1), [_a(2, 5, 3)]),
    ("log_softmax", lambda x: F.log_softmax(x, -1), lambda x: tF.log_softmax(x, -1), [_a(2, 5) * 30]),
    ("linear", F.linear, tF.linear, [_a(2, 3, 5), _a(4, 5), _a(4)]),
    ("linear f32 no bias", F.linear, tF.linear, [_a(3, 5, dtype=np.float32), _a(4, 5, dtype=np.float32)]),
    ("flatten", lambda x: F.flatten(x, 1, 2), lambda x: torch.flatten(x, 1, 2), [_a(2, 3, 4, 5)]),
    ("mse_loss", F.mse_loss, tF.mse_loss, [_a(3, 4), _a(3, 4)]),
    ("mse_loss sum", lambda x, t: F.mse_loss(x, t, reduction="sum"),
     lambda x, t: tF.mse_loss(x, t, reduction="sum"), [_a(3, 4), _a(3, 4)]),
]

TARGET = np.array([1, 0, 4])
TARGET_2D = np.array([[1, 0], [2, 2]])
PROBS = tF.softmax(torch.tensor(_a(3, 5)), 1).numpy()
CASES += [
    ("cross_entropy", lambda x: F.cross_entropy(x, TARGET),
     lambda x: tF.cross_entropy(x, torch.tensor(TARGET)), [_a(3, 5) * 50]),
    ("cross_entropy smoothing none f32",
     lambda x: F.cross_entropy(x, TARGET, reduction="none", label_smoothing=0.1),
     lambda x: tF.cross_entropy(x, torch.tensor(TARGET), reduction="none", label_smoothing=0.1),
     [_a(3, 5, dtype=np.float32)]),
    ("cross_entropy spatial sum", lambda x: F.cross_entropy(x, TARGET_2D, reduction="sum"),
     lambda x: tF.cross_entropy(x, torch.tensor(TARGET_2D), reduction="sum"), [_a(2, 3, 2)]),
    ("cross_entropy probabilities", lambda x: F.cross_entropy(x, PROBS, label_smoothing=0.2),
     lambda x: tF.cross_entropy(x, torch.tensor(PROBS), label_smoothing=0.2), [_a(3, 5)]),
]


@pytest.mark.parametrize(("name", "ours", "theirs", "arrays"), CASES, ids=[c[0] for c in CASES])
def test_functional_op_through_the_tape_matches_torch(name: str, ours: Callable[..., Any],
                                                      theirs: Callable[..., Any], arrays: list[Any]) -> None:
    _check(ours, theirs, arrays, name)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_through_the_tape_matches_torch(training: bool, dtype: Any) -> None:
    rng = np.random.default_rng(3)
    x, w, b = (random_array(rng, shape, dtype) for shape in ((4, 3, 5, 5), (3,), (3,)))
    rm, rv = random_array(rng, (3,), dtype), np.abs(random_array(rng, (3,), dtype)) + 0.5
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    ours_rm, ours_rv = rm.copy(), rv.copy()
    _check(lambda x, w, b: F.batch_norm(x, ours_rm, ours_rv, w, b, training, 0.3, 1e-3),
           lambda x, w, b: tF.batch_norm(x, trm, trv, w, b, training, 0.3, 1e-3), [x, w, b], "batch_norm")
    # torch_grads ran torch's forward once, _check ran ours once: running stats moved alike
    assert_close(ours_rm, trm, "running_mean")
    assert_close(ours_rv, trv, "running_var")


def test_max_pool_with_indices_on_a_tensor_returns_the_indices_too() -> None:
    x = tensor(np.arange(16.0).reshape(1, 1, 4, 4), requires_grad=True)
    out, idx = F.max_pool2d(x, 2, return_indices=True)
    assert isinstance(out, Tensor) and type(idx) is np.ndarray
    out.sum().backward()
    assert x.grad is not None and x.grad.sum() == 4 and x.grad[0, 0].ravel()[idx.ravel()].all()


def test_dropout_is_seeded_and_its_gradient_uses_the_same_mask() -> None:
    x = tensor(np.ones((4, 50)), requires_grad=True)
    out = F.dropout(x, 0.3, training=True, rng=5)
    np.testing.assert_array_equal(out.data, F.dropout(np.ones((4, 50)), 0.3, rng=5))
    np.testing.assert_array_equal(out.data, F.dropout_mask((4, 50), 0.3, 5, np.float64))
    out.backward(np.full((4, 50), 2.0))
    np.testing.assert_array_equal(x.grad, 2 * out.data)
    assert set(np.unique(out.data)) == {0.0, 1 / 0.7}


def test_residual_block_with_shared_weights_passes_a_finite_difference_check() -> None:
    rng = np.random.default_rng(11)
    x0, w0 = random_array(rng, (1, 2, 5, 5), np.float64), random_array(rng, (2, 2, 3, 3), np.float64) * 0.5
    r = random_array(rng, (1, 2, 5, 5), np.float64)

    def loss(x: Any, w: Any) -> Any:
        h = F.relu(F.conv2d(x, w, padding=1))
        return ((x + F.conv2d(h, w, padding=1)) * r).sum()  # residual add, w used twice

    x, w = tensor(x0, requires_grad=True), tensor(w0, requires_grad=True)
    loss(x, w).backward()
    eps = 1e-6
    for arr, grad, other in ((x0, x.grad, "x"), (w0, w.grad, "w")):
        numeric = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            up = loss(x0, w0)
            arr[i] = old - eps
            down = loss(x0, w0)
            arr[i] = old
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7, err_msg=other)
