"""A small reverse-mode tape: ``Tensor``, ``tensor()``, ``no_grad()`` and ``record()``.

A :class:`Tensor` wraps a NumPy array. Every op that sees a Tensor computes its result on the
plain arrays and calls :func:`record` with the result, its parents and a closure that maps the
output gradient to one gradient per parent (a vector-Jacobian product). The tape knows no op by
name. :meth:`Tensor.backward` sorts the graph topologically and walks it once in reverse,
*adding* gradients, so a tensor used twice (a residual connection, a shared weight) receives the
sum of its contributions. A parent's gradient is summed down to the parent's shape when its
value was broadcast. As in PyTorch, only leaves (tensors created with ``requires_grad=True``,
and ``nn.Parameter``) keep ``.grad``.

Examples
--------
>>> x = tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> y = (x * x + x).sum()
>>> y.backward()
>>> x.grad
array([3., 5., 7.])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

__all__ = ["Tensor", "concatenate", "is_grad_enabled", "no_grad", "record", "tensor"]

Backward = Callable[[np.ndarray], Sequence[Any]]
# The tape's one setting. A ContextVar, not a global: each thread (and each asyncio task) has its
# own, so one thread's ``no_grad()`` never stops another thread from recording.
_GRAD_ENABLED: ContextVar[bool] = ContextVar("convlayers_grad_enabled", default=True)


def is_grad_enabled() -> bool:
    """Whether ops on Tensors are being recorded in this thread (or asyncio task).

    >>> is_grad_enabled()
    True
    """
    return _GRAD_ENABLED.get()


@contextmanager
def no_grad() -> Iterator[None]:
    """Run a block (or decorate a function) without recording: results need no gradient.

    >>> w = tensor([2.0], requires_grad=True)
    >>> with no_grad():
    ...     (w * 3.0).requires_grad
    False
    """
    token = _GRAD_ENABLED.set(False)
    try:
        yield
    finally:
        _GRAD_ENABLED.reset(token)


def _data(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _tracked(x: Any) -> bool:
    return isinstance(x, Tensor) and x.requires_grad


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes along which a value of ``shape`` was broadcast."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and grad.shape[lead + i] != 1)
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def record(data: Any, parents: Sequence[Any], backward: Backward) -> Tensor:
    """Wrap an op's result as a Tensor and, if a parent needs a gradient, put it on the tape.

    ``backward(grad)`` returns one gradient per entry of ``parents`` (``None`` where there is
    none, e.g. for a constant); entries that are not Tensors needing a gradient are skipped.

    >>> a = tensor(np.array([1.0, 2.0]), requires_grad=True)
    >>> out = record(np.exp(a.data), [a], lambda g: [g * np.exp(a.data)])
    >>> out.sum().backward()
    >>> np.allclose(a.grad, np.exp([1.0, 2.0]))
    True
    """
    if not (_GRAD_ENABLED.get() and any(_tracked(p) for p in parents)):
        return Tensor(data)
    out = Tensor(data, requires_grad=True)
    out._parents, out._backward = tuple(parents), backward
    return out


class Tensor:
    """A NumPy array with an optional gradient; build one with :func:`tensor`.

    Attributes
    ----------
    data : ndarray
        The value (not copied).
    grad : ndarray or None
        Accumulated gradient of a leaf after :meth:`backward`, same shape and dtype as ``data``.
    requires_grad : bool
        Whether ops on this tensor are recorded.
    """

    __array_ufunc__ = None  # ``ndarray + Tensor`` defers to ``Tensor.__radd__``

    def __init__(self, data: Any, requires_grad: bool = False) -> None:
        self.data = np.asarray(data)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require grad, got dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad: np.ndarray | None = None
        self._parents: tuple[Any, ...] = ()
        self._backward: Backward | None = None

    shape = property(lambda self: self.data.shape, doc="Shape of ``data``.")
    dtype = property(lambda self: self.data.dtype, doc="dtype of ``data``.")
    ndim = property(lambda self: self.data.ndim, doc="Number of dimensions.")
    size = property(lambda self: self.data.size, doc="Number of elements.")
    T = property(lambda self: self.transpose(), doc="Axes reversed.")

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded op (they keep ``.grad``)."""
        return self._backward is None

    def numpy(self) -> np.ndarray:
        """The underlying array (shared, not copied)."""
        return self.data

    def item(self) -> Any:
        """The value of a one-element tensor as a Python number."""
        return self.data.item()

    def detach(self) -> Tensor:
        """The same data, cut from the tape."""
        return Tensor(self.data)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.data if dtype is None else self.data.astype(dtype)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        body = np.array2string(self.data, prefix="tensor(")
        return f"tensor({body}{', requires_grad=True' if self.requires_grad else ''})"

    def backward(self, grad: Any = None) -> None:
        """Add d(self)/d(leaf) times ``grad`` into the ``.grad`` of every leaf that needs it.

        ``grad`` defaults to 1 and may be omitted only for a one-element tensor.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph)")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"grad must be given for a non-scalar output of shape {self.shape}")
            grad = np.ones_like(self.data)
        seed = np.asarray(_data(grad), dtype=self.dtype)
        if seed.shape != self.shape:
            raise ValueError(f"grad must have the output's shape {self.shape}, got {seed.shape}")
        grads = {id(self): seed}
        for node in reversed(self._topological_order()):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None:
                g = np.array(g, dtype=node.dtype, copy=True)
                node.grad = g if node.grad is None else node.grad + g
                continue
            for parent, pg in zip(node._parents, node._backward(g), strict=True):
                if pg is None or not _tracked(parent):
                    continue
                pg = unbroadcast(np.asarray(pg), parent.shape)
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg

    def _topological_order(self) -> list[Tensor]:
        order: list[Tensor] = []
        seen: set[int] = set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
            elif id(node) not in seen:
                seen.add(id(node))
                stack.append((node, True))
                stack.extend((p, False) for p in node._parents if _tracked(p) and id(p) not in seen)
        return order

    # arithmetic: each op computes on arrays and records its vector-Jacobian product
    def __add__(self, other: Any) -> Tensor:
        return record(self.data + _data(other), [self, other], lambda g: (g, g))

    __radd__ = __add__

    def __sub__(self, other: Any) -> Tensor:
        return record(self.data - _data(other), [self, other], lambda g: (g, -g))

    def __rsub__(self, other: Any) -> Tensor:
        return record(_data(other) - self.data, [self, other], lambda g: (-g, g))

    def __mul__(self, other: Any) -> Tensor:
        a, b = self.data, _data(other)
        return record(a * b, [self, other], lambda g: (g * b, g * a if _tracked(other) else None))

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Tensor:
        a, b = self.data, _data(other)
        return record(a / b, [self, other],
                      lambda g: (g / b, -g * a / (b * b) if _tracked(other) else None))

    def __rtruediv__(self, other: Any) -> Tensor:
        a, b = _data(other), self.data
        return record(a / b, [self], lambda g: (-g * a / (b * b),))

    def __neg__(self) -> Tensor:
        return record(-self.data, [self], lambda g: (-g,))

    def __pow__(self, exponent: float) -> Tensor:
        if isinstance(exponent, Tensor):
            raise TypeError("only a number can be the exponent of a Tensor, got a Tensor")
        a = self.data
        return record(a**exponent, [self], lambda g: (g * exponent * a ** (exponent - 1),))

    def __matmul__(self, other: Any) -> Tensor:
        return _matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return _matmul(other, self)

    def exp(self) -> Tensor:
        """Elementwise exponential."""
        out = np.exp(self.data)
        return record(out, [self], lambda g: (g * out,))

    def log(self) -> Tensor:
        """Elementwise natural logarithm."""
        a = self.data
        return record(np.log(a), [self], lambda g: (g / a,))

    # shape ops
    def reshape(self, *shape: Any) -> Tensor:
        """Same values, new shape (``-1`` allowed once)."""
        old = self.shape
        new = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        return record(self.data.reshape(new), [self], lambda g: (g.reshape(old),))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        """Merge axes ``start_dim..end_dim`` into one, as ``torch.flatten``."""
        shape = self.shape
        s, e = start_dim % max(len(shape), 1), end_dim % max(len(shape), 1)
        return self.reshape((*shape[:s], -1, *shape[e + 1:]) if shape else (1,))

    def transpose(self, *axes: int) -> Tensor:
        """Permute axes (reversed when none are given), as ``numpy.transpose``."""
        order = axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else axes
        perm = tuple(order) if order else tuple(reversed(range(self.ndim)))
        inverse = tuple(np.argsort(perm))
        return record(self.data.transpose(perm), [self], lambda g: (g.transpose(inverse),))

    def __getitem__(self, index: Any) -> Tensor:
        index = _data(index)
        shape, dtype = self.shape, self.dtype

        def backward(g: np.ndarray) -> tuple[np.ndarray]:
            full = np.zeros(shape, dtype)
            np.add.at(full, index, g)
            return (full,)

        return record(self.data[index], [self], backward)

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        """Sum over ``axis`` (all axes by default)."""
        shape = self.shape
        out = self.data.sum(axis=axis, keepdims=keepdims)
        return record(out, [self], lambda g: (np.broadcast_to(_keep(g, shape, axis, keepdims), shape),))

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        """Mean over ``axis`` (all axes by default)."""
        total = self.sum(axis, keepdims)
        return total / (self.size // max(total.size, 1))


def _keep(g: np.ndarray, shape: tuple[int, ...], axis: Any, keepdims: bool) -> np.ndarray:
    """Reinsert the axes a reduction removed so ``g`` broadcasts against ``shape``."""
    if keepdims:
        return g
    if axis is None:
        return g.reshape((1,) * len(shape))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return np.expand_dims(g, tuple(a % len(shape) for a in axes))


def _matmul(a: Any, b: Any) -> Tensor:
    x, y = np.asarray(_data(a)), np.asarray(_data(b))
    x2 = x[None, :] if x.ndim == 1 else x
    y2 = y[:, None] if y.ndim == 1 else y

    def backward(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g2 = g[..., None, :] if x.ndim == 1 else g
        g2 = g2[..., None] if y.ndim == 1 else g2
        gx = unbroadcast(g2 @ np.swapaxes(y2, -1, -2), x2.shape).reshape(x.shape)
        gy = unbroadcast(np.swapaxes(x2, -1, -2) @ g2, y2.shape).reshape(y.shape)
        return gx, gy

    return record(x @ y, [a, b], backward)


def concatenate(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors (or arrays) along ``axis``; the gradient is split back into pieces.

    >>> concatenate([tensor([1.0]), tensor([2.0, 3.0])]).shape
    (3,)
    """
    arrays = [np.asarray(_data(t)) for t in tensors]
    cuts = np.cumsum([a.shape[axis] for a in arrays])[:-1]
    return record(np.concatenate(arrays, axis=axis), list(tensors),
                  lambda g: np.split(g, cuts, axis=axis))


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """A new Tensor holding a copy of ``data`` (dtype as NumPy infers it unless given).

    >>> t = tensor(np.ones((2, 3), np.float32), requires_grad=True)
    >>> t.shape, t.dtype, t.requires_grad
    ((2, 3), dtype('float32'), True)
    """
    return Tensor(np.array(_data(data), dtype=dtype, copy=True), requires_grad=requires_grad)
