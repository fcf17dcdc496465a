"""``functional.linear`` and ``linear_backward`` against torch on each of their paths: numba's
dot products for few rows and its register tiles for more (:mod:`convlayers.kernels.linear`),
NumPy's ``@`` for tiny products, chosen by ``config.engine.linear_dot_rows`` and
``serial_macs``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convlayers import config
from convlayers import functional as F
from convlayers.kernels import linear as kernel

torch = pytest.importorskip("torch")

DOT = {"serial_macs": 0, "linear_dot_rows": 1 << 30}  # every call takes the dot products
TILES = {"serial_macs": 0, "linear_dot_rows": 0}  # every call takes the tiles
PATHS = {"dot products": DOT, "tiles": TILES}


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """``(kernel, rows)`` of each call that reached numba's kernels (which still run)."""
    calls: list[tuple[str, int]] = []
    for name in ("linear_rows", "linear_tiles"):
        real = getattr(kernel, name)

        def spy(*args: np.ndarray, real=real, name=name) -> None:  # type: ignore[no-untyped-def]
            calls.append((name, args[0].shape[0] if name == "linear_rows" else args[1].shape[1]))
            real(*args)

        monkeypatch.setattr(kernel, name, spy)
    return calls


def _torch(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    tb = None if b is None else torch.from_numpy(b)
    return torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w), tb).numpy()


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=40, deadline=None)
@given(lead=st.lists(st.integers(1, 7), min_size=1, max_size=3), f_in=st.integers(1, 70),
       f_out=st.integers(1, 100), bias=st.booleans(), double=st.booleans(),
       seed=st.integers(0, 2**16))
def test_the_kernels_equal_torch(path: str, lead: list[int], f_in: int, f_out: int, bias: bool,
                                 double: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dtype = np.float64 if double else np.float32
    x = rng.standard_normal((*lead, f_in)).astype(dtype)
    w = rng.standard_normal((f_out, f_in)).astype(dtype)
    b = rng.standard_normal(f_out).astype(dtype) if bias else None
    rows = int(np.prod(lead))
    with config.engine_settings(**PATHS[path]):
        got = F.linear(x, w, b)
    want = _torch(x, w, b)
    assert got.shape == want.shape and got.dtype == dtype
    scale = (np.abs(x).reshape(rows, f_in) @ np.abs(w).T).reshape(want.shape) + 1
    tol = 1e-5 if double else 1e-4
    np.testing.assert_array_less(np.abs(got - want), tol * scale)


def test_few_rows_take_the_dot_products_more_the_tiles_and_tiny_products_numpy(
        kernel_calls: list[tuple[str, int]]) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1000, 600)).astype(np.float32)
    for rows in (1, 3, 4, 40):
        x = rng.standard_normal((rows, 600)).astype(np.float32)
        got = F.linear(x, w)  # default settings: 600k multiply-adds a row, over serial_macs
        np.testing.assert_allclose(got, _torch(x, w, None), rtol=1e-4, atol=1e-3)
    # below linear_dot_rows = 4 rows the dot products, from there the tiles
    assert kernel_calls == [("linear_rows", 1), ("linear_rows", 3), ("linear_tiles", 4),
                            ("linear_tiles", 40)]
    small = rng.standard_normal((1, 20)).astype(np.float32)
    F.linear(small, w[:10, :20])  # 200 multiply-adds, under serial_macs: BLAS on this thread
    F.linear(rng.standard_normal((2, 600)), w.astype(np.float64))  # float64: the dot products
    assert kernel_calls[4:] == [("linear_rows", 2)]


def test_a_strided_input_and_a_wrong_width() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3)).astype(np.float32).T  # (3, 40), not contiguous
    w = rng.standard_normal((7, 40)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    with config.engine_settings(**DOT):
        got = F.linear(x, w, b)
    np.testing.assert_allclose(got, _torch(np.ascontiguousarray(x), w, b), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="in_features=40"):
        F.linear(x[:, :39], w)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("where", ["x", "w", "bias"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_values_give_torch_s_non_finite_outputs(path: str, where: str,
                                                           value: float) -> None:
    """With inf or NaN in the input, the weights or the bias, an output is inf, -inf or NaN
    exactly where torch's is: the kernel may reorder its sums, but not assume them finite."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 33)).astype(np.float32)
    w = rng.standard_normal((20, 33)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    target = {"x": x, "w": w, "bias": b}[where]
    flat = target.reshape(-1)
    flat[rng.choice(flat.size, 3, replace=False)] = value
    flat[0] = -value if not np.isnan(value) else value  # an inf of each sign meets: NaN
    with config.engine_settings(**PATHS[path]):
        got = F.linear(x, w, b)
    want = _torch(x, w, b)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    assert np.isfinite(want).any() and not np.isfinite(want).all()
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=30, deadline=None)
@given(lead=st.lists(st.integers(1, 7), min_size=1, max_size=3), f_in=st.integers(1, 300),
       f_out=st.integers(1, 100), double=st.booleans(), seed=st.integers(0, 2**16))
def test_the_gradients_equal_torch(path: str, lead: list[int], f_in: int, f_out: int,
                                   double: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dtype = np.float64 if double else np.float32
    x = rng.standard_normal((*lead, f_in)).astype(dtype)
    w = rng.standard_normal((f_out, f_in)).astype(dtype)
    g = rng.standard_normal((*lead, f_out)).astype(dtype)
    with config.engine_settings(**PATHS[path]):
        gx, gw, gb = F.linear_backward(g, x, w)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(w).requires_grad_()
    tb = torch.zeros(f_out, dtype=tx.dtype, requires_grad=True)
    torch.nn.functional.linear(tx, tw, tb).backward(torch.from_numpy(g))
    rows = int(np.prod(lead))
    tol = 1e-5 if double else 1e-4
    ax, ag = (np.abs(a).reshape(rows, -1) for a in (x, g))
    np.testing.assert_array_less(np.abs(gx - tx.grad.numpy()),
                                 tol * (ag @ np.abs(w)).reshape(gx.shape) + tol)
    np.testing.assert_array_less(np.abs(gw - tw.grad.numpy()), tol * (ag.T @ ax) + tol)
    np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=tol, atol=tol * rows)
    assert gx.dtype == gw.dtype == dtype and gx.shape == x.shape and gw.shape == w.shape


def test_an_output_over_the_memory_cap_is_refused_before_it_is_allocated() -> None:
    """Two small arrays can ask for a huge output (rows x out_features): refused with the
    shapes named, as the convolutions' outputs are."""
    x = np.ones((3000, 1), np.float32)
    w = np.ones((5000, 1), np.float32)
    with config.settings(max_array_bytes=1 << 20):
        with pytest.raises(ValueError, match=r"the output of linear \(shape \(3000, 5000\)"):
            F.linear(x, w)
        assert F.linear(x[:50], w[:50]).shape == (50, 50)  # 10 KB: under the cap


def test_the_backward_names_a_weight_that_does_not_fit_the_input() -> None:
    """An input of 6 features and a weight of 3 could reshape into each other; the shapes are
    checked first, with the message the forward gives."""
    g = np.ones((2, 5), np.float32)
    with pytest.raises(ValueError, match="in_features=3"):
        F.linear_backward(g, np.ones((2, 6), np.float32), np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match="weight"):
        F.linear_backward(g, np.ones((2, 6), np.float32), np.ones((5, 3, 2), np.float32))
