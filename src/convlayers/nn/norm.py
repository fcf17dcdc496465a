"""Batch normalization layers with PyTorch's parameters, buffers and update rule.

Keys in ``state_dict``: ``weight`` (gamma, starts at 1), ``bias`` (beta, starts at 0),
``running_mean``, ``running_var`` and ``num_batches_tracked`` (how many training batches have
updated the running statistics; with ``momentum=None`` it turns the update into a plain
cumulative average).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from convlayers import functional as F
from convlayers._validate import as_int
from convlayers.nn.conv import check_channels
from convlayers.nn.module import Module, Parameter, extra_args

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _BatchNorm(Module):
    n: ClassVar[tuple[int, ...]]  # allowed numbers of spatial axes

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
        affine: bool = True, track_running_stats: bool = True, *, dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        self.num_features = as_int(num_features, "num_features")
        if self.num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.eps, self.momentum = float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if affine:
            self.weight = Parameter(np.ones(self.num_features, dtype))
            self.bias = Parameter(np.zeros(self.num_features, dtype))
        stats = track_running_stats
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype) if stats else None)
        self.register_buffer("running_var", np.ones(self.num_features, dtype) if stats else None)
        self.register_buffer("num_batches_tracked", np.array(0, np.int64) if stats else None)

    def forward(self, x: Any) -> Any:
        ndim = np.ndim(x)
        if ndim - 2 not in self.n:
            want = " or ".join(str(k + 2) for k in self.n)
            raise ValueError(f"{self!r} expected a {want}-D input (N, C, ...), got shape {np.shape(x)}")
        check_channels(self, x, self.num_features, ndim - 2)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or self.running_mean is None
        keep = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if keep else None, self.running_var if keep else None,
                            self.weight, self.bias, use_batch, factor, self.eps)

    def extra_repr(self) -> str:
        return extra_args(self.num_features, eps=(self.eps, 1e-5), momentum=(self.momentum, 0.1),
                          affine=(self.affine, True),
                          track_running_stats=(self.track_running_stats, True))


class BatchNorm1d(_BatchNorm):
    """Batch normalization over ``(N, C)`` or ``(N, C, L)``, as ``torch.nn.BatchNorm1d``."""

    n = (0, 1)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over ``(N, C, H, W)``, as ``torch.nn.BatchNorm2d``.

    Training normalizes with the batch's statistics and moves the running ones towards them;
    evaluation uses the running ones.

    >>> bn = BatchNorm2d(64)
    >>> bn
    BatchNorm2d(64)
    >>> sorted(bn.state_dict())
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """

    n = (2,)


class BatchNorm3d(_BatchNorm):
    """Batch normalization over ``(N, C, D, H, W)``, as ``torch.nn.BatchNorm3d``."""

    n = (3,)
