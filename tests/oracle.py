"""The one place tests compare convlayers with an independent oracle (mostly PyTorch).

Tolerances are stated once, relative to the size of the numbers compared: float32 results may
differ from PyTorch's by accumulation order, float64 results barely at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

torch.set_num_threads(1)

RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}


def assert_close(actual: Any, expected: Any, what: str = "") -> None:
    """Compare arrays with the dtype's tolerance, scaled by the magnitude of ``expected``."""
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().numpy()
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    rtol = RTOL[np.dtype(actual.dtype)] if actual.dtype.kind == "f" else 0
    finite = np.abs(expected[np.isfinite(expected)])
    scale = float(finite.max()) if finite.size else 1.0
    np.testing.assert_allclose(
        actual, expected, rtol=rtol * 10, atol=rtol * max(scale, 1.0) * 10, equal_nan=True,
        err_msg=what,
    )


def torch_grads(
    fn: Callable[..., torch.Tensor], arrays: Sequence[np.ndarray | None], grad_out_seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """Run ``fn`` in torch on copies of ``arrays``; return output, the upstream gradient used,
    and the gradient of every input (``None`` stays ``None``)."""
    tensors = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    rng = np.random.default_rng(grad_out_seed)
    g = rng.standard_normal(tuple(out.shape)).astype(out.detach().numpy().dtype)
    out.backward(torch.tensor(g))
    grads = [None if t is None else (t.grad.numpy() if t.grad is not None else np.zeros_like(a))
             for t, a in zip(tensors, arrays, strict=True)]
    return out.detach().numpy(), g, grads


def random_array(rng: np.random.Generator, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """Normal numbers (no denormals) in the given dtype."""
    return rng.standard_normal(tuple(shape)).astype(dtype)
