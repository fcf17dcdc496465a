"""Look inside a model: the outputs of its submodules for one input.

:func:`feature_maps` runs the model once and returns what the named submodules produced.
:func:`record_calls` is the mechanism underneath (also used by :mod:`convlayers.summary`): a
temporary ``forward`` on each chosen *instance*, removed again in a ``finally``, so no class
and no global is ever patched and an exception inside the model leaves it untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from convlayers.autograd import Tensor, no_grad
from convlayers.nn.module import Module

__all__ = ["Call", "feature_maps", "first_array", "record_calls"]


@dataclass
class Call:
    """One call of a recorded module: its dotted name, the module, first input and output."""

    name: str
    module: Module
    input: Any
    output: Any


def first_array(value: Any) -> np.ndarray | None:
    """The array behind ``value``: a Tensor's data, the first item of a tuple, else None.

    >>> first_array((np.zeros(2), np.ones(1))), first_array("text")
    (array([0., 0.]), None)
    """
    if isinstance(value, tuple | list):
        return first_array(value[0]) if value else None
    if isinstance(value, Tensor):
        return value.data
    return value if isinstance(value, np.ndarray) else None


@contextmanager
def record_calls(
    modules: Sequence[tuple[str, Module]], copy_outputs: bool = False
) -> Iterator[list[Call]]:
    """Record every call of the given ``(name, module)`` pairs while the block runs.

    Yields the list that fills up, one :class:`Call` per call, in call order. Each module gets
    an instance attribute ``forward`` that calls the original and appends; it is removed (or
    the previous instance attribute put back) on exit, even when the block raises. With
    ``copy_outputs`` each output array is copied as it is recorded, so a later in-place layer
    (``ReLU(inplace=True)``, used by the blocks at inference) cannot change it.

    >>> from convlayers import nn
    >>> model = nn.Sequential(nn.ReLU(), nn.Flatten())
    >>> with record_calls(list(model.named_modules())[1:]) as calls:
    ...     _ = model(np.zeros((1, 2, 3)))
    >>> [(c.name, c.output.shape) for c in calls], "forward" in vars(model[0])
    ([('0', (1, 2, 3)), ('1', (1, 6))], False)
    """
    calls: list[Call] = []
    saved: list[tuple[Module, Any]] = []

    def wrap(name: str, module: Module, forward: Any) -> Any:
        def recording_forward(*args: Any, **kwargs: Any) -> Any:
            out = forward(*args, **kwargs)
            kept = out
            if copy_outputs and (array := first_array(out)) is not None:
                kept = array.copy()  # a later in-place layer (ReLU) must not change it
            calls.append(Call(name, module, args[0] if args else None, kept))
            return out
        return recording_forward

    try:
        for name, module in modules:
            saved.append((module, module.__dict__.get("forward")))
            object.__setattr__(module, "forward", wrap(name, module, module.forward))
        yield calls
    finally:
        for module, previous in reversed(saved):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                object.__setattr__(module, "forward", previous)


def feature_maps(model: Module, x: Any, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Outputs of the named submodules of ``model`` for the input ``x`` (no gradient recorded).

    Parameters
    ----------
    model : Module
        Runs once, in its current mode (call ``model.eval()`` first for inference features;
        in training mode BatchNorm updates its running statistics as in any training step).
    x : array_like or Tensor
        The input.
    names : list of str, optional
        Dotted names as in ``model.named_modules()`` (``"features.3"``, ``"classifier.1"``;
        ``""`` is the model itself). By default every leaf module (one without children).

    Returns
    -------
    dict of str to ndarray
        In the order of ``names`` (or of ``named_modules``). A module called more than once
        keeps its last output; a module that the forward pass never calls is left out.

    Raises
    ------
    ValueError
        If a name is not one of ``model.named_modules()``; the message lists valid ones.

    Examples
    --------
    >>> from convlayers import nn
    >>> model = nn.SmallCNN(image_size=8, rng=0).eval()
    >>> maps = feature_maps(model, np.zeros((2, 1, 8, 8), np.float32), ["features.0", "features.1"])
    >>> {k: v.shape for k, v in maps.items()}
    {'features.0': (2, 16, 8, 8), 'features.1': (2, 16, 4, 4)}
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a convlayers Module, got {type(model).__name__}")
    named = dict(model.named_modules())
    if names is None:
        wanted = [n for n, m in named.items() if not m._modules]
    else:
        if isinstance(names, str):
            raise TypeError(f"names must be a list of module names, got the string {names!r}")
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in named]
        if unknown:
            valid = [n for n in named if n][:8]
            raise ValueError(f"names {unknown!r} are not submodules of {type(model).__name__}; valid "
                             f"names include {', '.join(map(repr, valid))}"
                             f"{', ...' if len(named) > 9 else ''} (see model.named_modules())")
    outputs: dict[str, np.ndarray] = {}
    with no_grad(), record_calls([(n, named[n]) for n in wanted], copy_outputs=True) as calls:
        model(x)
    for call in calls:
        array = first_array(call.output)
        if array is not None:
            outputs[call.name] = array
    return {n: outputs[n] for n in wanted if n in outputs}
