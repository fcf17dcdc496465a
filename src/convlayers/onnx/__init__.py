"""ONNX models in and out, without PyTorch: :func:`load` and :func:`save`.

:func:`load` reads an ``.onnx`` file into a :class:`GraphModule` whose layers are ordinary
``convlayers.nn`` layers (``Conv2d``, ``BatchNorm2d``, ``Linear``, ...), so ``summary``,
``feature_maps`` and the explorer work on it. :func:`save` writes a convlayers model as ONNX
for other runtimes (onnxruntime, TensorRT, ...). Both need the ``onnx`` package
(``pip install convlayers[onnx]``), imported only when they are called.

Reading is safe with untrusted files: sizes are checked against a cap before anything is
allocated, external data must lie in the model's own folder, and an op or attribute that
cannot run is refused up front with an :class:`OnnxUnsupportedError` naming the op type, the
node and the opset.

>>> import numpy as np
>>> from convlayers import nn, onnx
>>> model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, rng=0), nn.ReLU()).eval()
>>> data = onnx.save(model, None, np.zeros((1, 1, 5, 5), np.float32))
>>> x = np.random.default_rng(0).standard_normal((1, 1, 5, 5)).astype(np.float32)
>>> bool(np.allclose(onnx.load(data)(x), model(x).data, atol=1e-6))
True
"""

from __future__ import annotations

from convlayers.onnx._context import OnnxUnsupportedError
from convlayers.onnx._load import SUPPORTED_OPS, load
from convlayers.onnx._save import save
from convlayers.onnx.graph import GraphModule

__all__ = ["SUPPORTED_OPS", "GraphModule", "OnnxUnsupportedError", "load", "save"]
