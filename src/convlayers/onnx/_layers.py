"""Small modules for the ONNX ops that have no layer of their own in ``convlayers.nn``.

They compute on NumPy arrays (a Tensor argument is unwrapped); the convolutions, norms, pools
and activations of a loaded model are the ordinary ``convlayers.nn`` layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from convlayers import functional as F
from convlayers import shapes
from convlayers.nn.module import Module
from convlayers.onnx._resize import resize
from convlayers.onnx.graph import as_array

__all__ = [
    "AutoPad",
    "Cast",
    "Clamp",
    "Concat",
    "ConstantOfShape",
    "Crop",
    "Elementwise",
    "Gather",
    "Gemm",
    "GlobalPool",
    "HardSigmoid",
    "Neg",
    "OnnxPool",
    "Pad",
    "ReduceMean",
    "Reshape",
    "Resize",
    "Shape",
    "Softmax2d",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
]


def _trunc_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and np.asarray(b).dtype.kind in "iu":
        q = np.abs(a) // np.abs(b)
        return (np.sign(a) * np.sign(b) * q).astype(np.result_type(a, b))
    return np.divide(a, b)


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _trunc_divide,
}


class Elementwise(Module):
    """``Add``, ``Sub``, ``Mul`` or ``Div`` with NumPy broadcasting (ONNX's multidirectional)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, a: Any, b: Any) -> Any:
        a, b = as_array(a), as_array(b)
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype != b.dtype:
            b = b.astype(a.dtype) if b.ndim == 0 or b.size == 1 else b
        return _BINARY[self.op](a, b)

    def extra_repr(self) -> str:
        return self.op


def _axis_list(axes: Any, ndim: int) -> tuple[int, ...]:
    return tuple(sorted(int(a) % ndim for a in np.asarray(axes).ravel()))


class Neg(Module):
    def forward(self, x: Any) -> Any:
        return np.negative(as_array(x))


class ConstantOfShape(Module):
    """A tensor of the given shape filled with ``value`` (a one-element array: its dtype too)."""

    def __init__(self, value: np.ndarray) -> None:
        super().__init__()
        self.value = value.reshape(-1)[:1]

    def forward(self, shape: Any) -> Any:
        dims = tuple(int(d) for d in np.asarray(as_array(shape)).ravel())
        from convlayers import limits

        limits.check_elements(dims, self.value.dtype, "ConstantOfShape output")
        return np.full(dims, self.value[0], dtype=self.value.dtype)


class Concat(Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: Any) -> Any:
        return np.concatenate([np.asarray(as_array(x)) for x in xs], axis=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class Reshape(Module):
    """ONNX ``Reshape``: 0 copies the input's extent (unless ``allowzero``), -1 is inferred."""

    def __init__(self, allowzero: bool = False) -> None:
        super().__init__()
        self.allowzero = allowzero

    def forward(self, x: Any, shape: Any) -> Any:
        x = np.asarray(as_array(x))
        target = [int(s) for s in np.asarray(as_array(shape)).ravel()]
        if not self.allowzero:
            target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
        return x.reshape(target)


class Transpose(Module):
    def __init__(self, perm: tuple[int, ...] | None) -> None:
        super().__init__()
        self.perm = perm

    def forward(self, x: Any) -> Any:
        return np.transpose(as_array(x), self.perm)

    def extra_repr(self) -> str:
        return f"perm={self.perm}"


class Squeeze(Module):
    def forward(self, x: Any, axes: Any = None) -> Any:
        x = np.asarray(as_array(x))
        if axes is None:
            return np.squeeze(x)
        return np.squeeze(x, axis=_axis_list(as_array(axes), x.ndim))


class Unsqueeze(Module):
    def forward(self, x: Any, axes: Any) -> Any:
        x = np.asarray(as_array(x))
        ndim = x.ndim + np.asarray(as_array(axes)).size
        for a in _axis_list(as_array(axes), ndim):
            x = np.expand_dims(x, a)
        return x


class ReduceMean(Module):
    def __init__(self, keepdims: bool, noop_with_empty_axes: bool = False) -> None:
        super().__init__()
        self.keepdims, self.noop = keepdims, noop_with_empty_axes

    def forward(self, x: Any, axes: Any = None) -> Any:
        x = np.asarray(as_array(x))
        if axes is None or np.asarray(as_array(axes)).size == 0:
            if self.noop:
                return x
            return x.mean(keepdims=self.keepdims).astype(x.dtype, copy=False)
        mean = x.mean(axis=_axis_list(as_array(axes), x.ndim), keepdims=self.keepdims)
        return mean.astype(x.dtype, copy=False)

    def extra_repr(self) -> str:
        return f"keepdims={self.keepdims}"


class Shape(Module):
    def __init__(self, start: int = 0, end: int | None = None) -> None:
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x: Any) -> Any:
        return np.array(np.shape(as_array(x))[self.start : self.end], dtype=np.int64)


class Gather(Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Any, indices: Any) -> Any:
        x = np.asarray(as_array(x))
        idx = np.asarray(as_array(indices)).astype(np.int64)
        idx = np.where(idx < 0, idx + x.shape[self.axis], idx)
        return np.take(x, idx, axis=self.axis)


class Cast(Module):
    def __init__(self, dtype: np.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: Any) -> Any:
        return np.asarray(as_array(x)).astype(self.dtype)


class Gemm(Module):
    """``alpha * A' @ B' + beta * C`` where no ``nn.Linear`` fits (a full C matrix, a
    transposed A, or a weight computed at run time)."""

    def __init__(self, alpha: float, beta: float, trans_a: bool, trans_b: bool) -> None:
        super().__init__()
        self.alpha, self.beta, self.trans_a, self.trans_b = alpha, beta, trans_a, trans_b

    def forward(self, a: Any, b: Any, c: Any = None) -> Any:
        a, b = np.asarray(as_array(a)), np.asarray(as_array(b))
        a, b = (a.T if self.trans_a else a), (b.T if self.trans_b else b)
        out = a @ b
        if self.alpha != 1:
            out = out * out.dtype.type(self.alpha)
        if c is not None:
            c = np.asarray(as_array(c))
            out = out + (c if self.beta == 1 else c * c.dtype.type(self.beta))
        return out


class MatMul(Module):
    def forward(self, a: Any, b: Any) -> Any:
        return np.matmul(as_array(a), as_array(b))


class Softmax2d(Module):
    """Softmax as ONNX defined it before opset 13: over all axes from ``axis`` on, flattened."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Any) -> Any:
        x = np.asarray(as_array(x))
        axis = self.axis % max(x.ndim, 1)
        flat = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        return F.softmax(flat, -1).reshape(x.shape)


class Clamp(Module):
    """ONNX ``Clip`` with bounds given at run time or only one bound."""

    def forward(self, x: Any, lo: Any = None, hi: Any = None) -> Any:
        x = np.asarray(as_array(x))
        out = x if lo is None else np.maximum(x, np.asarray(as_array(lo), dtype=x.dtype))
        return out if hi is None else np.minimum(out, np.asarray(as_array(hi), dtype=x.dtype))


class HardSigmoid(Module):
    """ONNX ``HardSigmoid`` with its own ``alpha`` and ``beta``."""

    def __init__(self, alpha: float, beta: float) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, x: Any) -> Any:
        return F.hardsigmoid(as_array(x), self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


class Pad(Module):
    """Padding as ``F.pad`` takes it (last axis first); negative values crop."""

    def __init__(self, pad: tuple[int, ...] | None, mode: str = "constant", value: float = 0.0) -> None:
        super().__init__()
        self.pad, self.mode, self.value = pad, mode, value

    def forward(self, x: Any, *runtime: Any) -> Any:
        x = np.asarray(as_array(x))
        if self.mode != "constant" or x.dtype.kind == "f":
            return F.pad(x, self.pad, self.mode, self.value) if self.pad else x
        pairs = [(0, 0)] * x.ndim
        for i in range(len(self.pad or ()) // 2):
            pairs[x.ndim - 1 - i] = (self.pad[2 * i], self.pad[2 * i + 1])  # type: ignore[index]
        return np.pad(x, pairs, constant_values=self.value)

    def extra_repr(self) -> str:
        return f"{self.pad}, mode={self.mode!r}"


class Crop(Module):
    """Remove ``(before, after)`` elements from each trailing axis (ConvTranspose's pads)."""

    def __init__(self, pairs: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.pairs = pairs

    def forward(self, x: Any) -> Any:
        x = as_array(x)
        lead = (slice(None),) * (x.ndim - len(self.pairs))
        return x[(*lead, *(slice(a, x.shape[len(lead) + i] - b) for i, (a, b) in enumerate(self.pairs)))]

    def extra_repr(self) -> str:
        return f"{self.pairs}"


def same_pads(size: int, k: int, s: int, d: int, upper: bool) -> tuple[int, int]:
    """ONNX ``auto_pad=SAME_UPPER/SAME_LOWER``: output ``ceil(size/s)``, the odd pixel after
    (upper) or before (lower)."""
    small, big = shapes.tf_same_padding(size, k, s, d)
    return (small, big) if upper else (big, small)


class AutoPad(Module):
    """Zero padding for a convolution with ``auto_pad=SAME_*``, worked out per input size."""

    def __init__(self, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
                 upper: bool) -> None:
        super().__init__()
        self.kernel, self.stride, self.dilation, self.upper = kernel, stride, dilation, upper

    def forward(self, x: Any) -> Any:
        spatial = np.shape(as_array(x))[2:]
        pairs = [same_pads(i, k, s, d, self.upper) for i, k, s, d in
                 zip(spatial, self.kernel, self.stride, self.dilation, strict=True)]
        flat = tuple(v for p in reversed(pairs) for v in p)
        return F.pad(x, flat) if any(flat) else x


class OnnxPool(Module):
    """Max or average pooling of any rank, ``auto_pad`` resolved per input size."""

    def __init__(self, kind: str, kernel: tuple[int, ...], stride: tuple[int, ...],
                 pads: tuple[tuple[int, int], ...] | None, dilation: tuple[int, ...], ceil_mode: bool,
                 count_include_pad: bool = False, auto_pad: str = "NOTSET") -> None:
        super().__init__()
        self.kind, self.kernel, self.stride, self.pads = kind, kernel, stride, pads
        self.dilation, self.ceil_mode = dilation, ceil_mode
        self.count_include_pad, self.auto_pad = count_include_pad, auto_pad

    def forward(self, x: Any) -> Any:
        x = as_array(x)
        n = len(self.kernel)
        pads = self.pads
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = tuple(same_pads(i, k, s, d, self.auto_pad == "SAME_UPPER") for i, k, s, d in
                         zip(x.shape[2:], self.kernel, self.stride, self.dilation, strict=True))
        padding: Any = pads if pads and any(a or b for a, b in pads) else 0
        if self.kind == "max":
            fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
            return fn(x, self.kernel, self.stride, padding, self.dilation, self.ceil_mode)
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        return fn(x, self.kernel, self.stride, padding, self.ceil_mode, self.count_include_pad,
                  dilation=self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.kind}, kernel={self.kernel}, stride={self.stride}, pads={self.pads}, "
                f"auto_pad={self.auto_pad}")


class GlobalPool(Module):
    """``GlobalAveragePool`` / ``GlobalMaxPool``: over every spatial axis, kept as size 1."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: Any) -> Any:
        x = np.asarray(as_array(x))
        axes = tuple(range(2, x.ndim))
        if self.kind == "max":
            return x.max(axis=axes, keepdims=True)
        return x.mean(axis=axes, keepdims=True, dtype=x.dtype)

    def extra_repr(self) -> str:
        return self.kind


class Resize(Module):
    """ONNX ``Resize`` (nearest and linear), see :func:`convlayers.onnx._resize.resize`."""

    def __init__(self, mode: str, coordinate_mode: str, nearest_mode: str, size_from: str) -> None:
        super().__init__()
        self.mode, self.coordinate_mode, self.nearest_mode = mode, coordinate_mode, nearest_mode
        self.size_from = size_from  # "scales" or "sizes"

    def forward(self, x: Any, *rest: Any) -> Any:
        x = np.asarray(as_array(x))
        arg = np.asarray(as_array(rest[-1]))
        if self.size_from == "sizes":
            sizes = tuple(int(s) for s in arg)
            scales = tuple(o / i for o, i in zip(sizes, x.shape, strict=True))
        else:
            scales = tuple(float(s) for s in arg)
            sizes = tuple(int(np.floor(i * s)) for i, s in zip(x.shape, scales, strict=True))
        return resize(x, sizes, scales, self.mode, self.coordinate_mode, self.nearest_mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, coordinate_transformation_mode={self.coordinate_mode!r}"

