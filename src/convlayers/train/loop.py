"""The training loop: :func:`fit` a classifier, :func:`evaluate` it, keep its :class:`History`.

Reproducible by construction: epoch ``e`` shuffles and augments with its own generator,
``numpy.random.default_rng([seed, e])``, so a run resumed from a checkpoint after epoch ``e``
draws exactly the batches the uninterrupted run would have drawn, and no generator state needs
to be saved beyond the seed. The model's initial weights are the caller's: build it with
``rng=seed`` (``SmallCNN(rng=seed)``) and the same seed gives the same final weights.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from convlayers import functional as F
from convlayers.autograd import no_grad
from convlayers.checkpoint import load_checkpoint, save_checkpoint
from convlayers.datasets import batches, random_shift
from convlayers.nn.module import Module
from convlayers.optim import SGD, Adam, AdamW, CosineAnnealingLR, Optimizer, StepLR

__all__ = ["DEFAULT_LR", "DivergedError", "History", "evaluate", "fit", "predict_logits"]

#: Learning rate used when ``fit`` builds the optimizer from its name and ``lr`` is None.
DEFAULT_LR = {"adam": 3e-3, "adamw": 3e-3, "sgd": 0.05}


class DivergedError(ValueError):
    """The training loss became NaN or infinite (a learning rate too large, say): :func:`fit`
    stops at once, before the next checkpoint could save the broken weights."""


@dataclass
class History:
    """Per-epoch record of a :func:`fit` run (lists indexed by epoch, 1-based ``epoch``).

    ``seconds`` and ``images_per_second`` time the training passes only (not evaluation).
    Test values are NaN when ``fit`` got no test data.
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and a bool (JSON-serializable).

        >>> History(epoch=[1], test_accuracy=[0.5]).to_dict()["test_accuracy"]
        [0.5]
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Rebuild a History from :meth:`to_dict`'s output."""
        names = set(cls.__dataclass_fields__)
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"history has unknown fields {sorted(unknown)}")
        return cls(**data)

    def _append(self, **values: float) -> None:
        for key, value in values.items():
            getattr(self, key).append(value)


def predict_logits(model: Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's outputs for ``x`` in evaluation mode without recording gradients.

    The model's training mode is restored afterwards.

    >>> from convlayers import nn
    >>> predict_logits(nn.SmallCNN(rng=0), np.zeros((3, 1, 8, 8), np.float32)).shape
    (3, 10)
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a convlayers Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            outs = [np.asarray(model(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def evaluate(model: Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, in eval mode, no gradients.

    >>> from convlayers import nn
    >>> loss, acc = evaluate(nn.SmallCNN(rng=0), np.zeros((4, 1, 8, 8), np.float32), np.arange(4))
    >>> 0 <= acc <= 1 and loss > 0
    True
    """
    x, y = _pair(x, y, "x", "y")
    if len(y) == 0:
        raise ValueError("x and y must hold at least one example")
    logits = predict_logits(model, x, batch_size)
    loss = float(F.cross_entropy(logits, y, reduction="sum")) / len(y)
    return loss, float((logits.argmax(axis=1) == y).mean())


def _pair(x: Any, y: Any, xn: str, yn: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind != "f":
        raise TypeError(f"{xn} must hold floats (images), got dtype {x.dtype}")
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise TypeError(f"{yn} must be a 1-D array of integer class labels, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{xn} and {yn} must have the same length, got {len(x)} and {len(y)}")
    return x, y


def _unpack(data: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    if hasattr(data, "x_train"):
        parts = (data.x_train, data.y_train, data.x_test, data.y_test)
    elif isinstance(data, Sequence) and len(data) in (2, 4):
        parts = (*tuple(data), None, None) if len(data) == 2 else tuple(data)
    else:
        raise TypeError("split_or_data must be a datasets.Split or a tuple (x_train, y_train) or "
                        f"(x_train, y_train, x_test, y_test), got {type(data).__name__}")
    x_tr, y_tr = _pair(parts[0], parts[1], "x_train", "y_train")
    if len(y_tr) == 0:
        raise ValueError("x_train is empty")
    if parts[2] is None:
        return x_tr, y_tr, None, None
    x_te, y_te = _pair(parts[2], parts[3], "x_test", "y_test")
    return x_tr, y_tr, x_te, y_te


def _optimizer(model: Module, optimizer: str | Optimizer, lr: float | None) -> Optimizer:
    if isinstance(optimizer, Optimizer):
        if lr is not None:
            raise ValueError("lr must be None when optimizer is an Optimizer (it has its own lr)")
        return optimizer
    if optimizer not in DEFAULT_LR:
        raise ValueError(f"optimizer must be one of {sorted(DEFAULT_LR)} or an Optimizer, "
                         f"got {optimizer!r}")
    rate = DEFAULT_LR[optimizer] if lr is None else lr
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) \
            or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if optimizer == "sgd":
        return SGD(model.parameters(), lr=rate, momentum=0.9)
    return (Adam if optimizer == "adam" else AdamW)(model.parameters(), lr=rate)


def _schedule(schedule: Any, opt: Optimizer, epochs: int) -> Any:
    if schedule is None or hasattr(schedule, "step"):
        return schedule
    if schedule == "cosine":
        return CosineAnnealingLR(opt, T_max=epochs)
    if schedule == "step":
        return StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
    raise ValueError(f"schedule must be None, 'cosine', 'step' or an object with step(), "
                     f"got {schedule!r}")


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _quiet_overflow() -> Any:
    """No RuntimeWarning per op while training: a non-finite loss stops :func:`fit` instead."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if not (enabled and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=True, dynamic_ncols=True)


def fit(
    model: Module, split_or_data: Any, *, epochs: int, batch_size: int = 32,
    optimizer: str | Optimizer = "adam", lr: float | None = None, schedule: Any = None,
    augment_shift: int = 0, augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    label_smoothing: float = 0.0, seed: int = 0,
    target_accuracy: float | None = None, checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False, progress: bool = True,
    callback: Callable[[History], None] | None = None,
) -> History:
    """Train a classifier with softmax cross-entropy, evaluating on the test data every epoch.

    Parameters
    ----------
    model : Module
        Maps ``(N, C, H, W)`` images to ``(N, classes)`` logits; trained in place.
    split_or_data : Split or tuple
        A :class:`convlayers.datasets.Split`, ``(x_train, y_train, x_test, y_test)`` or
        ``(x_train, y_train)`` (no evaluation, test values NaN).
    epochs : int
        Total epochs (a resumed run continues up to this number).
    batch_size : int
        Training mini-batch size; the last batch of an epoch may be smaller.
    optimizer : {"adam", "adamw", "sgd"} or Optimizer
        By name, built over ``model.parameters()`` (SGD with momentum 0.9), or your own.
    lr : float, optional
        Learning rate for a named optimizer (default :data:`DEFAULT_LR`).
    schedule : {None, "cosine", "step"} or scheduler
        Stepped once per epoch: cosine decay to 0 over ``epochs``, or x0.1 every third of
        them, or an object with ``step()`` (e.g. :class:`convlayers.optim.StepLR`).
    augment_shift : int
        Shift training images randomly by up to this many pixels (0: no augmentation).
    augment : callable, optional
        ``augment(batch, rng) -> batch`` on every training batch after the shift, with the
        epoch's generator (e.g. a :func:`convlayers.augment.compose` pipeline).
    on_epoch_start : callable, optional
        Called with the 0-based epoch index before each epoch, resumed ones included (e.g. to
        unfreeze a fine-tuned network after some epochs).
    label_smoothing : float
        Passed to :func:`convlayers.functional.cross_entropy` for the training loss.
    seed : int
        Seeds shuffling and augmentation (see the module notes).
    target_accuracy : float, optional
        Stop early once the test accuracy reaches it.
    checkpoint : path, optional
        Written atomically after every epoch (see :mod:`convlayers.checkpoint`).
    resume : bool
        Continue from ``checkpoint`` if that file exists (its seed must equal ``seed``);
        the result equals the uninterrupted run's. Without the file, start afresh.
    progress : bool
        A tqdm bar per epoch (loss, accuracy, images/s), only when stderr is a terminal.
    callback : callable, optional
        Called with the History after every epoch.

    Returns
    -------
    History

    Examples
    --------
    >>> from convlayers import nn
    >>> x = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    >>> h = fit(nn.SmallCNN(rng=0), (x, np.arange(8) % 2), epochs=2, batch_size=4, progress=False)
    >>> h.epoch, len(h.train_loss)
    ([1, 2], 2)
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a convlayers Module, got {type(model).__name__}")
    epochs = _int(epochs, "epochs", 1)
    batch_size = _int(batch_size, "batch_size", 1)
    augment_shift = _int(augment_shift, "augment_shift", 0)
    seed = _int(seed, "seed", 0)
    if target_accuracy is not None and not 0 <= float(target_accuracy) <= 1:
        raise ValueError(f"target_accuracy must be in [0, 1] or None, got {target_accuracy!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    x, y, x_test, y_test = _unpack(split_or_data)
    if x.ndim >= 2 and augment_shift >= min(x.shape[-2:]):
        raise ValueError(f"augment_shift must be smaller than the images' side "
                         f"{min(x.shape[-2:])}, got {augment_shift}")
    opt = _optimizer(model, optimizer, lr)
    sched = _schedule(schedule, opt, epochs)
    history, start = History(), 0
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, model, opt)
        if state.extra.get("seed") != seed:
            raise ValueError(f"checkpoint {os.fspath(checkpoint)!r} was written with seed "
                             f"{state.extra.get('seed')!r}, but seed={seed}")
        history, start = History.from_dict(state.extra.get("history", {})), state.epoch
        if sched is not None and hasattr(sched, "epoch"):
            sched.epoch = start  # the optimizer's lr itself comes from the checkpoint
    for epoch in range(start, epochs):
        if history.stopped_early:
            break
        rng = np.random.default_rng([seed, epoch])
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        bar = _bar(progress, len(y), f"epoch {epoch + 1}/{epochs}")
        model.train()
        loss_sum = correct = seen = 0.0
        lr_used, t0 = opt.lr, time.perf_counter()
        for xb, yb in batches(x, y, batch_size, shuffle=True, seed=rng):
            if augment_shift:
                xb = random_shift(xb, augment_shift, seed=rng)
            if augment is not None:
                xb = augment(xb, rng)
            opt.zero_grad()
            with _quiet_overflow():  # a diverging run is reported once, below
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
            value = float(np.asarray(loss))
            if not math.isfinite(value):
                raise DivergedError(
                    f"training diverged: the loss became {value} in epoch {epoch + 1} after "
                    f"{int(seen)} images (lr={opt.lr:g}); lower lr. Nothing was saved from "
                    "this epoch")
            with _quiet_overflow():
                loss.backward()
                opt.step()
            seen += len(yb)
            loss_sum += value * len(yb)
            correct += float((np.asarray(logits).argmax(axis=1) == yb).sum())
            if bar is not None:
                bar.update(len(yb))
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                                refresh=False)
        seconds = time.perf_counter() - t0
        if sched is not None:
            sched.step()
        test_loss, test_acc = (math.nan, math.nan)
        if x_test is not None and y_test is not None and len(y_test):
            test_loss, test_acc = evaluate(model, x_test, y_test)
        history._append(epoch=epoch + 1, train_loss=loss_sum / seen, train_accuracy=correct / seen,
                        test_loss=test_loss, test_accuracy=test_acc, lr=lr_used,
                        seconds=seconds, images_per_second=seen / max(seconds, 1e-12))
        history.stopped_early = target_accuracy is not None and test_acc >= target_accuracy
        if bar is not None:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                            test_acc=f"{test_acc:.3f}")
            bar.close()
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, opt, epoch + 1,
                            extra={"seed": seed, "history": history.to_dict(), "epochs": epochs,
                                   "batch_size": batch_size, "augment_shift": augment_shift})
        if callback is not None:
            callback(history)
    return history
