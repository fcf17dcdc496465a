"""Digits split, batching and augmentation."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits

from convlayers import datasets


def test_digits_split_is_seeded_disjoint_and_complete() -> None:
    a, b = datasets.load_digits(seed=3), datasets.load_digits(seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    reference = sklearn_digits()
    assert len(a.y_train) + len(a.y_test) == len(reference.target)
    # every image appears once, with its own label
    ours = np.concatenate([a.x_train, a.x_test])[:, 0] * 16
    labels = np.concatenate([a.y_train, a.y_test])
    order = np.lexsort(ours.reshape(len(ours), -1).T)
    theirs_order = np.lexsort(reference.images.reshape(len(ours), -1).T)
    np.testing.assert_allclose(ours[order], reference.images[theirs_order], atol=1e-5)
    np.testing.assert_array_equal(labels[order], reference.target[theirs_order])
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1


def test_batches_cover_every_sample_once() -> None:
    x, y = np.arange(10)[:, None], np.arange(10)
    seen = np.concatenate([yb for _, yb in datasets.batches(x, y, 3, seed=0)])
    assert sorted(seen.tolist()) == list(range(10))


def test_random_shift_moves_content_without_changing_it() -> None:
    img = np.zeros((50, 1, 6, 6), np.float32)
    img[:, 0, 2:4, 2:4] = 1
    out = datasets.random_shift(img, 1, seed=0)
    assert (out.sum(axis=(1, 2, 3)) == 4).all()  # a 2x2 blob one pixel from the edge stays whole
    assert not np.array_equal(out, img)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: datasets.load_digits(test_fraction=1.5), "test_fraction must be in (0, 1)"),
        (lambda: list(datasets.batches(np.zeros(3), np.zeros(2), 2)), "same length"),
        (lambda: list(datasets.batches(np.zeros(3), np.zeros(3), 0)), "batch_size must be >= 1"),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        call()
