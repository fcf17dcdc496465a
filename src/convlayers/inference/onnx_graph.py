"""Lowering of a loaded ONNX model (:class:`convlayers.onnx.graph.GraphModule`) for compile.

An ONNX graph becomes ordinary layers run in node order; the ones ``compile`` knows (convs,
batch norms, activations, pools, Flatten, Linear, ...) lower by their usual rules, and an
``Add`` of two values of the same shape becomes the residual add that fuses into the conv that
produces one of them. Any other node (a Reshape, a broadcasting Mul, a Concat, several graph
inputs or outputs) raises a ``TypeError`` naming the node, so a model either compiles whole or
runs eagerly as loaded.
"""

from __future__ import annotations

from typing import Any

__all__ = ["lower_onnx_graph"]


def lower_onnx_graph(g: Any, m: Any, x: int, path: str) -> int:
    """Append the nodes of the loaded ONNX graph ``m`` applied to value ``x``."""
    from convlayers.inference.graph import lower_module
    from convlayers.onnx._layers import Elementwise

    if len(m.graph_inputs) != 1 or len(m.graph_outputs) != 1:
        raise TypeError("compile: only ONNX graphs with one input and one output compile, got "
                        f"{len(m.graph_inputs)} and {len(m.graph_outputs)}")
    values = {m.graph_inputs[0].name: x}
    dot = f"{path}." if path else ""
    for step in m.steps:
        module = m._modules[step.name]
        name = dot + step.name
        known = [n for n in step.inputs if n in values]
        if len(step.outputs) != 1 or len(known) != len(step.inputs):
            raise TypeError(f"compile: ONNX node {step.name!r} ({type(module).__name__}) reads "
                            "constants or writes several values; it has no inference lowering")
        if isinstance(module, Elementwise):
            a, b = (values[n] for n in step.inputs)
            if module.op != "Add" or g.shapes[a] != g.shapes[b]:
                raise TypeError(f"compile: ONNX node {step.name!r} ({module.op} of shapes "
                                f"{g.shapes[a]} and {g.shapes[b]}) has no inference lowering; "
                                "only the residual Add of equal shapes compiles")
            out = g.emit("add", [a, b], g.shapes[a], name, act=None)
        elif len(step.inputs) == 1:
            out = lower_module(g, module, values[step.inputs[0]], name)
        else:
            raise TypeError(f"compile: ONNX node {step.name!r} ({type(module).__name__}) takes "
                            f"{len(step.inputs)} inputs; it has no inference lowering")
        values[step.outputs[0]] = out
    return values[m.graph_outputs[0]]
