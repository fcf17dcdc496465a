"""The implicit-GEMM strategy: its indirect products against NumPy, and its passes against torch
where the planner takes it on its own (the forced-strategy tests of test_plan.py cover it too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import given, settings
from hypothesis import strategies as st

from convlayers import config
from convlayers import functional as F
from convlayers.kernels.simd import TILE_ROWS
from oracle import assert_close, torch_grads


@pytest.fixture(scope="module")
def products():
    from numba import njit

    from convlayers.kernels.simd import gemm_indirect, gemm_indirect_left_add

    @njit
    def right(u, flat, offs, m):
        gemm_indirect(u, flat, offs, m)

    @njit
    def left(flat, offs, v, m):
        gemm_indirect_left_add(flat, offs, v, m)

    return right, left


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 2, TILE_ROWS // 2, TILE_ROWS // 2 + 1, TILE_ROWS,
                                  TILE_ROWS + 2, 2 * TILE_ROWS + 3])
@pytest.mark.parametrize("cols", [1, 5, 8, 17, 40, 300])
def test_indirect_products_match_numpy(products, dtype, rows: int, cols: int) -> None:
    """Rows of the virtual operand are overlapping windows of one flat array, at any offsets:
    ``m = u @ V`` (right operand indirect) and ``m += U @ v`` (left operand indirect)."""
    right, left = products
    rng = np.random.default_rng(rows * 1000 + cols)
    flat = rng.standard_normal(4000).astype(dtype)
    inner = 37
    offs = rng.integers(0, 4000 - max(cols, inner), size=max(rows, inner)).astype(np.int64)

    u = rng.standard_normal((rows, inner)).astype(dtype)
    m = np.full((rows, cols), np.nan, dtype=dtype)
    right(u, flat, offs[:inner], m)
    windows = np.stack([flat[o:o + cols] for o in offs[:inner]])
    np.testing.assert_allclose(m, u.astype(np.float64) @ windows, rtol=1e-5, atol=1e-4)

    v = rng.standard_normal((inner, cols)).astype(dtype)
    start = rng.standard_normal((rows, cols)).astype(dtype)
    m = start.copy()
    left(flat, offs[:rows], v, m)
    lefts = np.stack([flat[o:o + inner] for o in offs[:rows]])
    np.testing.assert_allclose(m, start + lefts.astype(np.float64) @ v, rtol=1e-5, atol=1e-4)


@st.composite
def few_output_channels(draw: st.DrawFn) -> dict:
    """Dense or grouped 2-D convolutions with few output channels per group, any stride and
    dilation: the implicit GEMM's ground."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    kernel = (draw(st.integers(2, 5)), draw(st.integers(2, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = tuple(draw(st.integers(0, k)) for k in kernel)
    spatial = tuple(draw(st.integers(d * (k - 1) + 1, d * (k - 1) + 24))
                    for k, d in zip(kernel, dilation, strict=True))
    return dict(groups=groups, c_in=groups * draw(st.integers(2, 6)),
                c_out=groups * draw(st.integers(1, 4)), kernel=kernel, stride=stride,
                dilation=dilation, padding=padding, spatial=spatial,
                batch=draw(st.integers(1, 3)), threads=draw(st.sampled_from([1, 2, 3])))


@settings(max_examples=30, deadline=None)
@given(case=few_output_channels(), seed=st.integers(0, 2**16))
def test_planned_implicit_passes_match_torch(case: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["batch"], case["c_in"], *case["spatial"])).astype(np.float32)
    w = rng.standard_normal((case["c_out"], case["c_in"] // case["groups"],
                             *case["kernel"])).astype(np.float32)
    b = rng.standard_normal(case["c_out"]).astype(np.float32)
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    with config.engine_settings(im2col_copy_macs=1000, im2col_copy_macs_few_images=1000,
                                implicit_input_grad_channels=0, lowered_batch1_positions=0):
        chosen = F.plan(x.shape, w.shape, *args)
        assert chosen.forward == "implicit" and chosen.weight_grad == "implicit"
        # strided: when forced, or with few output channels (test_plan.py), set off here
        strided = case["stride"] != (1, 1)
        assert chosen.input_grad == ("lowered" if strided else "implicit")
        expected, g, (tgx, tgw, _) = torch_grads(lambda *t: tF.conv2d(*t, *args), [x, w, b], seed)
        with config.settings(threads=case["threads"]):
            assert_close(F.conv2d(x, w, b, *args), expected, "implicit forward")
            gx, gw, _ = F.conv_backward(g, x, w, *args, with_bias=True)
    assert_close(gx, tgx, "input gradient")
    assert_close(gw, tgw, "implicit weight gradient")


def test_the_planner_weighs_dropped_positions_against_the_im2col_copy() -> None:
    """Few output channels: implicit on phase planes (few positions dropped); many, with a
    map barely wider than the kernel's reach (most positions computed would be dropped):
    the implicit GEMM on column planes, which drop none for a kh-th of im2col's copies
    (measured: 0.83x torch's time against lowered's 0.90x on the first; 0.95x against 1.06x
    on the stride-2 246 -> 240), close enough to lowered's price that the first calls
    measure both."""
    from convlayers.functional._measured import candidates
    from convlayers.functional.plan import column_planes, geometry

    assert F.plan((1, 64, 40, 40), (8, 64, 5, 5), padding=2).forward == "implicit"
    assert not column_planes(geometry((1, 64, 40, 40), (8, 64, 5, 5), (1, 1), (1, 1), 1,
                                      ((2, 2), (2, 2)), (40, 40), np.float32))
    wide = geometry((1, 192, 12, 12), (256, 192, 7, 7), (2, 2), (3, 3), 1, ((9, 9), (9, 9)),
                    (6, 6), np.float32)
    assert column_planes(wide)
    assert F.plan((1, 192, 12, 12), (256, 192, 7, 7), stride=2, padding=9,
                  dilation=3).forward == "implicit"
    assert F.plan((1, 246, 35, 35), (240, 246, 5, 5), stride=2).forward == "implicit"
    # a one-column kernel drops nothing: phase planes
    assert not column_planes(geometry((1, 64, 40, 40), (8, 64, 5, 1), (1, 1), (1, 1), 1,
                                      ((2, 2), (0, 0)), (40, 40), np.float32))
    # the model's two prices are close there: the call measures both (and direct)
    assert {"implicit", "lowered"} <= set(candidates(wide, "implicit"))
    # a torch weight run through the chosen strategy agrees with torch
    x = np.random.default_rng(0).standard_normal((1, 64, 40, 40)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((8, 64, 5, 5)).astype(np.float32)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=2).numpy()
    assert_close(F.conv2d(x, w, padding=2), expected, "planned forward")


@pytest.mark.parametrize(("shape", "weight", "kwargs"), [
    ((2, 37, 19, 23), (7, 37, 5, 3), dict(stride=(3, 2), dilation=(2, 1), padding=(4, 1))),
    ((1, 40, 16, 16), (5, 40, 3, 3), dict(padding=1)),
    ((3, 24, 13, 11), (6, 12, 4, 4), dict(stride=2, groups=2, padding=2)),
    ((1, 9, 12, 10), (4, 9, 2, 6), dict(stride=(1, 3), dilation=(3, 2), padding=(2, 5))),
    ((2, 5, 7, 9), (3, 5, 3, 2), dict(stride=(2, 1), dilation=(1, 3), padding=(0, 4))),
])
@pytest.mark.parametrize("chunk", [None, 2])
def test_column_planes_give_the_phase_planes_bits(shape, weight, kwargs, chunk) -> None:
    """The implicit kernels on column planes (a plane per kernel column, nothing dropped) and
    on phase planes sum the same terms in the same order: bit for bit the same output and
    weight gradient, and torch's within rounding; in one chunk (block) of input channels and
    in chunks of two."""
    from convlayers.functional.conv import conv_spec
    from convlayers.functional.plan import geometry
    from convlayers.kernels.implicit import forward_scratch, implicit_forward

    rng = np.random.default_rng(sum(shape) + sum(weight))
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(weight).astype(np.float32)
    b = rng.standard_normal(weight[0]).astype(np.float32)
    spec = conv_spec(x, w, None, kwargs.get("stride", 1), kwargs.get("padding", 0),
                     kwargs.get("dilation", 1), kwargs.get("groups", 1), "zeros")
    g = geometry(shape, weight, spec.stride, spec.dilation, spec.groups, spec.pairs,
                 spec.out_shape, np.float32)
    taps = np.ascontiguousarray(w.reshape(g.groups, g.c_out_g, -1))
    rows, block, cq = 3, g.c_out_g, chunk or g.c_in_g
    outs = []
    for columns in (False, True):
        slab, product = forward_scratch(cq, (g.kh, g.kw), (g.sh, g.sw), (g.dh, g.dw), rows,
                                        block, g.wo, columns)
        out = np.empty((g.n, g.c_out, g.ho * g.wo), np.float32)
        implicit_forward(x, taps, b, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.ho, g.wo,
                         rows, block, cq, columns, np.empty((2, slab), np.float32),
                         np.empty((2, product), np.float32), out, 0, g.wo, 1)
        outs.append(out.reshape(g.n, g.c_out, g.ho, g.wo))
    np.testing.assert_array_equal(outs[1], outs[0])
    expected = tF.conv2d(*map(torch.from_numpy, (x, w, b)), **kwargs).numpy()
    assert_close(outs[1], expected, "implicit forward on column planes")
    # the weight gradient: the same terms (phase planes add zeros at the dropped positions)
    import numba

    from convlayers.kernels.conv import sum_transposed
    from convlayers.kernels.implicit import implicit_weight_grad

    gy = rng.standard_normal(expected.shape).astype(np.float32)
    threads = numba.get_num_threads()
    grads = []
    for columns in (False, True):
        acc = np.empty((threads, g.groups, g.c_in_g * g.kh * g.kw, g.c_out_g), np.float32)
        gw = np.empty((g.groups, g.c_out_g, g.c_in_g * g.kh * g.kw), np.float32)
        implicit_weight_grad(x, gy.reshape(g.n, g.c_out, -1), g.groups, g.kh, g.kw, g.sh, g.sw,
                             g.dh, g.dw, g.pt, g.pl, g.wo, rows, cq, columns, threads, acc, gw)
        sum_transposed(acc, gw)
        grads.append(gw.reshape(weight))
    np.testing.assert_array_equal(grads[1], grads[0])
    tw = torch.from_numpy(w).requires_grad_()
    tF.conv2d(torch.from_numpy(x), tw, **kwargs).backward(torch.from_numpy(gy))
    assert_close(grads[1], tw.grad, "implicit weight gradient on column planes")


@pytest.mark.parametrize(("shape", "weight", "kwargs"), [
    ((2, 37, 19, 23), (7, 37, 5, 3), dict(stride=(3, 2), dilation=(2, 1), padding=(4, 1))),
    ((1, 40, 16, 16), (5, 40, 3, 3), dict(padding=1)),
    ((3, 24, 13, 11), (6, 12, 4, 4), dict(stride=2, groups=2, padding=2)),
])
def test_input_channels_in_chunks_sum_as_one_product(shape, weight, kwargs) -> None:
    """A slab too small for all input channels and enough rows takes them in chunks whose
    products add up: bit for bit the one-chunk result (the sums run in the same order), and
    torch's within rounding."""
    from convlayers.functional._engine_implicit import slab_rows
    from convlayers.functional.conv import conv_spec
    from convlayers.functional.plan import geometry

    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(weight).astype(np.float32)
    b = rng.standard_normal(weight[0]).astype(np.float32)
    with config.engine_settings(force="implicit"):
        whole = F.conv2d(x, w, b, **kwargs)
        with config.engine_settings(implicit_slab_bytes=2048):
            spec = conv_spec(x, w, None, kwargs.get("stride", 1), kwargs.get("padding", 0),
                             kwargs.get("dilation", 1), kwargs.get("groups", 1), "zeros")
            g = geometry(shape, weight, spec.stride, spec.dilation, spec.groups, spec.pairs,
                         spec.out_shape, np.float32)
            assert slab_rows(g, 2)[2] < weight[1]  # the channels do come in chunks
            chunked = F.conv2d(x, w, b, **kwargs)
        # the unit sizes are remembered per geometry, but never across a settings change
        assert slab_rows(g, 2)[2] == weight[1]
        saved = config.scratch_bytes()
        config.set_scratch_bytes(2048)
        try:
            assert slab_rows(g, 2)[2] < weight[1]
        finally:
            config.set_scratch_bytes(saved)
        assert slab_rows(g, 2)[2] == weight[1]
    np.testing.assert_array_equal(chunked, whole)
    expected = tF.conv2d(*map(torch.from_numpy, (x, w, b)), **kwargs).numpy()
    assert_close(chunked, expected, "implicit forward in chunks")


def test_small_calls_take_the_units_that_waste_least() -> None:
    """At batch 1 the units are costed: a 5x5 stride-2 layer 461->91 on 22x22 maps runs
    whole-map slabs (11 rows of 13 positions: 143 of the 144 its vectors compute) in two
    blocks of output channels on two threads, four on four, where slabs of 9 rows had
    computed 144 positions for 117. Any units sum in the same order: the output is bit for
    bit the one-thread result, and torch's within rounding."""
    from convlayers.functional._engine_implicit import slab_rows
    from convlayers.functional.plan import geometry

    g = geometry((1, 461, 22, 22), (91, 461, 5, 5), (2, 2), (1, 1), 1, ((2, 2), (2, 2)),
                 (11, 11), np.float32)
    assert slab_rows(g, 2)[:2] == (11, 48)
    assert slab_rows(g, 4)[:2] == (11, 24)
    assert slab_rows(g, 1)[:2] == (11, 91)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 461, 22, 22)).astype(np.float32)
    w = rng.standard_normal((91, 461, 5, 5)).astype(np.float32)
    with config.engine_settings(force="implicit"):
        with config.settings(threads=1):
            alone = F.conv2d(x, w, stride=2, padding=2)
        with config.settings(threads=2):
            split = F.conv2d(x, w, stride=2, padding=2)
    np.testing.assert_array_equal(split, alone)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=2)
    assert_close(split, expected.numpy(), "implicit forward in costed units")


@settings(max_examples=30, deadline=None)
@given(case=few_output_channels(), seed=st.integers(0, 2**16),
       images=st.sampled_from([None, 1]))
def test_channels_last_weight_gradient_matches_torch(case: dict, seed: int,
                                                     images: int | None) -> None:
    """The weight gradient with the input channels as the product's columns (any stride,
    dilation, padding and groups; the images copied all at once, or one at a time under a
    small scratch cap) against torch's."""
    from convlayers.functional._engine_implicit import _gw_channels_last, channels_last_pays
    from convlayers.functional.conv import conv_spec
    from convlayers.functional.plan import geometry

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["batch"], case["c_in"], *case["spatial"])).astype(np.float32)
    w = rng.standard_normal((case["c_out"], case["c_in"] // case["groups"],
                             *case["kernel"])).astype(np.float32)
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    spec = conv_spec(x, w, None, *args, "zeros")
    g = geometry(x.shape, w.shape, spec.stride, spec.dilation, spec.groups, spec.pairs,
                 spec.out_shape, np.float32)
    assert not channels_last_pays(g)  # too few input channels: the test calls it directly
    _, gy, (_, tgw) = torch_grads(lambda a, b: tF.conv2d(a, b, None, *args), [x, w], seed)
    cap = 1 if images == 1 else config.engine.lowered_column_bytes  # 1: an image a pass
    with config.settings(threads=case["threads"]), config.engine_settings(
            lowered_column_bytes=cap):
        gw = _gw_channels_last(x, gy, g, case["threads"])
    assert_close(gw, tgw, "channels-last weight gradient")


def test_few_output_channels_take_the_channels_last_weight_gradient() -> None:
    """A layer the rule admits (8 output channels, 96 input channels, 5x5) runs it in the
    planned backward, and matches torch."""
    from convlayers.functional._engine_implicit import channels_last_pays
    from convlayers.functional.conv import conv_spec
    from convlayers.functional.plan import geometry

    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 96, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 96, 5, 5)).astype(np.float32)
    spec = conv_spec(x, w, None, 1, 2, 1, 1, "zeros")
    g = geometry(x.shape, w.shape, spec.stride, spec.dilation, spec.groups, spec.pairs,
                 spec.out_shape, np.float32)
    assert channels_last_pays(g) and F.plan(x.shape, w.shape, padding=2).weight_grad == "implicit"
    _, gy, (tgx, tgw) = torch_grads(lambda a, b: tF.conv2d(a, b, padding=2), [x, w], 11)
    gx, gw, _ = F.conv_backward(gy, x, w, padding=2, with_bias=False)
    assert_close(gw, tgw, "weight gradient")
    assert_close(gx, tgx, "input gradient")


def test_big_stride_1_kernels_take_the_channels_last_weight_gradient_from_24_channels() -> None:
    """Under 64 input channels, a stride-1 layer of a big kernel and few output channels (40 ->
    12, 5x5) runs the channels-last weight gradient in the planned backward and matches
    torch; the same layer at stride 2, or with a 3x3 kernel, or 20 input channels, does not."""
    from convlayers.functional._engine_implicit import channels_last_pays
    from convlayers.functional.plan import geometry

    def layer(c_in: int, k: int, s: int) -> object:
        out = (12 + 4 - k) // s + 1
        return geometry((2, c_in, 12, 12), (12, c_in, k, k), (s, s), (1, 1), 1,
                        ((2, 2), (2, 2)), (out, out), np.float32)

    assert channels_last_pays(layer(40, 5, 1))
    for other in (layer(40, 5, 2), layer(40, 3, 1), layer(20, 5, 1)):
        assert not channels_last_pays(other)
    # the bounds are config.engine's: each moved past the layer turns the rule off, or on
    for change, pays in (({"channels_last_weight_grad_channels": 41}, False),
                         ({"channels_last_weight_grad_taps": 26}, False),
                         ({"channels_last_weight_grad_out_channels": 11}, False),
                         ({"channels_last_weight_grad_channels": 20}, True)):
        with config.engine_settings(**change):
            assert channels_last_pays(layer(40 if pays is False else 20, 5, 1)) is pays
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 40, 12, 12)).astype(np.float32)
    w = rng.standard_normal((12, 40, 5, 5)).astype(np.float32)
    _, gy, (tgx, tgw) = torch_grads(lambda a, b: tF.conv2d(a, b, padding=2), [x, w], 12)
    with config.engine_settings(force="implicit"):
        gx, gw, _ = F.conv_backward(gy, x, w, padding=2, with_bias=False)
    assert_close(gw, tgw, "weight gradient")
    assert_close(gx, tgx, "input gradient")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_weight_gradient_of_one_small_image_splits_its_input_channels(threads: int) -> None:
    """Batch 1 on a map that one slab holds: too few units of whole slabs, so the input
    channels split into blocks that add onto one shared gradient (two threads: four blocks of
    64), or, with fewer than ``implicit_weight_grad_split_channels``, the slabs shorten. The gradient is
    torch's either way (the layers are past ``serial_macs``: they run on the threads)."""
    from convlayers.functional._engine_implicit import _weight_grad_units
    from convlayers.functional.plan import geometry

    rng = np.random.default_rng(21)
    for c_in, hw, expected in ((256, 12, (6, 64, True)), (40, 40, None)):
        x = rng.standard_normal((1, c_in, hw, hw)).astype(np.float32)
        w = rng.standard_normal((64, c_in, 2, 2)).astype(np.float32)
        half = hw // 2
        g = geometry(x.shape, w.shape, (2, 2), (1, 1), 1, ((0, 0), (0, 0)), (half, half),
                     np.float32)
        assert g.macs >= config.engine.serial_macs
        F.forget_measurements()  # the planner's own choice, not an earlier call's timing
        assert F.plan(x.shape, w.shape, stride=2).weight_grad == "implicit"
        rows, block, shared = _weight_grad_units(g, 2)
        if expected is not None:
            assert (rows, block, shared) == expected
        else:
            assert block == c_in and not shared
        gy = rng.standard_normal((1, 64, half, half)).astype(np.float32)
        # forced: the gradient is measured against lowered, which may win on this machine
        with config.settings(threads=threads), config.engine_settings(force="implicit"):
            _, gw, _ = F.conv_backward(gy, x, w, stride=2, with_bias=False)
        tw = torch.from_numpy(w).requires_grad_()
        torch.nn.functional.conv2d(torch.from_numpy(x), tw, stride=2).backward(
            torch.from_numpy(gy))
        np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_kept_scratch_serves_threads_and_shapes_apart() -> None:
    """The implicit forward's scratch is kept between calls, one set per Python thread: calls
    of other shapes in between, and four threads at once, each get their own result (as a
    fresh process computes it one call at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(22)
    cases = [(rng.standard_normal((2, c, 13 + c % 5, 11)).astype(np.float32),
              rng.standard_normal((9, c, 3, 3)).astype(np.float32)) for c in (5, 17, 40, 64)]
    with config.engine_settings(force="implicit"):
        expected = [F.conv2d(x, w, padding=1) for x, w in cases]
        for _ in range(2):  # shapes alternate: the kept buffers grow and shrink in use
            for (x, w), y in zip(cases, expected, strict=True):
                np.testing.assert_array_equal(F.conv2d(x, w, padding=1), y)
        with ThreadPoolExecutor(4) as pool:
            for _ in range(3):
                got = list(pool.map(lambda xw: F.conv2d(xw[0], xw[1], padding=1), cases))
                for y, e in zip(got, expected, strict=True):
                    np.testing.assert_array_equal(y, e)
    for (x, w), y in zip(cases, expected, strict=True):
        assert_close(y, tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1),
                     "implicit forward")


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "stride", "dilation", "groups"), [
    (6, 5, (4, 4), (2, 2), (1, 1), 1),      # small weights: the taps copied on one thread
    (48, 44, (4, 4), (2, 2), (1, 1), 1),    # 33792 taps: shared among the threads
    (40, 36, (3, 5), (2, 3), (1, 1), 2),    # uneven phases, two groups
    (12, 8, (3, 3), (2, 2), (2, 1), 1),     # rows no tap reaches (dilation 2, stride 2)
])
def test_strided_transposed_convolution_writes_each_phase_in_place(
        c_in: int, c_out: int, kernel: tuple[int, int], stride: tuple[int, int],
        dilation: tuple[int, int], groups: int) -> None:
    """The implicit input gradient of a strided convolution (a transposed convolution's
    forward) runs one stride-1 forward per stride phase, storing into every ``s``-th row and
    column of the output, with the taps of all phases gathered in one pass: against torch."""

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, c_in, 9, 11)).astype(np.float32)
    w = rng.standard_normal((c_in, c_out // groups, *kernel)).astype(np.float32)
    taps = w.size
    assert (taps >= config.engine.parallel_phase_taps) == (c_in == 48)  # the cases cover both copies
    with config.engine_settings(force="implicit"):
        ours = F.conv_transpose2d(x, w, None, stride=stride, padding=1, groups=groups,
                                  dilation=dilation)
    theirs = tF.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), None, stride=stride,
                                 padding=1, groups=groups, dilation=dilation).numpy()
    assert_close(ours, theirs, "conv_transpose2d")
