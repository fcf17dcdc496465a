"""convlayers.train: the loop learns, is seeded, resumes exactly, stops early; its pictures."""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest

from convlayers import nn
from convlayers.datasets import load_digits
from convlayers.optim import SGD, StepLR
from convlayers.train import (
    History,
    confusion_matrix,
    digit_input,
    evaluate,
    fit,
    plot_confusion,
    plot_curves,
    predict_logits,
    small_cnn_from_state_dict,
)


@pytest.fixture(scope="module")
def split():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def small(split):
    """A subset that trains in a fraction of a second."""
    return split.x_train[:320], split.y_train[:320], split.x_test[:96], split.y_test[:96]


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def short_run(data, seed=3, **kwargs):
    model = nn.SmallCNN(widths=(8, 16), rng=abs(seed))
    kwargs = {"epochs": 3, "batch_size": 32, "schedule": "cosine", "augment_shift": 1,
              "seed": seed, "progress": False, **kwargs}
    return model, fit(model, data, **kwargs)


class StopRunError(Exception):
    pass


def stop_after(epoch: int):
    def callback(history: History) -> None:
        if history.epoch[-1] == epoch:
            raise StopRunError
    return callback


def test_brief_seeded_run_learns_the_digits(split):
    # measured: 0.983 after 3 epochs (seeds 0, 1, 2 give 0.983, 0.989, 0.975); bar with margin
    history = fit(nn.SmallCNN(rng=0), split, epochs=3, batch_size=32, schedule="cosine",
                  seed=0, progress=False)
    assert history.epoch == [1, 2, 3]
    assert history.test_accuracy[-1] >= 0.95
    assert history.train_loss[-1] < history.train_loss[0]
    assert all(v > 0 for v in history.images_per_second)
    assert history.lr[0] == pytest.approx(3e-3) and history.lr[-1] < history.lr[0]


def test_same_seed_gives_the_same_weights(small):
    a, ha = short_run(small)
    b, hb = short_run(small)
    assert weights_equal(a, b)
    assert ha.train_loss == hb.train_loss
    c, _ = short_run(small, seed=4)
    assert not weights_equal(a, c)


def test_resume_equals_uninterrupted(small, tmp_path):
    reference, full = short_run(small, epochs=4)
    ckpt = tmp_path / "run.safetensors"
    with pytest.raises(StopRunError):
        short_run(small, epochs=4, checkpoint=ckpt, callback=stop_after(2))
    model = nn.SmallCNN(widths=(8, 16), rng=123)  # other init: the checkpoint overrides it
    resumed = fit(model, small, epochs=4, batch_size=32, schedule="cosine", augment_shift=1,
                  seed=3, progress=False, checkpoint=ckpt, resume=True)
    assert resumed.epoch == [1, 2, 3, 4]
    assert resumed.lr == full.lr and resumed.train_loss == full.train_loss
    assert weights_equal(model, reference)


def test_resume_with_a_scheduler_object_and_sgd(small, tmp_path):
    def run(model, **kwargs):
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        return fit(model, small, epochs=3, optimizer=opt, schedule=StepLR(opt, 1, 0.5), seed=1,
                   progress=False, **kwargs)

    reference = nn.SmallCNN(widths=(8, 16), rng=1)
    run(reference)
    ckpt = tmp_path / "sgd.safetensors"
    with pytest.raises(StopRunError):
        run(nn.SmallCNN(widths=(8, 16), rng=1), checkpoint=ckpt, callback=stop_after(1))
    model = nn.SmallCNN(widths=(8, 16), rng=1)
    history = run(model, checkpoint=ckpt, resume=True)
    assert history.lr == [0.05, 0.025, 0.0125]
    assert weights_equal(model, reference)


def test_resume_checks_the_seed_and_starts_fresh_without_a_file(small, tmp_path):
    ckpt = tmp_path / "c.safetensors"
    _, history = short_run(small, epochs=1, checkpoint=ckpt, resume=True)  # no file yet
    assert history.epoch == [1] and ckpt.exists()
    with pytest.raises(ValueError, match="seed"):
        short_run(small, epochs=2, seed=4, checkpoint=ckpt, resume=True)


def test_early_stop_at_the_target_and_resume_after_it(small, tmp_path):
    ckpt = tmp_path / "c.safetensors"
    _, history = short_run(small, epochs=5, target_accuracy=0.0, checkpoint=ckpt)
    assert history.epoch == [1] and history.stopped_early
    _, again = short_run(small, epochs=5, target_accuracy=0.0, checkpoint=ckpt, resume=True)
    assert again.epoch == [1] and again.stopped_early


def test_train_only_data_has_no_test_values(small):
    _, history = short_run(small[:2], epochs=1)
    assert math.isnan(history.test_accuracy[0]) and not history.stopped_early


def test_evaluate_uses_eval_mode_without_a_tape_and_restores_the_mode(split):
    model = nn.SmallCNN(rng=0)
    loss, accuracy = evaluate(model, split.x_test[:50], split.y_test[:50], batch_size=16)
    assert isinstance(loss, float) and 0 <= accuracy <= 1
    assert model.training
    stats = model.features[0][1].running_mean.copy()
    logits = predict_logits(model, split.x_test[:5])
    assert type(logits) is np.ndarray and logits.shape == (5, 10)
    assert np.array_equal(model.features[0][1].running_mean, stats)  # eval mode: untouched


def test_progress_bar_only_on_a_terminal(small, monkeypatch, capsys):
    short_run(small, epochs=1, progress=True)
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    short_run(small, epochs=1, progress=True)
    text = terminal.getvalue()
    assert "epoch 1/1" in text and "img/s" in text and "loss=" in text and "acc=" in text


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"optimizer": "adagrad"}, "optimizer"),
    ({"schedule": "linear"}, "schedule"),
    ({"target_accuracy": 1.5}, "target_accuracy"),
    ({"resume": True}, "checkpoint"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_are_named(small, kwargs, match):
    with pytest.raises(ValueError, match=match):
        short_run(small, **kwargs)


def test_bad_data_and_optimizer_combinations(small):
    model = nn.SmallCNN(widths=(8, 16), rng=0)
    with pytest.raises(TypeError, match="split_or_data"):
        fit(model, small[:3], epochs=1, progress=False)
    with pytest.raises(ValueError, match="same length"):
        fit(model, (small[0], small[1][:-1]), epochs=1, progress=False)
    with pytest.raises(TypeError, match="y_train"):
        fit(model, (small[0], small[1].astype(np.float32)), epochs=1, progress=False)
    with pytest.raises(ValueError, match="lr must be None"):
        fit(model, small, epochs=1, optimizer=SGD(model.parameters(), lr=0.1), lr=0.1)


def test_history_round_trips_through_a_dict():
    h = History(epoch=[1], train_loss=[0.5], test_accuracy=[float("nan")], stopped_early=True)
    back = History.from_dict(h.to_dict())
    assert back.epoch == [1] and back.stopped_early and math.isnan(back.test_accuracy[0])
    with pytest.raises(ValueError, match="unknown"):
        History.from_dict({"nope": []})


def test_confusion_matrix_and_plots():
    m = confusion_matrix(np.array([0, 0, 2]), np.array([0, 1, 2]), num_classes=4)
    assert m.shape == (4, 4) and m[0, 0] == 1 and m[0, 1] == 1 and m.sum() == 3
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(np.array([5]), np.array([0]), num_classes=3)
    h = History(epoch=[1, 2], train_accuracy=[0.5, 0.9], test_accuracy=[0.6, 0.8])
    assert plot_curves(h, "accuracy").axes[0].get_ylabel() == "accuracy"
    with pytest.raises(ValueError, match="metric"):
        plot_curves(h, "f1")
    assert "83.3%" in plot_confusion(m[:3, :3] + np.eye(3, dtype=int)).axes[0].get_title()


def test_digit_input_keeps_8x8_digits_and_normalizes_large_pictures(split):
    digit = split.x_test[0, 0]
    pixels = np.rint(digit * 255).astype(np.uint8)
    np.testing.assert_allclose(digit_input(pixels)[0, 0], digit, atol=1 / 255)
    paper = (255 - np.kron(pixels, np.ones((12, 12), np.uint8)))  # dark ink on white, 96x96
    rgb = np.repeat(paper[:, :, None], 3, axis=2)
    big = digit_input(rgb)[0, 0]
    assert big.shape == (8, 8) and big.max() == 1.0
    assert np.corrcoef(big.ravel(), digit.ravel())[0, 1] > 0.8


def test_small_cnn_from_state_dict():
    model = nn.SmallCNN(widths=(4, 8, 8), image_size=16, num_classes=3, rng=0)
    rebuilt = small_cnn_from_state_dict(model.state_dict())
    assert weights_equal(model, rebuilt)
    x = np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(predict_logits(model, x), predict_logits(rebuilt, x))
    with pytest.raises(ValueError, match="SmallCNN"):
        small_cnn_from_state_dict({"fc.weight": np.zeros((2, 2))})
