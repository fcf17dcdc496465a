"""Hostile and broken ONNX files: each gives its documented error, quickly, before allocating."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from convlayers import config  # noqa: E402
from convlayers import onnx as conv_onnx  # noqa: E402
from convlayers.onnx import OnnxUnsupportedError  # noqa: E402


def _model(nodes: list, initializers: list, opset: int = 17, shape: list | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape or [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [y], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _add_model(weight: TensorProto) -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [weight])


def _external(location: str, length: int = 8) -> TensorProto:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 2])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        t.external_data.add(key=key, value=value)
    return t


def _quick(call, error: type, match: str) -> None:
    start = time.perf_counter()
    with pytest.raises(error, match=match):
        call()
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location: str) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "outside.bin").write_bytes(np.ones(2, np.float32).tobytes())
    path = folder / "m.onnx"
    path.write_bytes(_add_model(_external(location)).SerializeToString())
    _quick(lambda: conv_onnx.load(path), ValueError, "outside the model's folder")


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.ones(2, np.float32).tobytes())
    os.symlink(tmp_path / "secret.bin", folder / "weights.bin")
    path = folder / "m.onnx"
    path.write_bytes(_add_model(_external("weights.bin")).SerializeToString())
    _quick(lambda: conv_onnx.load(path), ValueError, "resolves outside the model's folder")


def test_external_data_inside_the_folder_loads_and_short_files_are_refused(tmp_path) -> None:
    (tmp_path / "w.bin").write_bytes(np.array([1.5, -2.0], np.float32).tobytes())
    path = tmp_path / "m.onnx"
    path.write_bytes(_add_model(_external("w.bin")).SerializeToString())
    out = conv_onnx.load(path)(np.zeros((1, 2), np.float32))
    np.testing.assert_array_equal(out, [[1.5, -2.0]])
    (tmp_path / "w.bin").write_bytes(b"\0" * 4)
    _quick(lambda: conv_onnx.load(path), ValueError, r"needs 8 bytes .* but the file has 4")
    _quick(lambda: conv_onnx.load(path.read_bytes()), ValueError, "load the model from its path")


def test_a_declared_trillion_element_initializer_is_refused_before_allocating() -> None:
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10**12])
    data = _add_model(huge).SerializeToString()
    _quick(lambda: conv_onnx.load(data), ValueError, r"initializer 'w'.*4,000,000,000,000 bytes")


def test_declared_sizes_must_match_the_bytes_present() -> None:
    short = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 2], raw_data=b"\0" * 4)
    _quick(lambda: conv_onnx.load(_add_model(short).SerializeToString()), ValueError,
           r"declares shape \(1, 2\) \(8 bytes\) but holds 4 bytes")
    typed = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 2], float_data=[1.0])
    _quick(lambda: conv_onnx.load(_add_model(typed).SerializeToString()), ValueError, "holds 1")


def test_the_total_declared_memory_is_capped() -> None:
    weights = [numpy_helper.from_array(np.zeros(1000, np.float32), f"w{i}") for i in range(3)]
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="id")]
    data = _model(nodes, weights).SerializeToString()
    _quick(lambda: conv_onnx.load(data, max_bytes=10_000), ValueError, "the limit given")
    with config.settings(max_array_bytes=10_000):
        _quick(lambda: conv_onnx.load(data), ValueError, "config.max_array_bytes")
    conv_onnx.load(data, max_bytes=20_000)  # each 4,000, together 12,000: fits


def test_truncated_and_garbage_files_name_the_file(tmp_path) -> None:
    weight = numpy_helper.from_array(np.ones((1, 2), np.float32), "w")
    data = _add_model(weight).SerializeToString()
    path = tmp_path / "cut.onnx"
    for cut in (len(data) // 2, len(data) - 3, 7):
        path.write_bytes(data[:cut])
        _quick(lambda: conv_onnx.load(path), ValueError, "cut.onnx")
    path.write_bytes(b"\xff" * 64)
    _quick(lambda: conv_onnx.load(path), ValueError, r"cut.onnx.* not a valid ONNX model")
    _quick(lambda: conv_onnx.load(tmp_path / "missing.onnx"), ValueError, "does not exist")


def test_an_unsupported_op_is_named_before_any_computation() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="first"),
             helper.make_node("Einsum", ["r"], ["y"], name="mixer", equation="ij->ji")]
    data = _model(nodes, []).SerializeToString()
    _quick(lambda: conv_onnx.load(data), OnnxUnsupportedError, r"Einsum node 'mixer' \(opset 17\)")
    attr = [helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2], storage_order=3)]
    _quick(lambda: conv_onnx.load(_model(attr, [], shape=[1, 1, 4]).SerializeToString()),
           OnnxUnsupportedError, r"MaxPool node 'p' \(opset 17\): attribute storage_order=3")
    old = _model([helper.make_node("Relu", ["x"], ["y"])], [], opset=9).SerializeToString()
    _quick(lambda: conv_onnx.load(old), OnnxUnsupportedError, "opset 9; convlayers.onnx reads opsets 11")


def test_inputs_are_checked_against_the_graph() -> None:
    model = conv_onnx.load(_model([helper.make_node("Relu", ["x"], ["y"])], []).SerializeToString())
    with pytest.raises(ValueError, match=r"input 'x' must have shape \(1, 2\)"):
        model(np.zeros((2, 2), np.float32))
    with pytest.raises(TypeError, match="input 'x' must be a float32 array"):
        model(np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"takes 1 input\(s\) \(x\), got 2"):
        model(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32))


def test_without_onnx_the_error_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install convlayers\[onnx\]"):
        conv_onnx.load(b"")


def test_a_resize_to_a_huge_size_is_refused_before_allocating() -> None:
    scales = numpy_helper.from_array(np.array([1, 1, 1e6, 1e6], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="nearest")
    model = conv_onnx.load(_model([node], [scales], shape=[1, 1, 2, 2]).SerializeToString())
    _quick(lambda: model(np.zeros((1, 1, 2, 2), np.float32)), ValueError,
           r"Resize output of shape \(1, 1, 2000000, 2000000\) would need")
