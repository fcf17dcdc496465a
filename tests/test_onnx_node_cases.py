"""ONNX's own operator tests, run through ``convlayers.onnx.load``.

The node cases are those ``onnx.backend.test.loader.load_model_tests(kind="node")`` returns:
the installed onnx builds them in memory, one module per operator. Building all 1,900 takes a
minute, so only the modules of the operators convlayers supports are imported (the same
generator, the same cases). Every case whose operators are all supported either passes or is
listed in ``UNSUPPORTED`` below with the reason.

The pooling modules compute their expected outputs with a pure-Python loop (30 s); for their
cases the loop is replaced by a stub while generating, and the expected outputs come from
onnxruntime, an independent implementation, run on the same model and inputs.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from convlayers import onnx as conv_onnx  # noqa: E402
from convlayers.onnx import OnnxUnsupportedError  # noqa: E402

MODULES = (
    "conv", "convtranspose", "maxpool", "averagepool", "globalaveragepool", "globalmaxpool",
    "batch_normalization", "relu", "clip", "leakyrelu", "sigmoid", "hardsigmoid", "hardswish",
    "mul", "add", "sub", "div", "concat", "flatten", "reshape", "transpose", "gemm", "matmul",
    "softmax", "pad", "reducemean", "squeeze", "unsqueeze", "identity", "dropout", "shape",
    "gather", "constant", "resize", "tanh", "slice",
)
POOL_MODULES = ("maxpool", "averagepool")

# case name (regular expression) -> why convlayers does not run it
UNSUPPORTED = {
    r"test_batchnorm_.*_training_mode": "training-mode batch norm (running statistics outputs): "
                                        "convlayers.onnx is for inference",
    r"test_training_dropout.*": "Dropout in training mode: convlayers.onnx is for inference",
    r"test_identity_(sequence|opt)": "sequence and optional types: only tensors are supported",
    r"test_resize_.*cubic.*": "cubic Resize: nearest and linear are supported",
    r"test_resize_.*antialias": "antialiased Resize",
    r"test_resize_.*axes.*|test_resize_.*not_(larger|smaller)": "Resize with axes / aspect-ratio "
                                                                   "policies",
    r"test_resize_tf_crop_and_resize.*": "tf_crop_and_resize coordinates (ROI)",
    r"test_cast.*": "Cast to and from exotic types (float8, int4, bfloat16, ...), and the cases' "
                    "object-dtype inputs: Cast is only used inside shape computations",
}


def _reason(name: str) -> str | None:
    for pattern, why in UNSUPPORTED.items():
        if re.fullmatch(pattern, name):
            return why
    return None


@pytest.fixture(scope="module")
def cases() -> list[Any]:
    """The node cases of the supported operators (built once for this file)."""
    from onnx.backend.test.case import node as node_cases
    from onnx.reference.ops import op_pool_common

    start = len(node_cases._NodeTestCases)
    for name in MODULES:
        if name in POOL_MODULES:
            continue
        importlib.import_module(f"onnx.backend.test.case.node.{name}")
    plain = list(node_cases._NodeTestCases[start:])
    saved = op_pool_common.pool
    op_pool_common.pool = lambda padded, x_shape, kernel, strides, out_shape, *a, **k: np.zeros(
        (*x_shape[:2], *out_shape), padded.dtype)
    try:
        middle = len(node_cases._NodeTestCases)
        for name in POOL_MODULES:
            importlib.import_module(f"onnx.backend.test.case.node.{name}")
        pooled = [(c, True) for c in node_cases._NodeTestCases[middle:]]
    finally:
        op_pool_common.pool = saved
    return [(c, False) for c in plain] + pooled


def _supported(case: Any) -> bool:
    from convlayers.onnx._load import SUPPORTED_OPS

    ops = {n.op_type for n in case.model.graph.node}
    return bool(ops) and ops <= set(SUPPORTED_OPS)


def _expected(case: Any, inputs: list[np.ndarray], outputs: list[np.ndarray],
              from_ort: bool) -> list[np.ndarray]:
    if not from_ort:
        return [np.asarray(o) for o in outputs]
    session = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs, strict=True)))


def test_every_supported_node_case_passes_or_is_listed(cases: list[Any]) -> None:
    ran, unexpected = 0, []
    for case, from_ort in cases:
        if not _supported(case):
            continue
        why = _reason(case.name)
        try:
            model = conv_onnx.load(case.model.SerializeToString())
            for inputs, outputs in case.data_sets:
                got = model(*inputs)
                got = got if isinstance(got, tuple) else (got,)
                for g, e in zip(got, _expected(case, inputs, outputs, from_ort), strict=True):
                    assert (g.shape, g.dtype) == (e.shape, e.dtype), f"{g.shape}, {g.dtype} vs {e.shape}"
                    np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol)
        except (OnnxUnsupportedError, TypeError, AssertionError) as err:
            if why is None:
                unexpected.append(f"{case.name}: {type(err).__name__}: {str(err)[:300]}")
            continue
        ran += 1
        if why is not None:
            unexpected.append(f"{case.name} passes but is listed as unsupported ({why})")
    assert not unexpected, "\n".join(unexpected)
    assert ran > 250, f"only {ran} node cases ran"
    pooled = sum(1 for case, from_ort in cases if from_ort and _supported(case) and not _reason(case.name))
    assert pooled > 30, f"only {pooled} pooling cases"


def test_unsupported_cases_are_refused_with_the_op_node_and_opset(cases: list[Any]) -> None:
    """A listed case fails up front: an OnnxUnsupportedError naming op type, node and opset."""
    refused = 0
    for case, _ in cases:
        if not _supported(case) or _reason(case.name) is None or case.name.startswith("test_cast"):
            continue
        with pytest.raises(OnnxUnsupportedError, match=r"node '.*' \(opset \d+\)|graph input") as info:
            conv_onnx.load(case.model.SerializeToString())
        assert "opset" in str(info.value) or "graph input" in str(info.value)
        refused += 1
    assert refused >= 20
