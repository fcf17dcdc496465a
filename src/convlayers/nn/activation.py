"""Activation layers. ``inplace`` is accepted for drop-in compatibility with PyTorch code and
changes nothing: arrays are never overwritten, so the tape can always read its inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from convlayers import functional as F
from convlayers._validate import as_int
from convlayers.nn.module import Module, extra_args

__all__ = ["LogSoftmax", "ReLU", "ReLU6", "Sigmoid", "Softmax", "Tanh", "make_activation"]


class _Inplace(Module):
    _fn: Callable[[Any], Any]

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x: Any) -> Any:
        return type(self)._fn(x)

    def extra_repr(self) -> str:
        return extra_args(inplace=(self.inplace, False))


class ReLU(_Inplace):
    """``max(x, 0)``, as ``torch.nn.ReLU``.

    >>> ReLU(inplace=True)
    ReLU(inplace=True)
    """

    _fn = staticmethod(F.relu)


class ReLU6(_Inplace):
    """``min(max(x, 0), 6)``, as ``torch.nn.ReLU6``: MobileNetV2's activation."""

    _fn = staticmethod(F.relu6)


class Sigmoid(Module):
    """``1 / (1 + exp(-x))``."""

    def forward(self, x: Any) -> Any:
        return F.sigmoid(x)


class Tanh(Module):
    """Hyperbolic tangent."""

    def forward(self, x: Any) -> Any:
        return F.tanh(x)


class Softmax(Module):
    """Softmax along ``dim``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = as_int(dim, "dim")

    def forward(self, x: Any) -> Any:
        return F.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """Log-softmax along ``dim``."""

    def forward(self, x: Any) -> Any:
        return F.log_softmax(x, self.dim)


_BY_NAME: dict[str, type[Module]] = {"relu": ReLU, "relu6": ReLU6, "sigmoid": Sigmoid, "tanh": Tanh}


def make_activation(activation: str | Callable[[], Module] | None) -> Module | None:
    """An activation module from a name (``"relu"``, ``"relu6"``, ``"sigmoid"``, ``"tanh"``),
    a Module class or factory, or ``None`` for none.

    >>> make_activation("relu6")
    ReLU6()
    """
    if activation is None:
        return None
    if isinstance(activation, str):
        if activation not in _BY_NAME:
            raise ValueError(f"activation must be one of {', '.join(map(repr, _BY_NAME))}, a Module "
                             f"class or None, got {activation!r}")
        return _BY_NAME[activation]()
    if callable(activation):
        return activation()
    raise TypeError(f"activation must be a name, a Module class or None, got {activation!r}")
