"""Loss modules over the functional losses."""

from __future__ import annotations

from typing import Any

from convlayers import functional as F
from convlayers._validate import one_of
from convlayers.functional.losses import REDUCTIONS
from convlayers.nn.module import Module, extra_args

__all__ = ["CrossEntropyLoss", "MSELoss"]


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of logits against class indices or probabilities.

    >>> import numpy as np
    >>> CrossEntropyLoss()(np.zeros((2, 4)), np.array([0, 3])).round(4)
    np.float64(1.3863)
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.reduction = one_of(reduction, REDUCTIONS, "reduction")
        self.label_smoothing = label_smoothing

    def forward(self, input: Any, target: Any) -> Any:
        return F.cross_entropy(input, target, self.reduction, self.label_smoothing)

    def extra_repr(self) -> str:
        return extra_args(reduction=(self.reduction, "mean"),
                          label_smoothing=(self.label_smoothing, 0.0))


class MSELoss(Module):
    """Mean squared error."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = one_of(reduction, REDUCTIONS, "reduction")

    def forward(self, input: Any, target: Any) -> Any:
        return F.mse_loss(input, target, self.reduction)
