"""Calls remembered whole (:mod:`convlayers.functional._ready`): a convolution called again with
the same shapes and arguments goes straight to its runner. Its results must be torch's on
every call, whatever the values (a runner must never reuse a value), and an inf or NaN that
arrives after the runner exists must come out exactly where torch's direct sums put it."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import given, settings
from hypothesis import strategies as st

from convlayers import config
from convlayers import functional as F
from convlayers.functional import _ready
from oracle import assert_close, random_array
from test_nonfinite import KINDS, _reach, _scatter, _torch_run, with_special_values
from test_plan import STRATEGY_NAMES, conv_cases, serves

#: Calls that leave a runner: the first plans, the second measures an unsure strategy.
WARM_CALLS = 3


def _arrays(rng: np.random.Generator, case: dict) -> tuple[np.ndarray, np.ndarray,
                                                           np.ndarray | None]:
    groups = case["groups"]
    x = random_array(rng, (case["batch"], case["c_in"], *case["spatial"]), np.float32)
    w = random_array(rng, (case["c_out"], case["c_in"] // groups, *case["kernel"]), np.float32)
    b = random_array(rng, (case["c_out"],), np.float32) if case["bias"] else None
    return x, w, b


def _torch_forward(case: dict, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> torch.Tensor:
    tconv = {1: tF.conv1d, 2: tF.conv2d}[case["dims"]]
    return tconv(torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b),
                 case["stride"], case["padding"], case["dilation"], case["groups"])


@settings(max_examples=30, deadline=None)
@given(case=conv_cases(), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16))
def test_every_call_of_a_remembered_convolution_follows_torch(case: dict, kind: str,
                                                              seed: int) -> None:
    """New values on every call (each checked against torch), then inf, NaN or huge values
    on the call after the runner exists: the runner declines and the full path answers."""
    rng = np.random.default_rng(seed)
    conv = {1: F.conv1d, 2: F.conv2d}[case["dims"]]
    tconv = {1: tF.conv1d, 2: tF.conv2d}[case["dims"]]
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    x, w, b = _arrays(rng, case)
    y_shape = tuple(_torch_forward(case, x, w, b).shape)
    g = random_array(rng, y_shape, np.float32)
    x, w = with_special_values(rng, x, w, kind, case)
    bx, bw = ~np.isfinite(x), ~np.isfinite(w)
    reach = _reach(tconv, args, bx, bw, y_shape)[0]
    clean = _torch_run(tconv, args, np.where(bx, 0, x), np.where(bw, 0, w), b, g)[0]
    with config.settings(threads=case["threads"]):
        for name in ["auto", *STRATEGY_NAMES]:
            if name != "auto" and not serves(name, case, "forward"):
                continue
            with config.engine_settings(force=None if name == "auto" else name):
                for call in range(WARM_CALLS):  # fresh finite values each time
                    fx, fw, fb = _arrays(rng, case)
                    assert_close(conv(fx, fw, fb, *args), _torch_forward(case, fx, fw, fb),
                                 f"{name}, finite call {call + 1}")
                y = conv(x, w, b, *args)
            np.testing.assert_array_equal(~np.isfinite(y), reach,
                                          f"{name} after {WARM_CALLS} calls ({kind})")
            assert_close(np.where(reach, 0, y), np.where(reach, 0, clean), f"{name} ({kind})")


@settings(max_examples=25, deadline=None)
@given(case=conv_cases(), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16))
def test_every_call_of_remembered_convolution_gradients_follows_torch(case: dict, kind: str,
                                                                      seed: int) -> None:
    """The gradients, as the forward above: new finite values on every call, each against
    torch's autograd, then inf, NaN or huge values once the runner exists (a value that
    moves a strategy makes it decline): non-finite exactly where a term is, torch's values
    elsewhere."""
    rng = np.random.default_rng(seed)
    tconv = {1: tF.conv1d, 2: tF.conv2d}[case["dims"]]
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    x, w, _ = _arrays(rng, case)
    y_shape = tuple(_torch_forward(case, x, w, None).shape)
    g = random_array(rng, y_shape, np.float32)
    x, w = with_special_values(rng, x, w, kind, case)
    if kind.startswith("huge"):  # as test_nonfinite: every sum of the gradients stays finite
        taps = int(np.prod(case["kernel"]))
        terms = max(int(np.prod(y_shape)) // y_shape[1], (case["c_out"] // case["groups"]) * taps)
        g /= 2 * terms * np.abs(g).max()
    bx, bw = ~np.isfinite(x), ~np.isfinite(w)
    _, reach_gx, reach_gw = _reach(tconv, args, bx, bw, y_shape)
    _, clean_gx, clean_gw = _torch_run(tconv, args, np.where(bx, 0, x), np.where(bw, 0, w),
                                       None, g)
    with config.settings(threads=case["threads"]):
        for name in ["auto", *STRATEGY_NAMES]:
            if name != "auto" and not serves(name, case, "backward"):
                continue
            with config.engine_settings(force=None if name == "auto" else name):
                for call in range(WARM_CALLS):  # fresh finite values each time
                    fx, fw, _ = _arrays(rng, case)
                    fg = random_array(rng, y_shape, np.float32)
                    gx, gw, gb = F.conv_backward(fg, fx, fw, *args)
                    _, t_gx, t_gw = _torch_run(tconv, args, fx, fw, None, fg)
                    assert_close(gx, t_gx, f"{name}, grad_input, finite call {call + 1}")
                    assert_close(gw, t_gw, f"{name}, grad_weight, finite call {call + 1}")
                    assert_close(gb, fg.sum(axis=(0, *range(2, fg.ndim))), f"{name}, bias")
                gx, gw, _ = F.conv_backward(g, x, w, *args, with_bias=False)
            for what, ours, reach, clean in (("grad_input", gx, reach_gx, clean_gx),
                                             ("grad_weight", gw, reach_gw, clean_gw)):
                np.testing.assert_array_equal(~np.isfinite(ours), reach,
                                              f"{name} {what} after {WARM_CALLS} calls ({kind})")
                assert_close(np.where(reach, 0, ours), np.where(reach, 0, clean),
                             f"{name} {what} ({kind})")


def test_a_second_call_takes_the_runner_and_matches_torch_on_new_values() -> None:
    """The runner is made and used (the table grows once, not per call), and it reads the
    arrays of each call: a 1x1 layer, an implicit-GEMM one, a depthwise one, unbatched and
    1-D, with layouts the first call did not have (a transposed view, a reversed one)."""
    rng = np.random.default_rng(7)
    cases = [((1, 10, 14, 14), (15, 10, 1, 1), {}, F.conv2d, tF.conv2d),
             ((2, 6, 12, 12), (19, 6, 5, 1), dict(stride=2, padding=1), F.conv2d, tF.conv2d),
             ((1, 8, 9, 9), (8, 1, 3, 3), dict(groups=8, padding=1), F.conv2d, tF.conv2d),
             ((5, 13, 11), (4, 5, 3, 2), dict(dilation=(2, 1)), F.conv2d, tF.conv2d),
             ((2, 3, 17), (6, 3, 3), dict(padding=2), F.conv1d, tF.conv1d)]
    for x_shape, w_shape, kw, ours, theirs in cases:
        _ready.forget()
        before = None
        for call in range(5):
            x = random_array(rng, x_shape, np.float32)
            if call == 3:  # same values, other memory order
                x = np.ascontiguousarray(x.T).T
            if call == 4:
                x = np.ascontiguousarray(x[..., ::-1])[..., ::-1]
            w = random_array(rng, w_shape, np.float32)
            b = random_array(rng, (w_shape[0],), np.float32)
            y = ours(x, w, b, **kw)
            assert_close(y, theirs(torch.tensor(x.copy()), torch.tensor(w), torch.tensor(b), **kw),
                         f"{x_shape} {w_shape} {kw} call {call + 1}")
            if call == 1:
                before = _ready.count()
        assert before is not None and before >= 1, "no runner after two calls"
        assert _ready.count() == before, "a runner was made again"


def test_a_changed_setting_or_forgotten_measurement_makes_a_new_runner() -> None:
    rng = np.random.default_rng(3)
    x = random_array(rng, (1, 16, 12, 12), np.float32)
    w = random_array(rng, (24, 16, 3, 3), np.float32)
    expected = tF.conv2d(torch.tensor(x), torch.tensor(w), padding=1)
    _ready.forget()
    for _ in range(3):
        F.conv2d(x, w, padding=1)
    made = _ready.count()
    assert made >= 1
    for threads in (1, 2):
        with config.settings(threads=threads):
            for _ in range(3):
                assert_close(F.conv2d(x, w, padding=1), expected, f"{threads} threads")
    assert _ready.count() > made, "the thread setting is part of the key"
    F.forget_measurements()
    assert _ready.count() == 0


@pytest.mark.parametrize("stride", [1, True, 1.0, np.int64(1)])
def test_hyper_parameters_equal_to_valid_ones_still_get_their_own_answer(stride: object) -> None:
    """``True == 1 == 1.0``: a runner made for ``stride=1`` must not answer ``stride=True``
    (or 1.0), which the full path refuses; ``np.int64(1)`` is accepted like ``1``."""
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    for _ in range(3):
        F.conv2d(x, w, stride=1)
    if isinstance(stride, (bool, float)):
        with pytest.raises(TypeError, match="stride"):
            F.conv2d(x, w, stride=stride)
    else:
        assert_close(F.conv2d(x, w, stride=stride),
                     tF.conv2d(torch.tensor(x), torch.tensor(w), stride=1))


_TRANSPOSED = [
    dict(c_in=4, c_out=6, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=1),
    dict(c_in=6, c_out=6, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=6),
    dict(c_in=8, c_out=4, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=2),
]


def _serves_transposed(name: str, geometry: dict) -> bool:
    """Whether ``name`` serves the transposed convolution: the input gradient of the
    convolution from its output channels to its input channels."""
    case = dict(dims=2, batch=2, spatial=(7, 6), bias=True, dilation=(1, 1), **geometry)
    return name == "auto" or serves(name, {**case, "c_in": geometry["c_out"],
                                           "c_out": geometry["c_in"]}, "input_grad")


@pytest.mark.parametrize(("name", "geometry"), [
    (name, geometry) for geometry in _TRANSPOSED for name in ["auto", *STRATEGY_NAMES]
    if _serves_transposed(name, geometry)])
def test_a_remembered_transposed_convolution_follows_torch_then_meets_an_inf_weight(
        name: str, geometry: dict) -> None:
    """Three calls with new finite values (each against torch), then weights holding inf and
    NaN: the output is non-finite exactly where a term has a non-finite weight (all inputs
    are non-zero), and equals torch's elsewhere."""
    rng = np.random.default_rng(11)
    shape_x = (2, geometry["c_in"], 7, 6)
    shape_w = (geometry["c_in"], geometry["c_out"] // geometry["groups"], *geometry["kernel"])
    kw = dict(stride=geometry["stride"], padding=geometry["padding"], groups=geometry["groups"])

    def theirs(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> torch.Tensor:
        return tF.conv_transpose2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), **kw)

    with config.engine_settings(force=None if name == "auto" else name):
        for call in range(WARM_CALLS):
            x = random_array(rng, shape_x, np.float32)
            w = random_array(rng, shape_w, np.float32)
            b = random_array(rng, (geometry["c_out"],), np.float32)
            assert_close(F.conv_transpose2d(x, w, b, **kw), theirs(x, w, b), f"call {call + 1}")
        w = _scatter(rng, w, [np.inf, -np.inf, np.nan], 0.05)
        y = F.conv_transpose2d(x, w, b, **kw)
    bad = ~np.isfinite(w)
    reach = tF.conv_transpose2d(torch.ones(shape_x, dtype=torch.float64),
                                torch.tensor(bad, dtype=torch.float64), **kw).numpy() > 0
    np.testing.assert_array_equal(~np.isfinite(y), reach, f"{name}: non-finite mask")
    clean = theirs(x, np.where(bad, 0, w), b).numpy()
    assert_close(np.where(reach, 0, y), np.where(reach, 0, clean), name)


@pytest.mark.parametrize("geometry", _TRANSPOSED)
@pytest.mark.parametrize("threads", [1, 2])
def test_remembered_transposed_convolution_gradients_follow_torch_then_meet_inf(
        geometry: dict, threads: int) -> None:
    """The gradients of a transposed convolution, call after call on new values (the runner
    from the second on), against torch's autograd; then an input and a weight holding inf
    and NaN: non-finite exactly where a term is, torch's values elsewhere."""
    rng = np.random.default_rng(14)
    shape_x = (2, geometry["c_in"], 7, 6)
    shape_w = (geometry["c_in"], geometry["c_out"] // geometry["groups"], *geometry["kernel"])
    kw = dict(stride=geometry["stride"], padding=geometry["padding"], groups=geometry["groups"])
    tconv = functools.partial(tF.conv_transpose2d, **kw)
    shape_y = tuple(tconv(torch.zeros(shape_x), torch.zeros(shape_w)).shape)
    with config.settings(threads=threads):
        for call in range(WARM_CALLS):
            x, w = random_array(rng, shape_x, np.float32), random_array(rng, shape_w, np.float32)
            g = random_array(rng, shape_y, np.float32)
            gx, gw, gb = F.conv_transpose_backward(g, x, w, **kw)
            _, t_gx, t_gw = _torch_run(lambda a, b, _: tconv(a, b), (), x, w, None, g)
            assert_close(gx, t_gx, f"grad_input, call {call + 1}")
            assert_close(gw, t_gw, f"grad_weight, call {call + 1}")
            assert_close(gb, g.sum(axis=(0, 2, 3)), f"grad_bias, call {call + 1}")
        x = _scatter(rng, x, [np.inf, np.nan], 0.05)
        w = _scatter(rng, w, [-np.inf, np.nan], 0.05)
        gx, gw, _ = F.conv_transpose_backward(g, x, w, with_bias=False, **kw)
    bx, bw = ~np.isfinite(x), ~np.isfinite(w)
    _, reach_gx, reach_gw = _reach(lambda a, b, _: tconv(a, b), (), bx, bw, shape_y)
    _, clean_gx, clean_gw = _torch_run(lambda a, b, _: tconv(a, b), (), np.where(bx, 0, x),
                                       np.where(bw, 0, w), None, g)
    for what, ours, reach, clean in (("grad_input", gx, reach_gx, clean_gx),
                                     ("grad_weight", gw, reach_gw, clean_gw)):
        np.testing.assert_array_equal(~np.isfinite(ours), reach, f"{what}: non-finite mask")
        assert_close(np.where(reach, 0, ours), np.where(reach, 0, clean), what)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_a_remembered_transposed_convolution_adds_its_bias_once_in_1d_and_2d(
        dims: int, bias: bool, stride: int) -> None:
    """The remembered transposed convolution (at stride 1 the implicit GEMM's, bias added in
    its kernel) follows torch call after call, with a bias and without, 1-D and 2-D, batched
    and unbatched."""
    rng = np.random.default_rng(12)
    ours = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[dims]
    theirs = {1: tF.conv_transpose1d, 2: tF.conv_transpose2d}[dims]
    spatial = (9, 8)[-dims:] if dims == 2 else (9,)
    for call in range(WARM_CALLS):
        for shape in ((2, 7, *spatial), (7, *spatial)):
            x = random_array(rng, shape, np.float32)
            w = random_array(rng, (7, 4, *(3,) * dims), np.float32)
            b = random_array(rng, (4,), np.float32) if bias else None
            expected = theirs(torch.tensor(x), torch.tensor(w),
                              None if b is None else torch.tensor(b), stride=stride, padding=1)
            assert_close(ours(x, w, b, stride=stride, padding=1), expected,
                         f"call {call + 1}, input {shape}")


@pytest.mark.parametrize("serial_macs", [0, 1 << 40])
@pytest.mark.parametrize(("batch", "spatial"), [(1, (9, 8)), (3, (5, 5)), (4, (3, 3)), (4, (2, 2))])
def test_remembered_lowered_passes_follow_torch_on_one_thread_and_on_all(
        serial_macs: int, batch: int, spatial: tuple[int, int],
        set_threads: Callable[[int], None]) -> None:
    """The lowered strategy's remembered forward and transposed convolution, planned for
    one thread (``serial_macs`` above the call's work: those of slab units run with no thread
    setting, the pool's other threads left as they are) or for all, follow torch call after
    call on two threads; the small maps of a batch take the merged kernels."""
    rng = np.random.default_rng(13)
    set_threads(2)
    with config.engine_settings(force="lowered", serial_macs=serial_macs):
        for call in range(WARM_CALLS):
            x = random_array(rng, (batch, 6, *spatial), np.float32)
            w = random_array(rng, (5, 6, 3, 2), np.float32)
            b = random_array(rng, (5,), np.float32)
            assert_close(F.conv2d(x, w, b, stride=(2, 1), padding=1),
                         tF.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b),
                                   stride=(2, 1), padding=1), f"forward, call {call + 1}")
            wt = random_array(rng, (6, 5, 3, 2), np.float32)
            assert_close(F.conv_transpose2d(x, wt, b, stride=2, padding=1),
                         tF.conv_transpose2d(torch.tensor(x), torch.tensor(wt),
                                             torch.tensor(b), stride=2, padding=1),
                         f"transposed, call {call + 1}")


@pytest.mark.parametrize(("dims", "kw"), [
    (2, dict(kernel_size=3, stride=2)),
    (2, dict(kernel_size=(2, 3), stride=1, padding=1, ceil_mode=True)),
    (1, dict(kernel_size=3, stride=2, padding=1)),
])
@pytest.mark.parametrize("unbatched", [False, True])
def test_remembered_pooling_follows_torch_on_every_call_nan_included(
        dims: int, kw: dict, unbatched: bool) -> None:
    """Max and average pooling called five times with new values, the last with NaN and inf
    in them: each call equals torch's (NaN where torch's is)."""
    rng = np.random.default_rng(5)
    shape = (3, 11, 13)[-dims - 1:] if unbatched else (2, 3, 11, 13)[: dims + 2]
    ours = {1: (F.max_pool1d, F.avg_pool1d), 2: (F.max_pool2d, F.avg_pool2d)}[dims]
    theirs = {1: (tF.max_pool1d, tF.avg_pool1d), 2: (tF.max_pool2d, tF.avg_pool2d)}[dims]
    _ready.forget()
    for call in range(5):
        x = random_array(rng, shape, np.float32)
        if call == 4:
            x = _scatter(rng, x, [np.nan, np.inf, -np.inf], 0.05)
        for mine, torch_op in zip(ours, theirs, strict=True):
            args = dict(kw, count_include_pad=False) if mine in (F.avg_pool1d, F.avg_pool2d) \
                else kw
            assert_close(mine(x, **args), torch_op(torch.tensor(x), **args),
                         f"{mine.__name__} call {call + 1}")
        if call == 1:
            made = _ready.count()
    assert made == 2 and _ready.count() == 2, "one runner each, made once"


@pytest.mark.parametrize(("dims", "kw"), [
    (2, dict(kernel_size=3, stride=2)),
    (2, dict(kernel_size=(2, 3), stride=1, padding=1, ceil_mode=True, count_include_pad=False)),
    (2, dict(kernel_size=3, stride=2, padding=1, divisor_override=4)),
    (1, dict(kernel_size=3, stride=2, padding=1)),
])
@pytest.mark.parametrize("unbatched", [False, True])
def test_a_remembered_average_pool_gradient_follows_torch_on_every_call(
        dims: int, kw: dict, unbatched: bool) -> None:
    """The average pool's gradient called four times with new gradients, the last with NaN
    and inf in them: the first call leaves one runner, and every call equals torch's
    autograd (the runner reads the input's shape only, never its values)."""
    rng = np.random.default_rng(6)
    shape = (3, 11, 13)[-dims - 1:] if unbatched else (2, 3, 11, 13)[: dims + 2]
    theirs = {1: tF.avg_pool1d, 2: tF.avg_pool2d}[dims]
    _ready.forget()
    for call in range(4):
        x = torch.tensor(random_array(rng, shape, np.float32), requires_grad=True)
        y = theirs(x, **kw)
        gy = random_array(rng, tuple(y.shape), np.float32)
        if call == 3:
            gy = _scatter(rng, gy, [np.nan, np.inf, -np.inf], 0.1)
        y.backward(torch.tensor(gy))
        ours = F.avg_pool_backward(gy, x.detach().numpy(), spatial_dims=dims, **kw)
        assert_close(ours, x.grad, f"call {call + 1}, input {shape}")
        assert _ready.count() == 1, "one runner, made on the first call"


@pytest.mark.parametrize(("dims", "kw"), [
    (2, dict(kernel_size=3, stride=2)),
    (2, dict(kernel_size=(2, 3), stride=1, padding=1, ceil_mode=True)),
    (1, dict(kernel_size=3, stride=2, padding=1)),
])
@pytest.mark.parametrize("unbatched", [False, True])
def test_a_remembered_max_pool_with_indices_and_its_gradient_follow_torch(
        dims: int, kw: dict, unbatched: bool) -> None:
    """A max pool returning its indices, then its gradient, called four times with new values
    (NaN and inf in the last input and gradient): the pool's values and indices and the
    gradient equal torch's on every call, and each leaves one runner, made on its first call."""
    rng = np.random.default_rng(7)
    shape = (3, 11, 13)[-dims - 1:] if unbatched else (2, 3, 11, 13)[: dims + 2]
    ours = {1: F.max_pool1d, 2: F.max_pool2d}[dims]
    theirs = {1: tF.max_pool1d, 2: tF.max_pool2d}[dims]
    _ready.forget()
    for call in range(4):
        x = random_array(rng, shape, np.float32)
        if call == 3:
            x = _scatter(rng, x, [np.nan, np.inf, -np.inf], 0.05)
        tx = torch.tensor(x, requires_grad=True)
        ty, tidx = theirs(tx, return_indices=True, **kw)
        gy = random_array(rng, tuple(ty.shape), np.float32)
        if call == 3:
            gy = _scatter(rng, gy, [np.nan, np.inf], 0.1)
        ty.backward(torch.tensor(gy))
        y, idx = ours(x, return_indices=True, **kw)
        assert_close(y, ty, f"values, call {call + 1}")
        np.testing.assert_array_equal(idx, tidx.numpy(), err_msg=f"indices, call {call + 1}")
        assert_close(F.max_pool_backward(gy, x, idx, spatial_dims=dims), tx.grad,
                     f"gradient, call {call + 1}")
        assert _ready.count() == 2, "one runner each, made on the first call"


def test_a_remembered_max_pool_gradient_still_refuses_indices_outside_the_plane() -> None:
    """The gradient's runner reads no index before the kernel checks it: an index past the
    plane, after the runner exists, raises as the full path does."""
    rng = np.random.default_rng(8)
    x = random_array(rng, (2, 3, 9, 9), np.float32)
    _ready.forget()
    y, idx = F.max_pool2d(x, 3, 2, return_indices=True)
    gy = random_array(rng, y.shape, np.float32)
    F.max_pool_backward(gy, x, idx)
    assert _ready.count() == 2
    bad = idx.copy()
    bad[1, 2, 0, 1] = 81
    with pytest.raises(ValueError, match="indices must lie in"):
        F.max_pool_backward(gy, x, bad)
    bad[1, 2, 0, 1] = -1
    with pytest.raises(ValueError, match="indices must lie in"):
        F.max_pool_backward(gy, x, bad)


@pytest.mark.parametrize(("shape", "c_out", "stride"), [
    ((1, 28, 13, 13), 23, 3),     # a small call: the 1x1 kernel's serial twin, no thread switch
    ((2, 16, 9, 12), 40, (2, 3)),
    ((4, 64, 40, 40), 96, 2),     # a large one on the threads
])
def test_a_remembered_strided_pointwise_convolution_reads_its_pixels_in_place(
        shape: tuple[int, ...], c_out: int, stride: int | tuple[int, int]) -> None:
    """An unpadded 1x1 layer at a stride is remembered with the strided copy of the pixels it
    reads and the kernel (its serial twin on one thread): torch's results on every call."""
    rng = np.random.default_rng(5)
    w = random_array(rng, (c_out, shape[1], 1, 1), np.float32)
    b = random_array(rng, (c_out,), np.float32)
    with config.engine_settings(force="pointwise"):
        for call in range(WARM_CALLS + 1):
            x = random_array(rng, shape, np.float32)
            assert_close(F.conv2d(x, w, b, stride=stride),
                         tF.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b),
                                   stride=stride), f"call {call + 1}")
        key = _ready.key_of("conv", (x, w, b), stride, 0, 1, 1, "zeros")
        assert _ready.lookup(key) not in (None, _ready.declining)


def test_a_strided_pointwise_convolution_copies_its_pixels_into_kept_scratch() -> None:
    """The strided copy of the pixels a 1x1 layer reads goes into this thread's kept scratch,
    not a new array a call (fresh pages past glibc's mmap threshold: 2.5x the time on
    8x64x56x56 -> 4): after the first calls, a call allocates its output and little more,
    planned or forced (a runner of its own: the settings are part of the key)."""
    import tracemalloc

    rng = np.random.default_rng(11)
    x = random_array(rng, (4, 64, 56, 56), np.float32)
    w = random_array(rng, (4, 64, 1, 1), np.float32)
    expected = tF.conv2d(torch.tensor(x), torch.tensor(w), stride=2).numpy()
    for force in (None, "pointwise"):
        with config.engine_settings(force=force):
            for _ in range(WARM_CALLS):
                F.conv2d(x, w, stride=2)
            tracemalloc.start()
            try:
                out = F.conv2d(x, w, stride=2)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        assert_close(out, expected, f"force={force}")
        phase = x.nbytes // 4
        assert peak < out.nbytes + phase // 4, (force, peak, out.nbytes, phase)


def test_a_remembered_direct_forward_of_a_cropped_kernel_packs_its_taps_each_call() -> None:
    """A kernel whose outer taps read only the padding runs cropped; by ``direct`` its
    runner packs the kept taps from the whole weight on every call (the weight may change):
    torch's results on new values every call, then an inf weight (the runner declines, the
    full path answers with torch's non-finite pattern)."""
    rng = np.random.default_rng(11)
    shape, w_shape, kw = (25, 14, 9, 14), (139, 14, 6, 6), dict(stride=3, padding=(7, 1),
                                                               dilation=3)
    assert "cropped" in F.plan(shape, w_shape, **kw).spec
    with config.engine_settings(force="direct"):
        for call in range(WARM_CALLS + 1):
            x = random_array(rng, shape, np.float32)
            w = random_array(rng, w_shape, np.float32)
            assert_close(F.conv2d(x, w, **kw), tF.conv2d(torch.tensor(x), torch.tensor(w),
                                                           **kw), f"call {call + 1}")
        key = _ready.key_of("conv", (x, w, None), 3, (7, 1), 3, 1, "zeros")
        assert _ready.lookup(key) not in (None, _ready.declining)
        w[4, 2, 3, 3] = np.inf
        got = F.conv2d(x, w, **kw)
    want = tF.conv2d(torch.tensor(x), torch.tensor(w), **kw).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], "an inf weight after the runner")


@pytest.mark.parametrize("serial_macs", [0, 1 << 40])
@pytest.mark.parametrize(("mode", "x_shape", "w_shape", "kw"), [
    ("plain", (2, 20, 9, 8), (70, 20, 3, 2), dict(stride=(2, 1), padding=1)),
    ("blocks", (1, 110, 10, 10), (182, 110, 7, 7), dict(padding=9, dilation=3)),
])
def test_remembered_direct_forward_follows_torch_then_declines_a_nan_weight(
        serial_macs: int, mode: str, x_shape: tuple, w_shape: tuple, kw: dict,
        set_threads: Callable[[int], None]) -> None:
    """``direct``'s runner (its layout, buffers' shapes and zero bias worked out once,
    :func:`convlayers.functional._engine_direct.ready_direct`), planned for one thread or for
    all, follows torch on new values every call, with and without a bias; in blocks of pixels
    (the padding's taps left out) a NaN weight still gives torch's non-finite pattern (the
    plain tiles rerun the call)."""
    from convlayers.functional import _engine_direct
    from convlayers.functional.plan import geometry

    stride, padding = kw.get("stride", 1), kw["padding"]
    g = geometry(x_shape, w_shape, stride if isinstance(stride, tuple) else (stride,) * 2,
                 (kw.get("dilation", 1),) * 2, 1, ((padding, padding),) * 2,
                 tuple(tF.conv2d(torch.zeros(x_shape), torch.zeros(w_shape), **kw).shape[2:]),
                 np.float32)
    assert _engine_direct.padding_mode(g) == mode
    rng = np.random.default_rng(17)
    set_threads(2)
    with config.engine_settings(force="direct", serial_macs=serial_macs):
        for call in range(WARM_CALLS):
            x = random_array(rng, x_shape, np.float32)
            w = random_array(rng, w_shape, np.float32)
            b = random_array(rng, w_shape[:1], np.float32) if call % 2 else None
            assert_close(F.conv2d(x, w, b, **kw),
                         tF.conv2d(torch.tensor(x), torch.tensor(w),
                                   None if b is None else torch.tensor(b), **kw),
                         f"call {call + 1}")
        key = _ready.key_of("conv", (x, w, b), kw.get("stride", 1), padding,
                            kw.get("dilation", 1), 1, "zeros")
        assert _ready.lookup(key) not in (None, _ready.declining)
        w[3, 5, 0, 0] = np.nan
        got = F.conv2d(x, w, b, **kw)
    want = tF.conv2d(torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b),
                     **kw).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], "a NaN weight after the runner")
