"""Max, average and adaptive pooling (and their backward) against torch.nn.functional."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import assume, given
from hypothesis import strategies as st

from convlayers import functional as F
from oracle import assert_close, torch_grads


@dataclass
class PoolCase:
    n: int
    shape: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...] | None
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool
    dtype: type
    values: str  # "normal", "ties" (many equal values) or "nan" (some NaN and -inf)
    unbatched: bool


@st.composite
def pool_cases(draw: st.DrawFn, dilated: bool = True, dims: tuple[int, ...] = (1, 2, 2, 2, 3)) -> PoolCase:
    n = draw(st.sampled_from(dims))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    stride = None if draw(st.booleans()) else tuple(draw(st.integers(1, 4)) for _ in range(n))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = tuple(draw(st.integers(1, 3)) if dilated else 1 for _ in range(n))
    spatial = []
    for k, p, d in zip(kernel, padding, dilation, strict=True):
        need = max(1, d * (k - 1) + 1 - 2 * p)
        spatial.append(draw(st.integers(need, need + 6)))
    batch = draw(st.sampled_from([0, 1, 2]))
    return PoolCase(
        n=n, shape=(batch, draw(st.integers(1, 3)), *spatial), kernel=kernel, stride=stride,
        padding=padding, dilation=dilation, ceil_mode=draw(st.booleans()),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        values=draw(st.sampled_from(["normal", "ties", "nan"])), unbatched=draw(st.booleans()),
    )


def _input(case: PoolCase, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if case.values == "ties":
        x = rng.integers(0, 3, case.shape).astype(case.dtype)
    else:
        x = rng.standard_normal(case.shape).astype(case.dtype)
    if case.values == "nan":
        x[rng.random(case.shape) < 0.15] = np.nan
        x[rng.random(case.shape) < 0.1] = -np.inf
    if case.unbatched and case.shape[0] >= 1:
        return x[0]
    return x


def _fns(n: int):
    return (
        {1: tF.max_pool1d, 2: tF.max_pool2d, 3: tF.max_pool3d}[n],
        {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n],
    )


@given(case=pool_cases(), seed=st.integers(0, 2**16))
def test_max_pool_values_indices_and_gradient_match_torch(case: PoolCase, seed: int) -> None:
    x = _input(case, seed)
    theirs, ours = _fns(case.n)
    kwargs = dict(kernel_size=case.kernel, stride=case.stride, padding=case.padding,
                  dilation=case.dilation, ceil_mode=case.ceil_mode)
    t_out, t_idx = theirs(torch.tensor(x), return_indices=True, **kwargs)
    out, idx = ours(x, return_indices=True, **kwargs)
    assert_close(out, t_out, "max values")
    np.testing.assert_array_equal(idx, t_idx.numpy(), err_msg="argmax indices")
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(ours(x, **kwargs), out)  # same values without indices
    # A window with no input element (dilation skipping over the input) gives -inf and, as in
    # torch, the index of its first tap at or after 0, which lies outside the window: torch's
    # backward adds that window's gradient there (or past the plane), ours refuses such an
    # index. The gradients are compared where every window holds an input element.
    if case.values != "nan" and not np.isneginf(out).any():
        _, g, (t_gx,) = torch_grads(lambda t: theirs(t, **kwargs), [x], seed)
        assert_close(F.max_pool_backward(g, x, idx, spatial_dims=case.n), t_gx, "grad_input")


@given(case=pool_cases(dilated=False), seed=st.integers(0, 2**16),
       count_include_pad=st.booleans(), divisor=st.sampled_from([None, None, 3, -2]))
def test_avg_pool_and_gradient_match_torch(
    case: PoolCase, seed: int, count_include_pad: bool, divisor: int | None
) -> None:
    # torch's avg_pool3d (alone among its pools) refuses an input smaller than the kernel
    # even when the padding covers it; the 1-D and 2-D pools, and ours, take it
    assume(case.n < 3 or all(s >= k for s, k in zip(case.shape[-3:], case.kernel, strict=True)))
    x = _input(case, seed)
    theirs = {1: tF.avg_pool1d, 2: tF.avg_pool2d, 3: tF.avg_pool3d}[case.n]
    ours = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[case.n]
    kwargs = dict(kernel_size=case.kernel, stride=case.stride, padding=case.padding,
                  ceil_mode=case.ceil_mode, count_include_pad=count_include_pad)
    if case.n > 1:
        kwargs["divisor_override"] = divisor
    if case.stride is None:
        kwargs["stride"] = None
    expected, g, (t_gx,) = torch_grads(lambda t: theirs(t, **kwargs), [x], seed)
    assert_close(ours(x, **kwargs), expected, "avg values")
    kwargs.pop("kernel_size")
    ours_g = F.avg_pool_backward(g, x, case.kernel, **kwargs)
    assert_close(ours_g, t_gx, "grad_input")


@given(n=st.sampled_from([1, 2, 3]), data=st.data(), seed=st.integers(0, 2**16),
       values=st.sampled_from(["normal", "ties", "nan"]))
def test_adaptive_pools_match_torch(n: int, data: st.DataObject, seed: int, values: str) -> None:
    spatial = tuple(data.draw(st.integers(1, 9)) for _ in range(n))
    out_size = tuple(data.draw(st.one_of(st.none(), st.integers(1, 10)) if n > 1 else st.integers(1, 10))
                     for _ in range(n))
    case = PoolCase(n, (2, 3, *spatial), (1,) * n, None, (0,) * n, (1,) * n, False,
                    np.float64, values, False)
    x = _input(case, seed)
    t_max = {1: tF.adaptive_max_pool1d, 2: tF.adaptive_max_pool2d, 3: tF.adaptive_max_pool3d}[n]
    t_avg = {1: tF.adaptive_avg_pool1d, 2: tF.adaptive_avg_pool2d, 3: tF.adaptive_avg_pool3d}[n]
    o_max = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}[n]
    o_avg = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[n]
    size = out_size if n > 1 else out_size[0]
    t_out, t_idx = t_max(torch.tensor(x), size, return_indices=True)
    out, idx = o_max(x, size, return_indices=True)
    assert_close(out, t_out, "adaptive max")
    np.testing.assert_array_equal(idx, t_idx.numpy())
    expected, g, (t_gx,) = torch_grads(lambda t: t_avg(t, size), [x], seed)
    assert_close(o_avg(x, size), expected, "adaptive avg")
    assert_close(F.adaptive_avg_pool_backward(g, x, spatial_dims=n), t_gx, "adaptive avg grad")
    if values != "nan":
        _, g, (t_gx,) = torch_grads(lambda t: t_max(t, size), [x], seed)
        assert_close(F.max_pool_backward(g, x, idx, spatial_dims=n), t_gx, "adaptive max grad")


SEED_IMAGE = np.array([[1, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16]], float)


def test_seed_max_pooling_example() -> None:
    # each 2x2 block by hand: max(1,2,3,4)=4, max(5,6,7,8)=8, ...
    np.testing.assert_array_equal(F.max_pool2d(SEED_IMAGE[None], 2)[0], [[4, 8], [12, 16]])


def test_seed_average_pooling_example() -> None:
    # (1+2+3+4)/4 = 2.5, (5+6+7+8)/4 = 6.5, (9+10+11+12)/4 = 10.5, (13+14+15+16)/4 = 14.5
    np.testing.assert_array_equal(F.avg_pool2d(SEED_IMAGE[None], 2)[0], [[2.5, 6.5], [10.5, 14.5]])


def test_float32_stays_float32() -> None:
    x = np.ones((1, 1, 4, 4), np.float32)
    assert F.max_pool2d(x, 2).dtype == np.float32
    assert F.avg_pool2d(x, 2).dtype == np.float32
    assert F.adaptive_avg_pool2d(x, 3).dtype == np.float32


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: F.max_pool2d(np.ones((1, 1, 4, 4)), 2, padding=2), ValueError,
         "padding should be at most half of kernel_size"),
        (lambda: F.max_pool2d(np.ones((1, 1, 2, 2)), 3), ValueError, "larger than the padded input"),
        (lambda: F.max_pool2d(np.ones((4, 4)), 2), ValueError, "input must have 3 or 4 dimensions"),
        (lambda: F.max_pool2d(np.ones((1, 1, 4, 4)), 0), ValueError, "kernel_size must be >= 1"),
        (lambda: F.avg_pool2d(np.ones((1, 1, 4, 4)), 2, stride=0), ValueError, "stride must be >= 1"),
        (lambda: F.avg_pool2d(np.ones((1, 1, 4, 4)), 2, divisor_override=0), ValueError,
         "divisor_override must be a non-zero integer"),
        (lambda: F.avg_pool2d(np.ones((1, 1, 4, 4), int), 2), TypeError, "float32 or float64"),
        (lambda: F.adaptive_avg_pool2d(np.ones((1, 1, 4, 4)), 0), ValueError, "output_size must be >= 1"),
        (lambda: F.max_pool_backward(np.ones((1, 1, 2)), np.ones((1, 1, 4)), np.full((1, 1, 2), 9),
                                     spatial_dims=1), ValueError, "indices must lie in [0, 4)"),
    ],
)
def test_bad_arguments_are_named(call, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_nan_propagates_through_max_and_avg() -> None:
    x = np.zeros((1, 1, 2, 2))
    x[0, 0, 1, 0] = np.nan
    assert np.isnan(F.max_pool2d(x, 2)).all()
    assert np.isnan(F.avg_pool2d(x, 2)).all()


@given(kernel=st.tuples(st.integers(1, 5), st.integers(2, 6)), row_stride=st.integers(1, 3),
       col_stride=st.integers(1, 2),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 3)), width=st.integers(8, 40),
       values=st.sampled_from(["normal", "ties", "nan"]), dtype=st.sampled_from([np.float32,
                                                                                 np.float64]),
       seed=st.integers(0, 2**16))
def test_max_pool_rows_of_many_outputs_at_column_stride_1_or_2(kernel, row_stride, col_stride,
                                                              dilation, width, values, dtype,
                                                              seed) -> None:
    """Column stride 1 or 2 and rows of 8 or more outputs: the kernel that takes each tap as a
    select over a whole output row (its order of taps must give each window's own result:
    the first maximum, NaN wherever a window holds one). Padding, dilation, NaN, -inf and
    ties against torch."""
    (kh, kw), (dh, dw) = kernel, dilation
    pad = (kh // 2, kw // 2)
    height = max(1, dh * (kh - 1) + 1 - 2 * pad[0]) + seed % 5
    width = max(width * col_stride, dw * (kw - 1) + 1 - 2 * pad[1] + 8 * col_stride)
    case = PoolCase(n=2, shape=(2, 3, height, width), kernel=kernel,
                    stride=(row_stride, col_stride), padding=pad, dilation=dilation,
                    ceil_mode=False, dtype=dtype, values=values, unbatched=False)
    x = _input(case, seed)
    args = dict(kernel_size=kernel, stride=(row_stride, col_stride), padding=pad,
                dilation=dilation)
    ours = F.max_pool2d(x, **args)
    expected = tF.max_pool2d(torch.from_numpy(x), **args).numpy()
    assert ours.shape[-1] >= 8
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected))
    np.testing.assert_array_equal(np.nan_to_num(ours), np.nan_to_num(expected))


@given(kernel=st.tuples(st.integers(1, 5), st.integers(2, 6)), row_stride=st.integers(1, 3),
       col_stride=st.integers(1, 2), width=st.integers(8, 40), include_pad=st.booleans(),
       values=st.sampled_from(["normal", "nan"]), dtype=st.sampled_from([np.float32,
                                                                         np.float64]),
       seed=st.integers(0, 2**16))
def test_avg_pool_rows_of_many_outputs_at_column_stride_1_or_2(kernel, row_stride, col_stride,
                                                              width, include_pad, values,
                                                              dtype, seed) -> None:
    """Average pooling over rows of 8 or more outputs: at column stride 1 the kernel that adds
    each tap over a whole output row, at 2 the window-by-window sums; forward and backward,
    with padding counted or not, NaN and -inf: against torch."""
    kh, kw = kernel
    pad = (kh // 2, kw // 2)
    height = kh + seed % 5
    width = max(width * col_stride, kw + 8 * col_stride)
    case = PoolCase(n=2, shape=(2, 3, height, width), kernel=kernel,
                    stride=(row_stride, col_stride), padding=pad, dilation=(1, 1),
                    ceil_mode=False, dtype=dtype, values=values, unbatched=False)
    x = _input(case, seed)
    args = dict(kernel_size=kernel, stride=(row_stride, col_stride), padding=pad,
                count_include_pad=include_pad)
    ours = F.avg_pool2d(x, **args)
    tx = torch.from_numpy(x).requires_grad_()
    expected = tF.avg_pool2d(tx, **args)
    assert ours.shape[-1] >= 8
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected.detach().numpy()))
    finite = np.isfinite(expected.detach().numpy())
    assert_close(ours[finite], expected.detach().numpy()[finite], "forward")
    g = np.random.default_rng(seed).standard_normal(ours.shape).astype(dtype)
    expected.backward(torch.from_numpy(g))
    assert_close(F.avg_pool_backward(g, x, **args), tx.grad.numpy(), "input gradient")


# --- ONNX's pooling: padding per side, dilated averages, integer max pooling -----------------

def _onnx_avg_pool(x: np.ndarray, kernel, strides, pads, dilations, count_include_pad: int) -> np.ndarray:
    """ONNX's reference AveragePool (opset 19: the first with dilations), an independent oracle."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    elem = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=list(kernel),
                            strides=list(strides), pads=list(pads), dilations=list(dilations),
                            count_include_pad=count_include_pad)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, None)],
                              [helper.make_tensor_value_info("y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


@st.composite
def sided_cases(draw: st.DrawFn) -> dict:
    n = draw(st.sampled_from([1, 2, 2, 3]))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(n))
    pads = tuple((draw(st.integers(0, d * (k - 1))), draw(st.integers(0, d * (k - 1))))
                 for k, d in zip(kernel, dilation, strict=True))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    spatial = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - min(a, b)), 12))
                    for k, d, (a, b) in zip(kernel, dilation, pads, strict=True))
    # every window keeps an input element (else the call is refused, see the error test)
    for size, k, d, (a, b), st_ in zip(spatial, kernel, dilation, pads, stride, strict=True):
        windows = (size + a + b - d * (k - 1) - 1) // st_ + 1
        assume(windows >= 1 and all(any(0 <= o * st_ - a + d * j < size for j in range(k))
                                    for o in range(windows)))
    return dict(n=n, kernel=kernel, dilation=dilation, pads=pads, stride=stride,
                shape=(draw(st.integers(1, 2)), 2, *spatial),
                dtype=draw(st.sampled_from([np.float32, np.float64])))


@given(case=sided_cases(), seed=st.integers(0, 2**16), include=st.booleans())
def test_avg_pool_per_side_padding_and_dilation_match_onnx_reference(case: dict, seed: int,
                                                                     include: bool) -> None:
    x = np.random.default_rng(seed).standard_normal(case["shape"]).astype(case["dtype"])
    ours = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[case["n"]]
    out = ours(x, case["kernel"], case["stride"], padding=case["pads"], count_include_pad=include,
               dilation=case["dilation"])
    onnx_pads = [p[0] for p in case["pads"]] + [p[1] for p in case["pads"]]
    expected = _onnx_avg_pool(x, case["kernel"], case["stride"], onnx_pads, case["dilation"], int(include))
    assert_close(out, expected.astype(case["dtype"]), "avg pool vs ONNX reference")
    # the gradient is the adjoint of this linear map: <pool(x), g> == <x, pool_backward(g)>
    g = np.random.default_rng(seed + 1).standard_normal(out.shape).astype(case["dtype"])
    gx = F.avg_pool_backward(g, x, case["kernel"], case["stride"], case["pads"],
                             count_include_pad=include, dilation=case["dilation"])
    assert gx.shape == x.shape and gx.dtype == x.dtype
    np.testing.assert_allclose(np.vdot(out, g), np.vdot(x, gx), rtol=1e-4 if x.dtype == np.float32 else 1e-10)


@given(case=sided_cases(), seed=st.integers(0, 2**16))
def test_per_side_padding_matches_torch_on_explicitly_padded_input(case: dict, seed: int) -> None:
    """Per-side padding is torch's pooling of an input padded first (zeros for averages with
    count_include_pad, -inf for max), values and gradients."""
    n, pads = case["n"], case["pads"]
    x = np.random.default_rng(seed).standard_normal(case["shape"]).astype(case["dtype"])
    flat = tuple(v for p in reversed(pads) for v in p)
    kw = dict(kernel_size=case["kernel"], stride=case["stride"])
    t_max = {1: tF.max_pool1d, 2: tF.max_pool2d, 3: tF.max_pool3d}[n]
    t_avg = {1: tF.avg_pool1d, 2: tF.avg_pool2d, 3: tF.avg_pool3d}[n]
    o_max = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
    o_avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    expected, g, (t_gx,) = torch_grads(
        lambda t: t_max(tF.pad(t, flat, value=-np.inf), dilation=case["dilation"], **kw), [x], seed)
    out, idx = o_max(x, padding=pads, dilation=case["dilation"], return_indices=True, **kw)
    assert_close(out, expected, "max pool, padding per side")
    np.testing.assert_array_equal(o_max(x, padding=pads, dilation=case["dilation"], **kw), out)
    assert_close(F.max_pool_backward(g, x, idx, spatial_dims=n), t_gx, "max pool grad")
    if set(case["dilation"]) != {1}:
        return  # torch has no dilated average pooling: the ONNX reference test covers it
    expected, g, (t_gx,) = torch_grads(lambda t: t_avg(tF.pad(t, flat), **kw), [x], seed)
    assert_close(o_avg(x, padding=pads, **kw), expected, "avg pool, padding per side")
    assert_close(F.avg_pool_backward(g, x, padding=pads, **kw), t_gx, "avg pool grad")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32, np.int64])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_integer_max_pooling_matches_torch(dtype: type, n: int) -> None:
    rng = np.random.default_rng(n)
    info = np.iinfo(dtype)
    low, high = max(info.min, -1000), min(info.max, 1000)
    x = rng.integers(low, high, (2, 3, *(7,) * n), endpoint=True).astype(dtype)
    x.flat[::5] = info.min  # the dtype's lowest value must still win over the padding
    theirs, ours = _fns(n)
    t_out, t_idx = theirs(torch.tensor(x), 3, 2, 1, return_indices=True)
    out, idx = ours(x, 3, 2, 1, return_indices=True)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, t_out.numpy())
    np.testing.assert_array_equal(idx, t_idx.numpy())
    np.testing.assert_array_equal(ours(x, 3, 2, 1), out)


def test_per_side_padding_errors_name_the_argument() -> None:
    x = np.ones((1, 1, 5, 5))
    with pytest.raises(ValueError, match=r"padding given per side must be 2 \(before, after\) pairs"):
        F.avg_pool2d(x, 2, padding=((0, 1),))
    with pytest.raises(ValueError, match="smaller than the window span"):
        F.max_pool2d(x, 2, padding=((0, 2), (0, 0)))
    with pytest.raises(TypeError, match="float32 or float64"):
        F.avg_pool2d(x.astype(np.uint8), 2)
    with pytest.raises(ValueError, match="leaves a window with no input element"):
        F.max_pool1d(np.ones((1, 1, 2)), 2, 1, padding=((1, 1),), dilation=3)


_SCRATCH_SCRIPT = r"""
import resource, sys
import numpy as np
from convlayers import config
from convlayers import functional as F
F.avg_pool2d(np.ones((1, 1, 4, 4), np.float32), 2)  # load the kernels before the limit
x = np.ones((1, 1, 2, 20_000_000), np.float32)
config.set_scratch_bytes(16 << 20)
def vm():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize"):
            return int(line.split()[1]) * 1024
out_bytes = 3 * 20_000_000 * 4  # the larger of the two outputs
limit = vm() + out_bytes + (16 << 20) + (48 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
y = F.avg_pool2d(x, (1, 1), padding=0)
print(y.shape, float(y[0, 0, 1, 7]))
del y
z = F.avg_pool2d(x, (2, 3), stride=1, padding=1, count_include_pad=False)
print(z.shape, float(z[0, 0, 0, 0]), float(z[0, 0, 1, 5]))
"""


def test_avg_pool_scratch_stays_under_the_cap() -> None:
    """A 2 x 20,000,000 plane: the divisors are built block by block (issue 16), so the pool
    needs only its output beyond the input, under an address-space limit."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _SCRATCH_SCRIPT], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["(1,", "1,", "2,", "20000000)", "1.0",
                                  "(1,", "1,", "3,", "20000000)", "1.0", "1.0"]


@pytest.mark.parametrize("order", ["_max_indices_by_tap", "_max_indices_by_window", "_max_pairs",
                                   "_max_3x3_stride_2"])
@given(case=pool_cases(dims=(2,)), seed=st.integers(0, 2**16))
def test_both_orders_of_the_max_index_kernel_match_torch(order: str, case: PoolCase, seed: int) -> None:
    """The compiled max-with-index kernel has two loop orders (chosen by the column stride) and
    unrolled kernels for 2x2 windows side by side and for 3x3 stride 2 (and one by rows for
    3x3 stride 2 without indices); each one alone gives torch's values and indices on every
    2-D case it serves (the unrolled ones pool the case's planes 2x2, or 3x3 with its padding
    up to 1 and ceil mode), ties and NaN included."""
    from convlayers.kernels import pooling

    x = _input(replace(case, shape=(max(1, case.shape[0]), *case.shape[1:]), unbatched=False), seed)
    stride = case.stride or case.kernel
    t_out, t_idx = tF.max_pool2d(torch.tensor(x), case.kernel, stride, case.padding, case.dilation,
                                 ceil_mode=case.ceil_mode, return_indices=True)
    out = np.empty(t_out.shape, dtype=x.dtype).reshape(-1, *t_out.shape[2:])
    idx = np.empty(out.shape, dtype=np.int64)
    planes = np.ascontiguousarray(x).reshape(-1, *x.shape[2:])
    if order == "_max_pairs":  # 2x2 windows side by side only: the case's planes, pooled so
        assume(min(x.shape[2:]) >= 2)
        t_out, t_idx = tF.max_pool2d(torch.tensor(x), 2, 2, return_indices=True)
        pooled = (planes.shape[0], *t_out.shape[2:])
        out, idx = np.empty(pooled, x.dtype), np.empty(pooled, np.int64)
        pooling._max_pairs(planes, out, idx)
        no_index = np.empty_like(out)
        pooling._max_pairs(planes, no_index, np.empty((0, 0, 0), np.int64))
        np.testing.assert_array_equal(no_index, out)
    elif order == "_max_3x3_stride_2":  # 3x3 stride 2 only: the case's planes and padding (<= 1)
        pad = tuple(min(1, p) for p in case.padding)
        assume(all(size + 2 * p >= 3 for size, p in zip(x.shape[2:], pad, strict=True)))
        t_out, t_idx = tF.max_pool2d(torch.tensor(x), 3, 2, pad, ceil_mode=case.ceil_mode,
                                     return_indices=True)
        pooled = (planes.shape[0], *t_out.shape[2:])
        out, idx = np.empty(pooled, x.dtype), np.empty(pooled, np.int64)
        pooling._max_3x3_stride_2(planes, *pad, out, idx)
        no_index = np.empty_like(out)
        pooling._max_3x3_stride_2(planes, *pad, no_index, np.empty((0, 0, 0), np.int64))
        np.testing.assert_array_equal(no_index, out)
        by_rows = np.empty_like(out)  # the two-pass kernel of max_pool2d without indices
        pooling._max_3x3_stride_2_rows(planes, *pad, by_rows)
        np.testing.assert_array_equal(by_rows, out)
        np.testing.assert_array_equal(np.signbit(by_rows), np.signbit(out))  # zeros' signs
    else:
        getattr(pooling, order)(planes, *case.kernel, *stride, *case.padding, *case.dilation, out, idx)
    assert_close(out.reshape(t_out.shape), t_out, "max values")
    np.testing.assert_array_equal(idx.reshape(t_idx.shape), t_idx.numpy(), err_msg="argmax indices")


@given(case=pool_cases(dims=(2,), dilated=False), seed=st.integers(0, 2**16),
       divisor=st.sampled_from([None, 3]))
def test_unrolled_2x2_average_pooling_matches_the_general_kernels_and_torch(
        case: PoolCase, seed: int, divisor: int | None) -> None:
    """The 2x2 stride-2 average kernels (forward and backward, unrolled) against the general
    ones forced on the same planes, to the bit (zeros' signs included), and torch."""
    from convlayers.kernels import pooling

    x = _input(replace(case, shape=(max(1, case.shape[0]), *case.shape[1:]), unbatched=False), seed)
    assume(min(x.shape[2:]) >= 2)
    planes = np.ascontiguousarray(x).reshape(-1, *x.shape[2:])
    ho, wo = x.shape[2] // 2, x.shape[3] // 2
    div = np.full((ho, wo), divisor or 4, dtype=x.dtype)
    unrolled, general = (np.empty((planes.shape[0], ho, wo), x.dtype) for _ in range(2))
    pooling._avg_pairs(planes, div, unrolled)
    pooling._avg_by_window(planes, 2, 2, 2, 2, 0, 0, div, general)
    np.testing.assert_array_equal(unrolled, general)
    assert np.array_equal(np.signbit(unrolled), np.signbit(general))
    t_x = torch.tensor(x, requires_grad=True)
    t_out = tF.avg_pool2d(t_x, 2, 2, divisor_override=divisor)
    assert_close(unrolled.reshape(t_out.shape), t_out, "2x2 average")
    g = np.random.default_rng(seed).standard_normal(t_out.shape).astype(x.dtype)
    g.flat[0] = -0.0
    t_out.backward(torch.from_numpy(g))
    grads = [np.empty(planes.shape, x.dtype) for _ in range(2)]
    pooling._avg_pairs_backward(g.reshape(unrolled.shape), div, grads[0])
    pooling._avg_backward_by_rows(g.reshape(unrolled.shape), 2, 2, 2, 2, 0, 0, div, grads[1])
    np.testing.assert_array_equal(grads[0], grads[1])
    assert np.array_equal(np.signbit(grads[0]), np.signbit(grads[1]))
    assert_close(grads[0].reshape(x.shape), t_x.grad, "2x2 average gradient")


@given(case=pool_cases(dims=(2,)), seed=st.integers(0, 2**16), wide=st.booleans())
def test_tap_kernels_match_the_per_window_rule_to_the_bit(case: PoolCase, seed: int,
                                                          wide: bool) -> None:
    """The tap-by-tap kernels (every max and average pooling but the unrolled ones) against
    the per-window kernels they replaced, forced on the same planes: equal to the bit, NaN
    (the last one wins), ties, infinities and zeros' signs included, at strides 1-4, paddings
    and dilations (the maxima), on rows narrower and wider than a vector."""
    from convlayers.kernels import pooling

    shape = (max(1, case.shape[0]), *case.shape[1:3], case.shape[3] + (40 if wide else 0))
    x = _input(replace(case, shape=shape, unbatched=False), seed)
    planes = np.ascontiguousarray(x).reshape(-1, *x.shape[2:])
    (kh, kw), (ph, pw), (dh, dw) = case.kernel, case.padding, case.dilation
    sh, sw = case.stride or case.kernel
    ho = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    by_tap, by_window = (np.full((planes.shape[0], ho, wo), 7.0, x.dtype) for _ in range(2))
    pooling._max_by_tap(planes, kh, kw, sh, sw, ph, pw, dh, dw, by_tap)
    pooling._max_by_window(planes, kh, kw, sh, sw, ph, pw, dh, dw, by_window)
    np.testing.assert_array_equal(by_tap, by_window)
    assert np.array_equal(np.signbit(by_tap), np.signbit(by_window))
    if (dh, dw) == (1, 1):
        div = np.random.default_rng(seed).integers(1, 10, (ho, wo)).astype(x.dtype)
        pooling._avg_by_tap(planes, kh, kw, sh, sw, ph, pw, div, by_tap)
        pooling._avg_by_window(planes, kh, kw, sh, sw, ph, pw, div, by_window)
        np.testing.assert_array_equal(by_tap, by_window)
        assert np.array_equal(np.signbit(by_tap), np.signbit(by_window))
