"""Train CNNs from scratch: a seeded, resumable loop with a progress bar, and its pictures.

- :func:`fit` trains a classifier with softmax cross-entropy and any :mod:`convlayers.optim`
  optimizer and schedule, evaluates every epoch, stops early at a target accuracy, writes an
  atomic checkpoint every epoch (:mod:`convlayers.checkpoint`) and resumes from it exactly.
- :func:`evaluate` / :func:`predict_logits`: loss, accuracy and outputs in eval mode, no tape.
- :func:`plot_curves`, :func:`plot_confusion`, :func:`confusion_matrix`: what the run did.
- :func:`digit_input`, :func:`small_cnn_from_state_dict`: the digits model after training.

Examples
--------
>>> from convlayers import nn
>>> from convlayers.datasets import load_digits
>>> split = load_digits(seed=0)
>>> small = (split.x_train[:256], split.y_train[:256], split.x_test[:64], split.y_test[:64])
>>> history = fit(nn.SmallCNN(widths=(8, 16), rng=0), small, epochs=2, progress=False)
>>> history.epoch, 0.0 <= history.test_accuracy[-1] <= 1.0
([1, 2], True)
"""

from convlayers.train.digits import DIGITS_SIDE, digit_input, small_cnn_from_state_dict
from convlayers.train.loop import DEFAULT_LR, DivergedError, History, evaluate, fit, predict_logits
from convlayers.train.plots import confusion_matrix, plot_confusion, plot_curves

__all__ = [
    "DEFAULT_LR",
    "DIGITS_SIDE",
    "DivergedError",
    "History",
    "confusion_matrix",
    "digit_input",
    "evaluate",
    "fit",
    "plot_confusion",
    "plot_curves",
    "predict_logits",
    "small_cnn_from_state_dict",
]
