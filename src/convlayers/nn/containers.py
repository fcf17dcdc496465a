"""``Sequential`` and ``ModuleList``: children named ``"0"``, ``"1"``, ... as in PyTorch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, overload

from convlayers.nn.module import Module

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
        """Each child on the previous one's output, in order. Nothing is fused here: inference
        fusion (BatchNorm folded, activations and residual adds in the convolution's epilogue)
        is explicit, in :func:`convlayers.compile` and :func:`convlayers.nn.fuse`."""
        for module in self._modules.values():
            x = module(x)
        return x
