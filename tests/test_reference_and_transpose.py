"""Second oracle (the literal loops of convlayers.reference), transposed conv and pad vs torch."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import given
from hypothesis import strategies as st

from convlayers import functional as F
from convlayers import reference
from oracle import assert_close, random_array, torch_grads

pairs = st.tuples(st.integers(1, 3), st.integers(1, 3))


@given(seed=st.integers(0, 2**16), kernel=pairs, stride=pairs, dilation=pairs,
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), groups=st.sampled_from([1, 2]))
def test_reference_conv_loop_agrees_with_fast_conv(seed, kernel, stride, dilation, padding, groups):
    rng = np.random.default_rng(seed)
    size = [max(d * (k - 1) + 1 - 2 * p, 1) + 2 for k, d, p in zip(kernel, dilation, padding, strict=True)]
    x = random_array(rng, (2, 2 * groups, *size), np.float64)
    w = random_array(rng, (2 * groups, 2, *kernel), np.float64)
    b = random_array(rng, (2 * groups,), np.float64)
    slow = reference.conv2d(x, w, b, stride, padding, dilation, groups)
    fast = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    assert_close(fast, slow, "reference conv")


@given(seed=st.integers(0, 2**16), kernel=pairs, stride=pairs, dilation=pairs,
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), groups=st.sampled_from([1, 2]),
       data=st.data())
def test_reference_transposed_loop_agrees_with_fast_and_torch(
    seed, kernel, stride, dilation, padding, groups, data
):
    out_pad = tuple(data.draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True))
    rng = np.random.default_rng(seed)
    size = [data.draw(st.integers(1, 4)) for _ in range(2)]
    for axis in range(2):  # make sure the output is not empty after trimming the padding
        def full(axis: int) -> int:
            return (size[axis] - 1) * stride[axis] + dilation[axis] * (kernel[axis] - 1) + 1 + out_pad[axis]

        while full(axis) <= 2 * padding[axis]:
            size[axis] += 1
    x = random_array(rng, (2, 2 * groups, *size), np.float64)
    w = random_array(rng, (2 * groups, 3, *kernel), np.float64)
    b = random_array(rng, (3 * groups,), np.float64)
    kwargs = dict(stride=stride, padding=padding, output_padding=out_pad, groups=groups, dilation=dilation)
    slow = reference.conv_transpose2d(x, w, stride, padding, out_pad, dilation, groups) + b[:, None, None]
    fast = F.conv_transpose2d(x, w, b, **kwargs)
    assert_close(fast, slow, "reference transposed conv")
    expected, g, (gx, gw, gb) = torch_grads(
        lambda a, c, d: tF.conv_transpose2d(a, c, d, **kwargs), [x, w, b], seed)
    assert_close(fast, expected, "torch transposed conv")
    our_gx, our_gw, our_gb = F.conv_transpose_backward(g, x, w, **kwargs)
    assert_close(our_gx, gx, "grad_input")
    assert_close(our_gw, gw, "grad_weight")
    assert_close(our_gb, gb, "grad_bias")


@given(n=st.sampled_from([1, 3]), seed=st.integers(0, 2**16), stride=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_conv_transpose_1d_and_3d_match_torch(n, seed, stride, dtype):
    rng = np.random.default_rng(seed)
    x = random_array(rng, (2, 4, *(3,) * n), dtype)
    w = random_array(rng, (4, 3, *(2,) * n), dtype)
    ours = {1: F.conv_transpose1d, 3: F.conv_transpose3d}[n]
    theirs = {1: tF.conv_transpose1d, 3: tF.conv_transpose3d}[n]
    expected, g, (gx, gw) = torch_grads(lambda a, c: theirs(a, c, stride=stride, padding=1), [x, w], seed)
    assert_close(ours(x, w, stride=stride, padding=1), expected, "forward")
    our_gx, our_gw, _ = F.conv_transpose_backward(g, x, w, stride=stride, padding=1)
    assert_close(our_gx, gx, "grad_input")
    assert_close(our_gw, gw, "grad_weight")


@given(seed=st.integers(0, 2**16), kernel=pairs, stride=pairs,
       padding=st.tuples(st.integers(0, 1), st.integers(0, 1)), ceil_mode=st.booleans(),
       count_include_pad=st.booleans(), ties=st.booleans())
def test_reference_pool_loops_agree_with_fast_pools(seed, kernel, stride, padding, ceil_mode,
                                                    count_include_pad, ties):
    padding = tuple(min(p, k // 2) for p, k in zip(padding, kernel, strict=True))
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 3, (1, 2, 6, 7)) if ties else rng.standard_normal((1, 2, 6, 7))).astype(float)
    values, index = reference.max_pool2d(x, kernel, stride, padding, (1, 1), ceil_mode)
    out, idx = F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)
    np.testing.assert_array_equal(out, values)
    np.testing.assert_array_equal(idx, index)
    slow = reference.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)
    assert_close(F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad), slow, "avg")


def test_reference_adaptive_average_agrees() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 7))
    assert_close(F.adaptive_avg_pool2d(x, (3, 4)), reference.adaptive_avg_pool2d(x, (3, 4)), "adaptive")


@given(seed=st.integers(0, 2**16), mode=st.sampled_from(["constant", "reflect", "replicate", "circular"]),
       n=st.sampled_from([1, 2, 3]), data=st.data())
def test_pad_and_its_backward_match_torch(seed, mode, n, data):
    shape = tuple(data.draw(st.integers(2, 5)) for _ in range(n))
    low = -1 if mode == "constant" else 0
    widths = []
    for size in reversed(shape):
        top = size - 1 if mode == "reflect" else size
        widths += [data.draw(st.integers(low, top)), data.draw(st.integers(low, top))]
    x = np.random.default_rng(seed).standard_normal((2, 3, *shape))
    value = data.draw(st.sampled_from([0.0, 1.5]))
    kwargs = dict(mode=mode, value=value) if mode == "constant" else dict(mode=mode)
    expected, g, (gx,) = torch_grads(lambda t: tF.pad(t, widths, **kwargs), [x], seed)
    assert_close(F.pad(x, widths, **kwargs), expected, "pad")
    assert_close(F.pad_backward(g, x.shape, widths, mode), gx, "pad backward")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: F.pad(np.ones((1, 1, 3)), (3, 0), mode="reflect"), "reflect padding must be smaller"),
        (lambda: F.pad(np.ones((1, 1, 3)), (1,)), "pad must have an even length"),
        (lambda: F.pad(np.ones((1, 1, 3)), (1, 1), mode="wrap"), "mode must be one of"),
        (lambda: F.conv_transpose2d(np.ones((1, 2, 3, 3)), np.ones((3, 1, 2, 2))), "weight.shape[0]=3"),
        (lambda: F.conv_transpose2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), stride=2,
                                    output_padding=2), "output_padding must be >= 0 and smaller"),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_torch_raises_where_we_raise_for_reflect_padding() -> None:
    """Our limit on reflect padding is PyTorch's, not a stricter or looser one of our own."""
    with pytest.raises(RuntimeError):
        tF.pad(torch.ones(1, 1, 3), (3, 0), mode="reflect")
    assert F.pad(np.ones((1, 1, 3)), (2, 0), mode="reflect").shape == (1, 1, 5)
