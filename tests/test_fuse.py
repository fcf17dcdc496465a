"""``fuse``: BatchNorm folded into the conv before it; same outputs as the unfused eval model and
the same folded weights as ``torch.nn.utils.fusion.fuse_conv_bn_eval``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn as tnn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from convlayers import nn
from oracle import assert_close, random_array
from test_nn_layers import copy_weights

R = np.random.default_rng(0)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial gamma, beta and running statistics everywhere."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean[...] = rng.uniform(-0.5, 0.5, n)
            m.running_var[...] = rng.uniform(0.5, 1.5, n)
            if m.weight is not None:
                m.weight.data[...] = rng.uniform(0.5, 1.5, n)
                m.bias.data[...] = rng.uniform(-0.5, 0.5, n)
    return model


def test_fused_mobilenet_v2_matches_the_unfused_eval_model() -> None:
    model = randomize_norms(nn.MobileNetV2(num_classes=10, width_mult=0.35, rng=0)).train()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    fused = nn.fuse(model)
    assert not fused.training and model.training  # the original keeps its mode ...
    for k, v in model.state_dict().items():  # ... and its weights
        np.testing.assert_array_equal(v, before[k])
    kinds = [type(m).__name__ for m in fused.modules()]
    assert "BatchNorm2d" not in kinds and kinds.count("Identity") == 52
    x = random_array(R, (2, 3, 32, 32), np.float32)
    assert_close(fused(x), model.eval()(x), "fused MobileNetV2")
    assert all(m.bias is not None for m in fused.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("bias", [True, False])
def test_folded_weights_equal_torch_fuse_conv_bn_eval(bias: bool) -> None:
    ours = randomize_norms(nn.ConvNormAct(3, 8, stride=2, bias=bias, rng=0), seed=1)
    theirs = tnn.Sequential(tnn.Conv2d(3, 8, 3, 2, 1, bias=bias), tnn.BatchNorm2d(8), tnn.ReLU())
    copy_weights(ours, theirs)
    folded = fuse_conv_bn_eval(theirs[0].eval(), theirs[1].eval())
    fused = nn.fuse(ours)
    assert_close(fused[0].weight.data, folded.weight, "folded weight")
    assert_close(fused[0].bias.data, folded.bias, "folded bias")
    assert isinstance(fused[1], nn.Identity)
    x = random_array(R, (2, 3, 9, 9), np.float32)
    assert_close(fused(x), theirs.eval()(torch.tensor(x)), "fused block vs torch")


def test_other_pairs_conv1d_affine_free_and_float64() -> None:
    model = randomize_norms(nn.Sequential(nn.Conv1d(2, 4, 3, rng=0), nn.BatchNorm1d(4, affine=False),
                                          nn.Conv2d(1, 1, 1), nn.Flatten()), seed=2).to(np.float64)
    seq = nn.Sequential(model[0], model[1])
    fused = nn.fuse(seq)
    assert isinstance(fused[1], nn.Identity) and fused[0].weight.dtype == np.float64
    x = random_array(R, (3, 2, 7), np.float64)
    assert_close(fused(x), seq.eval()(x), "Conv1d + BatchNorm1d(affine=False)")


def test_pairs_that_cannot_fold_are_left_alone() -> None:
    keep = nn.Sequential(nn.ConvTranspose2d(2, 4, 3), nn.BatchNorm2d(4),  # transposed
                         nn.Conv2d(4, 4, 1), nn.ReLU(), nn.BatchNorm2d(4),  # not adjacent
                         nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))  # no stats
    fused = nn.fuse(keep)
    assert [type(m).__name__ for m in fused] == [type(m).__name__ for m in keep]
    assert list(fused.state_dict()) == list(keep.state_dict())


def test_a_conv_shared_by_two_sequentials_is_not_folded() -> None:
    conv = nn.Conv2d(2, 2, 1, rng=0)
    model = nn.Sequential(nn.Sequential(conv, nn.BatchNorm2d(2)), nn.Sequential(conv, nn.BatchNorm2d(2)))
    randomize_norms(model)
    fused = nn.fuse(model)
    assert fused[0][0] is fused[1][0]
    assert isinstance(fused[0][1], nn.BatchNorm2d) and isinstance(fused[1][1], nn.BatchNorm2d)
    x = random_array(R, (1, 2, 3, 3), np.float32)
    assert_close(fused(x), model.eval()(x), "shared conv")


def test_fuse_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match="model"):
        nn.fuse(tnn.Conv2d(1, 1, 1))
