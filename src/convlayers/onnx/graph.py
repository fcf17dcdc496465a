"""The module an ONNX graph becomes: ordinary convlayers layers run in the graph's node order.

Each ONNX node (after shape-computing subgraphs have been folded to constants) is one child
module, registered under a name made from the node's name, so ``summary``, ``feature_maps``
and ``state_dict`` see ``nn.Conv2d``, ``nn.BatchNorm2d``, ... as in any other model. The
forward pass keeps a table from ONNX value names to arrays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from convlayers.autograd import Tensor, no_grad
from convlayers.nn.module import Module

__all__ = ["GraphModule", "Step", "as_array"]


def as_array(value: Any) -> Any:
    """The NumPy array under a Tensor (anything else unchanged)."""
    return value.data if isinstance(value, Tensor) else value


@dataclass(frozen=True)
class Step:
    """One node to run: the child's name, the value names it reads and those it writes."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class InputSpec:
    """A graph input: its name, NumPy dtype and declared shape (``None`` for a free axis)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None


def child_name(node_name: str, op_type: str, index: int, taken: set[str]) -> str:
    """A valid, unique attribute name for a node's module, e.g. ``features_0_Conv``."""
    base = re.sub(r"\W+", "_", node_name).strip("_") or f"{op_type}_{index}"
    if base[0].isdigit():
        base = f"{op_type}_{base}"
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


class GraphModule(Module):
    """An ONNX graph as a convlayers module (built by :func:`convlayers.onnx.load`).

    Calling it with one array per graph input (positionally, in the graph's order) returns
    the graph's output, or a tuple when it has several. It runs without recording gradients.

    Examples
    --------
    >>> from convlayers import nn
    >>> g = GraphModule([InputSpec("x", np.dtype(np.float32), (None, 2))], ["y"])
    >>> g.add_step("relu", nn.ReLU(), ("x",), ("y",))
    >>> g(np.array([[-1.0, 2.0]], np.float32))
    array([[0., 2.]], dtype=float32)
    """

    def __init__(self, inputs: list[InputSpec], outputs: list[str],
                 constants: dict[str, np.ndarray] | None = None, opset: int = 0) -> None:
        super().__init__()
        self.graph_inputs, self.graph_outputs = list(inputs), list(outputs)
        self.steps: list[Step] = []
        self.constants: dict[str, np.ndarray] = dict(constants or {})
        self.opset = opset

    def add_step(self, name: str, module: Module, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        """Append a child module that reads ``inputs`` and writes ``outputs`` (value names)."""
        setattr(self, name, module)
        self.steps.append(Step(name, tuple(inputs), tuple(outputs)))

    def _check_inputs(self, args: tuple[Any, ...]) -> list[Any]:
        if len(args) != len(self.graph_inputs):
            names = ", ".join(i.name for i in self.graph_inputs)
            raise ValueError(f"this ONNX model takes {len(self.graph_inputs)} input(s) ({names}), "
                             f"got {len(args)}")
        arrays = []
        for spec, value in zip(self.graph_inputs, args, strict=True):
            x = np.asarray(as_array(value))
            if x.dtype != spec.dtype:
                raise TypeError(f"input {spec.name!r} must be a {spec.dtype} array, got {x.dtype}")
            if spec.shape is not None and (x.ndim != len(spec.shape) or any(
                    want is not None and want != got for want, got in zip(spec.shape, x.shape, strict=True))):
                shown = tuple("?" if d is None else d for d in spec.shape)
                raise ValueError(f"input {spec.name!r} must have shape {shown} (? for any size), "
                                 f"got {x.shape}")
            arrays.append(x)
        return arrays

    def forward(self, *args: Any) -> Any:
        values: dict[str, Any] = dict(self.constants)
        values.update((s.name, a) for s, a in zip(self.graph_inputs, self._check_inputs(args), strict=True))
        values[""] = None  # an omitted optional input
        with no_grad():
            for step in self.steps:
                out = self._modules[step.name](*(values[n] for n in step.inputs))
                if len(step.outputs) == 1:
                    values[step.outputs[0]] = out
                else:
                    values.update(zip(step.outputs, out, strict=False))
        results = tuple(np.asarray(as_array(values[n])) for n in self.graph_outputs)
        return results[0] if len(results) == 1 else results

    def extra_repr(self) -> str:
        names = ", ".join(i.name for i in self.graph_inputs)
        return f"inputs=({names}), outputs=({', '.join(self.graph_outputs)}), opset={self.opset}"
