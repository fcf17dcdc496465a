"""The planner: every strategy, forced in turn, against torch and the reference loops.

``config.engine_settings(force=name)`` makes every convolution pass take one strategy; a pass it
cannot serve raises ValueError. For each generated convolution each strategy either matches
torch (forward, input gradient, weight gradient, with bias) and the slow loops of
:mod:`convlayers.reference`, or refuses exactly where this file's own servability rules (written
apart from the planner's) say it must. The transposed convolution and a reflect-padded
convolution run the one-gradient passes the same way.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import given, settings
from hypothesis import strategies as st

from convlayers import config, reference
from convlayers import functional as F
from convlayers.functional.plan import STRATEGIES, Plan, geometry, plan, work
from oracle import assert_close, random_array, torch_grads

STRATEGY_NAMES = list(STRATEGIES)


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    """Small convolutions of every kind the strategies tell apart."""
    dims = draw(st.sampled_from([1, 2, 2, 2]))
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise", "multiplier", "pointwise",
                                 "3x3"]))
    if kind in ("depthwise", "multiplier"):
        groups = draw(st.integers(1, 4))
        c_in = groups
        c_out = groups * (draw(st.integers(2, 3)) if kind == "multiplier" else 1)
    else:
        groups = draw(st.sampled_from([2, 3])) if kind == "grouped" else 1
        c_in = groups * draw(st.integers(1, 4))
        c_out = groups * draw(st.integers(1, 4))
    if kind == "pointwise":
        kernel = (1,) * dims
    elif kind == "3x3":
        kernel = (3,) * dims
    else:
        kernel = tuple(draw(st.integers(1, 4)) for _ in range(dims))
    plain = kind == "3x3" and draw(st.booleans())
    stride = (1,) * dims if plain else tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = (1,) * dims if plain else tuple(draw(st.sampled_from([1, 1, 2]))
                                               for _ in range(dims))
    padding = tuple(draw(st.integers(0, k)) for k in kernel)
    spatial = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), d * (k - 1) + 8))
                    for k, d, p in zip(kernel, dilation, padding, strict=True))
    return dict(dims=dims, groups=groups, c_in=c_in, c_out=c_out, kernel=kernel, stride=stride,
                dilation=dilation, padding=padding, spatial=spatial,
                batch=draw(st.integers(1, 3)), bias=draw(st.booleans()),
                threads=draw(st.sampled_from([1, 2, 3])))


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def serves(name: str, case: dict, pass_: str) -> bool:
    """This file's own rules: whether strategy ``name`` runs ``pass_`` ("forward",
    "backward": both gradients with zero padding, "input_grad" or "weight_grad": one gradient
    alone, with padding at most ``dilation * (kernel - 1)``)."""
    dims, kernel = case["dims"], case["kernel"]
    c_in_g = case["c_in"] // case["groups"]
    alone = pass_ in ("input_grad", "weight_grad")
    stride_1 = all(s == 1 for s in case["stride"])
    if name in ("numpy", "lowered"):
        return True
    if name == "pointwise":
        return all(k == 1 for k in kernel)
    if name == "depthwise-channels-last":
        return not alone and c_in_g == 1 and case["c_out"] == case["c_in"]
    if name == "implicit":
        return True
    if name == "direct":  # a stride-1 input gradient as the forward of the flipped weights
        narrow = all(p <= d * (k - 1) for p, d, k in zip(case["padding"], case["dilation"],
                                                         kernel, strict=True))
        return case["groups"] == 1 and (
            pass_ in ("forward", "weight_grad") or (pass_ == "input_grad" and stride_1)
            or (pass_ == "backward" and stride_1 and narrow))
    if name == "direct-planar":  # its tall tiles: three vectors of channels (AVX-512), or two
        from convlayers.kernels.simd import VECTOR_BYTES

        most = (3 if VECTOR_BYTES == 64 else 2) * VECTOR_BYTES // 4
        return pass_ == "forward" and case["groups"] == 1 and case["c_out"] <= most
    if name == "dot":
        return pass_ == "forward"
    if name == "winograd":
        return (pass_ != "weight_grad" and dims == 2 and kernel == (3, 3) and stride_1
                and case["dilation"] == (1, 1))
    if name.startswith("depthwise"):
        if c_in_g != 1:
            return False
        if name == "depthwise-flat":
            width = case["spatial"][-1]
            out_w = _out_size(width, kernel[-1], case["stride"][-1], case["padding"][-1],
                              case["dilation"][-1])
            return not alone and stride_1 and out_w == width
        return True
    raise AssertionError(name)


def _arrays(case: dict, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    x = random_array(rng, (case["batch"], case["c_in"], *case["spatial"]), np.float32)
    w = random_array(rng, (case["c_out"], case["c_in"] // case["groups"], *case["kernel"]),
                     np.float32)
    b = random_array(rng, (case["c_out"],), np.float32) if case["bias"] else None
    return x, w, b


def _as_2d(case: dict, x: np.ndarray, w: np.ndarray, g: np.ndarray) -> tuple:
    """1-D problems as 2-D with one row, for the 2-D reference loops."""
    if case["dims"] == 2:
        return (x, w, g, case["stride"], case["padding"], case["dilation"])
    return (x[:, :, None], w[:, :, None], g[:, :, None], (1, *case["stride"]),
            (0, *case["padding"]), (1, *case["dilation"]))


@settings(max_examples=40, deadline=None)
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_every_strategy_forced_matches_torch_and_the_reference_loops(case: dict, seed: int) -> None:
    x, w, b = _arrays(case, seed)
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    conv = {1: F.conv1d, 2: F.conv2d}[case["dims"]]
    tconv = {1: tF.conv1d, 2: tF.conv2d}[case["dims"]]
    expected, g, (tgx, tgw, _) = torch_grads(lambda *t: tconv(*t, *args), [x, w, b], seed)

    # the slow loops agree with torch, so each strategy is checked against both
    x2, w2, g2, s2, p2, d2 = _as_2d(case, x, w, g)
    ref = reference.conv2d(x2, w2, b, s2, p2, d2, case["groups"]).reshape(expected.shape)
    assert_close(ref, expected, "reference forward vs torch")
    op = tuple(size - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for size, o, s, p, d, k in zip(
        x2.shape[2:], g2.shape[2:], s2, p2, d2, w2.shape[2:], strict=True))
    # the input gradient is the transposed convolution by the same weights
    ref_gx = reference.conv_transpose2d(g2, w2, s2, p2, op, d2, case["groups"]).reshape(x.shape)
    assert_close(ref_gx, tgx, "reference input gradient vs torch")

    with config.settings(threads=case["threads"]):
        for name in STRATEGY_NAMES:
            with config.engine_settings(force=name):
                if not serves(name, case, "forward"):
                    with pytest.raises(ValueError, match="cannot serve"):
                        conv(x, w, b, *args)
                    continue
                y = conv(x, w, b, *args)
                assert_close(y, expected, f"{name} forward")
                assert_close(y, ref, f"{name} forward vs reference")
                if not serves(name, case, "backward"):
                    with pytest.raises(ValueError, match="cannot serve"):
                        F.conv_backward(g, x, w, *args, with_bias=b is not None)
                    continue
                gx, gw, _ = F.conv_backward(g, x, w, *args, with_bias=b is not None)
                assert_close(gx, tgx, f"{name} grad_input")
                assert_close(gx, ref_gx, f"{name} grad_input vs reference")
                assert_close(gw, tgw, f"{name} grad_weight")


@settings(max_examples=25, deadline=None)
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_one_gradient_passes_forced_transposed_and_reflect_padded(case: dict, seed: int) -> None:
    """``conv_transpose`` (an input gradient alone, its backward a forward and a weight
    gradient alone) and reflect padding (the gradients alone, on the padded input) under each
    forced strategy."""
    rng = np.random.default_rng(seed)
    dims, groups = case["dims"], case["groups"]
    # as a transposed convolution: input C_out channels, weight (C_out, C_in/g, *K)
    xt = random_array(rng, (case["batch"], case["c_out"], *case["spatial"]), np.float32)
    wt = random_array(rng, (case["c_out"], case["c_in"] // groups, *case["kernel"]), np.float32)
    padding = tuple(min(p, d * (k - 1) // 2) for p, d, k in zip(
        case["padding"], case["dilation"], case["kernel"], strict=True))
    kw = dict(stride=case["stride"], padding=padding, dilation=case["dilation"], groups=groups)
    tr = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[dims]
    ttr = {1: tF.conv_transpose1d, 2: tF.conv_transpose2d}[dims]
    expected, g, (tgx, tgw) = torch_grads(lambda a, v: ttr(a, v, **kw), [xt, wt], seed)
    # its forward is the input gradient alone of the conv whose weight is ``wt``; its backward a
    # forward conv of the padded output gradient and a weight gradient alone
    for name in STRATEGY_NAMES:
        with config.engine_settings(force=name):
            if not serves(name, case, "input_grad"):
                with pytest.raises(ValueError, match="cannot serve"):
                    tr(xt, wt, **kw)
                continue
            y = tr(xt, wt, **kw)
            assert_close(y, expected, f"{name} conv_transpose")
            if not (serves(name, case, "forward") and serves(name, case, "weight_grad")):
                with pytest.raises(ValueError, match="cannot serve"):
                    F.conv_transpose_backward(g, xt, wt, with_bias=False, **kw)
                continue
            gx, gw, _ = F.conv_transpose_backward(g, xt, wt, with_bias=False, **kw)
            assert_close(gx, tgx, f"{name} conv_transpose grad_input")
            assert_close(gw, tgw, f"{name} conv_transpose grad_weight")

    if min(case["spatial"]) <= max(case["padding"]):
        return  # reflect needs padding smaller than the input
    x, w, _ = _arrays(case, seed)
    args = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=groups, padding_mode="reflect")
    tconv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d}[dims](
        case["c_in"], case["c_out"], case["kernel"], bias=False, **args)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(w))
    texp, g, (rgx,) = torch_grads(tconv, [x], seed)
    rgw = tconv.weight.grad.numpy()
    padded = dict(case, spatial=tuple(s + 2 * p for s, p in zip(case["spatial"],
                                                                case["padding"], strict=True)),
                  padding=(0,) * dims)
    for name in STRATEGY_NAMES:
        with config.engine_settings(force=name):
            if not serves(name, padded, "forward"):
                continue
            conv = {1: F.conv1d, 2: F.conv2d}[dims]
            assert_close(conv(x, w, **args), texp, f"{name} reflect forward")
            if not (serves(name, padded, "input_grad") and serves(name, padded, "weight_grad")):
                with pytest.raises(ValueError, match="cannot serve"):
                    F.conv_backward(g, x, w, with_bias=False, **args)
                continue
            gx, gw, _ = F.conv_backward(g, x, w, with_bias=False, **args)
            assert_close(gx, rgx, f"{name} reflect grad_input")
            assert_close(gw, rgw, f"{name} reflect grad_weight")


def test_forcing_an_unknown_or_unfit_strategy_says_why() -> None:
    with pytest.raises(ValueError, match=r"unknown convolution strategy 'fast'.*winograd"), \
            config.engine_settings(force="fast"):
        pass
    with pytest.raises(AttributeError, match="no setting 'serial'"), \
            config.engine_settings(serial=3):
        pass
    x = np.ones((1, 4, 8, 8), np.float32)
    with config.engine_settings(force="winograd"):
        with pytest.raises(ValueError, match="'winograd' cannot serve the forward pass of a 5x5"):
            F.conv2d(x, np.ones((4, 4, 5, 5), np.float32))
        with pytest.raises(ValueError, match="winograd needs a 3x3 kernel"):
            plan(x.shape, (4, 4, 5, 5))
    with config.engine_settings(force="depthwise-rows"), \
            pytest.raises(ValueError, match="needs a depthwise convolution"):
        F.conv2d(x, np.ones((4, 2, 3, 3), np.float32), groups=2)
    assert config.engine.force is None  # restored on the way out


def test_plan_shows_each_pass_and_follows_the_settings() -> None:
    p = plan((16, 64, 28, 28), (64, 64, 3, 3), padding=1)
    assert isinstance(p, Plan) and p.forward == "winograd"
    text = str(p)
    assert "kernel 3x3" in text and "forward      winograd" in text
    with config.engine_settings(winograd_min_channels=65):
        assert plan((16, 64, 28, 28), (64, 64, 3, 3), padding=1).forward != "winograd"
    with config.engine_settings(force="numpy"):
        assert plan((16, 64, 28, 28), (64, 64, 3, 3), padding=1).weight_grad == "numpy"
    assert plan((64, 56, 56), (64, 64, 3, 3), padding=1).forward == "winograd"  # unbatched
    assert plan((2, 4, 9), (6, 4, 3)).forward != "winograd"  # 1-D
    assert plan((2, 4, 5, 9, 9), (6, 4, 3, 3, 3)).forward == "numpy"  # 3-D
    assert plan((2, 4, 9, 9), (6, 4, 3, 3), dtype=np.float16).forward == "numpy"
    small = plan((1, 8, 8, 8), (8, 8, 3, 3), padding=1)
    assert small.threads == 1  # under config.engine.serial_macs
    with config.engine_settings(serial_macs=0):
        assert plan((1, 8, 8, 8), (8, 8, 3, 3), padding=1).threads >= 1
    with pytest.raises(ValueError, match="divisible"):
        plan((1, 6, 8, 8), (4, 3, 3, 3), groups=4)


def test_column_copies_count_toward_the_thread_decision() -> None:
    """A thin product with many columns (the input gradient of 31->8 4x4 s2, a transposed
    convolution's forward) is little multiply-add work but much copying: the lowered strategy
    counts its columns at the copy price, so the call gets the threads. The implicit GEMM
    counts its slabs' copy, each input pixel once (11->4 2x2 s2 on 5x11x39x166, 1.4M
    multiply-adds, ran 2.4x torch's time on one thread), any other strategy its reading of the
    input."""
    g = geometry((2, 31, 30, 30), (8, 31, 4, 4), (2, 2), (1, 1), 1, ((1, 1), (1, 1)), (15, 15),
                 np.float32)
    price = config.engine.im2col_copy_macs_strided_few_images
    copies = 2 * 31 * 16 * 15 * 15 * price
    slabs = 2 * 31 * 30 * 30 * price
    assert work(g, ("lowered",)) == g.macs + copies
    assert work(g, ("implicit",)) == g.macs + slabs
    assert work(g, ("lowered", "implicit")) == 2 * g.macs + copies + slabs
    small = geometry((5, 11, 39, 166), (4, 11, 2, 2), (2, 2), (1, 1), 1, ((0, 0), (0, 0)),
                     (19, 83), np.float32)
    assert work(g, ("depthwise-planar",)) == work(g, ("implicit",))
    with config.engine_settings(serial_macs=2_000_000):  # the threshold these were found at
        assert g.macs < config.engine.serial_macs <= work(g, ("lowered",))
        assert small.macs < config.engine.serial_macs <= work(small, ("implicit",))


def test_strided_input_gradients_of_few_output_channels_run_implicit() -> None:
    """Few output channels make lowered's col2im adds outweigh its product: a stride-2 5x5
    (9 taps a phase) of at most 7 output channels, a 7x7 (16) of up to 16, or a dilation that
    is a multiple of the stride, takes the implicit GEMM for its input gradient, whose result
    matches torch's."""
    rng = np.random.default_rng(4)
    x = random_array(rng, (2, 130, 15, 15), np.float32)
    w = random_array(rng, (6, 130, 5, 5), np.float32)
    assert plan(x.shape, w.shape, stride=2, padding=2).input_grad == "implicit"
    _, g, (gx, gw) = torch_grads(lambda a, b: tF.conv2d(a, b, stride=2, padding=2), [x, w])
    our_gx, our_gw, _ = F.conv_backward(g, x, w, stride=2, padding=2, with_bias=False)
    assert_close(our_gx, gx, "implicit strided input gradient")
    assert_close(our_gw, gw, "weight gradient beside it")
    assert plan((2, 16, 30, 30), (8, 16, 3, 3), stride=2, dilation=2).input_grad == "implicit"
    assert plan((2, 40, 15, 15), (6, 40, 5, 5), stride=2).input_grad == "implicit"
    # phases past parallel_elementwise pixels are scattered by the compiled kernel; a 72-wide
    # input leaves its last column to no window (a zero gradient)
    x = random_array(rng, (2, 40, 70, 72), np.float32)
    w = random_array(rng, (6, 40, 5, 5), np.float32)
    assert plan(x.shape, w.shape, stride=2).input_grad == "implicit"
    _, g, (gx, _) = torch_grads(lambda a, b: tF.conv2d(a, b, stride=2), [x, w])
    assert_close(F.conv_backward(g, x, w, stride=2, with_bias=False)[0], gx,
                 "implicit strided input gradient, scattered")
    assert plan((2, 40, 15, 15), (16, 40, 7, 7), stride=2, padding=3).input_grad == "implicit"
    # many output channels, 8 of them on a 5x5, a small map (9 output positions), a 3x3
    # kernel at stride 2, a depthwise one, a setting of 0: lowered, or the depthwise kernels
    assert plan((2, 130, 15, 15), (64, 130, 5, 5), stride=2).input_grad == "lowered"
    assert plan((2, 40, 15, 15), (8, 40, 5, 5), stride=2).input_grad == "lowered"
    assert plan((2, 40, 9, 9), (6, 40, 5, 5), stride=2).input_grad == "lowered"
    assert plan((2, 130, 15, 15), (6, 130, 3, 3), stride=2).input_grad == "lowered"
    assert plan((2, 16, 30, 30), (16, 1, 3, 3), stride=2, dilation=2,
                groups=16).input_grad.startswith("depthwise")
    with config.engine_settings(implicit_input_grad_channels=0):
        assert plan((2, 130, 15, 15), (6, 130, 5, 5), stride=2).input_grad == "lowered"


@pytest.mark.usefixtures("without_winograd_backward")
def test_stride_1_input_gradients_with_many_more_output_channels_run_lowered() -> None:
    """The implicit input gradient's product has ``C_in/g`` rows: with more than
    ``implicit_input_grad_ratio`` times as many output channels, on maps under
    ``implicit_input_grad_positions``, it takes ``lowered`` (a transposed convolution that
    narrows the channels is the common case), and the gradient still matches torch's."""
    rng = np.random.default_rng(5)
    x = random_array(rng, (3, 10, 17, 17), np.float32)
    w = random_array(rng, (51, 10, 3, 3), np.float32)  # 51 > 2 * 10
    assert plan(x.shape, w.shape, padding=1).input_grad == "lowered"
    _, g, (gx, _) = torch_grads(lambda a, b: tF.conv2d(a, b, padding=1), [x, w])
    assert_close(F.conv_backward(g, x, w, padding=1, with_bias=False)[0], gx,
                 "lowered input gradient")
    # as many output channels as input ones, or a ratio allowed by the setting: implicit
    assert plan((3, 51, 17, 17), (51, 51, 3, 3), padding=1).input_grad == "implicit"
    with config.engine_settings(implicit_input_grad_ratio=6):
        assert plan(x.shape, w.shape, padding=1).input_grad == "implicit"
    # large maps keep the implicit GEMM whatever the ratio, from the setting's positions
    assert plan((1, 12, 100, 100), (153, 12, 2, 2), padding=1).input_grad == "implicit"
    with config.engine_settings(implicit_input_grad_positions=17 * 17 + 1):
        assert plan(x.shape, w.shape, padding=1).input_grad == "lowered"
    with config.engine_settings(implicit_input_grad_positions=17 * 17):
        assert plan(x.shape, w.shape, padding=1).input_grad == "implicit"


def test_settings_changes_are_seen_by_the_remembered_plans() -> None:
    """The engine remembers each call's plan; changing a setting must not leave it stale."""
    rng = np.random.default_rng(1)
    x = random_array(rng, (2, 16, 10, 10), np.float32)
    w = random_array(rng, (16, 16, 3, 3), np.float32)
    y = F.conv2d(x, w, padding=1)
    with config.engine_settings(force="numpy"):
        from convlayers.functional import _engine

        F.conv2d(x, w, padding=1)
        assert any(v[1][0] == "numpy" and k[0] == "forward" and k[1] == x.shape
                   for k, v in _engine._PLANS.items())
    config.engine.winograd_min_channels = 17
    try:
        assert_close(F.conv2d(x, w, padding=1), y, "after a change")
        assert plan(x.shape, w.shape, padding=1).forward != "winograd"
    finally:
        config.engine.winograd_min_channels = 16



def test_settings_restored_find_their_remembered_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner's cache key follows the settings' values: a strategy forced in a second
    ``with`` block reuses the layouts the first built (they were built again on every block),
    and a setting that differs still builds its own."""
    from convlayers.inference import conv_last

    built: list[int] = []
    units = conv_last.dense_units
    monkeypatch.setattr(conv_last, "dense_units", lambda *a, **k: built.append(1) or units(*a, **k))
    rng = np.random.default_rng(2)
    x = random_array(rng, (1, 17, 9, 11), np.float32)  # a geometry no other test remembers
    w = random_array(rng, (19, 17, 3, 3), np.float32)
    start = config.engine_version()
    outputs = []
    for _ in range(2):
        with config.engine_settings(force="direct"):
            outputs.append(F.conv2d(x, w, padding=1))
        assert config.engine_version() == start
    assert len(built) == 1
    with config.engine_settings(force="direct", serial_macs=1):
        assert config.engine_version() != start
        F.conv2d(x, w, padding=1)
    assert len(built) == 2
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    for y in outputs:
        assert_close(y, expected, "forced direct")

def test_a_slow_first_compile_prints_one_notice(capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from numba import njit

    from convlayers import kernels

    saved = kernels.notice.after, kernels.notice.shown
    kernels.notice.after, kernels.notice.shown = 0.0, False
    try:
        @njit
        def slow(a: np.ndarray) -> float:
            return float(a.sum())

        slow(np.ones(3))  # a fresh compile, longer than 0 s
        time.sleep(0.05)
        slow(np.ones(3, np.float32))  # another: the notice is printed once only
        time.sleep(0.05)
    finally:
        kernels.notice.after, kernels.notice.shown = saved
    err = capsys.readouterr().err
    assert err.count(kernels.NOTICE) == 1, err


def test_warmup_command_compiles_every_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    from convlayers.cli import main
    from convlayers.cli.warmup import tasks

    labels = [label for label, _ in tasks("float32")]
    assert [f"conv {s}" for s in STRATEGY_NAMES if s != "numpy"] == labels[:len(STRATEGY_NAMES) - 1]
    assert main(["warmup", "--quiet"]) == 0
    assert "kernel groups ready (float32)" in capsys.readouterr().out


@pytest.mark.usefixtures("wide_depthwise_defaults")
def test_tiny_depthwise_planes_take_the_row_kernels() -> None:
    """A 4x6 output plane would run the planar kernels' flat loops over 64 positions: the row
    kernels serve it (the planar ones still serve a multiplier's input gradient), and both
    match torch. One image of 5 channels: too few planes for channels-last."""
    rng = np.random.default_rng(3)
    x = random_array(rng, (1, 5, 8, 13), np.float32)
    args = dict(stride=2, padding=(7, 4), dilation=3, groups=5)
    for c_out in (5, 10):
        w = random_array(rng, (c_out, 1, 6, 4), np.float32)
        chosen = plan(x.shape, w.shape, **args)
        # a channel multiplier's forward runs the implicit GEMM at any stride
        assert chosen.forward == ("depthwise-rows" if c_out == 5 else "implicit")
        assert chosen.input_grad == ("depthwise-rows" if c_out == 5 else "depthwise-planar")
        expected, g, (tgx, tgw) = torch_grads(lambda a, b: tF.conv2d(a, b, **args), [x, w], 3)
        assert_close(F.conv2d(x, w, **args), expected, "forward")
        gx, gw, _ = F.conv_backward(g, x, w, with_bias=False, **args)
        assert_close(gx, tgx, "input gradient")
        assert_close(gw, tgw, "weight gradient")
    with config.engine_settings(planar_max_waste=100):
        assert plan(x.shape, (5, 1, 6, 4), **args).forward == "depthwise-planar"


@pytest.mark.usefixtures("wide_depthwise_defaults")
def test_narrow_depthwise_rows_take_the_planar_kernels() -> None:
    """Output rows 2-4 wide on a tall map: the row kernels would compute a whole vector per row,
    more than the planar loops' padding wastes, so the planar kernels serve the gradients, and
    every pass unless they run channels-last (8 channels, 108 output pixels: its tiles run
    across the rows of so narrow a map); all match torch. The shapes waste more than
    ``planar_max_waste`` (2, pinned) in the planar loops and less than the row kernels at
    either vector width (AVX2's 8 lanes, AVX-512's 16)."""
    rng = np.random.default_rng(4)
    for shape, kernel, args in (((2, 8, 60, 10), (4, 5), dict(dilation=2, groups=8)),
                                ((1, 6, 40, 7), (5, 5), dict(groups=6))):
        x = random_array(rng, shape, np.float32)
        w = random_array(rng, (shape[1], 1, *kernel), np.float32)
        chosen = plan(x.shape, w.shape, **args)
        assert chosen.forward in ("depthwise-planar", "depthwise-channels-last")
        assert chosen.input_grad in ("depthwise-planar", "depthwise-channels-last")
        expected, g, (tgx, tgw) = torch_grads(lambda a, b, args=args: tF.conv2d(a, b, **args), [x, w], 4)
        assert_close(F.conv2d(x, w, **args), expected, "forward")
        gx, gw, _ = F.conv_backward(g, x, w, with_bias=False, **args)
        assert_close(gx, tgx, "input gradient")
        assert_close(gw, tgw, "weight gradient")


@pytest.mark.usefixtures("wide_depthwise_defaults")
def test_depthwise_planes_past_64_pixels_take_the_planar_kernels() -> None:
    """Output planes of 540 pixels in rows of 12 (6x6 dilation 3): the planar loops compute
    2.25 positions per pixel kept (more than ``planar_max_waste``, 2, pinned, and than the
    row kernels' whole vectors at either width), but the row kernels' rows of 12 run
    scalar, so the planar kernels serve every pass (10 planes: too few for channels-last);
    all match torch."""
    rng = np.random.default_rng(6)
    x = random_array(rng, (2, 5, 60, 27), np.float32)
    w = random_array(rng, (5, 1, 6, 6), np.float32)
    args = dict(dilation=3, groups=5)
    chosen = plan(x.shape, w.shape, **args)
    assert (chosen.forward, chosen.input_grad, chosen.weight_grad) == ("depthwise-planar",) * 3
    expected, g, (tgx, tgw) = torch_grads(lambda a, b: tF.conv2d(a, b, **args), [x, w], 6)
    assert_close(F.conv2d(x, w, **args), expected, "forward")
    gx, gw, _ = F.conv_backward(g, x, w, with_bias=False, **args)
    assert_close(gx, tgx, "input gradient")
    assert_close(gw, tgw, "weight gradient")


def test_depthwise_forwards_on_small_maps_run_channels_last() -> None:
    """6x6 output planes of 96 channels: the forward and both gradients run channels-last; all
    match torch, the bias and a dilation included."""
    rng = np.random.default_rng(4)
    x = random_array(rng, (3, 96, 8, 8), np.float32)
    w = random_array(rng, (96, 1, 5, 5), np.float32)
    b = random_array(rng, (96,), np.float32)
    args = dict(stride=1, padding=3, dilation=2, groups=96)
    chosen = plan(x.shape, w.shape, **args)
    assert chosen.forward == "depthwise-channels-last"
    assert chosen.input_grad == chosen.weight_grad == "depthwise-channels-last"
    expected, g, (tgx, tgw, _) = torch_grads(lambda *t: tF.conv2d(*t, **args), [x, w, b], 4)
    assert_close(F.conv2d(x, w, b, **args), expected, "forward")
    gx, gw, _ = F.conv_backward(g, x, w, with_bias=True, **args)
    assert_close(gx, tgx, "input gradient")
    assert_close(gw, tgw, "weight gradient")


@pytest.mark.usefixtures("wide_depthwise_defaults")
def test_channels_last_serves_planes_up_to_its_pixel_limit() -> None:
    """The forward runs channels-last on planes of up to ``channels_last_pixels`` output pixels
    whatever the channel count (its blocks take consecutive planes of all the images), from
    ``channels_last_planes`` planes in all (``channels_last_channels`` when lowered):
    102x4 and 33x33 output planes do, 65x65 do not; 64 planes do not, 400 do; 5 channels of
    two images do (at 8), of one image not. A block of more than ``channels_last_block_bytes``
    (64 planes of a 68x68 padded map: 1.2 MiB) runs planar (there 0.9x the channels-last
    time). The forward matches torch."""
    def forward(n: int, c: int, hw: tuple[int, int]) -> str:
        return plan((n, c, *hw), (c, 1, 4, 4), stride=2, padding=1, groups=c).forward

    assert config.engine.channels_last_channels == 8
    assert config.engine.channels_last_planes == 384  # the fixture's
    assert forward(2, 200, (205, 9)) == "depthwise-channels-last"
    assert forward(2, 32, (205, 9)) == "depthwise-planar"
    assert forward(2, 278, (66, 66)) == "depthwise-planar"
    with config.engine_settings(channels_last_block_bytes=2 << 20):
        assert forward(2, 278, (66, 66)) == "depthwise-channels-last"
        assert forward(2, 278, (130, 130)) != "depthwise-channels-last"
        with config.engine_settings(channels_last_pixels=400):
            assert forward(2, 278, (66, 66)) != "depthwise-channels-last"
    with config.engine_settings(channels_last_block_bytes=0):  # only where planar serves
        assert forward(2, 200, (205, 9)) == "depthwise-planar"
        assert forward(2, 32, (8, 12)) == "depthwise-channels-last"  # 4x6: the row kernels'
    # 250 planes, but output rows of two pixels: the planar loops' rows are the padded ones
    assert plan((5, 50, 53, 8), (50, 1, 7, 4), dilation=2,
                groups=50).forward == "depthwise-channels-last"
    with config.engine_settings(channels_last_planes=8):
        assert forward(2, 32, (205, 9)) == "depthwise-channels-last"
        assert forward(2, 5, (20, 20)) == "depthwise-channels-last"
        assert forward(1, 5, (20, 20)) != "depthwise-channels-last"
    rng = np.random.default_rng(8)
    x = random_array(rng, (2, 200, 205, 9), np.float32)
    w = random_array(rng, (200, 1, 4, 4), np.float32)
    args = dict(stride=2, padding=1, groups=200)
    assert plan(x.shape, w.shape, **args).forward == "depthwise-channels-last"
    assert_close(F.conv2d(x, w, **args), tF.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                                  **args), "forward")


@pytest.mark.usefixtures("wide_depthwise_defaults")
def test_channels_last_needs_its_padded_block_to_fit() -> None:
    """A stride that reaches far for a few outputs would make the channels-last block's padded
    copy huge (here 16003 x 16003 pixels of 64 channels): the plane kernels serve instead.
    Only shapes are planned, nothing is allocated."""
    huge = plan((1, 64, 20000, 20000), (64, 1, 3, 3), stride=4000, groups=64)
    assert huge.forward != "depthwise-channels-last"
    assert plan((1, 400, 9, 9), (400, 1, 3, 3), padding=1, groups=400).forward \
        == "depthwise-channels-last"


def test_channel_multiplier_forwards_run_as_grouped_gemms() -> None:
    """A depthwise convolution with a channel multiplier and a kernel larger than 1x1: its
    forward is a GEMM of ``multiplier`` rows per input channel (implicit) at any stride, the
    gradients on the depthwise kernels; a 1x1 one scales channels (the 1x1 kernels, every
    pass); all match torch, a dilation and padding included."""
    rng = np.random.default_rng(5)
    x = random_array(rng, (2, 6, 17, 19), np.float32)
    cases = [((18, 1, 3, 5), dict(padding=(2, 1), dilation=(1, 2)), "implicit"),
             ((12, 1, 1, 1), dict(), "pointwise"),
             ((12, 1, 1, 1), dict(stride=2), "pointwise"),
             ((12, 1, 3, 3), dict(stride=2, padding=1), "implicit"),
             ((12, 1, 3, 7), dict(stride=(2, 3), dilation=2), "implicit")]
    for w_shape, args, expected_forward in cases:
        w = random_array(rng, w_shape, np.float32)
        chosen = plan(x.shape, w.shape, groups=6, **args)
        assert chosen.forward == expected_forward
        if expected_forward == "pointwise":
            assert (chosen.input_grad, chosen.weight_grad) == ("pointwise", "pointwise")
        else:
            assert chosen.input_grad.startswith("depthwise")
        conv = lambda a, b, args=args: tF.conv2d(a, b, groups=6, **args)  # noqa: E731
        expected, g, (tgx, tgw) = torch_grads(conv, [x, w], 6)
        assert_close(F.conv2d(x, w, groups=6, **args), expected, "forward")
        gx, gw, _ = F.conv_backward(g, x, w, groups=6, with_bias=False, **args)
        assert_close(gx, tgx, "input gradient")
        assert_close(gw, tgw, "weight gradient")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), groups=st.integers(1, 9),
       hw=st.tuples(st.integers(1, 40), st.integers(1, 40)), per_group=st.sampled_from(
           [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (4, 1), (3, 5)]),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), bias=st.booleans(),
       special=st.sampled_from(["none", "inf", "nan"]), seed=st.integers(0, 2**16))
def test_1x1_forwards_of_few_channels_per_group_sum_rows_in_place(
        n: int, groups: int, hw: tuple[int, int], per_group: tuple[int, int],
        stride: tuple[int, int], padding: tuple[int, int], bias: bool, special: str,
        seed: int) -> None:
    """1x1 forwards with few channels per group (depthwise ones with any multiplier, stride
    and padding, read in place: no stride phase is copied out first; grouped ones of one
    output channel a group, or two at a stride along the width, or of at most
    ``pointwise_few_macs`` products a pixel at stride 1 along the width) against torch:
    outputs in the padding the bias alone, inf and NaN inputs non-finite exactly where torch's
    are, and a depthwise one without a bias the very products."""
    from convlayers.functional._engine_pointwise import _few
    from convlayers.functional.conv import conv_spec

    cig, cog = per_group
    rng = np.random.default_rng(seed)
    x = random_array(rng, (n, groups * cig, *hw), np.float32)
    if special != "none":
        x.reshape(-1)[rng.integers(0, x.size, 3)] = np.inf if special == "inf" else np.nan
    x.reshape(-1)[rng.integers(0, x.size, 2)] = -0.0
    w = random_array(rng, (groups * cog, cig, 1, 1), np.float32)
    b = random_array(rng, (groups * cog,), np.float32) if bias else None
    args = dict(stride=stride, padding=padding, groups=groups)
    assert plan(x.shape, w.shape, **args).forward == "pointwise"
    spec = conv_spec(x, w, None, stride, padding, 1, groups, "zeros")
    g = geometry(x.shape, w.shape, spec.stride, spec.dilation, groups, spec.pairs,
                 spec.out_shape, np.float32)
    assert _few(g) == (cig == 1 or cog == 1 or (cog == 2 and stride[1] > 1) or (
        stride[1] == 1 and cig * cog <= config.engine.pointwise_few_macs))
    y = F.conv2d(x, w, b, **args)
    t = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                  None if b is None else torch.from_numpy(b), **args).numpy()
    assert y.shape == t.shape
    np.testing.assert_array_equal(np.isnan(y), np.isnan(t))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(t))
    finite = np.isfinite(t)
    if bias or cig > 1:
        assert_close(y[finite], t[finite], "1x1 forward, few channels per group")
    else:  # one rounding each: the same values (torch's paths differ in the sign of zero)
        np.testing.assert_array_equal(y[finite], t[finite])


_ROW_PATHS = [((1, 1), (0, 0)), ((1, 1), (2, 0)), ((1, 1), (1, 2)), ((2, 1), (1, 1))]


@pytest.mark.parametrize(("per_group", "stride", "padding"), [
    ((1, 1), (2, 1), (1, 0)),
    *[((1, 3), s, p) for s, p in [*_ROW_PATHS, ((2, 3), (0, 1))]],
    *[(pg, s, p) for pg in [(2, 2), (4, 1)] for s, p in _ROW_PATHS]])
def test_each_path_of_the_in_place_1x1_sum_matches_torch(
        per_group: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> None:
    """1x1 layers of few channels per group (depthwise, with and without a multiplier, and
    grouped) take the 1x1 strategy for every pass, and the in-place sums' paths, each taken for
    sure: whole rows as one flat run (stride 1, no column padding), rows with padded columns,
    strided rows (depthwise only: grouped layers strided along the width take the register
    tiles); a bias; against torch, and the gradients too (the input's as the transposed sums,
    the weights' one dot product each)."""
    from convlayers.functional._engine_pointwise import _few
    from convlayers.functional.conv import conv_spec

    cig, cog = per_group
    rng = np.random.default_rng(sum(per_group) + sum(stride) + sum(padding))
    x = random_array(rng, (3, 5 * cig, 17, 23), np.float32)
    w = random_array(rng, (5 * cog, cig, 1, 1), np.float32)
    b = random_array(rng, (5 * cog,), np.float32)
    args = dict(stride=stride, padding=padding, groups=5)
    chosen = plan(x.shape, w.shape, **args)
    assert (chosen.forward, chosen.input_grad, chosen.weight_grad) == ("pointwise",) * 3
    spec = conv_spec(x, w, None, stride, padding, 1, 5, "zeros")
    assert _few(geometry(x.shape, w.shape, spec.stride, spec.dilation, 5, spec.pairs,
                         spec.out_shape, np.float32))
    expected, g, (tgx, tgw, tgb) = torch_grads(
        lambda a, c, d: tF.conv2d(a, c, d, **args), [x, w, b], 3)
    assert_close(F.conv2d(x, w, b, **args), expected, "in-place 1x1 sum")
    gx, gw, gb = F.conv_backward(g, x, w, **args)
    assert_close(gx, tgx, "input gradient")
    assert_close(gw, tgw, "weight gradient")
    assert_close(gb, tgb, "bias gradient")


def test_winograd_tile_and_backward_thresholds_follow_the_settings() -> None:
    """``winograd_min_tiles`` (2x2 output tiles in the call) and ``winograd_backward``, and
    their defaults (None): 768 tiles on any machine; no backward with 64-byte vectors, else
    the backward of the layers whose forward takes Winograd."""
    from convlayers.kernels.simd import VECTOR_BYTES

    few, many = (2, 64, 28, 28), (8, 64, 28, 28)  # 392 and 1568 tiles
    w = (64, 64, 3, 3)
    with config.engine_settings(winograd_min_tiles=1000, winograd_backward=False):
        assert plan(few, w, padding=1).forward != "winograd"
        assert plan(many, w, padding=1).forward == "winograd"
        assert plan(many, w, padding=1).input_grad != "winograd"
    with config.engine_settings(winograd_min_tiles=0, winograd_backward=True):
        p = plan(few, w, padding=1)
        assert (p.forward, p.input_grad, p.weight_grad) == ("winograd",) * 3
    wide = VECTOR_BYTES == 64
    assert plan(few, w, padding=1).forward != "winograd"
    assert plan(many, w, padding=1).forward == "winograd"
    assert (plan(many, w, padding=1).input_grad == "winograd") == (not wide)
    assert plan(few, w, padding=1).input_grad != "winograd"  # its forward is not Winograd's
    with pytest.raises(TypeError, match="winograd_backward must be a bool or None"):
        config.engine.winograd_backward = 1  # type: ignore[assignment]
    with pytest.raises(ValueError, match="winograd_min_tiles must be >= 0"):
        config.engine.winograd_min_tiles = -1


@pytest.mark.parametrize("tiled_below", [0, 1 << 30])
def test_1x1_weight_gradient_on_both_kernels_matches_torch(tiled_below: int) -> None:
    """The 1x1 weight gradient as dot products along the pixel columns, or on the register
    tiles with the output gradient's columns transposed (``pointwise_weight_grad_tiled_columns``
    says which): torch's gradient either way, grouped, strided, on maps of 1 to 400 pixels
    and with several units per image; output channels and columns that fill the in-register
    transposes' square blocks and end inside one."""
    rng = np.random.default_rng(9)
    cases = [((5, 24, 3, 3), (40, 24, 1, 1), 1, 1), ((2, 12, 20, 20), (18, 4, 1, 1), 1, 3),
             ((3, 16, 9, 7), (8, 16, 1, 1), 2, 1), ((4, 10, 1, 1), (7, 10, 1, 1), 1, 1),
             ((3, 20, 12, 12), (37, 20, 1, 1), 1, 1), ((2, 32, 10, 10), (64, 16, 1, 1), 1, 2)]
    with config.engine_settings(pointwise_weight_grad_tiled_columns=tiled_below,
                                pointwise_block_bytes=4096):
        for x_shape, w_shape, stride, groups in cases:
            x = random_array(rng, x_shape, np.float32)
            w = random_array(rng, w_shape, np.float32)
            assert plan(x_shape, w_shape, stride=stride, groups=groups).weight_grad == "pointwise"

            def f(a: torch.Tensor, b: torch.Tensor, s: int = stride, g: int = groups) -> torch.Tensor:
                return tF.conv2d(a, b, stride=s, groups=g)
            _, gy, (_, gw) = torch_grads(f, [x, w])
            ours = F.conv_backward(gy, x, w, stride=stride, groups=groups, with_bias=False)[1]
            assert_close(ours, gw, f"1x1 weight gradient {x_shape} {w_shape}")


def test_winograd_forward_needs_the_channels_its_transforms_pay_for() -> None:
    """The harmonic mean of the channels per group (``winograd_harmonic_channels``, more on
    small maps) and its default (None): 64 on any machine."""
    thin, even = ((32, 48, 28, 28), (256, 48, 3, 3)), ((32, 48, 28, 28), (48, 48, 3, 3))
    assert plan(*thin, padding=1).forward == "winograd"  # a mean of 81 (48 and 256)
    assert plan(*even, padding=1).forward != "winograd"  # a mean of 48
    with config.engine_settings(winograd_harmonic_channels=90):
        assert plan(*thin, padding=1).forward != "winograd"
    with config.engine_settings(winograd_harmonic_channels=80):
        assert plan(*thin, padding=1).forward == "winograd"
        assert plan(*even, padding=1).forward != "winograd"
        small = ((32, 48, 14, 14), (256, 48, 3, 3))  # 14 rows: the small-map mean (96) applies
        assert plan(*small, padding=1).forward != "winograd"
        with config.engine_settings(winograd_small_map=14):
            assert plan(*small, padding=1).forward == "winograd"
        grouped = ((32, 96, 28, 28), (512, 48, 3, 3))  # 48 -> 256 per group, as ``thin``
        assert plan(*grouped, padding=1, groups=2).forward == "winograd"
    with config.engine_settings(winograd_harmonic_channels=0):
        assert plan(*even, padding=1).forward == "winograd"


def test_tall_narrow_maps_run_with_their_axes_swapped() -> None:
    """A 1x7 dilation-2 kernel on 61x12 maps: the implicit GEMM on phase planes computes 24
    positions per output row of 12 (its dropped positions), and on column planes copies each
    pixel 7 times (a 1-tall kernel shares no copy); with height and width swapped it drops
    none, so the call runs on transposed planes (every pass); the plan says so. The 7x7
    kernel there runs on column planes instead (0.31 ms against 0.36 swapped). A square map,
    a forced strategy and a 1-D call keep their axes. Forward and gradients match torch."""
    from convlayers.functional.plan import column_planes, geometry, swaps_axes

    rng = np.random.default_rng(4)
    x = random_array(rng, (1, 40, 61, 12), np.float32)
    w = random_array(rng, (16, 40, 1, 7), np.float32)
    args = dict(padding=(0, 6), dilation=2)
    p = plan(x.shape, w.shape, **args)
    assert "height and width swapped" in p.spec and p.forward == "implicit"
    assert swaps_axes(geometry(x.shape, w.shape, (1, 1), (2, 2), 1, ((0, 0), (6, 6)), (61, 12),
                               np.float32))
    pairs = ((4, 4), (6, 6))
    square = geometry(x.shape, (16, 40, 7, 7), (1, 1), (2, 2), 1, pairs, (57, 12), np.float32)
    assert not swaps_axes(square) and column_planes(square)
    assert not swaps_axes(geometry((1, 40, 40, 40), (16, 40, 7, 7), (1, 1), (2, 2), 1, pairs,
                                   (36, 40), np.float32))
    with config.engine_settings(force="implicit"):
        assert "swapped" not in plan(x.shape, w.shape, **args).spec
    # a layer the model prices at 96% swapped (column planes both ways) keeps its axes
    # (``swap_axes_percent``): 222->162 3x6 on 1x222x14x14 ran 1.89x the unswapped time
    # swapped (phase planes both ways, 88%); a looser setting swaps it
    modest = geometry((1, 222, 14, 14), (162, 222, 3, 6), (1, 1), (1, 1), 1, ((1, 1), (1, 1)),
                      (14, 11), np.float32)
    assert not swaps_axes(modest)
    with config.engine_settings(swap_axes_percent=100):
        assert swaps_axes(modest)
    assert "swapped" not in plan((1, 40, 12), (16, 40, 7), padding=6, dilation=2).spec
    assert F.plan(x.shape, w.shape, **args).forward == "implicit"
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    y = F.conv2d(x, w, **args)
    assert_close(y, tF.conv2d(tx, tw, **args), "forward")
    gy = random_array(rng, y.shape, np.float32)
    gx, gw, _ = F.conv_backward(gy, x, w, stride=1, with_bias=False, **args)
    xs, ws = tx.clone().requires_grad_(), tw.clone().requires_grad_()
    tF.conv2d(xs, ws, **args).backward(torch.from_numpy(gy))
    assert_close(gx, xs.grad, "grad_input")
    assert_close(gw, ws.grad, "grad_weight")


@pytest.mark.usefixtures("without_winograd_backward")
def test_the_implicit_weight_gradient_needs_positions_for_its_gradient() -> None:
    """The implicit weight gradient adds each unit's product onto a per-thread copy of the whole
    gradient: 256 -> 256 3x3 on one 14x14 map (3009 gradient elements a position) takes
    lowered (implicit ran 3.4x its time), 64 -> 64 on 28x28 (47) keeps implicit; at stride 2
    only a gradient past ``implicit_weight_grad_bytes`` does (443 -> 90 7x7: 7.8 MB, 5.9x).
    The gradients match torch."""
    assert plan((1, 256, 14, 14), (256, 256, 3, 3), padding=1).weight_grad == "lowered"
    assert plan((1, 64, 28, 28), (64, 64, 3, 3), padding=1).weight_grad == "implicit"
    assert plan((1, 443, 7, 44), (90, 443, 7, 7), stride=2, padding=(1, 2)).weight_grad == "lowered"
    assert plan((1, 64, 56, 56), (90, 64, 7, 7), stride=2, padding=3).weight_grad == "implicit"
    with config.engine_settings(implicit_weight_grad_elements=10**6,
                                implicit_weight_grad_bytes=2**40):
        assert plan((1, 256, 14, 14), (256, 256, 3, 3), padding=1).weight_grad == "implicit"
        assert plan((1, 443, 7, 44), (90, 443, 7, 7), stride=2,
                    padding=(1, 2)).weight_grad == "implicit"
    rng = np.random.default_rng(9)
    x = random_array(rng, (1, 256, 14, 14), np.float32)
    w = random_array(rng, (256, 256, 3, 3), np.float32)
    gy = random_array(rng, (1, 256, 14, 14), np.float32)
    _, gw, _ = F.conv_backward(gy, x, w, padding=1, with_bias=False)
    tw = torch.from_numpy(w).requires_grad_()
    tF.conv2d(torch.from_numpy(x), tw, padding=1).backward(torch.from_numpy(gy))
    assert_close(gw, tw.grad, "grad_weight")


def test_maps_of_a_few_windows_take_the_merged_lowered_gradients() -> None:
    """Two images or more with at most ``merged_gradient_positions`` output positions each:
    a depthwise layer with a channel multiplier takes the lowered gradients (one product over
    all the images), a plain depthwise one keeps its own kernels, and the merged units serve
    up to ``merged_gradient_groups`` groups only; one image never merges."""
    from convlayers.functional._engine_lowered import _merged_gradient_block

    multiplier = plan((15, 49, 19, 19), (147, 1, 7, 7), stride=3, dilation=3, groups=49)
    assert (multiplier.input_grad, multiplier.weight_grad) == ("lowered", "lowered")
    alone = plan((1, 49, 19, 19), (147, 1, 7, 7), stride=3, dilation=3, groups=49)
    assert alone.input_grad != "lowered"
    plain = plan((16, 64, 5, 5), (64, 1, 3, 3), stride=2, groups=64)
    assert plain.input_grad.startswith("depthwise")

    def block(n: int, hw: int, groups: int) -> int:
        g = geometry((n, 64, hw, hw), (64, 64 // groups, 3, 3), (1, 1), (1, 1), groups,
                     ((0, 0), (0, 0)), (hw - 2, hw - 2), np.float32)
        return _merged_gradient_block(g, 2)

    e = config.engine
    side = math.isqrt(e.merged_gradient_positions)
    assert block(4, side + 2, 1) > 0 and block(4, side + 2, e.merged_gradient_groups) > 0
    assert block(4, side + 3, 1) == 0  # (side+1)^2 positions: too many
    assert block(1, side + 2, 1) == 0
    assert block(4, side + 2, 2 * e.merged_gradient_groups) == 0


def test_one_image_of_a_few_positions_takes_im2col_forward() -> None:
    """A dense forward of one image with at most ``lowered_batch1_positions`` output positions
    takes ``lowered`` (the implicit GEMM's dropped columns and masked tiles dominate there);
    with the rule off, the cost model's implicit GEMM; and the result matches torch."""
    shapes = ((1, 244, 8, 8), (4, 244, 7, 7))
    assert plan(*shapes, stride=3).forward == "lowered"
    with config.engine_settings(lowered_batch1_positions=0):
        assert plan(*shapes, stride=3).forward == "implicit"
    rng = np.random.default_rng(30)
    x, w = random_array(rng, shapes[0], np.float32), random_array(rng, shapes[1], np.float32)
    assert_close(F.conv2d(x, w, stride=3),
                 tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=3), "batch 1, 2x2")


def test_large_strided_input_gradients_with_thick_phases_take_the_implicit_gemm() -> None:
    """Ungrouped strided input gradients of few output channels on maps of 400 positions or
    more whose largest stride phase takes 9 taps (6x6 stride 2, 7x7 stride 3) run one implicit
    forward per phase; phases of 4 taps (3x3 stride 2) and grouped layers stay lowered; and the
    phased gradient matches torch."""
    assert plan((1, 186, 65, 65), (16, 186, 6, 6), stride=2, padding=2).input_grad == "implicit"
    assert plan((7, 9, 113, 113), (5, 9, 7, 7), stride=3, padding=(2, 1)).input_grad == "implicit"
    assert plan((3, 209, 73, 73), (12, 209, 3, 3), stride=2, padding=1).input_grad == "lowered"
    assert plan((1, 192, 65, 65), (32, 48, 6, 6), stride=2, padding=2,
                groups=4).input_grad == "lowered"
    rng = np.random.default_rng(31)
    x = random_array(rng, (2, 9, 68, 66), np.float32)
    w = random_array(rng, (5, 9, 7, 7), np.float32)
    assert plan(x.shape, w.shape, stride=3, padding=(2, 1)).input_grad == "implicit"
    _, gy, (gx, _) = torch_grads(lambda x, w: tF.conv2d(x, w, stride=3, padding=(2, 1)),
                                 [x, w])
    assert_close(F.conv_backward(gy, x, w, stride=3, padding=(2, 1))[0], gx, "phased gradient")


def test_the_depthwise_defaults_follow_the_vector_width() -> None:
    """``channels_last_planes`` and ``planar_max_waste`` default (None) to 384 and 2 where the
    kernels run 64-byte vectors, else 512 and 8: 400 planes of 7x7 take channels-last with
    AVX-512 only, and a 4x6 output plane (2.7 positions computed a pixel) the planar kernels
    with AVX2 only."""
    from convlayers.kernels.simd import VECTOR_BYTES

    assert config.engine.channels_last_planes is None and config.engine.planar_max_waste is None
    wide = VECTOR_BYTES == 64
    many = plan((1, 400, 9, 9), (400, 1, 3, 3), padding=1, groups=400)
    assert (many.forward == "depthwise-channels-last") == wide
    tiny = plan((1, 5, 8, 13), (5, 1, 6, 4), stride=2, padding=(7, 4), dilation=3, groups=5)
    assert tiny.forward == ("depthwise-rows" if wide else "depthwise-planar")
    with pytest.raises(ValueError, match="planar_max_waste"):
        config.engine.planar_max_waste = -1
