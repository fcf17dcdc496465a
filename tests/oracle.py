"""The one place tests compare convlayers with an independent oracle (mostly PyTorch).

The tolerance is stated once, :data:`RTOL`, per dtype, and applied per element: the error of
each element may be at most ``RTOL`` times that element's magnitude, where the magnitude of a
sum is its accumulation, ``sum |a_i| * |b_i|`` over the terms (for a convolution, ``|x|``
times ``|k|`` summed over the window, as ``tests/test_filters.py`` does), not the largest value
in the array: a small gradient entry next to a large one must be right too.

:func:`torch_grads` computes these accumulations (the same torch function on the absolute
values, in float64, with the absolute upstream gradient), and :func:`assert_close` uses them
for the arrays it returned. Other expected arrays should pass ``scale=`` (the accumulation);
without it the check falls back to the array's largest magnitude (at least 1) for every
element, which cannot see a small element go wrong next to a large one: a fallback for
comparisons whose accumulation torch cannot give (modules with float32 weights of their own,
whole models), not a tolerance to choose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

torch.set_num_threads(1)

#: Error allowed per element, relative to that element's magnitude (see the module's text).
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}

# expected arrays returned by torch_grads -> their per-element accumulation (kept alive with
# them, so that an id is never reused while its entry stands)
_ACCUMULATION: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _magnitude(expected: np.ndarray, scale: Any) -> np.ndarray:
    mag = np.abs(np.where(np.isfinite(expected), expected, 0)).astype(np.float64)
    known = _ACCUMULATION.get(id(expected))
    if scale is None and known is not None and known[0] is expected:
        scale = known[1]
    if scale is not None:
        return np.maximum(mag, np.broadcast_to(np.abs(np.asarray(scale, np.float64)), mag.shape))
    # unknown accumulation: the loose fallback, the array's largest magnitude (at least 1)
    return np.full(mag.shape, max(float(mag.max()) if mag.size else 0.0, 1.0))


def assert_close(actual: Any, expected: Any, what: str = "", *, scale: Any = None) -> None:
    """Assert ``|actual - expected| <= RTOL * magnitude`` element by element.

    ``scale`` is the accumulation of each element (``sum |a_i| |b_i|`` of the terms it sums),
    broadcast to the shape; without it, arrays from :func:`torch_grads` use theirs, and others
    the fallback (see the module's text). Non-finite values must match exactly."""
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().numpy()
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if actual.dtype.kind != "f":
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        return
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=f"{what}: non-finite")
    limit = RTOL[np.dtype(actual.dtype)] * _magnitude(expected, scale)
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf: checked above
        err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bad = finite & ~(err <= limit)  # a NaN in actual where expected is finite is bad too
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(limit, 1e-300), 0)),
                                 bad.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements differ by more than "
            f"RTOL={RTOL[np.dtype(actual.dtype)]} times their magnitude; worst at {worst}: "
            f"actual {actual[worst]!r}, expected {expected[worst]!r}, error {err[worst]:.3g}, "
            f"allowed {limit[worst]:.3g}")


class _Mutations(TorchDispatchMode):
    """Watches the tensors every operation inside reads; ``seen``: whether one of them changed
    (running statistics updated in place: not every such op says so in its schema)."""

    def __init__(self) -> None:
        super().__init__()
        self.read: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        for leaf in tree_leaves((args, kwargs or {})):
            if isinstance(leaf, torch.Tensor) and id(leaf) not in self.read:
                self.read[id(leaf)] = (leaf, leaf.detach().clone())
        return func(*args, **(kwargs or {}))

    @property
    def seen(self) -> bool:
        return not all(torch.equal(t.detach(), before) for t, before in self.read.values())


def _accumulations(fn: Callable[..., torch.Tensor], arrays: Sequence[np.ndarray | None],
                   g: np.ndarray) -> tuple[np.ndarray, list[np.ndarray | None]] | None:
    """``fn`` on the absolute values in float64, with the absolute upstream gradient: for a sum
    of products (convolution, linear, average) each output and gradient element is its
    accumulation ``sum |a_i| |b_i|``; for a selection (max, ReLU) an upper magnitude. None
    where ``fn`` does not run in float64 (weights of its own in float32, ...)."""
    tensors = [None if a is None else torch.tensor(np.abs(a), dtype=torch.float64,
                                                   requires_grad=True) for a in arrays]
    try:
        out = fn(*tensors)
        out.backward(torch.tensor(np.abs(g), dtype=torch.float64))
    except (RuntimeError, TypeError):
        return None
    grads = [None if t is None else (t.grad.numpy() if t.grad is not None else None)
             for t in tensors]
    return out.detach().numpy(), grads


def torch_grads(
    fn: Callable[..., torch.Tensor], arrays: Sequence[np.ndarray | None], grad_out_seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """Run ``fn`` in torch on copies of ``arrays``; return output, the upstream gradient used,
    and the gradient of every input (``None`` stays ``None``)."""
    tensors = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    with _Mutations() as watch:
        out = fn(*tensors)
    rng = np.random.default_rng(grad_out_seed)
    g = rng.standard_normal(tuple(out.shape)).astype(out.detach().numpy().dtype)
    out.backward(torch.tensor(g))
    grads = [None if t is None else (t.grad.numpy() if t.grad is not None else np.zeros_like(a))
             for t, a in zip(tensors, arrays, strict=True)]
    result = out.detach().numpy()
    # the accumulation pass runs fn again: not when fn changes state (running statistics)
    acc = None if watch.seen else _accumulations(fn, arrays, g)
    if acc is not None:
        if len(_ACCUMULATION) > 256:
            _ACCUMULATION.clear()
        for mine, theirs in zip([result, *grads], [acc[0], *acc[1]], strict=True):
            if mine is not None and theirs is not None and theirs.shape == mine.shape:
                _ACCUMULATION[id(mine)] = (mine, theirs)
    return result, g, grads


def random_array(rng: np.random.Generator, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """Normal numbers (no denormals) in the given dtype."""
    return rng.standard_normal(tuple(shape)).astype(dtype)
