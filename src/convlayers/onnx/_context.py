"""What an op translator sees: the node (attributes parsed), the constants known at load time
and the static shapes from ONNX's shape inference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from convlayers.nn.module import Module
from convlayers.onnx._read import OnnxSource, tensor_to_array

__all__ = ["Context", "Node", "OnnxUnsupportedError", "Translation", "Translator"]


class OnnxUnsupportedError(ValueError):
    """An ONNX op, attribute or input that ``convlayers.onnx`` cannot run; the message names
    the op type, the node and the opset."""


class Node:
    """An ONNX NodeProto with its attributes as Python values (tensors as NumPy arrays)."""

    def __init__(self, proto: Any, index: int, opset: int, origin: OnnxSource) -> None:
        from onnx import helper

        self.op_type, self.domain = proto.op_type, proto.domain
        self.name = proto.name or f"{proto.op_type}_{index}"
        self.inputs = tuple(proto.input)
        self.outputs = tuple(proto.output)
        self.opset = opset
        self.attrs: dict[str, Any] = {}
        for attr in proto.attribute:
            if attr.type == 4:  # TENSOR
                self.attrs[attr.name] = tensor_to_array(attr.t, origin, f"attribute {attr.name!r} of {self}")
            elif attr.type in (5, 10, 11, 12, 13):  # graphs, sparse tensors, type protos
                self.attrs[attr.name] = attr
            else:
                value = helper.get_attribute_value(attr)
                self.attrs[attr.name] = value.decode() if isinstance(value, bytes) else value

    def __str__(self) -> str:
        return f"{self.op_type} node {self.name!r}"

    def error(self, message: str) -> OnnxUnsupportedError:
        """An error naming this node's op type, name and opset."""
        return OnnxUnsupportedError(f"{self} (opset {self.opset}): {message}")

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def only(self, allowed: dict[str, Any]) -> None:
        """Refuse attributes other than ``allowed`` (name -> the values convlayers supports, or
        ``None`` for any)."""
        for name, value in self.attrs.items():
            if name not in allowed:
                raise self.error(f"attribute {name!r} is not supported")
            ok = allowed[name]
            if ok is not None and value not in ok:
                raise self.error(f"attribute {name}={value!r} is not supported (supported: {ok})")


class Context:
    """Load-time knowledge: constants (initializers, folded values) and static shapes."""

    def __init__(self, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int | None, ...] | None],
                 opset: int) -> None:
        self.constants, self.shapes, self.opset = constants, shapes, opset

    def const(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is known at load time (an initializer or folded)."""
        return self.constants.get(name) if name else None

    def need_const(self, node: Node, index: int, what: str) -> np.ndarray:
        """Input ``index`` of ``node`` as a load-time constant, or an error naming it."""
        name = node.inputs[index] if index < len(node.inputs) else ""
        value = self.const(name)
        if value is None:
            raise node.error(f"its {what} (input {index}, {name!r}) must be a constant "
                             f"(an initializer or computed from shapes), not a value computed at run time")
        return value

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of ``name`` when shape inference knows every axis, else ``None``."""
        shape = self.shapes.get(name)
        if shape is None or any(d is None for d in shape):
            return None
        return tuple(int(d) for d in shape)  # type: ignore[arg-type]


Translation = tuple[Module, tuple[str, ...]]  # the module and the value names it reads
Translator = Callable[[Node, Context], Translation]
