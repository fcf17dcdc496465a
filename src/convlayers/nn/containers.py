"""``Sequential`` and ``ModuleList``: children named ``"0"``, ``"1"``, ... as in PyTorch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, overload

import numpy as np

from convlayers.nn.activation import _Inplace, overwritable
from convlayers.nn.conv import _ConvNd
from convlayers.nn.module import Module
from convlayers.nn.norm import _BatchNorm

__all__ = ["ModuleList", "Sequential"]


class ModuleList(Module):
    """A list of modules whose parameters are registered under ``"0"``, ``"1"``, ..."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        """Add ``module`` at the end, named by its position."""
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__} holds Modules, got {type(module).__name__}")
        self._modules[str(len(self._modules))] = module
        return self

    @overload
    def __getitem__(self, index: int) -> Module: ...
    @overload
    def __getitem__(self, index: slice) -> ModuleList: ...

    def __getitem__(self, index: int | slice) -> Module:
        items = list(self._modules.values())
        if isinstance(index, slice):
            return type(self)(items[index])
        if not -len(items) <= index < len(items):
            raise IndexError(f"index {index} is out of range for {type(self).__name__} of "
                             f"length {len(items)}")
        return items[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))


class Sequential(ModuleList):
    """Apply modules one after the other; indexable, keys ``"0.weight"``, ``"1.running_mean"``...

    >>> from convlayers import nn
    >>> block = Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    >>> block
    Sequential(
      (0): Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
      (1): BatchNorm2d(64)
      (2): ReLU(inplace=True)
    )
    >>> list(block.state_dict())[:3]
    ['0.weight', '0.bias', '1.weight']
    """

    def __init__(self, *modules: Module) -> None:
        super().__init__(modules)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return Sequential(*list(self._modules.values())[index])
        return super().__getitem__(index)

    def forward(self, x: Any) -> Any:
        modules = list(self._modules.values())
        previous: Module | None = None
        i = 0
        while i < len(modules):
            module = modules[i]
            fresh = _fresh_conv_output(previous, x)
            if isinstance(module, _BatchNorm) and _unwrapped(module) and fresh is not None:
                after = modules[i + 1] if i + 1 < len(modules) else None
                clip = _fusable_clip(after)
                if module.normalize_inplace(fresh, clip):
                    previous = module if clip is None else after
                    i += 1 if clip is None else 2
                    continue
            x = module(x)
            previous = module
            i += 1
        return x


def _unwrapped(module: Module | None) -> bool:
    """No instance ``forward`` (as :func:`~convlayers.nn.feature_maps` installs to record)."""
    return module is not None and "forward" not in vars(module)


def _fresh_conv_output(previous: Module | None, x: Any) -> np.ndarray | None:
    """The array under ``x`` if a convolution (unwrapped, so nobody else keeps it) just returned
    it and nothing records it for a gradient: a BatchNorm after it may then work in place."""
    if isinstance(previous, _ConvNd) and _unwrapped(previous):
        return overwritable(x)
    return None


def _fusable_clip(module: Module | None) -> tuple[float, float] | None:
    """The clip range of an in-place ReLU/ReLU6 that may run inside the BatchNorm before it."""
    if isinstance(module, _Inplace) and module.inplace and _unwrapped(module):
        return module.clip_range
    return None
