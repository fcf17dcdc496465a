"""Executable steps of a plan: each reads and writes views of the arena, allocating nothing.

A step is built once per node from the fused graph, with the weights pre-packed in the order
its product reads them:

* ``depthwise``: taps ``(C, kh, kw)``; a numba direct kernel with the epilogue inside;
* ``pointwise``: ``W (C_out, C_in)``, one GEMM ``W @ X[n]`` per image on the NCHW planes
  (no copy; stride > 1 subsamples into scratch first), then the fused epilogue;
* ``im2col``: ``W (groups, C_out/g, C_in/g*kh*kw)``; each image is unfolded into scratch
  ``(C_in*kh*kw, Ho*Wo)`` and multiplied per group, then the fused epilogue.

The GEMMs are NumPy's BLAS ``sgemm`` writing into the arena (``np.matmul(..., out=)``);
bias, residual and activation then run row by row in a numba kernel while the row is in cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers.inference import kernels as K
from convlayers.inference.graph import Graph, Node

__all__ = ["Step", "make_step"]

Views = list[Any]  # per value id: (view with batch axis, 3-D view (N, C, L))


class Step:
    """One node of the fused graph, ready to run on the views of an arena."""

    strategy = ""

    def __init__(self, node: Node, g: Graph) -> None:
        self.node, self.inp, self.out = node, node.inputs[0], node.output
        self.out_shape = g.shapes[node.output]
        self.act = K.ACT[node.attrs.get("act")]
        self.scratch = 0  # elements per call (not per image) of scratch space it needs

    def scratch_elements(self, n: int) -> int:
        return 0

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        raise NotImplementedError


class _Conv(Step):
    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g)
        a = node.attrs
        self.c_in, self.h, self.w = g.shapes[self.inp]
        self.c_out, self.ho, self.wo = self.out_shape
        self.sh, self.sw = a["stride"]
        self.dh, self.dw = a["dilation"]
        self.pt, _, self.pl, _ = a["pads"]
        self.groups = a["groups"]
        bias = a["bias"] if a["bias"] is not None else np.zeros(self.c_out)
        self.bias = np.ascontiguousarray(bias, dtype)
        self.residual = a["residual"]
        self.kh, self.kw = a["weight"].shape[2:]
        self.dummy = np.zeros((1, 1, 1, 1), dtype)

    def _res(self, v: Views, flat: bool) -> tuple[np.ndarray, bool]:
        if self.residual is None:
            return (self.dummy.reshape(1, 1, 1) if flat else self.dummy), False
        return v[self.residual][1 if flat else 0], True


class Depthwise(_Conv):
    strategy = "depthwise direct (numba, epilogue in-row)"

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        self.taps = np.ascontiguousarray(node.attrs["weight"][:, 0], dtype)

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        res, has = self._res(v, False)
        K.depthwise(v[self.inp][0], self.taps, self.bias, self.sh, self.sw, self.dh, self.dw,
                    self.pt, self.pl, res, has, self.act, v[self.out][0])


class Pointwise(_Conv):
    strategy = "pointwise GEMM (BLAS sgemm on NCHW planes) + numba epilogue"

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        self.matrix = np.ascontiguousarray(node.attrs["weight"][:, :, 0, 0], dtype)
        self.strided = (self.sh, self.sw) != (1, 1)
        if self.strided:
            self.strategy = "subsample to scratch, then " + self.strategy

    def scratch_elements(self, n: int) -> int:
        return n * self.c_in * self.ho * self.wo if self.strided else 0

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x = v[self.inp][0]
        n = x.shape[0]
        if self.strided:
            assert scratch is not None
            sub = scratch[:n * self.c_in * self.ho * self.wo].reshape(n, self.c_in, self.ho, self.wo)
            np.copyto(sub, x[:, :, :self.sh * self.ho:self.sh, :self.sw * self.wo:self.sw])
            x = sub
        out = v[self.out][1]
        np.matmul(self.matrix, x.reshape(n, self.c_in, -1), out=out)
        res, has = self._res(v, True)
        K.epilogue(out, self.bias, res, has, self.act)


class Im2col(_Conv):
    strategy = "im2col to scratch + GEMM (BLAS sgemm) + numba epilogue"

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g, dtype)
        w = node.attrs["weight"]
        self.rows = w.shape[1] * self.kh * self.kw  # per group
        self.packed = np.ascontiguousarray(w.reshape(self.groups, self.c_out // self.groups,
                                                     self.rows), dtype)

    def scratch_elements(self, n: int) -> int:
        return self.c_in * self.kh * self.kw * self.ho * self.wo

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        assert scratch is not None
        x, out = v[self.inp][0], v[self.out][1]
        length = self.ho * self.wo
        cols = scratch[:self.c_in * self.kh * self.kw * length].reshape(-1, length)
        per = self.c_out // self.groups
        for i in range(x.shape[0]):
            K.im2col(x[i], self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.pt, self.pl,
                     self.ho, self.wo, cols)
            if self.groups == 1:
                np.matmul(self.packed[0], cols, out=out[i])
            else:
                for gi in range(self.groups):
                    np.matmul(self.packed[gi], cols[gi * self.rows:(gi + 1) * self.rows],
                              out=out[i, gi * per:(gi + 1) * per])
        res, has = self._res(v, True)
        K.epilogue(out, self.bias, res, has, self.act)


class Linear(Step):
    strategy = "GEMM (BLAS sgemm) + numba epilogue"

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g)
        self.matrix_t = np.ascontiguousarray(node.attrs["weight"].T, dtype)
        b = node.attrs["bias"]
        self.bias = np.ascontiguousarray(np.zeros(self.out_shape[0]) if b is None else b, dtype)
        self.dummy = np.zeros((1, 1, 1), dtype)

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        out = v[self.out][0]
        np.matmul(v[self.inp][0], self.matrix_t, out=out)
        K.epilogue(v[self.out][1], self.bias, self.dummy, False, self.act)


class MaxPool(Step):
    strategy = "max pool direct (numba)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        a = self.node.attrs
        (kh, kw), (sh, sw), (dh, dw), (pt, pl) = a["kernel"], a["stride"], a["dilation"], a["pads"]
        K.max_pool(v[self.inp][0], kh, kw, sh, sw, dh, dw, pt, pl, v[self.out][0])


class GlobalAvgPool(Step):
    strategy = "global average pool (numba, float64 sums)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        x = v[self.inp][1]
        K.global_avg_pool(x.reshape(-1, x.shape[2]), v[self.out][1].reshape(-1))


class Affine(Step):
    strategy = "BatchNorm as per-channel affine (numba)"

    def __init__(self, node: Node, g: Graph, dtype: np.dtype) -> None:
        super().__init__(node, g)
        self.scale = np.ascontiguousarray(node.attrs["scale"], dtype)
        self.shift = np.ascontiguousarray(node.attrs["shift"], dtype)

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        K.affine(v[self.inp][1], self.scale, self.shift, self.act, v[self.out][1])


class Activation(Step):
    strategy = "activation (numba)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        K.activation(v[self.inp][1], self.act, v[self.out][1])


class Add(Step):
    strategy = "add (numba)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        K.add(v[self.node.inputs[0]][1], v[self.node.inputs[1]][1], self.act, v[self.out][1])


class Pad(Step):
    strategy = "zero pad copy"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        top, _, left, _ = self.node.attrs["pads"]
        x, out = v[self.inp][0], v[self.out][0]
        out[...] = 0
        out[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x


class Flatten(Step):
    strategy = "view (no copy)"

    def run(self, v: Views, scratch: np.ndarray | None) -> None:
        pass  # its output is a view of its input (see Plan)


def make_step(node: Node, g: Graph) -> Step:
    """The step that runs ``node`` (weights packed for it, in ``g.dtype``)."""
    dtype = g.dtype
    if node.op == "conv":
        w, groups = node.attrs["weight"], node.attrs["groups"]
        c_in = g.shapes[node.inputs[0]][0]
        if groups == c_in and w.shape[0] == c_in and w.shape[1] == 1:
            return Depthwise(node, g, dtype)
        if w.shape[2:] == (1, 1) and groups == 1 and not any(node.attrs["pads"]):
            return Pointwise(node, g, dtype)
        return Im2col(node, g, dtype)
    simple: dict[str, type[Step]] = {"maxpool": MaxPool, "gap": GlobalAvgPool, "act": Activation,
                                     "add": Add, "pad": Pad, "flatten": Flatten}
    if node.op in simple:
        return simple[node.op](node, g)
    if node.op == "linear":
        return Linear(node, g, dtype)
    return Affine(node, g, dtype)
