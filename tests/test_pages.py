"""convlayers.inference.pages: the blocks a compiled plan keeps its constants and arena in."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

import convlayers
from convlayers import nn
from convlayers.inference import pages
from convlayers.inference.steps import Step


@pytest.mark.parametrize("nbytes", [0, 1, 100, pages.HUGE_PAGE_BYTES - 1, pages.HUGE_PAGE_BYTES,
                                    3 * pages.HUGE_PAGE_BYTES + 5])
def test_block_is_aligned_writable_and_sized(nbytes: int) -> None:
    block = pages.block(nbytes)
    assert block.dtype == np.uint8 and block.shape == (nbytes,) and block.flags.writeable
    assert block.ctypes.data % pages.ALIGN == 0 or nbytes == 0  # an empty slice has no place
    if nbytes >= pages.HUGE_PAGE_BYTES and hasattr(mmap, "MADV_HUGEPAGE"):
        assert block.ctypes.data % pages.HUGE_PAGE_BYTES == 0
    block[:] = 7  # every byte is ours
    assert int(block.sum()) == 7 * nbytes


def test_block_refuses_a_negative_size() -> None:
    with pytest.raises(ValueError, match="nbytes"):
        pages.block(-1)


def test_gather_copies_each_array_to_its_own_aligned_place() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((3, 5)).astype(np.float32), np.arange(7, dtype=np.int64),
              rng.standard_normal(pages.HUGE_PAGE_BYTES // 8), np.zeros((0, 4), np.float32),
              np.float64(2.5) * np.ones(())]
    copies = pages.gather(arrays)
    for a, c in zip(arrays, copies, strict=True):
        assert c.dtype == a.dtype and c.shape == a.shape and c.flags.c_contiguous
        np.testing.assert_array_equal(c, a)
        assert not np.shares_memory(a, c)
        assert c.ctypes.data % pages.ALIGN == 0 or c.size == 0
    for i, c in enumerate(copies):  # no two copies overlap
        for d in copies[i + 1:]:
            assert not np.shares_memory(c, d)


def _arrays(step: Step) -> list[np.ndarray]:
    found = []
    for value in vars(step).values():
        if isinstance(value, np.ndarray):
            found.append(value)
        elif isinstance(value, Step):
            found.extend(_arrays(value))
    return found


def test_a_plan_keeps_its_constants_in_one_block_and_matches_the_model() -> None:
    """Every array a compiled ResNet-18's steps hold (packed weights, biases, offsets) lies in
    one block, outside the model's own parameters, and the plan still computes the model."""
    model = nn.resnet18(num_classes=5, rng=0).eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 40, 40)).astype(np.float32)
    plan = convlayers.compile(model, x)
    arrays = [a for step in plan._steps for a in _arrays(step)]
    assert len(arrays) > 20
    bases = set()
    for a in arrays:
        base = a
        while isinstance(base.base, np.ndarray):
            base = base.base
        bases.add(id(base))
    assert len(bases) == 1
    params = [np.asarray(p) for p in model.parameters()]
    assert not any(np.shares_memory(a, p) for a in arrays for p in params)
    np.testing.assert_allclose(plan(x), model(x), rtol=1e-4, atol=1e-4)
