"""Fold BatchNorm into the convolution before it, for inference.

In evaluation mode BatchNorm is a fixed per-channel affine map, ``y = x*s + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - running_mean*s``. Applied to a
convolution's output it can be merged into the convolution itself::

    w' = w * s            (each output channel's filter scaled)
    b' = (b - mean) * s + beta

which saves one full pass over every feature map (and its memory) per block.
"""

from __future__ import annotations

import collections
import copy
import itertools

import numpy as np

from convlayers.nn.containers import Sequential
from convlayers.nn.conv import Conv1d, Conv2d, Conv3d
from convlayers.nn.linear import Identity
from convlayers.nn.module import Module, Parameter
from convlayers.nn.norm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["fuse", "fuse_conv_bn_weights"]

_PAIRS: tuple[tuple[type[Module], type[Module]], ...] = (
    (Conv1d, BatchNorm1d), (Conv2d, BatchNorm2d), (Conv3d, BatchNorm3d))


# ResNet's blocks and stem keep conv and norm as named attributes, not in a Sequential
_NAMED_PAIRS = {"BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
                "Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
                "ResNet": (("conv1", "bn1"),)}


def fuse_conv_bn_weights(
    weight: np.ndarray, bias: np.ndarray | None, running_mean: np.ndarray, running_var: np.ndarray,
    eps: float, gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The folded ``(weight, bias)`` of a convolution followed by an eval-mode BatchNorm.

    Computed in float64 and returned in ``weight``'s dtype. ``gamma``/``beta`` default to
    1 and 0 (``affine=False``); a missing ``bias`` counts as 0.

    >>> w, b = fuse_conv_bn_weights(np.ones((2, 1, 1, 1), np.float32), None, np.array([1.0, 0.0]),
    ...                             np.array([4.0, 1.0]), 0.0, np.array([2.0, 1.0]), np.array([0.5, 0.0]))
    >>> w.ravel(), b
    (array([1., 1.], dtype=float32), array([-0.5,  0. ], dtype=float32))
    """
    out = weight.shape[0]
    mean = np.asarray(running_mean, np.float64)
    scale = 1.0 / np.sqrt(np.asarray(running_var, np.float64) + eps)
    if gamma is not None:
        scale = scale * np.asarray(gamma, np.float64)
    b = np.zeros(out) if bias is None else np.asarray(bias, np.float64)
    shift = np.zeros(out) if beta is None else np.asarray(beta, np.float64)
    new_w = np.asarray(weight, np.float64) * scale.reshape((out,) + (1,) * (weight.ndim - 1))
    return new_w.astype(weight.dtype), ((b - mean) * scale + shift).astype(weight.dtype)


def _foldable(conv: Module, bn: Module) -> bool:
    if not any(type(conv) is c and type(bn) is b for c, b in _PAIRS):
        return False
    return (bn.running_mean is not None and bn.running_var is not None
            and bn.num_features == conv.out_channels)


def _fold(conv: Module, bn: Module) -> None:
    gamma = None if bn.weight is None else bn.weight.data
    beta = None if bn.bias is None else bn.bias.data
    weight, bias = fuse_conv_bn_weights(conv.weight.data, None if conv.bias is None else conv.bias.data,
                                        bn.running_mean, bn.running_var, bn.eps, gamma, beta)
    conv.weight.data = weight
    if conv.bias is None:
        conv.bias = Parameter(bias)
    else:
        conv.bias.data = bias


def fuse(model: Module) -> Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the conv just before it.

    Wherever a ``Sequential`` (and so ``ConvNormAct``, the ``conv`` of an
    ``InvertedResidual``, MobileNetV2's stages) holds a ``ConvNd`` directly followed by the
    ``BatchNormNd`` of the same dimension and channel count, the convolution's weight and bias
    become ``w*s`` and ``(b - mean)*s + beta`` with ``s = gamma/sqrt(running_var + eps)``, and
    the BatchNorm is replaced by ``Identity`` (so ``state_dict`` keys change: the norm's vanish,
    the conv gains a ``bias``). ResNet's named pairs (``conv1``/``bn1`` ... in its stem and
    blocks) fold the same way. Transposed convolutions, norms without running statistics,
    convolutions used in more than one place and pairs outside a ``Sequential`` are left as
    they are. ``model`` itself is not changed.

    The copy computes the same function as ``model.eval()`` up to float rounding; it is meant
    for inference (training it would train the folded weights without normalization).

    Parameters
    ----------
    model : Module
        Any model; it is deep-copied.

    Returns
    -------
    Module
        The fused copy, in evaluation mode.

    Examples
    --------
    >>> from convlayers import nn
    >>> block = nn.ConvNormAct(3, 8, rng=0)
    >>> fused = fuse(block)
    >>> fused
    ConvNormAct(
      (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
      (1): Identity()
      (2): ReLU(inplace=True)
    )
    >>> x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    >>> bool(np.allclose(fused(x), block.eval()(x), atol=1e-6))
    True
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a convlayers Module, got {type(model).__name__}")
    fused = copy.deepcopy(model).eval()
    # a conv used in two places is left alone: folding it would change its other use
    uses = collections.Counter(id(m) for _, m in fused._walk())
    for container in list(fused.modules()):
        named = _NAMED_PAIRS.get(type(container).__name__)
        if named is not None and type(container).__module__.endswith("models.resnet"):
            for conv_name, bn_name in named:
                conv, bn = container._modules.get(conv_name), container._modules.get(bn_name)
                if conv is not None and bn is not None and uses[id(conv)] == 1 and _foldable(conv, bn):
                    _fold(conv, bn)
                    container._modules[bn_name] = Identity().eval()
        if not isinstance(container, Sequential):
            continue
        items = list(container._modules.items())
        for (_, conv), (bn_name, bn) in itertools.pairwise(items):
            if conv is not None and bn is not None and uses[id(conv)] == 1 and _foldable(conv, bn):
                _fold(conv, bn)
                container._modules[bn_name] = Identity().eval()
    return fused
