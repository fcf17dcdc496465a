"""The compiled fast paths (pooling, depthwise, 1x1, im2col) against torch and the NumPy path.

Each generated configuration is run three ways: through the public function (which picks a
fast path), through the same function with the ``numpy`` strategy forced
(``config.engine_settings(force="numpy")``, and pooling's compiled kernels off), and through
torch. Pooling forward must match the NumPy path bit for bit (same taps in the same
order) and torch's indices exactly; convolutions agree to the stated float tolerance. A tiny
scratch cap must not change a forward result at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import given, settings
from hypothesis import strategies as st

from convlayers import config
from convlayers import functional as F
from convlayers.functional import pooling
from oracle import assert_close, random_array, torch_grads

EXAMPLES = settings(max_examples=40)


@contextmanager
def numpy_path() -> Iterator[None]:
    """Every convolution takes the ``numpy`` strategy, every pooling call its NumPy loop."""
    saved = pooling._fast
    pooling._fast = lambda *a: False  # type: ignore[assignment]
    try:
        with config.engine_settings(force="numpy"):
            yield
    finally:
        pooling._fast = saved


def _with_specials(rng: np.random.Generator, x: np.ndarray, kind: str) -> np.ndarray:
    """Inject ties (rounded values), NaNs (several per plane) or infinities."""
    if kind == "ties":
        return np.round(x).astype(x.dtype)
    if kind == "nan":
        x = x.copy()
        x[rng.random(x.shape) < 0.15] = np.nan
    if kind == "inf":
        x = x.copy()
        x[rng.random(x.shape) < 0.2] = -np.inf
        x[rng.random(x.shape) < 0.05] = np.inf
    return x


@st.composite
def pool_cases(draw: st.DrawFn) -> dict:
    n = draw(st.sampled_from([1, 2, 2]))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(n))
    spatial = tuple(draw(st.integers(d * (k - 1) + 1, d * (k - 1) + 9))
                    for k, d in zip(kernel, dilation, strict=True))
    return dict(n=n, kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                spatial=spatial, ceil_mode=draw(st.booleans()),
                batch=draw(st.integers(1, 2)), channels=draw(st.integers(1, 3)),
                special=draw(st.sampled_from(["none", "ties", "nan", "inf"])))


@EXAMPLES
@given(case=pool_cases(), seed=st.integers(0, 2**16))
def test_max_pool_matches_torch_and_numpy_path(case: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = random_array(rng, (case["batch"], case["channels"], *case["spatial"]), np.float32)
    x = _with_specials(rng, x, case["special"])
    ours = {1: F.max_pool1d, 2: F.max_pool2d}[case["n"]]
    theirs = {1: tF.max_pool1d, 2: tF.max_pool2d}[case["n"]]
    kw = dict(kernel_size=case["kernel"], stride=case["stride"], padding=case["padding"],
              dilation=case["dilation"], ceil_mode=case["ceil_mode"])
    y, idx = ours(x, return_indices=True, **kw)
    ty, tidx = theirs(torch.tensor(x), return_indices=True, **kw)
    np.testing.assert_array_equal(y, ty.numpy())  # NaNs compare equal here
    np.testing.assert_array_equal(idx, tidx.numpy())
    np.testing.assert_array_equal(ours(x, **kw), y)
    with numpy_path():
        ny, nidx = ours(x, return_indices=True, **kw)
    np.testing.assert_array_equal(y, ny)
    np.testing.assert_array_equal(idx, nidx)

    g = random_array(rng, y.shape, np.float32)
    gx = F.max_pool_backward(g, x, idx, spatial_dims=case["n"])
    tx = torch.tensor(x, requires_grad=True)
    theirs(tx, **kw).backward(torch.tensor(g))
    assert_close(gx, tx.grad, "max_pool backward")


@EXAMPLES
@given(case=pool_cases(), seed=st.integers(0, 2**16), include=st.booleans(),
       override=st.sampled_from([None, None, 3, -2]))
def test_avg_pool_matches_torch_and_numpy_path(case: dict, seed: int, include: bool,
                                              override: int | None) -> None:
    rng = np.random.default_rng(seed)
    shape = (case["batch"], case["channels"], *case["spatial"])
    x = random_array(rng, shape, np.float32)
    n = case["n"]
    kw = dict(kernel_size=case["kernel"], stride=case["stride"], padding=case["padding"],
              ceil_mode=case["ceil_mode"], count_include_pad=include)
    if n == 2:
        kw["divisor_override"] = override
    ours = {1: F.avg_pool1d, 2: F.avg_pool2d}[n]
    theirs = {1: tF.avg_pool1d, 2: tF.avg_pool2d}[n]
    expected, g, (gx,) = torch_grads(lambda t: theirs(t, **kw), [x], seed)
    y = ours(x, **kw)
    assert_close(y, expected, "avg_pool")
    with numpy_path():
        np.testing.assert_array_equal(y, ours(x, **kw))
        ngx = F.avg_pool_backward(g, x, **kw)
    our_gx = F.avg_pool_backward(g, x, **kw)
    assert_close(our_gx, gx, "avg_pool backward")
    assert_close(our_gx, ngx, "avg_pool backward vs NumPy path")


def test_max_pool_last_nan_wins_and_first_max_wins_ties() -> None:
    x = np.array([[[[1, 3, 3, 0], [np.nan, 2, 1, np.nan], [0, 0, 0, 0], [0, 0, 0, 0]]]],
                 np.float32)
    y, idx = F.max_pool2d(x, 2, return_indices=True)
    ty, tidx = tF.max_pool2d(torch.tensor(x), 2, return_indices=True)
    np.testing.assert_array_equal(idx, tidx.numpy())
    np.testing.assert_array_equal(y, ty.numpy())
    assert idx[0, 0, 0, 0] == 4 and idx[0, 0, 0, 1] == 7 and idx[0, 0, 1, 0] == 8


def test_max_pool_backward_rejects_out_of_range_indices() -> None:
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="indices must lie in"):
        F.max_pool_backward(np.ones((1, 1, 2, 2), np.float32), x, np.full((1, 1, 2, 2), 16))


@st.composite
def fast_conv_cases(draw: st.DrawFn,
                    kinds: tuple[str, ...] = ("depthwise", "pointwise", "lowered", "lowered")) -> dict:
    kind = draw(st.sampled_from(kinds))
    n = draw(st.sampled_from([1, 2, 2]))
    if kind == "depthwise":
        groups = draw(st.integers(1, 5))
        c_in, c_out = groups, groups * draw(st.sampled_from([1, 1, 2]))
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        c_in, c_out = groups * draw(st.integers(2, 4)), groups * draw(st.integers(1, 4))
    k = 1 if kind == "pointwise" else None
    kernel = tuple(k or draw(st.integers(2, 4)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(n))
    dilation = tuple(1 if kind == "pointwise" else draw(st.sampled_from([1, 1, 2])) for _ in range(n))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(n))
    spatial = tuple(draw(st.integers(max(1, d * (kk - 1) + 1 - 2 * p), d * (kk - 1) + 12))
                    for kk, d, p in zip(kernel, dilation, padding, strict=True))
    return dict(n=n, groups=groups, c_in=c_in, c_out=c_out, kernel=kernel, stride=stride,
                dilation=dilation, padding=padding, spatial=spatial,
                batch=draw(st.integers(1, 3)), bias=draw(st.booleans()),
                layout=draw(st.sampled_from(["contiguous", "flipped"])))


@EXAMPLES
@given(case=fast_conv_cases(), seed=st.integers(0, 2**16), cap=st.sampled_from([64, 4096]))
def test_conv_fast_paths_match_torch_and_numpy_path(case: dict, seed: int, cap: int) -> None:
    rng = np.random.default_rng(seed)
    x = random_array(rng, (case["batch"], case["c_in"], *case["spatial"]), np.float32)
    if case["layout"] == "flipped":
        x = x[..., ::-1]
    w = random_array(rng, (case["c_out"], case["c_in"] // case["groups"], *case["kernel"]),
                     np.float32)
    b = random_array(rng, (case["c_out"],), np.float32) if case["bias"] else None
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    conv = {1: F.conv1d, 2: F.conv2d}[case["n"]]
    tconv = {1: tF.conv1d, 2: tF.conv2d}[case["n"]]
    expected, g, (gx, gw, gb) = torch_grads(lambda *t: tconv(*t, *args),
                                            [x.copy(), w, b], seed)
    y = conv(x, w, b, *args)
    assert_close(y, expected, "forward")
    our_gx, our_gw, our_gb = F.conv_backward(g, x, w, *args, with_bias=case["bias"])
    assert_close(our_gx, gx, "grad_input")
    assert_close(our_gw, gw, "grad_weight")
    if case["bias"]:
        assert_close(our_gb, gb, "grad_bias")

    with numpy_path():
        assert_close(y, conv(x, w, b, *args), "forward vs NumPy path")
        ngx, ngw, _ = F.conv_backward(g, x, w, *args, with_bias=False)
    assert_close(our_gx, ngx, "grad_input vs NumPy path")
    assert_close(our_gw, ngw, "grad_weight vs NumPy path")

    with config.settings(scratch_bytes=cap):
        np.testing.assert_array_equal(conv(x, w, b, *args), y)
        cgx, cgw, _ = F.conv_backward(g, x, w, *args, with_bias=False)
    assert_close(cgx, our_gx, "grad_input, tiny cap")
    assert_close(cgw, our_gw, "grad_weight, tiny cap")


DEPTHWISE_KERNELS = {"flat": (1 << 30, 1 << 30), "planar": (0, 1 << 30), "row": (0, 0)}


@EXAMPLES
@given(case=fast_conv_cases(kinds=("depthwise",)), seed=st.integers(0, 2**16))
def test_depthwise_flat_planar_and_row_kernels_agree_with_torch(case: dict, seed: int) -> None:
    """Width-keeping stride-1 planes take the flat kernels, other small planes the planar ones,
    large ones the row kernels; each, forced on the same cases, matches torch forward and
    backward, and the transposed convolution (whose forward is the input gradient alone) too."""
    rng = np.random.default_rng(seed)
    x = random_array(rng, (case["batch"], case["c_in"], *case["spatial"]), np.float32)
    w = random_array(rng, (case["c_out"], 1, *case["kernel"]), np.float32)
    b = random_array(rng, (case["c_out"],), np.float32) if case["bias"] else None
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    conv = {1: F.conv1d, 2: F.conv2d}[case["n"]]
    tconv = {1: tF.conv1d, 2: tF.conv2d}[case["n"]]
    expected, g, (gx, gw, _) = torch_grads(lambda *t: tconv(*t, *args), [x, w, b], seed)
    transpose = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[case["n"]]
    ttranspose = {1: tF.conv_transpose1d, 2: tF.conv_transpose2d}[case["n"]]
    wt = random_array(rng, (case["c_in"], case["c_out"] // case["groups"], *case["kernel"]),
                      np.float32)
    t_args = dict(stride=case["stride"], padding=case["padding"], groups=case["groups"],
                  dilation=case["dilation"])
    t_sizes = [(i - 1) * st_ - 2 * p + d * (k - 1) + 1 for i, st_, p, d, k in zip(
        case["spatial"], case["stride"], case["padding"], case["dilation"], case["kernel"],
        strict=True)]
    t_expected = (ttranspose(torch.from_numpy(x), torch.from_numpy(wt), **t_args).numpy()
                  if min(t_sizes) > 0 else None)
    for label, limits in DEPTHWISE_KERNELS.items():
        with config.engine_settings(flat_pixels=limits[0], planar_bytes=limits[1]):
            assert_close(conv(x, w, b, *args), expected, f"{label} forward")
            our_gx, our_gw, _ = F.conv_backward(g, x, w, *args)
            assert_close(our_gx, gx, f"{label} grad_input")
            assert_close(our_gw, gw, f"{label} grad_weight")
            if t_expected is not None:
                assert_close(transpose(x, wt, **t_args), t_expected, f"{label} transposed")


WIDTH_KEEPING = [  # (kernel, padding, dilation, multiplier, spatial): stride 1, Wo == W
    ((3, 3), (1, 1), (1, 1), 1, (28, 28)),
    ((3, 3), (0, 1), (1, 1), 2, (6, 5)),
    ((5, 5), (2, 2), (1, 1), 1, (7, 9)),
    ((3, 3), (2, 2), (2, 2), 1, (5, 3)),
    ((2, 3), (1, 1), (3, 1), 3, (4, 1)),
    ((3, 1), (3, 0), (1, 1), 1, (2, 6)),
]


@pytest.mark.parametrize("case", WIDTH_KEEPING)
@pytest.mark.parametrize("threads", [1, 2])
def test_flat_depthwise_keeps_nonfinite_values_where_torch_does(case: tuple, threads: int) -> None:
    """The flat kernels read across row edges and mask those taps: an inf or NaN at a row's end
    must reach only the outputs whose windows hold it, as in torch, forward and backward."""
    kernel, padding, dilation, mult, spatial = case
    rng = np.random.default_rng(5)
    x = random_array(rng, (3, 4, spatial[0], 2 * spatial[1]), np.float32)[..., ::2]
    x[0, 0, :, -1] = np.inf
    x[1, 2, 0, 0] = np.nan
    x[2, 3, -1, 0] = -np.inf
    w = random_array(rng, (4 * mult, 1, *kernel), np.float32)
    kw = dict(padding=padding, dilation=dilation, groups=4)
    expected, g, (tgx, tgw) = torch_grads(lambda a, v: tF.conv2d(a, v, **kw),
                                          [np.ascontiguousarray(x), w], 8)
    with config.settings(threads=threads):
        y = F.conv2d(x, w, **kw)
        gx, gw, _ = F.conv_backward(g, x, w, **kw)
    assert y.shape == expected.shape and y.shape[-1] == x.shape[-1]
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(expected))
    np.testing.assert_array_equal(np.isfinite(gw), np.isfinite(tgw))
    finite = np.isfinite(expected)
    assert_close(np.where(finite, y, 0), np.where(finite, expected, 0), "forward")
    assert_close(gx, tgx, "grad_input")
    x_clean = np.nan_to_num(x, nan=0.5, posinf=2.0, neginf=-2.0)
    _, g2, (_, tgw2) = torch_grads(lambda a, v: tF.conv2d(a, v, **kw), [x_clean, w], 9)
    assert_close(F.conv_backward(g2, x_clean, w, **kw)[1], tgw2, "grad_weight")


@pytest.mark.parametrize("slab", [7, 40, 4000])
def test_row_slabs_of_a_large_image_give_the_same_result(slab: int) -> None:
    rng = np.random.default_rng(3)
    x = random_array(rng, (2, 3, 13, 11), np.float32)
    w = random_array(rng, (4, 3, 3, 3), np.float32)
    g = random_array(rng, (2, 4, 7, 6), np.float32)
    whole = F.conv2d(x, w, stride=2, padding=1)
    gx, gw, _ = F.conv_backward(g, x, w, stride=2, padding=1)
    with config.engine_settings(lowered_column_bytes=slab, force="lowered"):
        assert_close(F.conv2d(x, w, stride=2, padding=1), whole, "slabs forward")
        sgx, sgw, _ = F.conv_backward(g, x, w, stride=2, padding=1)
    assert_close(sgx, gx, "slabs grad_input")
    assert_close(sgw, gw, "slabs grad_weight")


def test_thread_setting_reaches_numba_and_keeps_results() -> None:
    import numba

    rng = np.random.default_rng(5)
    x = random_array(rng, (2, 6, 9, 9), np.float32)
    w = random_array(rng, (6, 1, 3, 3), np.float32)
    y = F.conv2d(x, w, padding=1, groups=6)
    with config.settings(threads=1):
        np.testing.assert_array_equal(F.conv2d(x, w, padding=1, groups=6), y)
        assert numba.get_num_threads() == 1
    F.conv2d(x, w, padding=1, groups=6)
    assert numba.get_num_threads() == min(config.threads(), numba.config.NUMBA_NUM_THREADS)



def test_small_calls_on_one_thread_leave_numbas_settings_as_they_were() -> None:
    """Small pooling and conv calls run on one thread through ``config.numba_controls`` (numba's
    own setters); numba's public getters, the oracle here, must read the same before and after,
    and inside a one-thread call the controls' getter must agree with the public one."""
    import numba

    x = random_array(np.random.default_rng(7), (1, 4, 7, 7), np.float32)
    F.max_pool2d(x, 2)  # loads the kernels and applies the thread setting
    threads, chunks = numba.get_num_threads(), numba.get_parallel_chunksize()
    get, put, _ = config.numba_controls()
    assert get() == threads
    put(1)
    try:
        assert numba.get_num_threads() == 1 and get() == 1
    finally:
        put(threads)
    for call in (lambda: F.max_pool2d(x, 2), lambda: F.avg_pool2d(x, 3, 1, 1),
                 lambda: F.conv2d(x, random_array(np.random.default_rng(8), (4, 4, 3, 3),
                                                  np.float32), padding=1)):
        call()
        assert (numba.get_num_threads(), numba.get_parallel_chunksize()) == (threads, chunks)

def test_small_calls_do_run_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel of a small call sees one thread (the thread setting, applied when the kernels
    load, once put it back inside the one-thread block) or runs on the calling thread alone
    (small pooling), and a large one all of them: each kernel is wrapped to read numba's
    public getter, or its serial flag, as it starts."""
    import numba

    from convlayers.functional._compiled import kernels

    seen: list[int | str] = []
    k = kernels()
    for module, name in ((k.pooling, "max_pool2d"), (k.implicit, "implicit_forward"),
                         (k.pooling, "adaptive_avg2d"), (k.pooling, "global_avg_serial"),
                         (k.pooling, "global_avg")):
        real = getattr(module, name)

        def spy(*args: object, real: object = real, name: str = name) -> object:
            # the adaptive kernels' last argument, and a max pool's, run them on the calling
            # thread alone (a max pool's by its kernels' serial twins)
            alone = name.endswith("_serial") or (name in ("adaptive_avg2d", "max_pool2d")
                                                 and args[-1] is True)
            seen.append("serial" if alone else numba.get_num_threads())
            return real(*args)  # type: ignore[operator]

        monkeypatch.setattr(module, name, spy)
    rng = np.random.default_rng(9)
    with config.settings(threads=2), config.engine_settings(force="implicit"):
        if numba.config.NUMBA_NUM_THREADS < 2:
            pytest.skip("numba has one thread here")
        F.max_pool2d(random_array(rng, (1, 4, 7, 7), np.float32), 2)
        F.conv2d(random_array(rng, (1, 4, 7, 7), np.float32),
                 random_array(rng, (4, 4, 3, 3), np.float32), padding=1)
        assert seen == ["serial", 1]
        F.conv2d(random_array(rng, (2, 64, 40, 40), np.float32),
                 random_array(rng, (8, 64, 3, 3), np.float32), padding=1)
        assert seen == ["serial", 1, 2]
        # pooling has its own threshold, in taps: 131k taps (under serial_macs) use both threads
        F.max_pool2d(random_array(rng, (2, 16, 64, 64), np.float32), 2)
        F.adaptive_avg_pool2d(random_array(rng, (2, 24, 50, 50), np.float32), 1)  # global_avg
        # small adaptive pooling: no parallel region at all (the kernel's serial flag)
        F.adaptive_avg_pool2d(random_array(rng, (1, 4, 7, 7), np.float32), 2)
        # small global pooling: the serial kernel
        F.adaptive_avg_pool2d(random_array(rng, (1, 4, 7, 7), np.float32), 1)
        assert seen == ["serial", 1, 2, 2, 2, "serial", "serial"]


def test_float64_fast_paths_stay_float64() -> None:
    rng = np.random.default_rng(6)
    x = random_array(rng, (1, 4, 6, 6), np.float64)
    for w, groups in ((random_array(rng, (4, 1, 3, 3), np.float64), 4),
                      (random_array(rng, (3, 4, 1, 1), np.float64), 1),
                      (random_array(rng, (3, 4, 3, 3), np.float64), 1)):
        y = F.conv2d(x, w, padding=1, groups=groups)
        assert y.dtype == np.float64
        expected = tF.conv2d(torch.tensor(x), torch.tensor(w), padding=1, groups=groups)
        assert_close(y, expected, "float64")
    assert F.max_pool2d(x, 2).dtype == np.float64


def any_winograd() -> Any:
    """Winograd wherever its shape and ``winograd_min_channels`` allow (the machine defaults
    keep small calls and thin layers off it where the kernels run 64-byte vectors): these
    tests are about its kernels."""
    return config.engine_settings(winograd_min_tiles=0, winograd_backward=True,
                                  winograd_harmonic_channels=0)


@st.composite
def winograd_cases(draw: st.DrawFn) -> dict:
    """3x3 stride-1 convolutions around the Winograd threshold (both sides of it)."""
    t = config.engine.winograd_min_channels
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in_g = draw(st.sampled_from([t - 1, t, t + 1]))
    c_out_g = draw(st.sampled_from([1, t - 1, t, t + 3]))
    padding = tuple(draw(st.integers(0, 3)) for _ in range(2))
    spatial = tuple(draw(st.integers(max(1, 3 - 2 * p), 13)) for p in padding)
    return dict(groups=groups, c_in=groups * c_in_g, c_out=groups * c_out_g, padding=padding,
                spatial=spatial, batch=draw(st.sampled_from([0, 1, 2, 3, None])),
                bias=draw(st.booleans()), layout=draw(st.sampled_from(["contiguous", "flipped"])))


@settings(max_examples=30, deadline=None)
@given(case=winograd_cases(), seed=st.integers(0, 2**16), cap=st.sampled_from([64, 1 << 28]))
def test_winograd_matches_torch_and_numpy_path(case: dict, seed: int, cap: int) -> None:
    rng = np.random.default_rng(seed)
    lead = () if case["batch"] is None else (case["batch"],)
    x = random_array(rng, (*lead, case["c_in"], *case["spatial"]), np.float32)
    if case["layout"] == "flipped":
        x = x[..., ::-1]
    w = random_array(rng, (case["c_out"], case["c_in"] // case["groups"], 3, 3), np.float32)
    b = random_array(rng, (case["c_out"],), np.float32) if case["bias"] else None
    kw = dict(padding=case["padding"], groups=case["groups"])
    with config.settings(scratch_bytes=cap), any_winograd():
        y = F.conv2d(x, w, b, **kw)
        gy = random_array(rng, y.shape, np.float32)
        gx, gw, _ = F.conv_backward(gy, x, w, **kw)
    tx, tw = torch.tensor(x.copy(), requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = tF.conv2d(tx, tw, None if b is None else torch.tensor(b), **kw)
    ty.backward(torch.tensor(gy))
    assert_close(y, ty, "forward")
    assert_close(gx, tx.grad, "grad_input")
    assert_close(gw, tw.grad, "grad_weight")
    with numpy_path():
        assert_close(y, F.conv2d(x, w, b, **kw), "forward vs NumPy path")
        ngx, ngw, _ = F.conv_backward(gy, x, w, **kw)
    assert_close(gx, ngx, "grad_input vs NumPy path")
    assert_close(gw, ngw, "grad_weight vs NumPy path")
    with any_winograd():
        np.testing.assert_array_equal(F.conv2d(x, w, b, **kw), y)  # the cap never changes it


@pytest.mark.parametrize("tiles", [5, 40])
def test_winograd_slabs_and_units_give_the_same_result(tiles: int) -> None:
    rng = np.random.default_rng(4)
    x = random_array(rng, (3, 16, 13, 11), np.float32)
    w = random_array(rng, (16, 16, 3, 3), np.float32)
    b = random_array(rng, (16,), np.float32)
    g = random_array(rng, (3, 16, 13, 11), np.float32)
    whole = F.conv2d(x, w, b, padding=1)
    gx, gw, _ = F.conv_backward(g, x, w, padding=1)
    with config.engine_settings(winograd_block_tiles=tiles, winograd_block_tiles_bwd=tiles,
                                force="winograd"):
        assert_close(F.conv2d(x, w, b, padding=1), whole, "slabs forward")
        sgx, sgw, _ = F.conv_backward(g, x, w, padding=1)
    assert_close(sgx, gx, "slabs grad_input")
    assert_close(sgw, gw, "slabs grad_weight")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_winograd_fused_backward_and_thread_counts(threads: int, batch: int) -> None:
    """The fused kernels (one image per unit backward, scratch per thread) against torch for
    any thread count; with fewer images than threads the backward takes the per-plane path."""
    rng = np.random.default_rng(8)
    x = random_array(rng, (batch, 18, 9, 12), np.float32)[..., ::-1]
    w = random_array(rng, (20, 9, 3, 3), np.float32)
    b = random_array(rng, (20,), np.float32)
    g = random_array(rng, (batch, 20, 9, 12), np.float32)
    tx, tw = torch.tensor(x.copy(), requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = tF.conv2d(tx, tw, torch.tensor(b), padding=1, groups=2)
    ty.backward(torch.tensor(g))
    with config.settings(threads=threads), any_winograd():
        y = F.conv2d(x, w, b, padding=1, groups=2)
        gx, gw, _ = F.conv_backward(g, x, w, padding=1, groups=2)
    assert_close(y, ty, "forward")
    assert_close(gx, tx.grad, "grad_input")
    assert_close(gw, tw.grad, "grad_weight")
    with any_winograd():
        np.testing.assert_array_equal(F.conv2d(x, w, b, padding=1, groups=2), y)


def test_winograd_float64_stays_float64() -> None:
    rng = np.random.default_rng(7)
    x = random_array(rng, (2, 16, 7, 8), np.float64)
    w = random_array(rng, (17, 16, 3, 3), np.float64)
    with any_winograd():
        assert F.plan(x.shape, w.shape, padding=1, dtype=np.float64).forward == "winograd"
        y = F.conv2d(x, w, padding=1)
    assert y.dtype == np.float64
    assert_close(y, tF.conv2d(torch.tensor(x), torch.tensor(w), padding=1), "float64 winograd")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [0, 1, 5])
@pytest.mark.parametrize("block_bytes", [1, 1 << 18])
def test_pointwise_kernels_match_torch_and_numpy_path(threads: int, batch: int,
                                                      block_bytes: int) -> None:
    """1x1 convolutions (forward and both gradients) by the numba micro-kernel in column
    blocks: tiny blocks (64 columns, a ragged last one), any thread count, grouped with output
    channels not a multiple of 4, non-contiguous input, empty batch."""
    rng = np.random.default_rng(11)
    x = random_array(rng, (batch, 14, 9, 23), np.float32)[..., ::-1]
    w = random_array(rng, (22, 7, 1, 1), np.float32)
    b = random_array(rng, (22,), np.float32)
    with config.settings(threads=threads), config.engine_settings(
            pointwise_block_bytes=block_bytes, force="pointwise", pointwise_numpy_macs=0):
        y = F.conv2d(x, w, b, groups=2)
        expected, g, (tgx, tgw, _) = torch_grads(lambda a, v, c: tF.conv2d(a, v, c, groups=2),
                                                 [x.copy(), w, b], 4)
        gx, gw, _ = F.conv_backward(g, x, w, groups=2)
        assert_close(y, expected, "forward")
        assert_close(gx, tgx, "grad_input")
        assert_close(gw, tgw, "grad_weight")
        np.testing.assert_array_equal(F.conv2d(x, w, b, groups=2), y)
    with numpy_path():
        assert_close(y, F.conv2d(x, w, b, groups=2), "forward vs NumPy path")
        ngx, ngw, _ = F.conv_backward(g, x, w, groups=2)
    assert_close(gx, ngx, "grad_input vs NumPy path")
    assert_close(gw, ngw, "grad_weight vs NumPy path")
    with config.settings(scratch_bytes=64), config.engine_settings(pointwise_numpy_macs=0):
        np.testing.assert_array_equal(F.conv2d(x, w, b, groups=2), y)


@pytest.mark.parametrize(("shape", "c_out", "stride"), [
    ((1, 62, 21, 21), 186, 1),  # a multiplier of 3
    ((4, 64, 28, 28), 64, 1),  # the sweep's: 312 us as one product, torch 169
    ((6, 41, 13, 13), 41, 2),
])
def test_a_small_depthwise_1x1_sums_in_place(shape: tuple[int, ...], c_out: int,
                                             stride: int) -> None:
    """A depthwise 1x1 layer, with a channel multiplier or without, is never the one small
    NumPy product (a product of a row or two per image and channel: 6-12x its in-place sums'
    time), however few its multiply-adds; a dense or grouped one of as few is. Its forward
    (with a bias) matches torch on the first call and the settled ones."""
    from convlayers.functional import _engine_pointwise
    from convlayers.functional.plan import geometry

    c_in = shape[1]
    out = tuple((n - 1) // stride + 1 for n in shape[2:])
    depthwise = geometry(shape, (c_out, 1, 1, 1), (stride, stride), (1, 1), c_in, None, out,
                         np.float32)
    assert depthwise.macs <= config.engine.pointwise_numpy_macs
    assert not _engine_pointwise._tiny(depthwise)
    # dense, and two input channels a group where the channels pair up: one output channel
    # a group, so as few multiply-adds as the depthwise layer's
    for groups in {1, c_in // 2 if c_in % 2 == 0 else 1}:
        g = geometry(shape, (groups, c_in // groups, 1, 1), (stride, stride), (1, 1), groups,
                     None, out, np.float32)
        assert g.macs <= config.engine.pointwise_numpy_macs
        assert _engine_pointwise._tiny(g)
    rng = np.random.default_rng(15)
    x = random_array(rng, shape, np.float32)
    w = random_array(rng, (c_out, 1, 1, 1), np.float32)
    b = random_array(rng, (c_out,), np.float32)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                         stride=stride, groups=c_in).numpy()
    for _ in range(3):  # the first call and the settled ones
        assert_close(F.conv2d(x, w, b, stride=stride, groups=c_in), expected, "depthwise 1x1")


@pytest.mark.parametrize(("shape", "c_out", "stride", "groups", "dtype"), [
    ((1, 4, 19, 19), 9, 2, 1, np.float32),  # the sweep's slowest call: 4->9 at stride 2
    ((1, 59, 9, 27), 7, 2, 1, np.float32),
    ((2, 12, 7, 9), 10, 3, 2, np.float64),
    ((1, 16, 14, 14), 32, 1, 4, np.float32),
])
def test_a_tiny_1x1_forward_is_one_product_the_same_on_every_call(
        shape: tuple[int, ...], c_out: int, stride: int, groups: int, dtype: type) -> None:
    """An unpadded 1x1 forward of at most ``pointwise_numpy_macs`` multiply-adds is one
    ``matmul``: the first call and the remembered ones give the same bits on one thread or
    two, torch's values (a non-contiguous input and one with inf and NaN too: non-finite
    exactly where torch's output is); with the bound at 0 the compiled kernel runs it, also
    torch's values."""
    from convlayers.functional import _engine_pointwise, forget_measurements
    from convlayers.functional.plan import geometry

    rng = np.random.default_rng(14)
    x = random_array(rng, shape, dtype)[..., ::-1]
    w = random_array(rng, (c_out, shape[1] // groups, 1, 1), dtype)
    b = random_array(rng, (c_out,), dtype)
    out = tuple((n - 1) // stride + 1 for n in shape[2:])
    g = geometry(shape, w.shape, (stride, stride), (1, 1), groups, None, out, dtype)
    assert _engine_pointwise._tiny(g)
    with config.engine_settings(pointwise_numpy_macs=0):
        assert not _engine_pointwise._tiny(g)
    bad = x.copy()
    bad[0, 1, 0, 0], bad[0, 2, 2 * stride, stride] = np.inf, np.nan
    for inputs in (x, bad):
        with np.errstate(invalid="ignore"):
            expected = tF.conv2d(torch.from_numpy(inputs.copy()), torch.from_numpy(w),
                                 torch.from_numpy(b), stride=stride, groups=groups).numpy()
        finite = np.isfinite(expected)
        forget_measurements()
        calls = []
        for threads in (1, 2, 1):
            with config.settings(threads=threads):
                calls.append(F.conv2d(inputs, w, b, stride=stride, groups=groups))
        for got in calls:
            np.testing.assert_array_equal(got, calls[0])
        assert np.array_equal(np.isfinite(calls[0]), finite)
        assert np.array_equal(np.isnan(calls[0]), np.isnan(expected))
        assert_close(calls[0][finite], expected[finite], "tiny product")
        with config.engine_settings(pointwise_numpy_macs=0):
            kernel = F.conv2d(inputs, w, b, stride=stride, groups=groups)
        assert np.array_equal(np.isnan(kernel), np.isnan(expected))
        assert_close(kernel[finite], expected[finite], "compiled kernel")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("spatial", "c_out"), [((7, 7), 40), ((3, 5), 22), ((14, 14), 36)])
@pytest.mark.parametrize("serial_macs", [0, 1 << 40])
def test_pointwise_row_split_short_maps_and_serial_small_layers(
        threads: int, spatial: tuple[int, int], c_out: int, serial_macs: int) -> None:
    """Batch 1 on small maps: output rows split across threads (bands of 8 and a ragged one),
    maps narrower than a tile (7x7 = 49 columns, 3x5) through the tiles' padded tails, and every
    layer forced onto one thread or onto all of them: the same numbers as torch, and bit for
    bit the same whatever the split."""
    rng = np.random.default_rng(13)
    x = random_array(rng, (1, 24, *spatial), np.float32)
    w = random_array(rng, (c_out, 12, 1, 1), np.float32)
    b = random_array(rng, (c_out,), np.float32)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                         groups=2).numpy()
    with config.engine_settings(serial_macs=serial_macs, pointwise_numpy_macs=0):
        with config.settings(threads=threads):
            y = F.conv2d(x, w, b, groups=2)
        assert_close(y, expected, "forward")
        with config.settings(threads=1):
            np.testing.assert_array_equal(F.conv2d(x, w, b, groups=2), y)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("shape", "c_out", "dtype", "block_bytes"), [
    ((1, 64, 32, 32), 36, np.float32, 1 << 18),  # 4 KiB rows: one L1 set a column
    ((2, 64, 32, 32), 20, np.float32, 1),  # in column blocks of 64
    ((1, 64, 16, 32), 13, np.float64, 1 << 18),  # 4 KiB rows of float64
    ((3, 64, 8, 128), 7, np.float32, 192 * 64 * 4),  # blocks of 192 columns, the last of 64
    ((4, 128, 16, 16), 130, np.float32, 1 << 18),  # 1 KiB rows, 128 in and 130 out
])
def test_pointwise_packed_panels_match_torch_and_the_unpacked_tiles(
        monkeypatch: pytest.MonkeyPatch, threads: int, shape: tuple[int, ...], c_out: int,
        dtype: type, block_bytes: int) -> None:
    """Maps whose rows lie near a multiple of 4 KiB apart: the 1x1 kernel copies each unit's
    columns into a panel of its own before the tiles read them (forward, with and without a
    bias, and the input gradient by the transposed weights). The same numbers as torch, and
    bit for bit those of the tiles reading the input in place (the same sums in the same
    order)."""
    from convlayers.functional import _engine_pointwise, forget_measurements

    rng = np.random.default_rng(17)
    x = random_array(rng, shape, dtype)
    w = random_array(rng, (c_out, shape[1], 1, 1), dtype)
    b = random_array(rng, (c_out,), dtype)
    with config.engine_settings(pointwise_block_bytes=block_bytes):
        _, rows = _engine_pointwise._pointwise_units(shape[0], shape[1], shape[2] * shape[3],
                                                     c_out, x.itemsize, threads)
    assert _engine_pointwise.pointwise_packs(shape[2] * shape[3], shape[1], rows, x.itemsize)

    def run() -> tuple[np.ndarray, ...]:
        forget_measurements()  # the calls remembered whole decided packing once
        with config.settings(threads=threads), config.engine_settings(
                pointwise_block_bytes=block_bytes, force="pointwise", pointwise_numpy_macs=0):
            y, y_nobias = F.conv2d(x, w, b), F.conv2d(x, w)
            gx, _, _ = F.conv_backward(g, x, w)
        return y, y_nobias, gx

    expected, g, (tgx, _, _) = torch_grads(tF.conv2d, [x, w, b], 4)
    packed = run()
    assert_close(packed[0], expected, "forward")
    assert_close(packed[1], tF.conv2d(torch.from_numpy(x), torch.from_numpy(w)), "no bias")
    assert_close(packed[2], tgx, "grad_input")
    monkeypatch.setattr(_engine_pointwise, "pointwise_packs", lambda *_: False)
    for a, b_, what in zip(packed, run(), ("forward", "no bias", "grad_input"), strict=True):
        np.testing.assert_array_equal(a, b_, err_msg=what)


@settings(max_examples=200, deadline=None)
@given(c_out=st.integers(1, 1024), k_rows=st.integers(1, 2048), length=st.integers(1, 20000),
       n=st.integers(1, 9), threads=st.integers(1, 4))
def test_pointwise_units_keep_every_thread_evenly_loaded(c_out: int, k_rows: int, length: int,
                                                         n: int, threads: int) -> None:
    """The 1x1 kernel's units: the fewest column blocks the cache budget allows, as even as
    whole vectors make them (the last short of the others by less than 16 columns a block),
    and output rows split (in whole tile bands) until the units divide between the threads
    or are many a thread, as far as two bands a part allow."""
    from convlayers.functional._engine_pointwise import EVEN_UNITS, _pointwise_units
    from convlayers.kernels.simd import TILE_ROWS

    block, rows = _pointwise_units(n, k_rows, length, c_out, 4, threads)
    budget = max(64, config.engine.pointwise_block_bytes // (k_rows * 4) // 16 * 16)
    assert 1 <= block <= max(budget, min(length, 64)) and (block == length or block % 16 == 0)
    blocks = -(-length // block)
    if block > 64:  # blocks of 64 are the floor, however uneven
        assert blocks == -(-length // budget)
        assert blocks * block - length < 16 * blocks
    parts = -(-c_out // rows)
    units = n * blocks * parts
    assert rows == c_out or rows % TILE_ROWS == 0
    even = units >= 2 * threads and (units % threads == 0 or units >= EVEN_UNITS * threads)
    assert even or rows <= 2 * TILE_ROWS  # or no more bands to split


def test_pointwise_unbatched_strided_padded_and_float64() -> None:
    rng = np.random.default_rng(12)
    for dtype in (np.float32, np.float64):
        x = random_array(rng, (9, 11, 10), dtype)
        w = random_array(rng, (5, 9, 1, 1), dtype)
        y = F.conv2d(x, w, stride=2, padding=1)
        expected, g, (tgx, tgw) = torch_grads(lambda a, v: tF.conv2d(a, v, stride=2, padding=1),
                                              [x, w], 5)
        assert y.dtype == dtype
        assert_close(y, expected, "forward")
        gx, gw, _ = F.conv_backward(g, x, w, stride=2, padding=1)
        assert_close(gx, tgx, "grad_input")
        assert_close(gw, tgw, "grad_weight")
        y1 = F.conv1d(x[:, 0], w[:, :, 0], stride=1)
        assert_close(y1, tF.conv1d(torch.tensor(x[:, 0]), torch.tensor(w[:, :, 0])), "conv1d")


def test_transposed_taps_are_read_in_place_and_other_views_copied() -> None:
    """The input gradient's transposed weight reaches the strided 1x1 kernel as its own
    buffer and strides (no copy); a view whose elements leave gaps is copied first. Either
    way the strided kernel's product is NumPy's."""
    from convlayers.functional._compiled import kernels
    from convlayers.functional._engine_pointwise import _flat_taps

    rng = np.random.default_rng(14)
    w = random_array(rng, (3, 5, 7), np.float32)
    x = random_array(rng, (2, 3, 5, 40), np.float32)
    gapped = random_array(rng, (3, 7, 10), np.float32)[:, :, ::2]
    for taps, in_place in ((w.swapaxes(1, 2), True), (w[:1].swapaxes(1, 2), True),
                           (gapped, False)):
        flat, strides = _flat_taps(taps)
        assert np.shares_memory(flat, taps) == in_place
        rebuilt = np.lib.stride_tricks.as_strided(
            flat, shape=taps.shape, strides=tuple(int(s) * flat.itemsize for s in strides))
        np.testing.assert_array_equal(rebuilt, taps)
        xs = x[:, :taps.shape[0], :taps.shape[2]].copy()
        out = np.empty((2, taps.shape[0], taps.shape[1], 40), np.float32)
        kernels().conv.pointwise_strided(xs, flat, strides, np.empty(0, np.float32), 64, 4,
                                         np.empty((1, 0), np.float32), out)
        np.testing.assert_allclose(out, np.einsum("gpk,ngkl->ngpl", taps, xs), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_pointwise_of_large_maps_subsamples_on_every_thread(
        dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """A strided 1x1 layer past ``parallel_elementwise`` output pixels copies the pixels it
    reads with the compiled subsample (a padded input included; a spy sees it run): forward
    and gradients as torch's, the copy exactly NumPy's slicing."""
    from convlayers.functional._compiled import kernels
    from convlayers.functional._engine_pointwise import _subsampled

    rng = np.random.default_rng(13)
    x = random_array(rng, (2, 48, 71, 66), dtype)
    w = random_array(rng, (24, 12, 1, 1), dtype)
    from convlayers.functional._strided import put_phase, take_phase

    copies: list[tuple[int, ...]] = []
    real = kernels().conv.subsample

    def spy(*args: Any) -> Any:
        copies.append(args[-1].shape)
        return real(*args)

    monkeypatch.setattr(kernels().conv, "subsample", spy)
    sub = _subsampled(x, (3, 2), (24, 33))
    assert sub.size >= config.engine.parallel_elementwise and copies == [sub.shape]
    np.testing.assert_array_equal(sub, x[:, :, ::3, ::2][:, :, :24, :33])
    # a phase that starts inside the planes, out and back (NumPy's slicing the oracle)
    phase = take_phase(x, (2, 1), (3, 2), (23, 32))
    np.testing.assert_array_equal(phase, x[:, :, 2::3, 1::2][:, :, :23, :32])
    back = np.zeros_like(x)
    put_phase(phase, (2, 1), (3, 2), back)
    expected = np.zeros_like(x)
    expected[:, :, 2:2 + 3 * 22 + 1:3, 1:1 + 2 * 31 + 1:2] = phase
    np.testing.assert_array_equal(back, expected)
    for padding in (0, 1):
        conv = lambda a, v, p=padding: tF.conv2d(a, v, stride=(3, 2), padding=p,  # noqa: E731
                                                 groups=4)
        expected, g, (tgx, tgw) = torch_grads(conv, [x, w], 7)
        assert_close(F.conv2d(x, w, stride=(3, 2), padding=padding, groups=4), expected,
                     "forward")
        gx, gw, _ = F.conv_backward(g, x, w, stride=(3, 2), padding=padding, groups=4)
        assert_close(gx, tgx, "grad_input")
        assert_close(gw, tgw, "grad_weight")


@pytest.mark.parametrize("batch", [0, 1, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_backward_scatter_matches_torch(batch: int, stride: int) -> None:
    """The per-plane scatter (planes zeroed in the kernel): overlapping windows add up,
    non-contiguous gradient, empty batch, unbatched input."""
    rng = np.random.default_rng(13)
    x = np.round(random_array(rng, (batch, 4, 11, 9), np.float32))  # ties
    y, idx = F.max_pool2d(x, 3, stride, padding=1, return_indices=True)
    g = random_array(rng, (*y.shape[:-1], 2 * y.shape[-1]), np.float32)[..., ::2]
    gx = F.max_pool_backward(g, x, idx)
    tx = torch.tensor(x, requires_grad=True)
    ty = tF.max_pool2d(tx, 3, stride, padding=1)
    ty.backward(torch.tensor(np.ascontiguousarray(g)))
    assert_close(gx, tx.grad, "grad_input")
    with numpy_path():
        np.testing.assert_array_equal(F.max_pool_backward(g, x, idx), gx)
    if batch:
        np.testing.assert_array_equal(F.max_pool_backward(g[0], x[0], idx[0]), gx[0])


LOWERED_BWD_CASES = [  # (C_in, C_out, kernel, stride, padding, dilation, spatial)
    (6, 9, (3, 3), (2, 2), (1, 1), (1, 1), (11, 9)),
    (5, 4, (3, 2), (1, 3), (0, 2), (2, 1), (10, 13)),
    (3, 7, (2, 3), (3, 1), (2, 0), (1, 2), (8, 12)),
    (1, 5, (3, 3), (1, 1), (1, 1), (1, 1), (7, 7)),  # one input channel: the planar depthwise
]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [0, 1, 5, None])
@pytest.mark.parametrize("case", LOWERED_BWD_CASES)
def test_lowered_backward_matches_torch_and_numpy_path(
        threads: int, batch: int | None, case: tuple) -> None:
    """Both gradients of a lowered convolution (per-thread weight-gradient accumulators, col2im
    per block of input channels), forced: strides, paddings, dilations, one
    input channel, non-contiguous input, empty/single/odd/unbatched, any thread count, tiny
    cap."""
    c_in, c_out, kernel, stride, padding, dilation, spatial = case
    rng = np.random.default_rng(21)
    lead = () if batch is None else (batch,)
    x = random_array(rng, (*lead, c_in, spatial[0], 2 * spatial[1]), np.float32)[..., ::2]
    w = random_array(rng, (c_out, c_in, *kernel), np.float32)
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    _, g, (tgx, tgw) = torch_grads(lambda a, v: tF.conv2d(a, v, **kw),
                                   [np.ascontiguousarray(x), w], 6)
    with config.settings(threads=threads), config.engine_settings(force="lowered"):
        gx, gw, _ = F.conv_backward(g, x, w, **kw)
        with config.settings(scratch_bytes=64):
            cgx, cgw, _ = F.conv_backward(g, x, w, **kw)
    assert_close(gx, tgx, "grad_input")
    assert_close(gw, tgw, "grad_weight")
    assert_close(cgx, gx, "grad_input, tiny cap")
    assert_close(cgw, gw, "grad_weight, tiny cap")
    with numpy_path():
        ngx, ngw, _ = F.conv_backward(g, x, w, **kw)
    assert_close(gx, ngx, "grad_input vs NumPy path")
    assert_close(gw, ngw, "grad_weight vs NumPy path")


def test_lowered_backward_1d_and_float64() -> None:
    rng = np.random.default_rng(22)
    for dtype in (np.float32, np.float64):
        x = random_array(rng, (3, 4, 17), dtype)
        w = random_array(rng, (6, 4, 3), dtype)
        _, g, (tgx, tgw) = torch_grads(
            lambda a, v: tF.conv1d(a, v, stride=2, padding=2, dilation=2), [x, w], 7)
        with config.settings(threads=2):
            gx, gw, _ = F.conv_backward(g, x, w, stride=2, padding=2, dilation=2)
        assert gx.dtype == gw.dtype == dtype
        assert_close(gx, tgx, "grad_input")
        assert_close(gw, tgw, "grad_weight")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("hw", [(16, 16), (32, 32), (7, 7), (9, 35), (2, 16)])
def test_lowered_rows_on_whole_cache_lines_match_torch(hw: tuple[int, int], batch: int) -> None:
    """The lowered kernels lay their scratch rows (the columns, the output gradient's copy, the
    products) an odd number of cache lines apart, from a line on: maps whose rows are 1-4 KiB
    (16x16, 32x32), odd ones (7x7, 9x35) and a short one (2x16); slab units and, for the
    batch of 3, columns merged across images; forward and both gradients, against torch."""
    rng = np.random.default_rng(31)
    x = random_array(rng, (batch, 12, *hw), np.float32)
    w = random_array(rng, (20, 12, 3, 3), np.float32)
    b = random_array(rng, (20,), np.float32)
    y_t, g, (tgx, tgw, tgb) = torch_grads(lambda a, v, c: tF.conv2d(a, v, c, padding=1),
                                          [x, w, b], 8)
    with config.settings(threads=2), config.engine_settings(force="lowered"):
        y = F.conv2d(x, w, b, padding=1)
        gx, gw, gb = F.conv_backward(g, x, w, padding=1, with_bias=True)
    assert_close(y, y_t, "forward")
    assert_close(gx, tgx, "grad_input")
    assert_close(gw, tgw, "grad_weight")
    assert_close(gb, tgb, "grad_bias")
    if batch > 1:  # the merged forward, its columns side by side (ld apart)
        from convlayers.kernels import conv

        taps = np.ascontiguousarray(w.reshape(1, 20, 12 * 9))
        merged = np.empty((batch, 20, hw[0] * hw[1]), np.float32)
        conv.lowered_forward_merged(x, taps, b, 3, 3, 1, 1, 1, 1, 1, 1, hw[1], batch, 8, 2,
                                    merged)
        assert_close(merged.reshape(y.shape), y_t, "merged forward")


@pytest.mark.parametrize("itemsize", [4, 8])
def test_line_stride_is_an_odd_number_of_lines_past_two(itemsize: int) -> None:
    from convlayers.config import CACHE_LINE_BYTES
    from convlayers.kernels._bounds import line_aligned, line_stride

    per = CACHE_LINE_BYTES // itemsize
    for n in range(1, 40 * per):
        s = line_stride(n, itemsize)
        if n < 2 * per:
            assert s == n
        else:
            assert s >= n and s - n < 2 * per and s % per == 0 and (s // per) % 2 == 1, (n, s)
    dtype = np.float32 if itemsize == 4 else np.float64
    raw = np.empty(10 * per, dtype)
    for start in range(per):
        view = line_aligned(raw[start:])
        assert view.ctypes.data % CACHE_LINE_BYTES == 0
        assert 0 <= view.ctypes.data - raw[start:].ctypes.data < CACHE_LINE_BYTES


@EXAMPLES
@given(dims=st.sampled_from([1, 2]), size=st.tuples(st.integers(1, 19), st.integers(1, 19)),
       out=st.tuples(st.integers(1, 23), st.integers(1, 23)),
       special=st.sampled_from(["none", "ties", "nan", "inf"]), seed=st.integers(0, 2**16))
def test_adaptive_pooling_kernels_match_torch_and_the_reference(
        dims: int, size: tuple[int, int], out: tuple[int, int], special: str, seed: int) -> None:
    """The compiled adaptive pools (windows of any size, overlapping, larger outputs than
    inputs, any count of planes): averages close to torch and to the reference loop, maxima
    and indices exactly torch's (first maximum wins a tie, the last NaN wins), the average's
    backward too."""
    from convlayers import reference

    rng = np.random.default_rng(seed)
    planes = (1 + seed % 3, 1 + seed % 5)  # 1-15 planes: the max scans four at a time
    shape = (*planes, *size) if dims == 2 else (*planes, size[1])
    o = out if dims == 2 else out[1]
    x = _with_specials(rng, random_array(rng, shape, np.float32), special)
    tx = torch.from_numpy(x)
    avg = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d}[dims]
    tavg = {1: tF.adaptive_avg_pool1d, 2: tF.adaptive_avg_pool2d}[dims]
    mx = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d}[dims]
    tmx = {1: tF.adaptive_max_pool1d, 2: tF.adaptive_max_pool2d}[dims]
    y = avg(x, o)
    assert_close(y, tavg(tx, o), "adaptive avg")
    if dims == 2:
        assert_close(y, reference.adaptive_avg_pool2d(x, out), "adaptive avg vs reference")
    v, i = mx(x, o, return_indices=True)
    tv, ti = tmx(tx, o, return_indices=True)
    np.testing.assert_array_equal(v, tv.numpy())
    # rounding makes ties of -0.0 and 0.0: the first in the window is the output, sign included
    np.testing.assert_array_equal(np.signbit(v), np.signbit(tv.numpy()))
    np.testing.assert_array_equal(i, ti.numpy())
    alone = mx(x, o)  # without indices: the same values and zeros' signs
    np.testing.assert_array_equal(alone, tv.numpy())
    np.testing.assert_array_equal(np.signbit(alone), np.signbit(tv.numpy()))
    if special in ("none", "ties"):
        _, g, (gx,) = torch_grads(lambda t: tavg(t, o), [x], seed)
        assert_close(F.adaptive_avg_pool_backward(g, x, spatial_dims=dims), gx,
                     "adaptive avg backward")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adaptive_average_of_whole_rows_matches_torch(dtype: type) -> None:
    """Windows as wide as the plane are summed as one run of memory in blocks (of the input's
    dtype, joined in float64): long runs, several blocks and a partial one, and inf / NaN in
    one block only, against torch."""
    rng = np.random.default_rng(11)
    x = random_array(rng, (2, 5, 70, 71), dtype) + dtype(3)  # a mean far from 0: rounding shows
    x[0, 1, 30, 5], x[0, 2, 69, 70], x[1, 3, 0, 0] = np.inf, np.nan, -np.inf
    for out in (1, (3, 1), (7, None)):
        y = F.adaptive_avg_pool2d(x, out)
        t = tF.adaptive_avg_pool2d(torch.from_numpy(x), out if out != (7, None) else (7, 71))
        assert y.dtype == dtype
        assert_close(y, t, f"adaptive avg to {out}")
    # global pooling of large inputs: the planes split over the threads, the same sums
    with config.engine_settings(global_pool_serial_taps=0):
        y = F.adaptive_avg_pool2d(x, 1)
    assert_close(y, tF.adaptive_avg_pool2d(torch.from_numpy(x), 1), "global avg on every thread")


def test_adaptive_max_of_alike_windows_on_narrow_inputs_runs_as_max_pooling() -> None:
    """Windows all alike (each input size a multiple of the output's) on at most
    ``pooled_max_width`` columns, no indices asked, from ``pooled_max_taps`` input elements:
    the call runs as ``max_pool2d`` with the window as kernel and stride, and its values are
    torch's adaptive pooling's, zeros' signs, ties, NaN and inf included; with indices, or
    windows not alike, or wider inputs, the window kernels run."""
    from convlayers.functional import adaptive

    rng = np.random.default_rng(9)
    ties = rng.integers(-2, 3, (4, 435, 14, 14)).astype(np.float32)  # 341k elements
    signed = -np.abs(ties)  # -0.0 and 0.0 tie in many windows
    signed[0, 0, 0, 0], signed[0, 0, 3, 3] = -0.0, 0.0
    odd = rng.standard_normal((2, 300, 12, 10)).astype(np.float32)
    odd[0, 1, 2, 3], odd[1, 7, 11, 9], odd[1, 8, 0, 0] = np.nan, np.inf, -np.inf
    odd[0, 2, 0, 0], odd[0, 2, 5, 4] = np.nan, np.inf
    routed = 0
    for a, out in ((ties, 2), (ties, 7), (signed, (7, 2)), (odd, (3, 5)), (odd, (6, 2))):
        plan = adaptive._plan(a, out, 2, "max", False)
        assert plan.kind == "pool", (a.shape, out)
        routed += 1
        got = F.adaptive_max_pool2d(a, out)
        expected = tF.adaptive_max_pool2d(torch.from_numpy(a), out).numpy()
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))
        # the same call through the window kernels gives the same values
        with config.engine_settings(pooled_max_width=0):
            assert adaptive._plan(a, out, 2, "max", False).kind != "pool"
            np.testing.assert_array_equal(F.adaptive_max_pool2d(a, out), got)
    assert routed == 5
    assert adaptive._plan(ties, 2, 2, "max", True).kind != "pool"  # indices asked
    assert adaptive._plan(ties, 3, 2, "max", False).kind != "pool"  # 14 -> 3: not alike
    wide = np.zeros((2, 64, 28, 28), np.float32)
    assert adaptive._plan(wide, 4, 2, "max", False).kind != "pool"  # 28 columns
    assert adaptive._plan(ties[:1, :8], 2, 2, "max", False).kind != "pool"  # 1.5k elements


def test_adaptive_max_on_wide_windows_keeps_torch_order_of_ties_and_nan() -> None:
    """Windows of at least eight columns take the kernel by columns, global pooling the scans
    of whole planes (each column's maximum and
    the first row that reached it, then the window's): a tie of -0.0 and 0.0 keeps the first,
    a later column's maximum on an earlier row comes first, a NaN anywhere wins (the last
    one), an inf is a maximum like any other; values and indices exactly torch's, also on
    maps of a few distinct values, where nearly every window holds ties."""
    x = -np.abs(np.random.default_rng(5).standard_normal((4, 3, 6, 40))).astype(np.float32)
    x[0, 0, 2, 7], x[0, 0, 4, 30] = -0.0, 0.0  # the first maximum is -0.0
    x[0, 1, 3, 11], x[0, 1, 1, 2] = 0.0, -0.0  # row-major: -0.0 at (1, 2) comes first
    x[0, 2, 4, 3], x[0, 2, 1, 25], x[0, 2, 3, 25] = 5.0, 5.0, 5.0  # (1, 25) comes first
    x[1, 0, 2, 9], x[1, 0, 5, 1] = np.nan, np.nan
    x[2, 2, 0, 39], x[2, 2, 5, 0] = np.inf, np.inf
    x[3, 1, 1, 12], x[3, 1, 4, 12], x[3, 1, 2, 14] = np.nan, 7.0, 7.0  # NaN, then ties
    # 20 planes: units of whole planes on two threads (12 above: of one output row)
    ties = np.random.default_rng(6).integers(-2, 3, (4, 5, 23, 61)).astype(np.float32)
    for a in (x, ties, -np.abs(ties)):
        for out in (1, (2, 3), (1, 4), (5, 7), (23, 4)):
            v, i = F.adaptive_max_pool2d(a, out, return_indices=True)
            tv, ti = tF.adaptive_max_pool2d(torch.from_numpy(a), out, return_indices=True)
            np.testing.assert_array_equal(v, tv.numpy())
            np.testing.assert_array_equal(np.signbit(v), np.signbit(tv.numpy()))
            np.testing.assert_array_equal(i, ti.numpy())
            # without indices (the global scan then looks for the first maximum only when
            # it is a zero): the same values, zeros' signs included
            alone = F.adaptive_max_pool2d(a, out)
            np.testing.assert_array_equal(alone, tv.numpy())
            np.testing.assert_array_equal(np.signbit(alone), np.signbit(tv.numpy()))
    # global pooling of large inputs scans the flat planes on every thread (the same rule)
    with config.engine_settings(global_pool_serial_taps=0):
        for a in (x, ties, -np.abs(ties)):
            v, i = F.adaptive_max_pool2d(a, 1, return_indices=True)
            tv, ti = tF.adaptive_max_pool2d(torch.from_numpy(a), 1, return_indices=True)
            np.testing.assert_array_equal(v, tv.numpy())
            np.testing.assert_array_equal(np.signbit(v), np.signbit(tv.numpy()))
            np.testing.assert_array_equal(i, ti.numpy())
            alone = F.adaptive_max_pool2d(a, 1)
            np.testing.assert_array_equal(alone, tv.numpy())
            np.testing.assert_array_equal(np.signbit(alone), np.signbit(tv.numpy()))


def test_only_maps_of_a_few_pixels_or_split_batches_merge_their_columns() -> None:
    """Images merge their columns when one would split its output channels between the
    threads (a batch of a few) or has at most a quarter of a vector's lanes of output
    positions; maps of 6-15 positions keep the slab units (merging ran them 1.07-2.1x slower),
    and so does one image (each thread makes its blocks' columns: 0.77-0.93x the time), and a
    pass of fewer than ``config.engine.merged_min_positions`` positions in all (2-4 images of
    one position: merged 1.3-2.1x the units' time)."""
    from convlayers.functional._engine_lowered import _lowered_units, _merged_images
    from convlayers.functional.plan import geometry

    def merged(n: int, hw: int, c_in: int = 64, c_out: int = 64, block: int = 0) -> int:
        g = geometry((n, c_in, hw, hw), (c_out, c_in, 3, 3), (1, 1), (1, 1), 1, None,
                     (hw - 2, hw - 2), np.float32)
        return _merged_images(g, 2, block or _lowered_units(g, 2, "forward")[1])

    assert merged(8, 3) == 8  # one output position an image
    assert merged(4, 3) == 0  # four positions in all: the units of one image
    with config.engine_settings(merged_min_positions=4):
        assert merged(4, 3) == 4
    assert merged(8, 5) == 0  # nine
    assert merged(8, 6) == 0  # sixteen
    assert merged(1, 9, 256, 256) == 0  # one image: its channels split, its columns made twice
    assert merged(1, 3) == 0
    # three images: where the slab units split their channels between the two threads (a
    # block of 128 of 256), they merge; units of all the channels keep their slabs. Which
    # units the planner picks depends on the register tile (AVX2 or AVX-512), so both are
    # given here
    assert merged(3, 9, 256, 256, block=128) == 3
    assert merged(3, 9, 256, 256, block=256) == 0


def test_lone_images_take_the_lowered_units_that_cost_least() -> None:
    """At batch 1 the lowered forward's units are costed (``costed_units``): a 1x6 stride-2
    layer 266->155 on a 33x14 map (17x5 outputs) runs two slabs of all 155 channels, one a
    thread, where shortening the slabs first had also split the channels (10 rows by 80: 2.4x
    the time). Its result is bit for bit the one-thread one, and torch's within rounding."""
    from convlayers.functional._engine_lowered import _lowered_units
    from convlayers.functional.plan import geometry

    g = geometry((1, 266, 33, 14), (155, 266, 1, 6), (2, 2), (1, 1), 1, None, (17, 5),
                 np.float32)
    assert _lowered_units(g, 2, "forward") == (9, 155)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 266, 33, 14)).astype(np.float32)
    w = rng.standard_normal((155, 266, 1, 6)).astype(np.float32)
    with config.engine_settings(force="lowered"):
        with config.settings(threads=1):
            alone = F.conv2d(x, w, stride=2)
        with config.settings(threads=2):
            split = F.conv2d(x, w, stride=2)
    np.testing.assert_array_equal(split, alone)
    assert_close(split, tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2),
                 "lowered forward in costed units")


@pytest.mark.parametrize(("batch", "hw", "images"), [(1, (20, 21), 1), (5, (7, 6), 2)])
def test_merged_columns_match_the_slab_units_bit_for_bit(batch: int, hw: tuple[int, int],
                                                         images: int) -> None:
    """Batches too small for every thread (one image, two groups) and maps of a few output
    pixels: the lowered forward makes the columns of ``images`` images at a time side by side
    and splits the product by output channels (``lowered_forward_merged``); its sums run in
    the slab kernel's order, so both kernels give the same bits (an incomplete last pass of
    images included), and the engine's result matches torch, bias, stride, dilation and
    padding included."""
    from convlayers.kernels import conv

    rng = np.random.default_rng(11)
    x = random_array(rng, (batch, 32, *hw), np.float32)
    w = random_array(rng, (48, 16, 3, 5), np.float32)
    b = random_array(rng, (48,), np.float32)
    kw = dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2)
    expected = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                         **kw).numpy()
    ho, wo = expected.shape[2:]
    taps = np.ascontiguousarray(w.reshape(2, 24, 16 * 15))
    geometry = (3, 5, 1, 2, 2, 1, 2, 1, wo)
    merged = np.empty((batch, 48, ho * wo), np.float32)
    conv.lowered_forward_merged(x, taps, b, *geometry, images, 8, 2, merged)
    slabs = np.empty_like(merged)
    conv.lowered_forward(x, taps, b, *geometry, 3, 16, 2, slabs)
    np.testing.assert_array_equal(merged, slabs)
    assert_close(merged.reshape(expected.shape), expected, "merged columns")
    with config.settings(threads=2), config.engine_settings(force="lowered"):
        assert_close(F.conv2d(x, w, b, **kw), expected, "engine")


@pytest.mark.parametrize(("hw", "kw"), [
    ((9, 9), dict(dilation=2)),  # one window an image, every tap inside
    ((6, 6), dict(stride=3, padding=(1, 2), groups=2)),  # 2x2 windows, taps in the padding
    ((6, 9), dict(stride=2, padding=1, dilation=(1, 2), groups=4)),  # 2x2, four groups
    ((7, 9), dict(stride=(1, 2), padding=(0, 1), groups=40)),  # 3x4, depthwise, multiplier 8
])
def test_maps_of_a_few_windows_gather_and_scatter_across_images(hw: tuple[int, int],
                                                                kw: dict[str, Any]) -> None:
    """Batches of maps with at most four output positions an image: the lowered forward
    gathers every image's columns tap by tap (``_columns_across_images``), the input
    gradient makes one product over all the images and scatters it back
    (``lowered_input_grad_merged``), and the weight gradient one product whose inner
    dimension is all the images' positions (``lowered_weight_grad_merged``); against torch,
    on two threads and on one, bias, stride, dilation, groups and padding included."""
    from convlayers.functional._engine_lowered import _merged_gradient_block
    from convlayers.functional.conv import conv_spec
    from convlayers.functional.plan import geometry

    rng = np.random.default_rng(21)
    x = random_array(rng, (6, 40, *hw), np.float32)
    groups = kw.get("groups", 1)
    w = random_array(rng, (8 * groups, 40 // groups, 5, 5), np.float32)
    b = random_array(rng, (8 * groups,), np.float32)
    expected, gy, (gx, gw, gb) = torch_grads(lambda x, w, b: tF.conv2d(x, w, b, **kw), [x, w, b])
    assert expected.shape[2] * expected.shape[3] <= 16
    spec = conv_spec(x, w, b, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                       groups, "zeros")
    g = geometry(x.shape, w.shape, spec.stride, spec.dilation, groups, spec.pairs,
                 spec.out_shape, np.float32)
    assert _merged_gradient_block(g, 2) > 0
    for threads in (2, 1):
        with config.settings(threads=threads), config.engine_settings(force="lowered"):
            assert_close(F.conv2d(x, w, b, **kw), expected, "forward across images")
            ours = F.conv_backward(gy, x, w, with_bias=True, **kw)
            assert_close(ours[0], gx, "input gradient across images")
            assert_close(ours[1], gw, "weight gradient across images")
            assert_close(ours[2], gb, "bias gradient")


def test_one_window_of_one_image_runs_its_products_as_dots() -> None:
    """Batch 1, a map of one window: every lowered product is one column wide, the forward's
    dot products along the inner dimension and the input gradient's scaled weight columns
    (``simd.gemm_few``); grouped, dilated and strided, against torch on two threads."""
    rng = np.random.default_rng(22)
    x = random_array(rng, (1, 66, 19, 19), np.float32)
    w = random_array(rng, (200, 33, 7, 7), np.float32)
    kw = dict(stride=2, dilation=3, groups=2)
    expected, gy, (gx, gw) = torch_grads(lambda x, w: tF.conv2d(x, w, **kw), [x, w])
    assert expected.shape[2:] == (1, 1)
    with config.settings(threads=2), config.engine_settings(force="lowered"):
        assert_close(F.conv2d(x, w, **kw), expected, "forward by dots")
        ours = F.conv_backward(gy, x, w, **kw)
    assert_close(ours[0], gx, "input gradient by scaled columns")
    assert_close(ours[1], gw, "weight gradient")


@pytest.mark.parametrize("batch", [1, 3])
def test_lowered_weight_gradient_split_by_input_channels_matches_torch(batch: int) -> None:
    """Batch 1 on a small map gives the lowered weight gradient one (image, slab) unit per
    group: its units also take blocks of input channels, each writing its own rows of one
    accumulator (the threads' accumulators, summed and transposed in one pass, otherwise);
    two groups, stride, padding and dilation; against torch on two threads."""
    rng = np.random.default_rng(12)
    x = random_array(rng, (batch, 64, 11, 10), np.float32)
    w = random_array(rng, (48, 32, 5, 3), np.float32)
    kw = dict(padding=(2, 1), dilation=(1, 2), groups=2)
    expected, g, (tgx, tgw) = torch_grads(lambda a, v: tF.conv2d(a, v, **kw), [x, w], 13)
    with config.settings(threads=2), config.engine_settings(force="lowered"):
        y = F.conv2d(x, w, **kw)
        gx, gw, _ = F.conv_backward(g, x, w, with_bias=False, **kw)
    assert_close(y, expected, "forward")
    assert_close(gx, tgx, "grad_input")
    assert_close(gw, tgw, "grad_weight")


@pytest.mark.parametrize("shape", [(6, 20, 25, 18), (1, 2, 30, 31)])  # planes, and rows, a unit
@pytest.mark.parametrize(("r0", "c0", "sh", "sw"), [(0, 0, 1, 2), (1, 2, 2, 3), (2, 1, 3, 1),
                                                     (0, 3, 1, 5)])
def test_stride_phase_copies_match_numpy_slicing(shape: tuple[int, ...], r0: int, c0: int,
                                                 sh: int, sw: int) -> None:
    """``subsample`` takes one stride phase of a batch of planes and ``scatter_strided`` writes
    it back, against NumPy's strided slices: literal strides 1-3 and a general one, a plane a
    unit (120 planes) and a row a unit (2 planes)."""
    from convlayers.kernels import conv

    x = np.random.default_rng(sh * 10 + sw).standard_normal(shape).astype(np.float32)
    view = x[:, :, r0::sh, c0::sw]
    phase = np.empty(view.shape, np.float32)
    conv.subsample(x, r0, c0, sh, sw, phase)
    np.testing.assert_array_equal(phase, view)
    back = np.zeros_like(x)
    conv.scatter_strided(phase, r0, c0, sh, sw, back)
    expected = np.zeros_like(x)
    expected[:, :, r0::sh, c0::sw] = view
    np.testing.assert_array_equal(back, expected)
