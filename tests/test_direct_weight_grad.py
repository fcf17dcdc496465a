"""The ``direct`` weight gradient (:mod:`convlayers.kernels.direct_grad`) against torch's
autograd: each tap's slice a product over the output positions whose windows read it inside the
input, on the direct kernel's register tiles of every width (one vector of output channels, two,
three, several strips), with strides (the input split into column phases), dilations, batches,
and padding so wide that each tap reads a row or two of the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as tF

from convlayers import config
from convlayers import functional as F
from convlayers.functional import _engine, _measured
from convlayers.functional.plan import geometry
from oracle import assert_close, random_array, torch_grads

# (input, weight, padding, dilation): stride 1, so that forced ``direct`` serves both gradients
STRIDE_1 = [
    ((1, 20, 10, 10), (182, 20, 7, 7), (9, 9), (3, 3)),  # wide padding, 3 strips
    ((2, 33, 9, 12), (11, 33, 5, 3), (4, 2), (2, 1)),  # 11 outputs: one masked vector
    ((3, 7, 8, 8), (40, 7, 3, 3), (1, 1), (1, 1)),  # three vectors, several images
    ((2, 5, 2, 3), (24, 5, 3, 3), (6, 6), (3, 3)),  # each tap reads one or two rows
    ((1, 64, 7, 7), (70, 64, 3, 3), (0, 0), (1, 1)),  # a strip and a part
]


@pytest.mark.parametrize("x_shape, w_shape, padding, dilation", STRIDE_1)
def test_forced_direct_gradients_match_torch(x_shape: tuple, w_shape: tuple, padding: tuple,
                                             dilation: tuple) -> None:
    rng = np.random.default_rng(sum(x_shape) + sum(w_shape))
    x = random_array(rng, x_shape, np.float32)
    w = random_array(rng, w_shape, np.float32)
    _, g, (tgx, tgw) = torch_grads(
        lambda a, v: tF.conv2d(a, v, padding=padding, dilation=dilation), [x, w], 3)
    for threads in (1, 2):
        with config.settings(threads=threads), config.engine_settings(force="direct"):
            gx, gw, _ = F.conv_backward(g, x, w, padding=padding, dilation=dilation,
                                        with_bias=False)
        assert_close(gw, tgw, f"direct grad_weight, {threads} threads")
        assert_close(gx, tgx, f"direct grad_input, {threads} threads")


@pytest.mark.parametrize("stride, dilation, x_shape, w_shape", [
    ((2, 2), (1, 1), (2, 12, 9, 8), (30, 12, 3, 3)),
    ((3, 2), (2, 3), (1, 9, 16, 17), (70, 9, 3, 2)),
    ((1, 3), (1, 2), (2, 4, 5, 16), (20, 4, 2, 4)),
])
def test_the_weight_gradient_alone_at_a_stride_matches_torch(stride: tuple, dilation: tuple,
                                                             x_shape: tuple,
                                                             w_shape: tuple) -> None:
    """The weight gradient alone of a padded input (as reflect padding and transposed
    convolutions ask for it) at strides: its column phases and dilated taps."""
    rng = np.random.default_rng(sum(x_shape))
    x = random_array(rng, x_shape, np.float32)
    w = random_array(rng, w_shape, np.float32)
    _, g, (_, tgw) = torch_grads(lambda a, v: tF.conv2d(a, v, stride=stride, dilation=dilation),
                                 [x, w], 5)
    with config.engine_settings(force="direct"):
        gw = _engine.correlate_weight_grad(x, g, w_shape[2:], stride, dilation, 1)
    assert_close(gw, tgw, "direct grad_weight alone")


def test_direct_is_measured_for_dense_float32_weight_gradients_only() -> None:
    """The weight gradient of a dense float32 layer measures ``direct`` beside the GEMMs; a
    grouped or float64 one does not, and forcing it there names why."""
    def dense(groups: int = 1, dtype: type = np.float32) -> object:
        return geometry((2, 32, 20, 20), (48, 32 // groups, 5, 5), (1, 1), (1, 1), groups,
                        ((2, 2), (2, 2)), (20, 20), dtype)

    assert "direct" in _measured.candidates(dense(), "implicit", "weight_grad")
    assert "direct" not in _measured.candidates(dense(groups=4), "implicit", "weight_grad")
    assert "direct" not in _measured.candidates(dense(dtype=np.float64), "implicit",
                                                "weight_grad")
    with config.engine_settings(force="direct"), pytest.raises(
            ValueError, match="direct's weight gradient needs one group"):
        _engine.correlate_weight_grad(np.ones((1, 4, 6, 6), np.float32),
                                      np.ones((1, 4, 5, 5), np.float32), (2, 2), (1, 1), (1, 1),
                                      2)
