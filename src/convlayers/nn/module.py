"""``Module`` and ``Parameter``: the containers of learnable state, with PyTorch's vocabulary.

A Module registers what is assigned to it: a :class:`Parameter` becomes a parameter, a Module
becomes a child, and arrays passed to :meth:`Module.register_buffer` become buffers (state that
is saved but not learned, such as BatchNorm's running statistics). Names join with dots, so
``state_dict()`` keys are exactly PyTorch's (``features.0.0.weight``) and a PyTorch checkpoint
converted to NumPy arrays loads unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from convlayers.autograd import Tensor

__all__ = ["IncompatibleKeys", "Module", "Parameter", "extra_args"]


class Parameter(Tensor):
    """A Tensor that a Module learns: ``requires_grad`` is on by default.

    >>> Parameter(np.zeros(2, np.float32))
    Parameter containing:
    tensor([0. 0.], requires_grad=True)
    """

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(strict=False)`` could not match."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def extra_args(*positional: Any, **named: tuple[Any, Any]) -> str:
    """``extra_repr`` text: the positional values, then ``name=value`` where value != default.

    >>> extra_args(3, 8, stride=((2, 2), (1, 1)), groups=(1, 1))
    '3, 8, stride=(2, 2)'
    """
    parts = [str(v) for v in positional]
    parts += [f"{k}={v}" for k, (v, default) in named.items() if v != default]
    return ", ".join(parts)


class Module:
    """Base class of layers, blocks and models.

    Subclasses call ``super().__init__()``, assign parameters and child modules as attributes
    and define ``forward``; calling the module runs ``forward``.

    Examples
    --------
    >>> class Scale(Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.factor = Parameter(np.ones(1, np.float32))
    ...     def forward(self, x):
    ...         return x * self.factor
    >>> m = Scale()
    >>> list(m.state_dict()), m.training, m.eval().training
    (['factor'], True, False)
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    # registration
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"call super().__init__() in {type(self).__name__}.__init__ first")
        if isinstance(value, Parameter | Module):
            for store in (self._parameters, self._buffers, self._modules, self.__dict__):
                store.pop(name, None)
            (self._parameters if isinstance(value, Parameter) else self._modules)[name] = value
        elif name in self._parameters or name in self._modules:
            if value is not None:
                kind = "Parameter" if name in self._parameters else "Module"
                raise TypeError(f"cannot assign {type(value).__name__} to {name!r}: a {kind} or None "
                                f"is expected")
            (self._parameters if name in self._parameters else self._modules)[name] = None
        elif name in self._buffers:
            self._buffers[name] = None if value is None else np.asarray(value)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        for store in ("_parameters", "_buffers", "_modules"):
            values = self.__dict__.get(store, {})
            if name in values:
                return values[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_buffer(self, name: str, value: Any, persistent: bool = True) -> None:
        """Add state that is not learned (saved in ``state_dict`` unless not ``persistent``)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = None if value is None else np.asarray(value)
        if not persistent:
            self._non_persistent.add(name)

    def register_parameter(self, name: str, value: Parameter | None) -> None:
        """Add a parameter; ``None`` declares an absent one (e.g. ``bias=False``)."""
        if value is not None and not isinstance(value, Parameter):
            raise TypeError(f"{name} must be a Parameter or None, got {type(value).__name__}")
        self.__dict__.pop(name, None)
        self._parameters[name] = value

    # traversal
    def _walk(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Every (dotted name, module), a shared module under each of its names."""
        yield prefix, self
        for k, m in self._modules.items():
            if m is not None:
                yield from m._walk(f"{prefix}.{k}" if prefix else k)

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every descendant, each once, with its dotted name."""
        seen: set[int] = set()
        for name, module in self._walk(prefix):
            if id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def modules(self) -> Iterator[Module]:
        """This module and every descendant."""
        return (m for _, m in self.named_modules())

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Direct children with their names."""
        return iter(list(self._modules.items()))

    def children(self) -> Iterator[Module]:
        """Direct children."""
        return iter(list(self._modules.values()))

    def _named(self, store: str, recurse: bool) -> Iterator[tuple[str, Any]]:
        seen: set[int] = set()
        modules = self.named_modules() if recurse else iter([("", self)])
        for prefix, module in modules:
            for k, v in getattr(module, store).items():
                if v is not None and id(v) not in seen:
                    seen.add(id(v))
                    yield (f"{prefix}.{k}" if prefix else k), v

    def named_parameters(self, recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """``(name, parameter)`` pairs; a shared parameter appears once."""
        return self._named("_parameters", recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """The learnable parameters (each once)."""
        return (p for _, p in self.named_parameters(recurse))

    def named_buffers(self, recurse: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` pairs of buffers."""
        return self._named("_buffers", recurse)

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        """The buffers (running statistics and the like)."""
        return (b for _, b in self.named_buffers(recurse))

    # modes and state
    def train(self, mode: bool = True) -> Module:
        """Set training mode here and in every descendant; returns ``self``."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Evaluation mode (BatchNorm uses running statistics, Dropout does nothing)."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget accumulated gradients (``.grad = None``)."""
        for p in self.parameters():
            p.grad = None

    def to(self, dtype: Any) -> Module:
        """Cast floating parameters and buffers to ``dtype`` in place (e.g. ``np.float64``)."""
        for module in self.modules():
            for p in module._parameters.values():
                if p is not None:
                    p.data = p.data.astype(dtype)
            for k, b in module._buffers.items():
                if b is not None and b.dtype.kind == "f":
                    module._buffers[k] = b.astype(dtype)
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and persistent buffers by dotted name, PyTorch's keys (arrays shared)."""
        out: dict[str, np.ndarray] = {}
        for prefix, module in self._walk():
            dot = f"{prefix}." if prefix else ""
            out.update((dot + k, p.data) for k, p in module._parameters.items() if p is not None)
            out.update((dot + k, b) for k, b in module._buffers.items()
                       if b is not None and k not in module._non_persistent)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy arrays into the parameters and buffers of the same names, in place.

        Values may be anything ``numpy.asarray`` accepts (CPU torch tensors included). With
        ``strict`` every key must match both ways; a shape mismatch is always an error. All
        problems are reported together, each key by name.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [f"{k}: checkpoint {tuple(np.shape(state_dict[k]))} vs model {own[k].shape}"
                      for k in own if k in state_dict and tuple(np.shape(state_dict[k])) != own[k].shape]
        problems = [f"{what} ({len(keys)}): " + ", ".join(keys)
                    for what, keys in (("shape mismatch", mismatched), ("missing keys", missing),
                                       ("unexpected keys", unexpected))
                    if keys and (strict or what == "shape mismatch")]
        if problems:
            raise ValueError(f"cannot load state_dict into {type(self).__name__}: " + "; ".join(problems))
        for k, target in own.items():
            if k in state_dict:
                np.copyto(target, np.asarray(state_dict[k]), casting="same_kind")
        return IncompatibleKeys(missing, unexpected)

    # calling and printing
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The computation; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def extra_repr(self) -> str:
        """Hyper-parameters shown inside the parentheses of ``repr`` (non-defaults only)."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr().split("\n") if self.extra_repr() else []
        children = [f"({k}): " + repr(m).replace("\n", "\n  ") for k, m in self._modules.items()]
        if len(extra) == 1 and not children:
            return f"{type(self).__name__}({extra[0]})"
        if not extra and not children:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(\n  " + "\n  ".join(extra + children) + "\n)"
