"""convlayers.explain: the numbers printed are the chapter's hand values and torch's."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from convlayers.explain import explain_conv, explain_pool

WINDOW = re.compile(r"out\[(\d+),(\d+)\].*= (\S+)$")


def window_values(text: str) -> dict[tuple[int, int], float]:
    """Map each ``out[i,j]`` line of an explanation to the value it ends with."""
    found = {}
    for line in text.splitlines():
        m = WINDOW.search(line)
        if m:
            found[int(m[1]), int(m[2])] = float(m[3])
    return found


def as_grid(values: dict[tuple[int, int], float]) -> np.ndarray:
    rows = max(i for i, _ in values) + 1
    cols = max(j for _, j in values) + 1
    grid = np.full((rows, cols), np.nan)
    for (i, j), v in values.items():
        grid[i, j] = v
    return grid


def test_seed_max_pooling_hand_values() -> None:
    text = explain_pool()
    assert as_grid(window_values(text)).tolist() == [[4, 8], [12, 16]]
    assert "[1 2 3 4] -> max = 4" in text
    assert "[13 14 15 16] -> max = 16" in text


def test_seed_average_pooling_hand_values() -> None:
    text = explain_pool(kind="avg")
    assert as_grid(window_values(text)).tolist() == [[2.5, 6.5], [10.5, 14.5]]
    assert "[5 6 7 8] -> mean = 26/4 = 6.5" in text


def test_seed_vertical_edge_is_minus_six_everywhere() -> None:
    text = explain_conv()
    assert as_grid(window_values(text)).tolist() == [[-6, -6], [-6, -6]]
    # the first window of the chapter's 1..16 image, with its products written out
    assert "1*1 + 2*0 + 3*(-1) + 5*1 + 6*0 + 7*(-1) + 9*1 + 10*0 + 11*(-1) = -6" in text


def test_formula_lines_filled_in_with_the_numbers() -> None:
    text = explain_conv(np.zeros((7, 9)), np.ones((3, 3)), stride=2, padding=1, dilation=2)
    # independent arithmetic: floor((7 + 2 - 2*2 - 1) / 2) + 1 = 3, floor((9 + 2 - 4 - 1)/2)+1 = 4
    assert "height: floor((7 + 2*1 - 2*(3 - 1) - 1) / 2) + 1 = 3" in text
    assert "width:  floor((9 + 2*1 - 2*(3 - 1) - 1) / 2) + 1 = 4" in text
    assert as_grid(window_values(text)).shape == (3, 4)
    pooled = explain_pool(np.zeros((5, 5)), kernel_size=3, stride=2)
    assert "floor((5 + 2*0 - 3) / 2) + 1 = 2" in pooled


@pytest.mark.parametrize(("stride", "padding", "dilation"),
                         [(1, 0, 1), (2, 1, 1), (1, 2, 2), ((2, 1), (0, 1), (1, 2))])
def test_conv_values_match_torch(stride, padding, dilation) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-5, 6, size=(6, 7)).astype(np.float64)
    w = rng.integers(-2, 3, size=(3, 2)).astype(np.float64)
    text = explain_conv(x, w, stride=stride, padding=padding, dilation=dilation)
    want = tF.conv2d(torch.tensor(x)[None, None], torch.tensor(w)[None, None], stride=stride,
                     padding=padding, dilation=dilation)[0, 0].numpy()
    np.testing.assert_array_equal(as_grid(window_values(text)), want)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(2, None, 0), (3, 2, 1), (3, 1, 1)])
def test_pool_values_match_torch(kind, kernel, stride, padding) -> None:
    x = np.random.default_rng(1).integers(-9, 10, size=(5, 6)).astype(np.float64)
    fn = tF.max_pool2d if kind == "max" else tF.avg_pool2d
    want = fn(torch.tensor(x)[None, None], kernel, stride, padding)[0, 0].numpy()
    got = as_grid(window_values(explain_pool(x, kind, kernel, stride, padding)))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_max_pool_padding_never_wins() -> None:
    text = explain_pool(-np.ones((2, 2)), "max", kernel_size=2, stride=1, padding=1)
    assert set(window_values(text).values()) == {-1.0}
    assert "-inf" in text


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="kind"):
        explain_pool(kind="median")
    with pytest.raises(ValueError, match="x must be"):
        explain_pool([1, 2, 3])
    with pytest.raises(TypeError, match="kernel"):
        explain_conv(kernel=[["a"]])
    with pytest.raises(ValueError, match="kernel"):
        explain_conv(np.ones((2, 2)), np.ones((3, 3)))
