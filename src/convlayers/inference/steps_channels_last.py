"""Steps of a plan's channels-last segments (values chosen by :mod:`convlayers.inference.layout`).

A channels-last value's views are ``(N, H, W, C)`` and ``(N, H*W, C)``; the kernels are in
:mod:`convlayers.inference.channels_last`. Weights are packed once: a 1x1 convolution's as
``(C_in, C_out)`` (the GEMM's right operand, rows of output channels), a depthwise one's as
``(kh, kw, C)`` (a row of channels per tap), a stem's as ``(C_in*kh*kw, C_out)``.
"""

from __future__ import annotations

import numba
import numpy as np

from convlayers.inference import channels_last as CL
from convlayers.inference.graph import Graph, Node
from convlayers.inference.steps import Step, Views, _Conv

__all__ = ["DepthwiseLast", "GlobalAvgPoolLast", "PointwiseLast", "StemLast", "ToChannelsFirst",
           "ToChannelsLast"]


def _threads() -> int:
    return int(numba.get_num_threads())


class PointwiseLast(_Conv):
    strategy = ("pointwise channels-last: one GEMM (pixels x C_in) @ (C_in x C_out) on the "
                "register tiles over the batch, epilogue in each unit")

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        self.packed = np.ascontiguousarray(node.attrs["weight"][:, :, 0, 0].T, dtype)
        self._units: dict[tuple[int, int], tuple[int, int]] = {}

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x, out = v[self.inp][1], v[self.out][1]
        pixels = x.shape[0] * x.shape[1]
        key = (pixels, _threads())
        if key not in self._units:
            self._units[key] = CL.pointwise_units(pixels, self.c_out, key[1])
        rows, cols = self._units[key]
        res, has = self._res(v, True)
        CL.pointwise(x.reshape(pixels, self.c_in), self.packed, self.bias,
                     res.reshape(pixels, self.c_out), has, self.act, rows, cols,
                     out.reshape(pixels, self.c_out))


class DepthwiseLast(_Conv):
    strategy = "depthwise channels-last: vectors of channels per tap, epilogue per pixel (numba)"

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        self.packed = np.ascontiguousarray(node.attrs["weight"][:, 0].transpose(1, 2, 0), dtype)
        self._blocks: dict[tuple[int, int], int] = {}

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x, out = v[self.inp][0], v[self.out][0]
        key = (x.shape[0], _threads())
        if key not in self._blocks:
            self._blocks[key] = CL.depthwise_channel_block(self.c_out, key[0] * self.ho, key[1])
        res, has = self._res(v, False)
        CL.depthwise(x, self.packed, self.bias, self.sh, self.sw, self.dh, self.dw, self.pt,
                     self.pl, res, has, self.act, self._blocks[key], out)


class StemLast(_Conv):
    strategy = ("dense conv of few input channels, NCHW in, channels-last out: a splat input "
                "value per tap against rows of output channels (numba)")

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        w = node.attrs["weight"]  # (C_out, C_in, kh, kw) -> (C_in*kh*kw, C_out)
        self.packed = np.ascontiguousarray(w.reshape(w.shape[0], -1).T, dtype)

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        CL.dense_to_channels_last(v[self.inp][0], self.packed, self.kh, self.kw, self.bias,
                                  self.sh, self.sw, self.dh, self.dw, self.pt, self.pl, self.act,
                                  v[self.out][0])


class ToChannelsLast(Step):
    strategy = "NCHW -> NHWC copy (numba)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        CL.to_channels_last(v[self.inp][0], v[self.out][0])


class ToChannelsFirst(Step):
    strategy = "NHWC -> NCHW copy (numba)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        CL.to_channels_first(v[self.inp][0], v[self.out][0])


class GlobalAvgPoolLast(Step):
    strategy = "global average pool of a channels-last map (numba, float64 sums)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        out = v[self.out][0]
        CL.global_avg_pool(v[self.inp][1], out.reshape(out.shape[0], -1))
