"""Activation layers.

``inplace=True`` (as in PyTorch) overwrites the input instead of allocating an output, but
only when nothing is being recorded for a gradient (inference under ``no_grad``, or plain
arrays): the tape must be able to read every input later, so a recorded call always
allocates. The blocks use in-place activations, so whole-model inference reuses each
convolution's output buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from convlayers import functional as F
from convlayers._validate import as_int
from convlayers.autograd import Tensor, is_grad_enabled
from convlayers.nn.module import Module, extra_args

__all__ = [
    "Hardsigmoid", "Hardswish", "Hardtanh", "LeakyReLU", "LogSoftmax", "ReLU", "ReLU6", "SiLU",
    "Sigmoid", "Softmax", "Tanh", "make_activation",
]


def overwritable(x: Any) -> np.ndarray | None:
    """The array under ``x`` if it may be overwritten: nothing records it for a gradient."""
    if isinstance(x, Tensor):
        if x.requires_grad and is_grad_enabled():
            return None
        x = x.data
    if isinstance(x, np.ndarray) and x.flags.writeable and x.dtype.kind == "f":
        return x
    return None


class _Inplace(Module):
    _fn: Callable[[Any], Any]
    _fn_inplace: Callable[[np.ndarray], Any]
    clip_range: tuple[float, float] | None = None  # set where the activation is a clip

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x: Any) -> Any:
        if self.inplace and (data := overwritable(x)) is not None:
            type(self)._fn_inplace(data)
            return x
        return type(self)._fn(x)

    def extra_repr(self) -> str:
        return extra_args(inplace=(self.inplace, False))


class ReLU(_Inplace):
    """``max(x, 0)``, as ``torch.nn.ReLU``.

    >>> ReLU(inplace=True)
    ReLU(inplace=True)
    """

    _fn = staticmethod(F.relu)
    _fn_inplace = staticmethod(lambda a: np.maximum(a, 0, out=a))
    clip_range = (0.0, float("inf"))  # lets a container fuse it into the layer before


class ReLU6(_Inplace):
    """``min(max(x, 0), 6)``, as ``torch.nn.ReLU6``: MobileNetV2's activation."""

    _fn = staticmethod(F.relu6)
    _fn_inplace = staticmethod(lambda a: np.clip(a, 0, 6, out=a))
    clip_range = (0.0, 6.0)


class Hardtanh(_Inplace):
    """``min(max(x, min_val), max_val)``, as ``torch.nn.Hardtanh`` (ONNX's ``Clip``).

    >>> Hardtanh(0.0, 6.0)
    Hardtanh(min_val=0.0, max_val=6.0)
    """

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> None:
        super().__init__(inplace)
        F.hardtanh(np.zeros(1), min_val, max_val)  # checks the bounds now, not at the first call
        self.min_val, self.max_val = float(min_val), float(max_val)
        self.clip_range = (self.min_val, self.max_val)

    def forward(self, x: Any) -> Any:
        if self.inplace and (data := overwritable(x)) is not None:
            np.clip(data, self.min_val, self.max_val, out=data)
            return x
        return F.hardtanh(x, self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return extra_args(min_val=(self.min_val, None), max_val=(self.max_val, None),
                          inplace=(self.inplace, False))


class Hardswish(_Inplace):
    """``x * relu6(x + 3) / 6``, as ``torch.nn.Hardswish`` (MobileNetV3's activation).

    >>> Hardswish()(np.array([-4.0, 4.0]))
    array([-0.,  4.])
    """

    _fn = staticmethod(F.hardswish)
    _fn_inplace = staticmethod(lambda a: np.multiply(a, np.clip(a + 3, 0, 6) / a.dtype.type(6), out=a))


class Hardsigmoid(_Inplace):
    """``relu6(x + 3) / 6``, as ``torch.nn.Hardsigmoid``.

    >>> Hardsigmoid()(np.array([0.0]))
    array([0.5])
    """

    _fn = staticmethod(F.hardsigmoid)
    _fn_inplace = staticmethod(lambda a: np.divide(np.clip(a + 3, 0, 6, out=a), a.dtype.type(6), out=a))


class SiLU(_Inplace):
    """``x * sigmoid(x)`` (swish), as ``torch.nn.SiLU``.

    >>> SiLU()(np.array([0.0]))
    array([0.])
    """

    _fn = staticmethod(F.silu)
    _fn_inplace = staticmethod(lambda a: np.multiply(a, F.sigmoid(a), out=a))


class LeakyReLU(_Inplace):
    """``x`` where positive, else ``negative_slope * x``, as ``torch.nn.LeakyReLU``.

    >>> LeakyReLU(0.1)(np.array([-2.0, 3.0]))
    array([-0.2,  3. ])
    """

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__(inplace)
        F.leaky_relu(np.zeros(1), negative_slope)  # checks the slope now
        self.negative_slope = float(negative_slope)

    def forward(self, x: Any) -> Any:
        if self.inplace and (data := overwritable(x)) is not None:
            np.multiply(data, data.dtype.type(self.negative_slope), out=data, where=~(data > 0))
            return x
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return extra_args(negative_slope=(self.negative_slope, 0.01), inplace=(self.inplace, False))


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


_BY_NAME: dict[str, type[Module]] = {
    "relu": ReLU, "relu6": ReLU6, "sigmoid": Sigmoid, "tanh": Tanh, "hardswish": Hardswish,
    "hardsigmoid": Hardsigmoid, "silu": SiLU, "leaky_relu": LeakyReLU,
}


def make_activation(
    activation: str | Callable[[], Module] | None, inplace: bool = False
) -> Module | None:
    """An activation module from a name (``"relu"``, ``"relu6"``, ``"sigmoid"``, ``"tanh"``,
    ``"hardswish"``, ``"hardsigmoid"``, ``"silu"``, ``"leaky_relu"``), a Module class or factory,
    or ``None`` for none. ``inplace`` applies to the named elementwise ones that allow it.

    >>> make_activation("relu6"), make_activation("relu", inplace=True)
    (ReLU6(), ReLU(inplace=True))
    """
    if activation is None:
        return None
    if isinstance(activation, str):
        if activation not in _BY_NAME:
            raise ValueError(f"activation must be one of {', '.join(map(repr, _BY_NAME))}, a Module "
                             f"class or None, got {activation!r}")
        cls = _BY_NAME[activation]
        return cls(inplace=True) if inplace and issubclass(cls, _Inplace) else cls()
    if callable(activation):
        return activation()
    raise TypeError(f"activation must be a name, a Module class or None, got {activation!r}")
