"""Issue 19.1: shapes is the one owner of padding resolution, output sizes and their formulas."""

from __future__ import annotations

import numpy as np
import pytest

from convlayers import functional as F
from convlayers import shapes


@pytest.mark.parametrize(("n", "k", "s", "lo", "hi", "d"), [
    (7, 3, 2, 0, 1, 1), (112, 3, 2, 0, 1, 1), (5, 2, 1, 1, 0, 2), (9, 4, 3, 2, 1, 1), (3, 3, 1, 0, 0, 1),
])
def test_per_side_padding_is_the_sum_of_both_sides(n: int, k: int, s: int, lo: int, hi: int,
                                                   d: int) -> None:
    want = shapes.conv_output_size(n + lo + hi, k, s, 0, d)
    assert shapes.conv_output_size(n, k, s, (lo, hi), d) == want
    assert shapes.window_count(n, k, s, lo, hi, d) == want
    assert shapes.conv_output_shape((n,), k, s, ((lo, hi),), d) == (want,)
    x, w = np.ones((1, 1, n), np.float32), np.ones((1, 1, k), np.float32)
    assert F.conv1d(x, w, stride=s, padding=((lo, hi),), dilation=d).shape[-1] == want


def test_pool_padding_rules_per_form() -> None:
    assert shapes.pool_output_size(6, 3, 2, (0, 2)) == 3
    with pytest.raises(ValueError, match="smaller than the window span"):
        shapes.pool_output_size(6, 3, 2, (0, 3))
    with pytest.raises(ValueError, match="at most half of kernel_size"):
        shapes.pool_output_size(6, 3, 2, 2)
    with pytest.raises(ValueError, match="larger than the padded input"):
        shapes.pool_output_size(1, 3, 1, (1, 0))


def test_resolve_padding_forms() -> None:
    assert shapes.resolve_padding(((0, 1), (2, 3)), (3, 3), (2, 2), (1, 1)) == ((0, 1), (2, 3))
    assert shapes.resolve_padding("valid", (3, 3), (2, 2), (1, 1)) == ((0, 0), (0, 0))
    with pytest.raises(ValueError, match="per side must be 2"):
        shapes.resolve_padding(((0, 1),), (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="not supported for strided"):
        shapes.resolve_padding("same", (3,), (2,), (1,))


def test_size_formula_texts() -> None:
    assert str(shapes.size_formula("conv", 32, 3, 2, 1)) == "floor((32 + 2*1 - 1*(3 - 1) - 1) / 2) + 1 = 16"
    assert str(shapes.size_formula("conv", 32, 3, 2, 1, short=True)) == "floor((32 + 2*1 - 3) / 2) + 1 = 16"
    f = shapes.size_formula("pool", 5, 2, 2, 1, ceil_mode=True)
    assert (f.text, f.size, f.dropped) == ("ceil((5 + 2*1 - 1*(2 - 1) - 1) / 2) + 1 - 1", 3, True)
    f = shapes.size_formula("pool", 5, 2, 2, 0, ceil_mode=True)
    assert (f.size, f.dropped) == (3, False)
    assert shapes.size_formula("conv_transpose", 4, 4, 2, 1).size == 8
    with pytest.raises(ValueError, match="kind must be"):
        shapes.size_formula("deconv", 4, 3)


@pytest.mark.parametrize("pad", [(), (1, 2), (1, 2, 0, 3), (0, 0, 1, 1, 2, 2)])
def test_torch_pad_round_trip(pad: tuple[int, ...]) -> None:
    pairs = shapes.torch_pad_pairs(pad, 3)
    assert len(pairs) == 3
    assert shapes.torch_pad(pairs)[:len(pad)] == pad  # F.pad order: the last axis first
    assert F.pad(np.zeros((2, 3, 4)), pad).shape == tuple(
        n + a + b for n, (a, b) in zip((2, 3, 4), pairs, strict=True))
    with pytest.raises(ValueError, match="even length"):
        shapes.torch_pad_pairs((1, 2, 3), 3)
