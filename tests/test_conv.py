"""conv1d/2d/3d and their backward against torch.nn.functional, over generated configurations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import given
from hypothesis import strategies as st

from convlayers import functional as F
from oracle import assert_close, random_array, torch_grads


@dataclass
class ConvCase:
    n: int
    batch: int
    groups: int
    c_in: int
    c_out: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...] | str
    padding_mode: str
    spatial: tuple[int, ...]
    bias: bool
    dtype: type
    layout: str  # "contiguous", "transposed" (non-contiguous) or "flipped" (negative strides)
    unbatched: bool


@st.composite
def conv_cases(draw: st.DrawFn, n: int | None = None) -> ConvCase:
    n = draw(st.sampled_from([1, 2, 2, 2, 3])) if n is None else n
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    dilation = tuple(draw(st.sampled_from([1, 1, 2, 3])) for _ in range(n))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    padding: tuple[int, ...] | str
    choice = draw(st.sampled_from(["int", "int", "same", "valid"]))
    if choice == "same":
        stride = (1,) * n
        padding = "same"
        pads = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    else:
        stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
        padding = "valid" if choice == "valid" else tuple(draw(st.integers(0, 3)) for _ in range(n))
        pads = [0] * n if choice == "valid" else [2 * p for p in padding]  # type: ignore[union-attr]
    spatial = []
    for k, d, p in zip(kernel, dilation, pads, strict=True):
        need = max(1, d * (k - 1) + 1 - p, p)  # fits the kernel; reflect needs pad < size
        spatial.append(draw(st.integers(need + (1 if mode == "reflect" else 0), need + 5)))
    return ConvCase(
        n=n, batch=draw(st.sampled_from([0, 1, 1, 2, 3])), groups=groups, c_in=c_in, c_out=c_out,
        kernel=kernel, stride=stride, dilation=dilation, padding=padding, padding_mode=mode,
        spatial=tuple(spatial), bias=draw(st.booleans()),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        layout=draw(st.sampled_from(["contiguous", "contiguous", "transposed", "flipped"])),
        unbatched=draw(st.booleans()),
    )


def _make_input(rng: np.random.Generator, case: ConvCase) -> np.ndarray:
    shape = (case.batch, case.c_in, *case.spatial)
    if case.layout == "transposed":  # same values, non-contiguous memory
        x = random_array(rng, shape[::-1], case.dtype).T
    elif case.layout == "flipped":
        x = random_array(rng, shape, case.dtype)[..., ::-1]
    else:
        x = random_array(rng, shape, case.dtype)
    if case.unbatched and case.batch >= 1:
        return x[0]
    return x


def _torch_conv(case: ConvCase):
    conv = {1: tF.conv1d, 2: tF.conv2d, 3: tF.conv3d}[case.n]

    def run(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if case.padding_mode == "zeros":
            return conv(x, w, b, case.stride, case.padding, case.dilation, case.groups)
        if case.padding == "same":
            pairs = [((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2)
                     for k, d in zip(case.kernel, case.dilation, strict=True)]
        elif case.padding == "valid":
            pairs = [(0, 0)] * case.n
        else:
            pairs = [(p, p) for p in case.padding]
        flat = [v for pair in reversed(pairs) for v in pair]
        batched = x if x.ndim == case.n + 2 else x[None]
        padded = tF.pad(batched, flat, mode=case.padding_mode)
        out = conv(padded, w, b, case.stride, 0, case.dilation, case.groups)
        return out if x.ndim == case.n + 2 else out[0]

    return run


def _our_conv(case: ConvCase):
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[case.n]


@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_conv_forward_and_backward_match_torch(case: ConvCase, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _make_input(rng, case)
    w = random_array(rng, (case.c_out, case.c_in // case.groups, *case.kernel), case.dtype)
    b = random_array(rng, (case.c_out,), case.dtype) if case.bias else None
    expected, g, (gx, gw, gb) = torch_grads(_torch_conv(case), [np.ascontiguousarray(x), w, b], seed)

    ours = _our_conv(case)(x, w, b, stride=case.stride, padding=case.padding,
                           dilation=case.dilation, groups=case.groups,
                           padding_mode=case.padding_mode)
    assert_close(ours, expected, "forward")

    our_gx, our_gw, our_gb = F.conv_backward(
        g, x, w, case.stride, case.padding, case.dilation, case.groups, case.padding_mode,
        with_bias=case.bias)
    assert_close(our_gx, gx, "grad_input")
    assert_close(our_gw, gw, "grad_weight")
    if case.bias:
        assert_close(our_gb, gb, "grad_bias")


@given(case=conv_cases(n=2), seed=st.integers(0, 2**16), cap=st.sampled_from([64, 4096]))
def test_tiny_scratch_cap_gives_the_same_result(case: ConvCase, seed: int, cap: int) -> None:
    from convlayers import config

    rng = np.random.default_rng(seed)
    x = _make_input(rng, case)
    w = random_array(rng, (case.c_out, case.c_in // case.groups, *case.kernel), case.dtype)
    kwargs = dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
                  groups=case.groups, padding_mode=case.padding_mode)
    free = F.conv2d(x, w, **kwargs)
    with config.settings(scratch_bytes=cap):
        capped = F.conv2d(x, w, **kwargs)
    np.testing.assert_array_equal(free, capped)


def test_seed_example_vertical_edge_kernel() -> None:
    """The seed's 4x4 image and vertical-edge kernel: every window gives -6."""
    image = np.arange(1, 17, dtype=np.float64).reshape(4, 4)
    kernel = np.array([[1, 0, -1]] * 3, dtype=np.float64)
    out = F.conv2d(image[None, None], kernel[None, None])
    # by hand: each row of a window is (a, a+1, a+2), so a - (a+2) = -2, three rows: -6
    np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), -6.0))


def test_depthwise_with_channel_multiplier_matches_torch() -> None:
    rng = np.random.default_rng(1)
    x = random_array(rng, (2, 4, 9, 9), np.float32)
    w = random_array(rng, (8, 1, 3, 3), np.float32)
    expected = tF.conv2d(torch.tensor(x), torch.tensor(w), padding=1, groups=4)
    assert_close(F.conv2d(x, w, padding=1, groups=4), expected, "depthwise x2")


def test_float32_stays_float32_and_float64_stays_float64() -> None:
    for dtype in (np.float32, np.float64):
        x = np.ones((1, 2, 5, 5), dtype)
        w = np.ones((3, 2, 3, 3), dtype)
        assert F.conv2d(x, w).dtype == dtype
        gx, gw, gb = F.conv_backward(np.ones((1, 3, 3, 3), dtype), x, w)
        assert gx.dtype == gw.dtype == gb.dtype == dtype


def test_nan_and_inf_flow_through_like_torch() -> None:
    x = np.ones((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3] = np.inf
    w = np.ones((1, 1, 2, 2), np.float32)
    expected = tF.conv2d(torch.tensor(x), torch.tensor(w))
    assert_close(F.conv2d(x, w), expected, "nan/inf")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(x=np.ones((2, 2)), w=np.ones((1, 1, 1, 1))), "input must have 3 or 4 dimensions"),
        (dict(x=np.ones((1, 3, 5, 5)), w=np.ones((2, 3, 3))), "weight must have 4 dimensions"),
        (dict(x=np.ones((1, 3, 5, 5)), w=np.ones((2, 1, 3, 3)), groups=2), "in_channels=3"),
        (dict(x=np.ones((1, 4, 5, 5)), w=np.ones((3, 2, 3, 3)), groups=2), "out_channels=3"),
        (dict(x=np.ones((1, 4, 5, 5)), w=np.ones((2, 3, 3, 3))), "weight.shape[1]=3"),
        (dict(x=np.ones((1, 1, 2, 2)), w=np.ones((1, 1, 3, 3))), "larger than the padded input"),
        (dict(x=np.ones((1, 1, 5, 5)), w=np.ones((1, 1, 3, 3)), stride=0), "stride must be >= 1"),
        (dict(x=np.ones((1, 1, 5, 5)), w=np.ones((1, 1, 3, 3)), dilation=0), "dilation must be >= 1"),
        (dict(x=np.ones((1, 1, 5, 5)), w=np.ones((1, 1, 3, 3)), padding=-1), "padding must be >= 0"),
        (dict(x=np.ones((1, 1, 5, 5)), w=np.ones((1, 1, 3, 3)), padding="same", stride=2),
         "padding='same' is not supported for strided"),
        (dict(x=np.ones((1, 1, 5, 5)), w=np.ones((1, 1, 3, 3)), padding="full"), "padding must be one of"),
        (dict(x=np.ones((1, 1, 5, 5)), w=np.ones((1, 1, 3, 3)), padding_mode="mirror"),
         "padding_mode must be one of"),
        (dict(x=np.ones((1, 1, 3, 3)), w=np.ones((1, 1, 3, 3)), padding=3, padding_mode="reflect"),
         "padding_mode='reflect' needs padding smaller"),
        (dict(x=np.ones((1, 1, 5, 5)), w=np.ones((2, 1, 3, 3)), b=np.ones(3)), "bias must have shape (2,)"),
        (dict(x=np.ones((1, 1, 5, 5)), w=np.ones((1, 1, 3, 3)), stride=(1, 1, 1)),
         "stride must have 2 values"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_them(kwargs: dict, message: str) -> None:
    x, w, b = kwargs.pop("x"), kwargs.pop("w"), kwargs.pop("b", None)
    with pytest.raises(ValueError, match=_escape(message)):
        F.conv2d(x, w, b, **kwargs)


@pytest.mark.parametrize(
    ("x", "w", "message"),
    [
        (np.ones((1, 1, 5, 5), np.int64), np.ones((1, 1, 3, 3)), "input must be a float32 or float64"),
        (np.array([["a"]]), np.ones((1, 1, 1, 1)), "input must be a float32 or float64"),
        (np.ones((1, 1, 5, 5), np.float32), np.ones((1, 1, 3, 3)), "must have the same dtype"),
    ],
)
def test_bad_dtypes_raise_type_errors(x: np.ndarray, w: np.ndarray, message: str) -> None:
    with pytest.raises(TypeError, match=_escape(message)):
        F.conv2d(x, w)


def test_stride_must_be_an_integer() -> None:
    with pytest.raises(TypeError, match=_escape("stride must be an int or a sequence of 2 ints, got 1.5")):
        F.conv2d(np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), stride=1.5)  # type: ignore[arg-type]


def _escape(text: str) -> str:
    import re

    return re.escape(text)


# --------------------------------------------------------------------------- shapes owns the sizes

@pytest.mark.parametrize(("size", "k", "s", "p", "d"), [
    (32, 3, 2, 1, 1), (7, 4, 1, 0, 2), (5, 5, 3, 2, 1), (224, 7, 2, 3, 1), (1, 1, 1, 0, 1)])
def test_output_formula_reads_and_evaluates_to_torchs_size(size: int, k: int, s: int, p: int,
                                                           d: int) -> None:
    import math

    from convlayers import shapes

    text = shapes.conv_output_formula(size, k, s, p, d)
    expression, result = text.rsplit(" = ", 1)
    want = tF.conv1d(torch.zeros(1, 1, size), torch.zeros(1, 1, k), stride=s, padding=p,
                     dilation=d).shape[-1]
    assert int(result) == want == eval(expression, {"floor": math.floor})


@pytest.mark.parametrize(("k", "d"), [(3, 1), (4, 1), (3, 2), (6, 3)])
def test_same_padding_resolves_like_torch(k: int, d: int) -> None:
    from convlayers import shapes

    x = np.random.default_rng(k).standard_normal((1, 1, 9, 10))
    w = np.random.default_rng(d).standard_normal((1, 1, k, k))
    (top, bottom), (left, right) = shapes.resolve_padding("same", (k, k), (1, 1), (d, d))
    want = tF.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding="same", dilation=d)
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    assert_close(F.conv2d(padded, w, dilation=d), want.numpy())
    with pytest.raises(ValueError, match="strided"):
        shapes.resolve_padding("same", (k, k), (2, 1), (d, d))
