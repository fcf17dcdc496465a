"""``convlayers.onnx.load``: an ONNX file as a :class:`~convlayers.onnx.graph.GraphModule`."""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers.nn.module import Module
from convlayers.onnx._context import Context, Node, OnnxUnsupportedError, Translator
from convlayers.onnx._ops_nn import NN_OPS
from convlayers.onnx._ops_tensor import TENSOR_OPS
from convlayers.onnx._read import _DTYPES, OnnxSource, read_model, require_onnx, tensor_to_array
from convlayers.onnx.graph import GraphModule, InputSpec, as_array, child_name

__all__ = ["MIN_OPSET", "SUPPORTED_OPS", "load"]

MIN_OPSET = 11
OPS: dict[str, Translator] = {**NN_OPS, **TENSOR_OPS}
SUPPORTED_OPS = tuple(sorted([*OPS, "Constant"]))
_FOLDABLE = set(TENSOR_OPS) | {"Identity", "Clip", "Relu", "Gemm", "MatMul"}


def _opset(model: Any, origin: OnnxSource) -> int:
    onnx = require_onnx()
    newest = onnx.defs.onnx_opset_version()
    versions = {o.domain: int(o.version) for o in model.opset_import}
    opset = versions.get("", versions.get("ai.onnx"))
    if opset is None:
        raise ValueError(f"{origin.name} imports no version of the default ONNX opset")
    if not MIN_OPSET <= opset <= newest:
        raise OnnxUnsupportedError(f"{origin.name} uses opset {opset}; convlayers.onnx reads opsets "
                                   f"{MIN_OPSET} to {newest} (the newest the installed onnx knows)")
    return opset


def _shapes(model: Any) -> dict[str, tuple[int | None, ...] | None]:
    """Static shapes from ONNX shape inference (``None`` for an unknown axis or rank)."""
    onnx = require_onnx()
    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # shapes are a help, not a requirement: run with what the graph declares
        graph = model.graph
    shapes: dict[str, tuple[int | None, ...] | None] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        t = info.type.tensor_type
        shapes[info.name] = (tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
                             if t.HasField("shape") else None)
    return shapes


def _constant(node: Node) -> np.ndarray:
    node.only({"value": None, "value_float": None, "value_floats": None, "value_int": None,
               "value_ints": None})
    if not node.attrs:
        raise node.error("a Constant without a value")
    name, value = next(iter(node.attrs.items()))
    if name == "value":
        return np.asarray(value)
    return np.asarray(value, dtype=np.float32 if "float" in name else np.int64)


def _check_ops(model: Any, opset: int, origin: OnnxSource) -> None:
    """Refuse an unknown op before anything else is done."""
    for i, proto in enumerate(model.graph.node):
        name = proto.name or f"{proto.op_type}_{i}"
        if proto.domain not in ("", "ai.onnx"):
            raise OnnxUnsupportedError(f"{proto.op_type} node {name!r} (opset {opset}) in "
                                       f"{origin.name}: ops of domain {proto.domain!r} are not supported")
        if proto.op_type not in OPS and proto.op_type != "Constant":
            raise OnnxUnsupportedError(
                f"{proto.op_type} node {name!r} (opset {opset}) in {origin.name}: op "
                f"{proto.op_type!r} is not supported; supported ops: {', '.join(SUPPORTED_OPS)}")


def load(source: Any, *, max_bytes: int | None = None) -> GraphModule:
    """Load an ONNX model as a convlayers module in eval mode (no PyTorch involved).

    Parameters
    ----------
    source : str, os.PathLike or bytes
        An ``.onnx`` file (external data must lie in its folder) or a model's bytes.
    max_bytes : int, optional
        Cap on the file and on all its tensors together (default
        ``config.max_array_bytes()``), checked before anything is allocated.

    Returns
    -------
    GraphModule
        Ordinary ``nn`` layers (``Conv2d``, ``BatchNorm2d``, ``Linear``, ...) run in the
        graph's order; call it with one array per graph input.

    Raises
    ------
    OnnxUnsupportedError
        (a ValueError) for an op, attribute or opset that cannot run, naming the op type, the
        node and the opset, before any computation.
    ValueError
        For a file that does not parse, tensors larger than the cap or than the bytes present,
        or external data outside the model's folder.

    Examples
    --------
    >>> from onnx import TensorProto, helper
    >>> node = helper.make_node("Relu", ["x"], ["y"])
    >>> x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in "xy")
    >>> graph = helper.make_graph([node], "g", [x], [y])
    >>> model = load(helper.make_model(graph).SerializeToString())
    >>> model(np.array([[-1.0, 2.0]], np.float32))
    array([[0., 2.]], dtype=float32)
    """
    model, origin = read_model(source, max_bytes)
    opset = _opset(model, origin)
    _check_ops(model, opset, origin)
    graph = model.graph
    constants = {t.name: tensor_to_array(t, origin, f"initializer {t.name!r}") for t in graph.initializer}
    shapes = _shapes(model)
    inputs = []
    for info in graph.input:
        if info.name in constants:
            continue
        t = info.type.tensor_type
        if t.elem_type not in _DTYPES:
            raise OnnxUnsupportedError(f"graph input {info.name!r} of {origin.name} has ONNX data "
                                       f"type {t.elem_type}, which convlayers cannot take")
        inputs.append(InputSpec(info.name, np.dtype(_DTYPES[t.elem_type][0]), shapes.get(info.name)))
    ctx = Context(constants, shapes, opset)
    result = GraphModule(inputs, [o.name for o in graph.output], opset=opset)
    taken: set[str] = set()
    for i, proto in enumerate(graph.node):
        node = Node(proto, i, opset, origin)
        if node.op_type == "Constant":
            constants[node.outputs[0]] = _constant(node)
            continue
        if node.op_type == "Shape" and (static := ctx.static_shape(node.inputs[0])) is not None:
            start, end = node.attr("start", 0), node.attr("end")
            constants[node.outputs[0]] = np.array(static[start:end], dtype=np.int64)
            continue
        layer, reads = OPS[node.op_type](node, ctx)
        if node.op_type in _FOLDABLE and all(not r or r in constants for r in reads):
            _fold(node, layer, reads, constants)
            continue
        result.add_step(child_name(node.name, node.op_type, i, taken), layer, reads, node.outputs)
    used = {n for step in result.steps for n in step.inputs} | set(result.graph_outputs)
    result.constants = {k: v for k, v in constants.items() if k in used}
    result.eval()
    return result


def _fold(node: Node, layer: Module, reads: tuple[str, ...], constants: dict[str, np.ndarray]) -> None:
    """Run a node whose inputs are all known now (a shape computation) and keep its output."""
    try:
        out = layer(*(constants.get(r) if r else None for r in reads))
    except (ValueError, TypeError, IndexError) as err:
        raise node.error(f"cannot compute it from its constant inputs: {err}") from None
    outs = out if isinstance(out, tuple) else (out,)
    for name, value in zip(node.outputs, outs, strict=False):
        constants[name] = np.asarray(as_array(value))
