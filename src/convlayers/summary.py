"""A per-layer table of a model: output shapes, parameters, multiply-adds and activation memory.

:func:`summary` runs the model once on zeros and records every leaf module (one without
children). Multiply-adds (MACs) follow one policy, written out here once and selectable by
keyword; FLOPs are always ``2 x MACs``. By default only conv and linear weights count: the
convention of the papers and of torchinfo (MobileNetV2 at 224x224: 300.8 M, "300 M" in its
paper). The other terms are opt-in, and the table's last line says which were counted.

MAC policy, per call of a leaf module, for the whole input batch:

- ``ConvNd``: :func:`convlayers.shapes.conv_macs` times the batch, that is
  ``N * C_out * prod(output spatial) * C_in/groups * prod(kernel)``; a transposed convolution
  is the same count with the roles of input and output swapped (every input pixel scatters
  ``C_out/groups * prod(kernel)`` products).
- ``Linear``: ``in_features * out_features`` per row of the input.
- bias adds (``bias=True``, default off): one per output element of a conv or Linear that has
  a bias.
- BatchNorm (``norm=True``, default off): one per output element (in inference it is one multiply-add,
  ``x*s + t``). A model fused with :func:`convlayers.nn.fuse` has no BatchNorm left to count.
- pooling (``pooling=True``): max/average pools ``prod(kernel)`` per output element; adaptive
  pools one per input element.
- activations (``activations=True``): one per output element of ReLU, ReLU6, Sigmoid, Tanh,
  Softmax and LogSoftmax.
- everything else (Flatten, Dropout, Identity, padding) is free, and so is any arithmetic a
  ``forward`` does outside its leaf modules (a residual add, MobileNetV2's global pooling).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convlayers import nn, shapes
from convlayers._validate import FLOAT_DTYPES, as_int
from convlayers.autograd import no_grad
from convlayers.nn.inspect import first_array, record_calls

__all__ = ["COLUMNS", "Summary", "summary"]

COLUMNS = ("name", "type", "output_shape", "params", "macs", "memory")

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_WINDOW_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_ADAPTIVE_POOL = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_ACTIVATION = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.LogSoftmax)


def layer_macs(module: nn.Module, x: Any, y: Any, *, bias: bool = False, norm: bool = False,
               pooling: bool = False, activations: bool = False) -> int:
    """Multiply-adds of one call ``y = module(x)`` under the policy of this module's docstring.

    >>> conv = nn.Conv2d(3, 64, 3, padding=1)
    >>> x = np.zeros((1, 3, 224, 224), np.float32)
    >>> layer_macs(conv, x, conv(x))  # shapes.conv_macs(3, 64, 3, (224, 224))
    86704128
    >>> layer_macs(conv, x, conv(x), bias=True) - 86704128  # one add per output element
    3211264
    """
    inp, out = first_array(x), first_array(y)
    if out is None:
        return 0
    if isinstance(module, _CONV + _CONV_T):
        n = module.n
        if isinstance(module, _CONV_T) and inp is not None:
            spatial = inp.shape[-n:]
            batch = inp.size // (module.in_channels * math.prod(spatial))
            macs = batch * shapes.conv_macs(module.out_channels, module.in_channels, module.kernel_size,
                                            spatial, module.groups)
        else:
            spatial = out.shape[-n:]
            batch = out.size // (module.out_channels * math.prod(spatial))
            macs = batch * shapes.conv_macs(module.in_channels, module.out_channels, module.kernel_size,
                                            spatial, module.groups)
        return macs + (out.size if bias and module.bias is not None else 0)
    if isinstance(module, nn.Linear):
        rows = out.size // module.out_features
        return (rows * module.in_features * module.out_features
                + (out.size if bias and module.bias is not None else 0))
    if isinstance(module, _NORM):
        return out.size if norm else 0
    if isinstance(module, _WINDOW_POOL):
        k: Any = module.kernel_size
        area = int(math.prod(k)) if isinstance(k, tuple | list) else int(k) ** (out.ndim - 2)
        return out.size * area if pooling else 0
    if isinstance(module, _ADAPTIVE_POOL):
        return inp.size if pooling and inp is not None else 0
    if isinstance(module, _ACTIVATION):
        return out.size if activations else 0
    return 0


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "" if shape is None else "x".join(map(str, shape))


def _bytes_text(n: int) -> str:
    for unit, size in (("GB", 2 ** 30), ("MB", 2 ** 20), ("kB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


@dataclass
class Summary:
    """What :func:`summary` found: ``rows`` (one dict per leaf call, keys :data:`COLUMNS`) and
    totals. ``str()`` is an aligned table; :meth:`to_markdown` and :meth:`to_csv` export it.

    ``output_shape`` is a tuple, or None for a module the forward pass never called;
    ``memory`` is the bytes of that output.
    """

    rows: list[dict[str, Any]]
    input_shape: tuple[int, ...]
    dtype: np.dtype
    total_params: int
    total_macs: int
    total_memory: int
    policy: dict[str, bool] = field(default_factory=dict)

    @property
    def total_flops(self) -> int:
        """Floating-point operations, counted as ``2 x total_macs`` (a multiply and an add)."""
        return 2 * self.total_macs

    def counted(self) -> str:
        """One line saying what the multiply-adds include."""
        parts = {"bias": "bias adds", "norm": "BatchNorm", "pooling": "pooling",
                 "activations": "activations"}
        yes = [v for k, v in parts.items() if self.policy.get(k)]
        no = [v for k, v in parts.items() if not self.policy.get(k)]
        return ("multiply-adds count conv/linear weights" + "".join(f", {v}" for v in yes)
                + (f"; not {', '.join(no)}" if no else "")
                + ("" if yes else " (the papers' and torchinfo's convention)"))

    def _totals(self) -> list[str]:
        shape = ", ".join(map(str, self.input_shape))
        return [f"Input: ({shape}) {self.dtype}",
                f"Total params: {self.total_params:,}",
                f"Total mult-adds: {self.total_macs:,} ({self.total_macs / 1e6:.2f} M); "
                f"FLOPs = 2 x MACs = {self.total_flops / 1e6:.2f} M",
                f"Activation memory: {self.total_memory:,} bytes ({_bytes_text(self.total_memory)})",
                f"Policy: {self.counted()}"]

    def _cells(self, row: dict[str, Any]) -> list[str]:
        return [row["name"], row["type"], _shape_text(row["output_shape"]) or "-",
                f"{row['params']:,}", f"{row['macs']:,}", f"{row['memory']:,}"]

    def __str__(self) -> str:
        head = ["Layer", "Type", "Output shape", "Params", "Mult-adds", "Memory (B)"]
        body = [self._cells(r) for r in self.rows]
        widths = [max(len(c) for c in col) for col in zip(head, *body, strict=False)]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

        rule = "=" * len(line(head))
        return "\n".join([rule, line(head), rule, *map(line, body), rule, *self._totals(), rule])

    def to_markdown(self) -> str:
        """A GitHub Markdown table (numbers with thousands separators), then the totals."""
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * 3 + "---:|" * 3]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in self._cells(r)) + " |"
                  for r in self.rows]
        return "\n".join([*lines, "", *(f"- {t}" for t in self._totals())]) + "\n"

    def to_csv(self) -> str:
        """The rows as CSV with a header (:data:`COLUMNS`); shapes as ``1x32x112x112``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in self.rows:
            writer.writerow([r["name"], r["type"], _shape_text(r["output_shape"]), r["params"],
                             r["macs"], r["memory"]])
        return buffer.getvalue()


def summary(model: nn.Module, input_shape: Any, *, bias: bool = False, norm: bool = False,
            pooling: bool = False, activations: bool = False, dtype: Any = np.float32) -> Summary:
    """Output shape, parameters, multiply-adds and output memory of every leaf of ``model``.

    Runs ``model`` once on zeros of ``input_shape`` in evaluation mode without recording
    gradients; each module's training flag is put back afterwards. Each leaf module (in
    ``named_modules()`` order) gets one row per call; a leaf never called gets a row with
    ``output_shape=None``. The multiply-add policy is the one in this module's docstring.

    Parameters
    ----------
    model : Module
        The model.
    input_shape : sequence of int
        The input's shape, batch axis included (``(1, 3, 224, 224)``).
    bias, norm, pooling, activations : bool
        What the multiply-adds include besides conv and linear weights: bias adds, BatchNorm,
        pooling windows, activations (all off by default: weights only, as the papers and
        torchinfo count; ``Summary.counted()`` states the policy).
    dtype : float32 or float64
        The input's dtype.

    Returns
    -------
    Summary
        ``total_params`` counts every trainable parameter once; ``total_memory`` sums the
        leaves' output bytes, leaving out outputs that are views of their input (Flatten,
        Identity, eval-mode Dropout).

    Examples
    --------
    >>> s = summary(nn.ConvNormAct(3, 64, bias=True), (1, 3, 32, 32))
    >>> [(r["name"], r["output_shape"], r["params"], r["macs"]) for r in s.rows]
    [('0', (1, 64, 32, 32), 1792, 1769472), ('1', (1, 64, 32, 32), 128, 0), ('2', (1, 64, 32, 32), 0, 0)]
    >>> s.total_params, s.total_macs, s.total_flops
    (1920, 1769472, 3538944)
    >>> print(s.counted())
    multiply-adds count conv/linear weights; not bias adds, BatchNorm, pooling, activations
    (the papers' and torchinfo's convention)
    >>> summary(nn.ConvNormAct(3, 64, bias=True), (1, 3, 32, 32), bias=True, norm=True).total_macs
    1900544
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a convlayers Module, got {type(model).__name__}")
    if isinstance(input_shape, str | bytes) or not hasattr(input_shape, "__iter__"):
        raise TypeError(f"input_shape must be a sequence of ints, got {input_shape!r}")
    shape = tuple(as_int(v, "input_shape") for v in input_shape)
    if not shape or any(v < 1 for v in shape):
        raise ValueError(f"input_shape must be non-empty positive sizes, got {input_shape!r}")
    if np.dtype(dtype) not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    policy = {"bias": bool(bias), "norm": bool(norm), "pooling": bool(pooling),
              "activations": bool(activations)}
    leaves = [(n, m) for n, m in model.named_modules() if not m._modules]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with no_grad(), record_calls(leaves) as calls:
            model(np.zeros(shape, dtype))
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    by_module: dict[int, list[Any]] = {}
    for call in calls:
        by_module.setdefault(id(call.module), []).append(call)
    rows: list[dict[str, Any]] = []
    memory = 0
    for name, module in leaves:
        params = sum(p.size for p in module.parameters(recurse=False) if p.requires_grad)
        row = {"name": name, "type": type(module).__name__, "output_shape": None, "params": params,
               "macs": 0, "memory": 0}
        for i, call in enumerate(by_module.get(id(module), [None])):
            out = None if call is None else first_array(call.output)
            if out is not None:
                inp = first_array(call.input)
                memory += 0 if inp is not None and np.may_share_memory(out, inp) else out.nbytes
                row = {**row, "output_shape": tuple(out.shape), "params": 0 if i else params,
                       "macs": layer_macs(module, call.input, call.output, **policy),
                       "memory": int(out.nbytes)}
            rows.append(row)
    return Summary(rows=rows, input_shape=shape, dtype=np.dtype(dtype),
                   total_params=sum(p.size for p in model.parameters() if p.requires_grad),
                   total_macs=sum(r["macs"] for r in rows), total_memory=memory, policy=policy)
