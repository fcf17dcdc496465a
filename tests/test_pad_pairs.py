"""The constant padding the engine's copies use (:func:`convlayers.functional._common.pad_pairs`)
against NumPy's ``np.pad``: by slices and by the compiled kernel on every thread
(:mod:`convlayers.kernels.pad`), for any number of padded axes, fill values and dtypes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from convlayers import config
from convlayers.functional._common import pad_pairs

CASES = [
    ((2, 3, 5, 7), ((1, 2), (0, 3)), 0.0),
    ((2, 3, 5, 7), ((3, 0), (1, 1)), -np.inf),  # a max pool's lowest value
    ((1, 4, 1, 1), ((2, 2), (2, 2)), 0.5),
    ((3, 4, 9), ((2, 1),), 1.5),  # one padded axis
    ((2, 2, 3, 4, 5), ((1, 0), (0, 2), (3, 1)), 0.0),  # three
    ((4, 5, 6), ((0, 0), (2, 0)), 0.0),
    ((0, 3, 4, 4), ((1, 1), (1, 1)), 0.0),  # an empty batch
]


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize(("shape", "pairs", "value", "dtype"), [
    (*case, dtype) for case in CASES for dtype in (np.float32, np.float64, np.int32)
    if np.isfinite(case[2]) or dtype is not np.int32])  # an integer array has no -inf
def test_pad_pairs_matches_numpy_pad(compiled: bool, shape: tuple, pairs: tuple, value: float,
                                     dtype: type) -> None:
    """Each case by slices and (forced) by the compiled kernel, on a contiguous input and on
    a reversed view: ``np.pad``'s array, dtype included."""
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 10).astype(dtype)
    for given in (x, x[..., ::-1]):
        want = np.pad(given, ((0, 0),) * (x.ndim - len(pairs)) + pairs, constant_values=value)
        with config.engine_settings(parallel_pad_elements=0 if compiled else 1 << 40):
            got = pad_pairs(given, pairs, value)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_large_padding_on_every_thread_keeps_nan_and_inf(
        threads: int, set_threads: Callable[[int], None]) -> None:
    """Above ``parallel_pad_elements`` (the default), the kernel's copy keeps every value as it
    is, NaN and infinities included, on one thread and on two."""
    x = np.random.default_rng(3).standard_normal((9, 111, 43, 43)).astype(np.float32)
    x[0, 0, 0, 0], x[4, 7, 42, 3], x[8, 110, 20, 42] = np.nan, np.inf, -np.inf
    assert x.size >= config.engine.parallel_pad_elements
    set_threads(threads)
    got = pad_pairs(x, ((1, 2), (2, 1)))
    np.testing.assert_array_equal(got, np.pad(x, ((0, 0), (0, 0), (1, 2), (2, 1))))


def test_nothing_to_pad_returns_the_input_and_a_crop_goes_to_numpy() -> None:
    x = np.ones((1, 2, 3, 3), np.float32)
    assert pad_pairs(x, ((0, 0), (0, 0))) is x
    with pytest.raises(ValueError):  # np.pad refuses negative widths, as before
        pad_pairs(x, ((-1, 0), (0, 0)))
