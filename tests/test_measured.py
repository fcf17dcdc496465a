"""One-time measurements of a dense layer's strategy where the planner cannot be sure
(``convlayers.functional._measured``)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from convlayers import config
from convlayers import functional as F
from convlayers.functional import _measured
from convlayers.functional.plan import Geometry, choose, geometry
from oracle import assert_close, random_array

# 140->208 6x6 stride 3 on 1x140x29x29: the model's two costs within 2% of each other
X_SHAPE, W_SHAPE, PAIRS, OUT = (1, 140, 29, 29), (208, 140, 6, 6), ((2, 2), (2, 2)), (10, 10)


def _geometry() -> object:
    return geometry(X_SHAPE, W_SHAPE, (3, 3), (1, 1), 1, PAIRS, OUT, np.float32)


@pytest.fixture(autouse=True)
def _timed_runs_only():  # type: ignore[no-untyped-def]
    """The tests here count a measurement's runs and rounds: no untimed warm-up runs
    (``measure_warm_ms``), except where a test sets them itself."""
    with config.engine_settings(measure_warm_ms=0):
        yield


def test_the_fastest_strategy_is_kept_and_asked_only_once() -> None:
    """A forward's first call takes the planner's choice and runs nothing; on the second every
    candidate runs ``measure_rounds`` times and the fastest is remembered for the geometry; a later
    call runs nothing. Whichever of the three is fast wins. While training
    (``on_first_call``) and for a gradient the first call measures."""
    g = _geometry()
    names = _measured.candidates(g, "implicit")
    assert names == ("implicit", "lowered", "direct")
    for fast in names:
        _measured.forget_measurements()
        calls: list[str] = []

        def run(name: str, fast: str = fast, calls: list[str] = calls) -> None:
            calls.append(name)
            time.sleep(0 if name == fast else 0.02)  # past measure_quick_ms: measure_rounds

        assert _measured.measured_strategy(g, "forward", "implicit", run) == "implicit"
        assert calls == [] and _measured.measured_choices() == {}
        assert _measured.measured_strategy(g, "forward", "implicit", run) == fast
        assert sorted(calls) == sorted(list(names) * config.engine.measure_rounds)
        assert _measured.measured_choices() == {("forward", g, config.engine_version(),
                                                  config.threads()): fast}
        assert _measured.measured_strategy(g, "forward", "implicit", run) == fast
        assert len(calls) == len(names) * config.engine.measure_rounds
    for pass_, planned, fast in (("forward", "implicit", "direct"),
                                 ("input_grad", "implicit", "lowered"),
                                 ("weight_grad", "lowered", "implicit")):
        _measured.forget_measurements()
        calls.clear()

        def timed(name: str, fast: str = fast, calls: list[str] = calls) -> None:
            calls.append(name)
            time.sleep(0 if name == fast else 0.02)

        if pass_ == "forward":
            with _measured.on_first_call():
                assert _measured.measured_strategy(g, pass_, planned, timed) == fast
        else:
            assert _measured.measured_strategy(g, pass_, planned, timed) == fast
        assert len(calls) == len(_measured.candidates(g, planned, pass_)) * config.engine.measure_rounds
    _measured.forget_measurements()


def test_a_near_tie_keeps_the_planners_choice() -> None:
    """Another strategy must be clearly faster (by ``measure_tie_percent``): equal times keep
    the plan's."""
    g = _geometry()
    for planned in ("implicit", "lowered"):
        _measured.forget_measurements()
        with _measured.on_first_call():  # long enough that the sleeps' jitter is < 5%
            assert _measured.measured_strategy(g, "forward", planned,
                                               lambda name: time.sleep(0.02)) == planned
    _measured.forget_measurements()


def test_sure_choices_forced_strategies_and_small_calls_are_not_measured() -> None:
    g = _geometry()
    assert not _measured.unsure(g, "winograd")
    with config.engine_settings(measure_band=1):
        assert not _measured.unsure(g, "implicit")
    with config.engine_settings(force="implicit"):
        assert not _measured.unsure(g, "implicit")
    with config.engine_settings(measure_min_macs=10**12):
        assert not _measured.unsure(g, "implicit")
    # two output channels a group: the copies cost over ten times the dropped positions (and
    # 12 input channels a group are too few for the dot kernel's vectors)
    thin = geometry((4, 48, 30, 30), (8, 12, 3, 3), (1, 1), (1, 1), 4, None, (28, 28),
                    np.float32)
    assert thin.macs >= config.engine.measure_min_macs
    assert not _measured.unsure(thin, "implicit")


def test_the_engine_measures_a_layer_once_and_matches_torch() -> None:
    """conv2d of an unsure layer measures it on its second call (the plan then names the
    measured strategy), and every call matches torch."""
    _measured.forget_measurements()
    rng = np.random.default_rng(3)
    x = random_array(rng, X_SHAPE, np.float32)
    w = random_array(rng, W_SHAPE, np.float32)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=3, padding=2)
    assert "fastest as measured on the second call" in F.plan(X_SHAPE, W_SHAPE, 3, 2).spec
    assert_close(F.conv2d(x, w, stride=3, padding=2), expected, "first call")
    assert _measured.measured_choices() == {}
    assert_close(F.conv2d(x, w, stride=3, padding=2), expected, "second call")
    choices = _measured.measured_choices()
    assert list(choices) == [("forward", _geometry(), config.engine_version(), config.threads())]
    assert choices[next(iter(choices))] in ("implicit", "lowered", "direct", "dot")
    p = F.plan(X_SHAPE, W_SHAPE, 3, 2)
    assert "(measured)" in p.spec and p.forward == next(iter(choices.values()))
    assert_close(F.conv2d(x, w, stride=3, padding=2), expected, "later call")
    assert _measured.measured_choices() == choices
    _measured.forget_measurements()


def _same(x_shape: tuple[int, ...], w_shape: tuple[int, ...], groups: int = 1,
          dtype: type = np.float32) -> Geometry:
    """The geometry of a stride-1 layer padded to keep its (odd-kernel) map's size."""
    pads = tuple((k // 2, k // 2) for k in w_shape[2:])
    return geometry(x_shape, w_shape, (1, 1), (1, 1), groups, pads, x_shape[2:], dtype)


def test_direct_is_a_candidate_of_dense_float32_forwards_of_many_channels() -> None:
    """``direct`` joins a forward's candidates with one group, float32 and
    ``direct_min_channels`` input channels or more; forced, it matches torch and serves no
    input gradient (nor so both gradients) at stride 2."""
    least = config.engine.direct_min_channels
    assert "direct" in _measured.candidates(_same((2, 32, 20, 20), (48, 32, 5, 5)), "implicit")
    assert "direct" in _measured.candidates(_same((2, least, 40, 40), (48, least, 5, 5)),
                                            "implicit")
    for other in (_same((2, 32, 20, 20), (48, 8, 5, 5), groups=4),
                  _same((2, 32, 20, 20), (48, 32, 5, 5), dtype=np.float64),
                  _same((2, least - 1, 40, 40), (48, least - 1, 5, 5))):
        assert "direct" not in _measured.candidates(other, "implicit")
    rng = np.random.default_rng(6)
    x = random_array(rng, (2, 32, 20, 17), np.float32)
    w = random_array(rng, (70, 32, 5, 3), np.float32)
    b = random_array(rng, (70,), np.float32)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                         stride=(2, 1), padding=(3, 1), dilation=(1, 2))
    with config.engine_settings(force="direct"):
        got = F.conv2d(x, w, b, stride=(2, 1), padding=(3, 1), dilation=(1, 2))
        assert_close(got, expected, "direct forward")
        with pytest.raises(ValueError, match="direct computes an input gradient at stride 1 "
                                             "only"):
            F.conv_backward(np.ones_like(got), x, w, stride=(2, 1), padding=(3, 1),
                            dilation=(1, 2))


def test_a_stride_1_input_gradient_measures_the_forwards_of_the_flipped_weights() -> None:
    """A stride-1 transposed convolution (an input gradient alone) measures Winograd (3x3)
    and ``direct`` beside the gradient kernels, as forwards of the flipped weights; forced,
    each matches torch, and a non-finite weight gives torch's output (the forward would
    multiply the output gradient's zero padding by it: ``lowered`` runs instead). Not at
    stride 2, nor with padding wider than the kernel reaches."""
    from convlayers.functional.plan import full_geometry

    def transposed(c_in: int, c_out: int, k: int, stride: int, pad: int) -> Geometry:
        # conv_transpose from c_in to c_out channels: the input gradient of a conv c_out -> c_in
        h = 9
        ho = (h - 1) * stride - 2 * pad + k
        return geometry((2, c_out, ho, ho), (c_in, c_out, k, k), (stride, stride), (1, 1), 1,
                        ((pad, pad), (pad, pad)), (h, h), np.float32)

    g = transposed(40, 48, 3, 1, 1)
    full = full_geometry(g)
    assert (full.c_in, full.c_out, full.h, full.ho, full.pt) == (40, 48, 9, 9, 1)
    assert _measured.candidates(g, "implicit", "input_grad") == (
        "implicit", "lowered", "winograd", "direct")
    assert _measured.candidates(transposed(40, 48, 4, 1, 1), "implicit", "input_grad") == (
        "implicit", "lowered", "direct")
    assert "direct" not in _measured.candidates(transposed(40, 48, 3, 2, 1), "implicit",
                                                "input_grad")
    with config.engine_settings(force="direct"), \
            pytest.raises(ValueError, match="padding wider than the kernel"):
        F.conv_transpose2d(np.ones((1, 4, 6, 6), np.float32), np.ones((4, 4, 3, 3), np.float32),
                           padding=3)
    rng = np.random.default_rng(8)
    x = random_array(rng, (2, 40, 9, 8), np.float32)
    for k, pad in ((3, 1), (4, 2), (3, 0)):
        w = random_array(rng, (40, 48, k, k), np.float32)
        expected = tF.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), padding=pad)
        bad = w.copy()
        bad[3, 5, 0, k - 1] = np.inf
        bad[7, 2, 1, 1] = np.nan
        with np.errstate(invalid="ignore"):
            bad_expected = tF.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(bad),
                                               padding=pad).numpy()
        for name in ("direct", "winograd") if k == 3 else ("direct",):
            with config.engine_settings(force=name):
                assert_close(F.conv_transpose2d(x, w, padding=pad), expected, f"{name} {k} {pad}")
                got = F.conv_transpose2d(x, bad, padding=pad)
                assert np.array_equal(np.isnan(got), np.isnan(bad_expected)), (name, k, pad)
                assert np.array_equal(np.isinf(got), np.isinf(bad_expected)), (name, k, pad)
                finite = np.isfinite(bad_expected)
                assert_close(got[finite], bad_expected[finite], f"{name} {k} {pad} finite")


@pytest.mark.parametrize("c_out", [5, 16, 17, 32, 33, 48, 49])
def test_direct_packs_few_output_channels_in_strips_of_their_vectors(c_out: int) -> None:
    """At most two vectors of output channels (three with AVX-512) pack into strips of those
    vectors only (the tall tiles read no further); more take whole strips. Forced, every
    width matches torch (bias, stride, dilation, padding; one thread and two)."""
    from convlayers.functional._engine_direct import packed_width
    from convlayers.kernels.simd import VECTOR_BYTES, conv_strip

    lanes, strip = VECTOR_BYTES // 4, conv_strip() // 4
    width = packed_width(g := _same((2, 24, 11, 9), (c_out, 24, 3, 3)))
    assert width % lanes == 0 and width <= strip, g
    if c_out <= (3 if VECTOR_BYTES == 64 else 2) * lanes:  # whole vectors holding them
        assert c_out <= width < c_out + lanes
    else:
        assert width == strip
    rng = np.random.default_rng(c_out)
    x = random_array(rng, (2, 24, 11, 9), np.float32)
    w = random_array(rng, (c_out, 24, 3, 3), np.float32)
    b = random_array(rng, (c_out,), np.float32)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                         stride=(1, 2), padding=(2, 1), dilation=(2, 1))
    with config.engine_settings(force="direct"):
        for threads in (1, 2):
            with config.settings(threads=threads):
                got = F.conv2d(x, w, b, stride=(1, 2), padding=(2, 1), dilation=(2, 1))
                assert_close(got, expected, f"direct, {c_out} channels, {threads} threads")


def test_dot_is_a_candidate_of_forwards_of_few_output_and_many_input_channels() -> None:
    """``dot`` joins a forward's candidates with 16 or more input channels a group and at
    most 32 output channels a group or 16 output positions an image (any groups and float
    dtype); forced, it matches torch (bias, groups, stride, dilation, padding that swallows
    whole kernel rows, channels past a whole vector, a tile spanning two images, hundreds of
    output channels on a map of one position) and serves no gradient."""
    few = geometry((4, 413, 9, 9), (5, 413, 7, 7), (1, 1), (3, 3), 1, ((9, 9), (9, 9)),
                   (9, 9), np.float32)
    assert "dot" in _measured.candidates(few, "implicit")
    grouped = _same((2, 64, 12, 12), (16, 32, 3, 3), groups=2, dtype=np.float64)
    assert "dot" in _measured.candidates(grouped, "implicit")
    small_map = geometry((5, 64, 9, 9), (302, 32, 5, 5), (1, 1), (2, 2), 2, ((0, 0), (0, 0)),
                         (1, 1), np.float32)  # many output channels, one position an image
    assert "dot" in _measured.candidates(small_map, "lowered")
    assert "dot" in _measured.candidates(_same((1, 48, 4, 4), (100, 48, 3, 3)), "lowered")
    for other in (_same((2, 64, 12, 12), (66, 64, 3, 3)),  # too many output channels
                  _same((1, 48, 5, 5), (100, 48, 3, 3)),  # and 25 positions
                  _same((2, 60, 12, 12), (20, 15, 3, 3), groups=4)):  # too few input channels
        assert "dot" not in _measured.candidates(other, "implicit")
    rng = np.random.default_rng(8)
    for dtype, (x_shape, w_shape, stride, padding, dilation, groups) in [
            (np.float32, ((3, 70, 9, 8), (6, 35, 7, 3), (1, 2), (9, 2), (3, 1), 2)),
            (np.float64, ((2, 40, 5, 6), (6, 40, 3, 3), (2, 1), (1, 3), (1, 2), 1)),
            (np.float32, ((5, 64, 9, 9), (302, 32, 5, 5), (1, 1), (0, 0), (2, 2), 2)),
            (np.float32, ((5, 17, 3, 3), (3, 17, 2, 2), (1, 1), (0, 0), (1, 1), 1))]:
        x = random_array(rng, x_shape, dtype)
        w = random_array(rng, w_shape, dtype)
        b = random_array(rng, (w_shape[0],), dtype)
        expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                             stride, padding, dilation, groups)
        with config.engine_settings(force="dot"):
            for threads in (1, 2):
                with config.settings(threads=threads):
                    got = F.conv2d(x, w, b, stride, padding, dilation, groups)
                    assert_close(got, expected, f"dot forward {x_shape} {w_shape}, {threads}")
    with config.engine_settings(force="dot"), \
            pytest.raises(ValueError, match="dot computes the forward only"):
        F.conv_backward(np.ones_like(got), x, w)


@pytest.mark.usefixtures("without_winograd_backward")
def test_each_gradient_is_measured_once_and_matches_torch() -> None:
    """A dense layer's backward measures its input and weight gradients apart on its first
    call (the plan then names the measured strategies); every call matches torch's autograd."""
    _measured.forget_measurements()
    rng = np.random.default_rng(4)
    x = random_array(rng, (2, 31, 14, 14), np.float32)
    w = random_array(rng, (41, 31, 3, 3), np.float32)
    gy = random_array(rng, (2, 41, 12, 12), np.float32)
    xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    tF.conv2d(xt, wt).backward(torch.from_numpy(gy))
    # (and direct, as the forward of the flipped weights: stride 1; Winograd is off here)
    assert "input grad: implicit, lowered or direct" in F.plan(x.shape, w.shape).spec
    for call in ("first", "second"):
        gx, gw = F.conv_backward(gy, x, w)[:2]
        assert_close(gx, xt.grad, f"input gradient, {call} call")
        assert_close(gw, wt.grad, f"weight gradient, {call} call")
        assert sorted(key[0] for key in _measured.measured_choices()) == ["input_grad",
                                                                          "weight_grad"]
    p = F.plan(x.shape, w.shape)
    choices = {key[0]: name for key, name in _measured.measured_choices().items()}
    assert (p.input_grad, p.weight_grad) == (choices["input_grad"], choices["weight_grad"])
    assert p.spec.count("(measured)") == 2
    _measured.forget_measurements()


def test_a_transposed_convolution_measures_its_input_gradient() -> None:
    """conv_transpose2d runs a convolution's input gradient: measured on its first call,
    matching torch on every call; depthwise and small gradients are never measured."""
    _measured.forget_measurements()
    rng = np.random.default_rng(5)
    x = random_array(rng, (2, 123, 10, 10), np.float32)
    w = random_array(rng, (123, 78, 3, 3), np.float32)
    expected = tF.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)
    for call in ("first", "second"):
        assert_close(F.conv_transpose2d(x, w, padding=1), expected, f"{call} call")
        assert [key[0] for key in _measured.measured_choices()] == ["input_grad"]
    _measured.forget_measurements()
    depthwise = geometry((2, 64, 40, 40), (64, 1, 3, 3), (1, 1), (1, 1), 64, None, (38, 38),
                         np.float32)
    planned = choose(depthwise, "backward", 2)[0]
    assert planned.startswith("depthwise")
    assert not _measured.unsure(depthwise, planned, "input_grad")
    small = geometry((1, 4, 7, 7), (4, 4, 3, 3), (1, 1), (1, 1), 1, None, (5, 5), np.float32)
    assert small.macs < config.engine.measure_min_macs
    assert not _measured.unsure(small, "implicit", "weight_grad")


def test_a_swapped_layer_measures_direct_on_its_planes_as_they_are() -> None:
    """A forward the planner runs on transposed planes (a wide kernel on a narrow map) is
    measured against ``direct``, ``direct-planar`` (no padding, a thin output) and ``dot`` on
    the planes as given, which drop no positions; each call matches torch and the plan names
    the choice."""
    _measured.forget_measurements()
    rng = np.random.default_rng(7)
    x = random_array(rng, (1, 64, 40, 9), np.float32)
    w = random_array(rng, (16, 64, 4, 7), np.float32)
    g = geometry(x.shape, w.shape, (1, 1), (1, 1), 1, ((0, 0), (0, 0)), (37, 3), np.float32)
    assert _measured.candidates(g, _measured.SWAPPED) == (_measured.SWAPPED, "direct",
                                                          "direct-planar", "dot")
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w))
    assert ("or its forward by direct or direct-planar or dot as the planes are"
            in F.plan(x.shape, w.shape).spec)
    for call in ("first", "second", "later"):
        assert_close(F.conv2d(x, w), expected, f"{call} call")
    choice = _measured.remembered_choice(g)
    assert choice in (_measured.SWAPPED, "direct", "direct-planar", "dot")
    planned = F.plan(x.shape, w.shape).forward
    assert planned == choice if choice != _measured.SWAPPED else planned in ("implicit", "lowered")
    _measured.forget_measurements()


def test_a_quick_measurement_runs_more_rounds() -> None:
    """Runs that take no time get ``measure_max_rounds`` rounds; once the rounds so far took
    ``measure_quick_ms``, a measurement stops after ``measure_rounds`` of them (and never
    before)."""
    g = _geometry()
    names = _measured.candidates(g, "implicit")
    e = config.engine
    # the runs that take no time are held to no time by thresholds no stall of a loaded
    # machine reaches (a make test beside other jobs once stopped them after 3 rounds)
    idle = {"measure_quick_ms": 60_000, "measure_budget_ms": 600_000}
    for pause, rounds, settings in ((0.0, e.measure_max_rounds, idle),
                                    (e.measure_quick_ms / 1000 / len(names) / 2,
                                     e.measure_rounds, {})):
        calls: list[str] = []

        def run(name: str, pause: float = pause, calls: list[str] = calls) -> None:
            calls.append(name)
            time.sleep(pause)

        _measured.forget_measurements()
        with config.engine_settings(**settings), _measured.on_first_call():
            assert _measured.candidates(g, "implicit") == names
            _measured.measured_strategy(g, "forward", "implicit", run)
        assert sorted(calls) == sorted(list(names) * rounds), (pause, len(calls))
    assert e.measure_rounds < e.measure_max_rounds
    _measured.forget_measurements()


def test_a_slow_first_call_does_not_cut_a_quick_measurement() -> None:
    """A candidate's first call may load its kernels (hundreds of milliseconds): the rounds
    after it set the pace, so a quick layer still gets ``measure_max_rounds`` rounds, and the
    first call's time is not what decides."""
    g = _geometry()
    names = _measured.candidates(g, "implicit")
    calls: list[str] = []
    # a quick threshold and a budget no stall of a loaded machine reaches in the later rounds
    quick_ms = 500

    def run(name: str) -> None:
        calls.append(name)
        first = calls.count(name) == 1
        time.sleep(2 * quick_ms / 1000 if first and name == "lowered" else 0.0)

    _measured.forget_measurements()
    with config.engine_settings(measure_quick_ms=quick_ms, measure_budget_ms=600_000), \
            _measured.on_first_call():
        assert _measured.candidates(g, "implicit") == names
        _measured.measured_strategy(g, "forward", "implicit", run)
    assert sorted(calls) == sorted(list(names) * config.engine.measure_max_rounds), len(calls)
    _measured.forget_measurements()


def test_the_measurement_follows_its_settings() -> None:
    """The rounds, the tie and the candidates come from ``config.engine``: two rounds at most
    run two of each candidate; a tie of 100 percent keeps the planner's choice however slow;
    without room for ``direct`` and ``dot`` only the planner's pair is measured. A setting
    that leaves a measurement no runs is refused, naming the setting."""
    g = _geometry()
    names = _measured.candidates(g, "implicit")
    calls: list[str] = []

    def run(name: str) -> None:
        calls.append(name)
        time.sleep(0 if name == "lowered" else 0.002)

    with config.engine_settings(measure_rounds=2, measure_max_rounds=2):
        _measured.forget_measurements()
        with _measured.on_first_call():
            assert _measured.measured_strategy(g, "forward", "implicit", run) == "lowered"
        assert sorted(calls) == sorted(list(names) * 2)
    with config.engine_settings(measure_tie_percent=100):
        _measured.forget_measurements()
        with _measured.on_first_call():
            assert _measured.measured_strategy(g, "forward", "implicit", run) == "implicit"
    with config.engine_settings(direct_min_channels=10**6, dot_min_in_channels=10**6):
        assert _measured.candidates(g, "implicit") == ("implicit", "lowered")
    # 10 x 10 output positions: dot is a candidate from 100 of them, not from 99
    few = geometry((1, 140, 12, 12), (300, 140, 3, 3), (1, 1), (1, 1), 1, None, (10, 10),
                   np.float32)
    with config.engine_settings(dot_max_positions=100):
        assert "dot" in _measured.candidates(few, "implicit")
    with config.engine_settings(dot_max_positions=99):
        assert "dot" not in _measured.candidates(few, "implicit")
    for bad in ("measure_rounds", "measure_max_rounds"):
        with pytest.raises(ValueError, match=bad):
            setattr(config.engine, bad, 0)
    _measured.forget_measurements()


def test_a_measurement_of_slow_runs_stops_at_its_budget() -> None:
    """Once a round of runs passes ``measure_budget_ms``, the measurement ends, from the
    second round on: two runs of each candidate, the faster kept."""
    g = _geometry()
    calls: list[str] = []

    def run(name: str) -> None:
        calls.append(name)
        time.sleep(0.03 if name == "implicit" else 0.001)

    _measured.forget_measurements()
    with config.engine_settings(measure_budget_ms=2), _measured.on_first_call():
        assert _measured.measured_strategy(g, "forward", "implicit", run) != "implicit"
    assert sorted(calls) == sorted(_measured.candidates(g, "implicit") * 2)
    _measured.forget_measurements()


def test_a_first_run_that_loads_its_kernels_does_not_decide_past_the_budget() -> None:
    """A strategy's first call in a process may load its kernels: a layer whose first round
    passes the budget still runs a second, and the shortest run of each decides (one round
    kept the implicit GEMM here, where im2col's only slow run was its first)."""
    g = _geometry()
    seen: set[str] = set()

    def run(name: str) -> None:
        first = name not in seen
        seen.add(name)
        if name == "implicit":
            time.sleep(0.01)
        else:
            time.sleep(0.05 if first else 0.001)

    _measured.forget_measurements()
    with config.engine_settings(measure_budget_ms=2, direct_min_channels=10**6,
                                dot_min_in_channels=10**6), _measured.on_first_call():
        assert _measured.candidates(g, "implicit") == ("implicit", "lowered")
        assert _measured.measured_strategy(g, "forward", "implicit", run) == "lowered"
    _measured.forget_measurements()


def test_a_first_round_that_compiles_does_not_count_against_the_budget() -> None:
    """The budget counts the rounds after the first: one that compiled for longer than the
    budget still leaves ``measure_rounds`` rounds, so one slow run after it (a core waking up)
    does not decide (two rounds kept the implicit GEMM here)."""
    g = _geometry()
    runs: dict[str, int] = {}

    def run(name: str) -> None:
        runs[name] = runs.get(name, 0) + 1
        if name == "implicit":
            time.sleep(0.01)
        else:  # compiles, then one slow run, then quick
            time.sleep({1: 0.3, 2: 0.02}.get(runs[name], 0.001))

    _measured.forget_measurements()
    with config.engine_settings(measure_budget_ms=200, measure_rounds=3,
                                direct_min_channels=10**6, dot_min_in_channels=10**6), \
            _measured.on_first_call():
        assert _measured.measured_strategy(g, "forward", "implicit", run) == "lowered"
    assert runs["lowered"] >= 3
    _measured.forget_measurements()


def test_a_quick_candidate_is_timed_right_after_an_untimed_run_of_itself() -> None:
    """From the second round a candidate quicker than ``measure_warm_ms`` runs once untimed
    before its timed run: one that is slow only right after another strategy (its state
    cold) is timed warm and wins; timed cold (no warm-up runs), the steady one wins."""
    g = _geometry()
    last: list[str] = [""]

    def run(name: str) -> None:
        if name == "implicit":  # the same either way
            time.sleep(0.004)
        else:  # slow right after another strategy, quick after itself
            time.sleep(0.001 if last[0] == name else 0.008)
        last[0] = name

    settings = dict(direct_min_channels=10**6, dot_min_in_channels=10**6)
    for warm_ms, winner in ((20, "lowered"), (0, "implicit")):
        _measured.forget_measurements()
        last[0] = ""
        with config.engine_settings(measure_warm_ms=warm_ms, **settings), \
                _measured.on_first_call():
            assert _measured.candidates(g, "implicit") == ("implicit", "lowered")
            assert _measured.measured_strategy(g, "forward", "implicit", run) == winner
    _measured.forget_measurements()


def test_a_channel_multipliers_forward_is_measured_and_matches_torch() -> None:
    """A depthwise layer with a channel multiplier, planned on the implicit GEMM, measures it
    against im2col and, where their scratch fits, the planar depthwise kernels (the model
    prices none of them for it); pure depthwise layers measure their own two kernels only."""
    _measured.forget_measurements()
    g = geometry((32, 24, 13, 13), (96, 1, 1, 5), (2, 2), (1, 1), 24, ((0, 0), (2, 2)), (7, 7),
                 np.float32)
    assert _measured.candidates(g, "implicit") == ("implicit", "lowered", "depthwise-planar")
    with config.engine_settings(planar_bytes=64):  # the planar scratch does not fit
        assert _measured.candidates(g, "implicit") == ("implicit", "lowered")
    pure = geometry((32, 24, 13, 13), (24, 1, 1, 5), (2, 2), (1, 1), 24, ((0, 0), (2, 2)),
                    (7, 7), np.float32)
    assert _measured.candidates(pure, "depthwise-planar") == ("depthwise-channels-last",
                                                              "depthwise-planar")
    rng = np.random.default_rng(8)
    x = random_array(rng, (32, 24, 13, 13), np.float32)
    w = random_array(rng, (96, 1, 1, 5), np.float32)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=(0, 2),
                         groups=24)
    for call in ("first", "second", "later"):
        assert_close(F.conv2d(x, w, stride=2, padding=(0, 2), groups=24), expected, call)
    assert set(_measured.measured_choices().values()) <= {"implicit", "lowered",
                                                          "depthwise-planar"}
    assert [key[0] for key in _measured.measured_choices()] == ["forward"]
    with config.engine_settings(force="depthwise-planar"):  # each candidate matches torch
        assert_close(F.conv2d(x, w, stride=2, padding=(0, 2), groups=24), expected, "planar")
    _measured.forget_measurements()


def test_a_depthwise_forward_measures_channels_last_against_planar_where_both_serve() -> None:
    """A depthwise forward without a multiplier measures the channels-last kernels against the
    planar ones where both serve, whichever the rule picked; where one cannot (too few planes
    for channels-last, padded copies past ``planar_bytes``) or for a gradient, nothing is
    measured. Every call, and each candidate forced, matches torch."""
    _measured.forget_measurements()
    g = geometry((8, 40, 37, 37), (40, 1, 4, 4), (3, 3), (1, 1), 40, ((1, 1), (1, 1)),
                 (12, 12), np.float32)
    pair = ("depthwise-channels-last", "depthwise-planar")
    for planned in pair:
        assert _measured.candidates(g, planned) == pair
        assert _measured.candidates(g, planned, "input_grad") == ()
    few = geometry((1, 4, 37, 37), (4, 1, 4, 4), (3, 3), (1, 1), 4, ((1, 1), (1, 1)),
                   (12, 12), np.float32)  # 4 planes: fewer than channels_last_channels
    assert _measured.candidates(few, "depthwise-planar") == ()
    with config.engine_settings(planar_bytes=64):
        assert _measured.candidates(g, "depthwise-channels-last") == ()
    rng = np.random.default_rng(10)
    x = random_array(rng, (8, 40, 37, 37), np.float32)
    w = random_array(rng, (40, 1, 4, 4), np.float32)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=3, padding=1,
                         groups=40)
    for call in ("first", "second", "later"):
        assert_close(F.conv2d(x, w, stride=3, padding=1, groups=40), expected, call)
    assert next(iter(_measured.measured_choices().values())) in pair
    for name in pair:  # each candidate, whichever the measurement kept
        with config.engine_settings(force=name):
            assert_close(F.conv2d(x, w, stride=3, padding=1, groups=40), expected, name)
    _measured.forget_measurements()


def test_a_strided_1x1_forward_measures_the_1x1_kernels_against_the_implicit_gemm() -> None:
    """A dense, grouped or multiplier's 1x1 forward with a stride measures the 1x1 kernels
    against the implicit GEMM (neither wins by a rule); unstrided 1x1 layers, and depthwise
    ones without a multiplier (a scale per channel), stay on the 1x1 kernels unmeasured.
    Every call matches torch (bias, groups, a stride per axis)."""
    _measured.forget_measurements()
    strided = geometry((6, 48, 15, 14), (40, 12, 1, 1), (2, 3), (1, 1), 4, None, (8, 5),
                       np.float32)
    multiplier = geometry((16, 64, 60, 60), (128, 1, 1, 1), (2, 2), (1, 1), 64, None,
                          (30, 30), np.float32)
    for measured in (strided, multiplier):
        assert measured.macs >= config.engine.measure_min_macs
        assert _measured.candidates(measured, "pointwise") == ("pointwise", "implicit")
    for other in (geometry((6, 48, 15, 14), (40, 12, 1, 1), (1, 1), (1, 1), 4, None, (15, 14),
                           np.float32),
                  geometry((16, 64, 60, 60), (64, 1, 1, 1), (2, 2), (1, 1), 64, None, (30, 30),
                           np.float32)):
        assert other.macs >= config.engine.measure_min_macs
        assert _measured.candidates(other, "pointwise") == ()
    assert _measured.candidates(strided, "pointwise", "input_grad") == ()
    rng = np.random.default_rng(9)
    x = random_array(rng, (6, 48, 15, 14), np.float32)
    w = random_array(rng, (40, 12, 1, 1), np.float32)
    b = random_array(rng, (40,), np.float32)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                         stride=(2, 3), groups=4)
    for call in ("first", "second", "later"):
        assert_close(F.conv2d(x, w, b, stride=(2, 3), groups=4), expected, call)
    assert set(_measured.measured_choices().values()) <= {"pointwise", "implicit"}
    assert [key[0] for key in _measured.measured_choices()] == ["forward"]
    x = random_array(rng, (16, 64, 60, 60), np.float32)
    w = random_array(rng, (128, 1, 1, 1), np.float32)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, groups=64)
    for call in ("first", "second", "later"):  # the multiplier's, measured on its second
        assert_close(F.conv2d(x, w, stride=2, groups=64), expected, f"multiplier {call}")
    assert len(_measured.measured_choices()) == 2
    _measured.forget_measurements()


def test_direct_planar_is_a_candidate_of_unpadded_thin_forwards() -> None:
    """``direct-planar`` joins a forward's candidates with one group, float32, at most the
    tall tiles' output channels, no padding and an input larger than the output; forced, it
    matches torch (bias, stride, dilation, padding, every width of the tall tiles, one and two
    threads), serves no gradient nor float64, and an inf or NaN weight with padding moves the
    call to the NumPy strategy (torch's non-finite pattern)."""
    from convlayers.kernels.simd import VECTOR_BYTES

    most = (3 if VECTOR_BYTES == 64 else 2) * VECTOR_BYTES // 4
    thin = geometry((4, 200, 31, 31), (14, 200, 5, 5), (3, 3), (1, 1), 1, ((0, 0), (0, 0)),
                    (9, 9), np.float32)
    assert "direct-planar" in _measured.candidates(thin, "implicit")
    padded = geometry((4, 200, 31, 31), (14, 200, 5, 5), (3, 3), (1, 1), 1, ((1, 1), (1, 1)),
                      (10, 10), np.float32)
    wide = geometry((4, 200, 31, 31), (most + 1, 200, 5, 5), (3, 3), (1, 1), 1,
                    ((0, 0), (0, 0)), (9, 9), np.float32)
    growing = _same((2, 8, 20, 20), (30, 8, 3, 3))  # more output values than input
    for other in (padded, wide):
        assert "direct-planar" not in _measured.candidates(other, "implicit")
    assert "direct-planar" not in _measured.candidates(growing, "implicit")
    rng = np.random.default_rng(9)
    for x_shape, w_shape, stride, padding, dilation in [
            ((3, 40, 17, 19), (most, 40, 5, 3), (3, 2), (0, 0), (1, 2)),
            ((2, 7, 23, 21), (1, 7, 7, 2), (3, 1), (2, 1), (1, 1)),
            ((1, 33, 9, 12), (most // 2 + 1, 33, 2, 2), (2, 2), (0, 0), (3, 1)),
            ((4, 5, 8, 8), (most - 3, 5, 3, 3), (1, 1), (1, 1), (1, 1))]:
        x = random_array(rng, x_shape, np.float32)
        w = random_array(rng, w_shape, np.float32)
        b = random_array(rng, (w_shape[0],), np.float32)
        expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                             stride, padding, dilation)
        with config.engine_settings(force="direct-planar"):
            for threads in (1, 2):
                with config.settings(threads=threads):
                    got = F.conv2d(x, w, b, stride, padding, dilation)
                    assert_close(got, expected, f"direct-planar {x_shape} {w_shape}, {threads}")
    bad = w.copy()
    bad[3, 2, 1, 1] = np.nan
    with config.engine_settings(force="direct-planar"):
        got = F.conv2d(x, bad, None, 1, 1)
        with pytest.raises(ValueError, match="direct-planar computes the forward only"):
            F.conv_backward(np.ones_like(got), x, w, padding=1)
        with pytest.raises(ValueError, match="direct-planar needs float32"):
            F.conv2d(x.astype(np.float64), w.astype(np.float64))
    want = tF.conv2d(torch.from_numpy(x), torch.from_numpy(bad), None, 1, 1).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], "direct-planar, a NaN weight and padding")
