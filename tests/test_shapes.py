"""Shape arithmetic: the seed's figures, and every formula against the shapes PyTorch produces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from hypothesis import given
from hypothesis import strategies as st

from convlayers import shapes


@pytest.mark.parametrize(
    ("in_size", "kernel", "stride", "padding", "expected"),
    [(5, 3, 1, 0, 3), (5, 3, 1, 1, 5), (8, 3, 1, 0, 6), (8, 3, 2, 0, 3), (32, 3, 1, 1, 32)],
)
def test_seed_output_sizes(in_size: int, kernel: int, stride: int, padding: int, expected: int) -> None:
    assert shapes.conv_output_size(in_size, kernel, stride, padding) == expected


def test_seed_parameter_counts() -> None:
    assert shapes.conv_params(64, 32, 1) == 2_048 == 64 * 32
    assert shapes.conv_params(64, 64, 3) == 36_864 == 64 * 64 * 9
    assert shapes.conv_params(64, 64, 3, groups=64) == 576 == 64 * 9
    # groupwise 64 -> 128 in 4 groups: each group maps 16 channels to 32
    assert shapes.conv_params(64, 128, 3, groups=4) == 4 * (32 * 16 * 9)


def test_separable_is_about_eight_to_nine_times_smaller() -> None:
    rows = {c.kind: c for c in shapes.compare_conv_kinds(64, 128, 3)}
    ratio = rows["separable"].ratio_to(rows["standard"])
    assert rows["separable"].params == 64 * 9 + 64 * 128
    assert 8 <= ratio <= 9


def test_two_stacked_3x3_see_as_far_as_one_5x5_with_fewer_weights() -> None:
    assert shapes.receptive_field([(3, 1), (3, 1)]) == shapes.receptive_field([(5, 1)]) == 5
    assert 2 * 9 == 18 < 25 == 5 * 5  # per channel pair: two 3x3 kernels against one 5x5
    assert 2 * shapes.conv_params(1, 1, 3) == 18 and shapes.conv_params(1, 1, 5) == 25


def test_receptive_field_with_strides_and_dilation() -> None:
    # 3x3 stride 2 then 3x3: second layer's taps are 2 input pixels apart: 3 + 2*2 = 7
    assert shapes.receptive_field([(3, 2), (3, 1)]) == 7
    assert shapes.receptive_field([(3, 1, 2)]) == 5


def test_conv_params_against_torch_module() -> None:
    for cin, cout, k, g in [(3, 64, 3, 1), (64, 64, 3, 64), (64, 128, 3, 4), (32, 16, (1, 5), 2)]:
        conv = torch.nn.Conv2d(cin, cout, k, groups=g, bias=True)
        expected = sum(p.numel() for p in conv.parameters())
        assert shapes.conv_params(cin, cout, k, groups=g, bias=True) == expected


@given(size=st.integers(1, 30), k=st.integers(1, 6), s=st.integers(1, 4), d=st.integers(1, 3),
       p=st.integers(0, 4))
def test_conv_output_size_matches_torch(size: int, k: int, s: int, d: int, p: int) -> None:
    x = torch.zeros(1, 1, size)
    w = torch.zeros(1, 1, k)
    if size + 2 * p < d * (k - 1) + 1:
        with pytest.raises(ValueError, match="larger than the padded input"):
            shapes.conv_output_size(size, k, s, p, d)
        return
    expected = tF.conv1d(x, w, stride=s, padding=p, dilation=d).shape[-1]
    assert shapes.conv_output_size(size, k, s, p, d) == expected


@given(size=st.integers(1, 30), k=st.integers(1, 6), s=st.integers(1, 4), d=st.integers(1, 3),
       data=st.data(), ceil_mode=st.booleans())
def test_pool_output_size_matches_torch(size, k, s, d, data, ceil_mode) -> None:
    p = data.draw(st.integers(0, k // 2))
    if size + 2 * p < d * (k - 1) + 1:
        return
    x = torch.zeros(1, 1, size)
    expected = tF.max_pool1d(x, k, s, p, d, ceil_mode=ceil_mode).shape[-1]
    assert shapes.pool_output_size(size, k, s, p, d, ceil_mode) == expected


@given(size=st.integers(1, 10), k=st.integers(1, 5), s=st.integers(1, 3), d=st.integers(1, 3),
       p=st.integers(0, 3), data=st.data())
def test_transposed_output_size_matches_torch(size, k, s, d, p, data) -> None:
    op = data.draw(st.integers(0, max(s, d) - 1))
    predicted = (size - 1) * s - 2 * p + d * (k - 1) + op + 1
    if predicted < 1:
        with pytest.raises(ValueError):
            shapes.conv_transpose_output_size(size, k, s, p, op, d)
        return
    out = tF.conv_transpose1d(torch.zeros(1, 1, size), torch.zeros(1, 1, k), stride=s, padding=p,
                              output_padding=op, dilation=d)
    assert shapes.conv_transpose_output_size(size, k, s, p, op, d) == out.shape[-1]


@given(k=st.integers(1, 7), d=st.integers(1, 3), size=st.integers(8, 12))
def test_same_padding_matches_torch_same(k: int, d: int, size: int) -> None:
    lo, hi = shapes.same_padding(k, d)
    x = torch.randn(1, 1, size, generator=torch.Generator().manual_seed(0))
    w = torch.randn(1, 1, k, generator=torch.Generator().manual_seed(1))
    expected = tF.conv1d(x, w, padding="same", dilation=d)
    ours = tF.conv1d(tF.pad(x, (lo, hi)), w, dilation=d)
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_macs_of_a_conv() -> None:
    # 3 -> 64, 3x3 over a 224x224 output: 64 * 224 * 224 * 3 * 9 multiply-adds
    assert shapes.conv_macs(3, 64, 3, (224, 224)) == 64 * 224 * 224 * 27


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: shapes.conv_output_size(5, 0), "kernel_size must be >= 1"),
        (lambda: shapes.conv_output_size(5, 3, stride=0), "stride must be >= 1"),
        (lambda: shapes.conv_output_size(5, 3, padding=-1), "padding must be >= 0"),
        (lambda: shapes.pool_output_size(5, 2, padding=2), "padding should be at most half"),
        (lambda: shapes.conv_params(3, 64, 3, groups=2), "divisible by groups=2"),
        (lambda: shapes.receptive_field([(3,)]), "layers[0] must be"),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        call()
