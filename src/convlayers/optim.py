"""Optimizers and learning-rate schedules with PyTorch's update rules.

An optimizer holds parameters (anything with a NumPy ``.data`` array and a ``.grad`` that is
an array or ``None``, such as :class:`convlayers.nn.Parameter`) and updates ``.data`` in place
from ``.grad`` on :meth:`Optimizer.step`. The formulas are the ones in ``torch.optim``'s
documentation, written out so they can be read.

Examples
--------
>>> from types import SimpleNamespace
>>> p = SimpleNamespace(data=np.array([1.0, -2.0]), grad=np.array([0.5, 0.5]))
>>> opt = SGD([p], lr=0.1, momentum=0.9)
>>> opt.step()
>>> p.data
array([ 0.95, -2.05])
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol, overload

import numpy as np

__all__ = ["SGD", "Adam", "AdamW", "CosineAnnealingLR", "Optimizer", "StepLR"]


class ParameterLike(Protocol):
    """What an optimizer needs of a parameter."""

    data: np.ndarray
    grad: np.ndarray | None


def _check_number(value: Any, name: str, minimum: float = 0.0, below: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value < minimum or (below is not None and value >= below):
        bound = f"in [{minimum}, {below})" if below is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


class _Hyper:
    """A hyper-parameter attribute checked on every assignment (a finite number in range),
    so that ``opt.lr = float("nan")`` fails at once, naming it, rather than poisoning the
    weights at the next step."""

    def __init__(self, minimum: float = 0.0, below: float | None = None, label: str = "") -> None:
        self.minimum, self.below, self.label, self.name = minimum, below, label, ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.label = name, self.label or name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _Hyper: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> float: ...
    def __get__(self, obj: object | None, objtype: type | None = None) -> float | _Hyper:
        if obj is None:
            return self
        value: float = obj.__dict__[self.name]
        return value

    def __set__(self, obj: object, value: float) -> None:
        obj.__dict__[self.name] = _check_number(value, self.label, self.minimum, self.below)


class Optimizer:
    """Base class: parameter list, per-parameter state, ``zero_grad`` and ``state_dict``.

    Hyper-parameters (``lr``, and each subclass's ``momentum``, ``eps``, ...) are checked
    whenever they are set, by the constructor, a schedule or the user:

    >>> from types import SimpleNamespace
    >>> opt = SGD([SimpleNamespace(data=np.zeros(1), grad=None)], lr=0.1)
    >>> opt.lr = float("nan")
    Traceback (most recent call last):
    ...
    ValueError: lr must be a finite number, got nan
    """

    lr = _Hyper()

    def __init__(self, params: Iterable[ParameterLike], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("params is empty: the optimizer got no parameters to update")
        for i, p in enumerate(self.params):
            if not isinstance(getattr(p, "data", None), np.ndarray):
                raise TypeError(f"params[{i}] has no NumPy .data array: {type(p).__name__}")
        self.lr = lr
        self.state: list[dict[str, Any]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Forget the gradients (set them to ``None``, as PyTorch does by default)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient."""
        for p, state in zip(self.params, self.state, strict=True):
            if p.grad is not None:
                self._update(p, np.asarray(p.grad, dtype=p.data.dtype), state)

    def _update(self, p: ParameterLike, grad: np.ndarray, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray | float]:
        """Flat mapping of arrays and numbers, suitable for a safetensors/npz checkpoint."""
        flat: dict[str, np.ndarray | float] = {"lr": self.lr}
        for i, state in enumerate(self.state):
            for key, value in state.items():
                flat[f"{i}.{key}"] = value
        return flat

    def load_state_dict(self, flat: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.lr = float(np.asarray(flat["lr"]))
        self.state = [{} for _ in self.params]
        for name, value in flat.items():
            if name == "lr":
                continue
            index, key = name.split(".", 1)
            arr = np.asarray(value)
            self.state[int(index)][key] = arr.copy() if arr.ndim else arr.item()


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

    Per step: ``g = grad + weight_decay*p``; with momentum ``b = momentum*b + (1-dampening)*g``
    (``b = g`` on the first step) and ``g = g + momentum*b`` (Nesterov) or ``g = b``; finally
    ``p = p - lr*g``.
    """

    momentum, dampening, weight_decay = _Hyper(), _Hyper(), _Hyper()

    def __init__(
        self, params: Iterable[ParameterLike], lr: float = 1e-3, momentum: float = 0.0,
        dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr)
        self.momentum, self.dampening, self.weight_decay = momentum, dampening, weight_decay
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        self.nesterov = nesterov

    def _update(self, p: ParameterLike, grad: np.ndarray, state: dict[str, Any]) -> None:
        if self.weight_decay:
            grad = grad + self.weight_decay * p.data
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = grad.copy()
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * grad
            state["momentum_buffer"] = buf
            grad = grad + self.momentum * buf if self.nesterov else buf
        p.data -= self.lr * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction; ``weight_decay`` is L2 on the gradient.

    Per step ``t``: ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g^2``,
    ``p = p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``; ``amsgrad`` uses the running
    maximum of ``v``.
    """

    decoupled = False
    beta1, beta2 = _Hyper(0.0, 1.0, "betas[0]"), _Hyper(0.0, 1.0, "betas[1]")
    eps, weight_decay = _Hyper(), _Hyper()

    def __init__(
        self, params: Iterable[ParameterLike], lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas[0], betas[1]
        self.eps, self.weight_decay = eps, weight_decay
        self.amsgrad = amsgrad

    def _update(self, p: ParameterLike, grad: np.ndarray, state: dict[str, Any]) -> None:
        if self.weight_decay:
            if self.decoupled:
                p.data *= 1 - self.lr * self.weight_decay
            else:
                grad = grad + self.weight_decay * p.data
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if self.amsgrad:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        m += (1 - self.beta1) * (grad - m)  # PyTorch's lerp form of b1*m + (1-b1)*g
        v *= self.beta2
        v += (1 - self.beta2) * grad * grad
        if self.amsgrad:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        step_size = self.lr / (1 - self.beta1**step)
        denom = np.sqrt(v) / math.sqrt(1 - self.beta2**step) + self.eps
        p.data -= (step_size * m / denom).astype(p.data.dtype, copy=False)


class AdamW(Adam):
    """Adam with decoupled weight decay (``p *= 1 - lr*weight_decay`` before the Adam step)."""

    decoupled = True

    def __init__(
        self, params: Iterable[ParameterLike], lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class StepLR:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be an int >= 1, got {step_size!r}")
        self.optimizer, self.step_size = optimizer, step_size
        self.gamma = _check_number(gamma, "gamma")
        self.base_lr, self.epoch = optimizer.lr, 0

    def step(self) -> None:
        """Call once per epoch, after the optimizer's steps."""
        self.epoch += 1
        self.optimizer.lr = self.base_lr * self.gamma ** (self.epoch // self.step_size)


class CosineAnnealingLR:
    """Cosine decay from the initial rate to ``eta_min`` over ``T_max`` epochs.

    ``lr = eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``.
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max < 1:
            raise ValueError(f"T_max must be an int >= 1, got {T_max!r}")
        self.optimizer, self.T_max = optimizer, T_max
        self.eta_min = _check_number(eta_min, "eta_min")
        self.base_lr, self.epoch = optimizer.lr, 0

    def step(self) -> None:
        """Call once per epoch, after the optimizer's steps."""
        self.epoch += 1
        cos = (1 + math.cos(math.pi * self.epoch / self.T_max)) / 2
        self.optimizer.lr = self.eta_min + (self.base_lr - self.eta_min) * cos
