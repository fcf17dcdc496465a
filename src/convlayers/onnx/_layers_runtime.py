"""Modules for ONNX graphs whose weights, statistics or pads are computed at run time (graph
inputs rather than initializers), and for the extra outputs of MaxPool and Dropout."""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers import functional as F
from convlayers.nn.module import Module
from convlayers.onnx._layers import Crop, OnnxPool, same_pads
from convlayers.onnx.graph import as_array

__all__ = ["BatchNormFn", "ConvFn", "ConvTransposeFn", "DropoutMask", "MaxPoolIndices", "PadFn"]


class ConvFn(Module):
    """A convolution whose weight is computed at run time (a graph input, not an initializer)."""

    def __init__(self, stride: tuple[int, ...], dilation: tuple[int, ...], groups: int,
                 pads: tuple[tuple[int, int], ...] | None, auto_pad: str) -> None:
        super().__init__()
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.pads, self.auto_pad = pads, auto_pad

    def forward(self, x: Any, w: Any, b: Any = None) -> Any:
        x, w = as_array(x), as_array(w)
        kernel = w.shape[2:]
        pads = self.pads
        if pads is None:
            pads = tuple(same_pads(i, k, s, d, self.auto_pad == "SAME_UPPER") for i, k, s, d in
                         zip(x.shape[2:], kernel, self.stride, self.dilation, strict=True))
        fn = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1]
        return fn(x, w, as_array(b), self.stride, pads, self.dilation, self.groups)


class ConvTransposeFn(Module):
    """A transposed convolution whose weight is computed at run time."""

    def __init__(self, stride: tuple[int, ...], dilation: tuple[int, ...], groups: int,
                 pads: tuple[tuple[int, int], ...], output_padding: tuple[int, ...]) -> None:
        super().__init__()
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.pads, self.output_padding = pads, output_padding

    def forward(self, x: Any, w: Any, b: Any = None) -> Any:
        x, w = as_array(x), as_array(w)
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[w.ndim - 3]
        y = fn(x, w, as_array(b), self.stride, 0, self.output_padding, self.groups, self.dilation)
        return Crop(self.pads)(y) if any(a or c for a, c in self.pads) else y


class BatchNormFn(Module):
    """Inference batch norm whose statistics or affine parameters are graph inputs."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Any, scale: Any, bias: Any, mean: Any, var: Any) -> Any:
        return F.batch_norm(as_array(x), as_array(mean), as_array(var), as_array(scale), as_array(bias),
                            False, 0.0, self.eps)


class PadFn(Module):
    """ONNX ``Pad`` with pads (and maybe the value and axes) given at run time."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode  # numpy's: constant, reflect, edge, wrap

    def forward(self, x: Any, pads: Any, value: Any = None, axes: Any = None) -> Any:
        x = np.asarray(as_array(x))
        p = [int(v) for v in np.asarray(as_array(pads)).ravel()]
        ax = (list(range(x.ndim)) if axes is None
              else [int(a) % x.ndim for a in np.asarray(as_array(axes)).ravel()])
        pairs = [(0, 0)] * x.ndim
        for i, a in enumerate(ax):
            pairs[a] = (p[i], p[i + len(ax)])
        crop = tuple(slice(max(-a, 0), x.shape[i] - max(-c, 0)) for i, (a, c) in enumerate(pairs))
        x = x[crop]
        pairs = [(max(a, 0), max(c, 0)) for a, c in pairs]
        from convlayers import limits

        limits.check_elements([s + a + c for s, (a, c) in zip(x.shape, pairs, strict=True)], x.dtype,
                              "Pad output")
        if self.mode == "constant":
            given = None if value is None else np.asarray(as_array(value)).ravel()
            fill = 0 if given is None or given.size == 0 else given[0]
            return np.pad(x, pairs, mode="constant", constant_values=fill)
        return np.pad(x, pairs, mode=self.mode)  # type: ignore[call-overload]


class MaxPoolIndices(Module):
    """MaxPool with its ``Indices`` output: flat over the whole tensor, row-major
    (``storage_order=0``) or column-major within each plane (``storage_order=1``)."""

    def __init__(self, pool: OnnxPool, storage_order: int) -> None:
        super().__init__()
        self.pool, self.storage_order = pool, storage_order

    def forward(self, x: Any) -> Any:
        x = np.asarray(as_array(x))
        p = self.pool
        pads: Any = p.pads if p.pads and any(a or c for a, c in p.pads) else 0
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(p.kernel) - 1]
        y, idx = fn(x, p.kernel, p.stride, pads, p.dilation, p.ceil_mode, True)
        spatial = x.shape[2:]
        if self.storage_order == 1:
            coords = np.unravel_index(idx, spatial)
            idx = np.ravel_multi_index(coords, spatial, order="F")
        plane = int(np.prod(spatial))
        offset = (np.arange(x.shape[0] * x.shape[1], dtype=np.int64) * plane).reshape(
            x.shape[:2] + (1,) * len(spatial))
        return np.asarray(as_array(y)), idx + offset


class DropoutMask(Module):
    """Dropout at inference with its mask output: the input, and a mask of ones."""

    def forward(self, x: Any, *rest: Any) -> Any:
        x = np.asarray(as_array(x))
        return x, np.ones(x.shape, dtype=bool)
