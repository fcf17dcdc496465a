"""Convolutions with padding per side (ONNX's asymmetric ``pads``) against torch on an input
padded first: values, both gradients, and the tape."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as tF
from hypothesis import given, settings
from hypothesis import strategies as st

from convlayers import functional as F
from convlayers import tensor
from oracle import assert_close, torch_grads


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    n = draw(st.sampled_from([1, 2, 2, 3]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(n))
    pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(n))
    groups = draw(st.sampled_from([1, 2]))
    spatial = tuple(draw(st.integers(max(1, k - a - b), 7)) for k, (a, b) in zip(kernel, pads, strict=True))
    return dict(n=n, kernel=kernel, pads=pads, groups=groups, shape=(2, 2 * groups, *spatial),
                stride=tuple(draw(st.integers(1, 2)) for _ in range(n)),
                dtype=draw(st.sampled_from([np.float32, np.float64])))


@settings(max_examples=40)
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_conv_per_side_padding_matches_torch(case: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case["shape"]).astype(case["dtype"])
    w = rng.standard_normal((2 * case["groups"], 2, *case["kernel"])).astype(case["dtype"])
    b = rng.standard_normal(w.shape[0]).astype(case["dtype"])
    flat = tuple(v for p in reversed(case["pads"]) for v in p)
    conv = {1: tF.conv1d, 2: tF.conv2d, 3: tF.conv3d}[case["n"]]
    ours = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[case["n"]]
    kw = dict(stride=case["stride"], groups=case["groups"])
    expected, g, (gx, gw, gb) = torch_grads(lambda a, c, d: conv(tF.pad(a, flat), c, d, **kw),
                                            [x, w, b], seed)
    assert_close(ours(x, w, b, padding=case["pads"], **kw), expected, "conv, padding per side")
    ogx, ogw, ogb = F.conv_backward(g, x, w, case["stride"], case["pads"], 1, case["groups"])
    assert_close(ogx, gx, "grad_input")
    assert_close(ogw, gw, "grad_weight")
    assert_close(ogb, gb, "grad_bias")
    xt, wt = tensor(x, requires_grad=True), tensor(w, requires_grad=True)
    (ours(xt, wt, b, padding=case["pads"], **kw) * tensor(g)).sum().backward()
    assert_close(xt.grad, gx, "grad_input through the tape")
    assert_close(wt.grad, gw, "grad_weight through the tape")


def test_per_side_padding_errors_name_the_argument() -> None:
    x, w = np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"padding given per side must be 2 \(before, after\) pairs"):
        F.conv2d(x, w, padding=((1, 1), (1, 1), (1, 1)))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        F.conv2d(x, w, padding=((1, -1), (0, 0)))
    assert F.conv2d(x, w, padding=((0, 0), (2, 1))).shape == (1, 1, 3, 6)
