"""The register-tiled GEMM (LLVM vector code through numba intrinsics) against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from convlayers.kernels.simd import (
    KC,
    MC,
    NC,
    TILE_ROWS,
    gemm_few,
    gemm_tiled,
    gemm_tiled_add,
    gemm_tiled_cols,
    transpose_block,
    transpose_part,
)


@njit(cache=True)
def _product(u: np.ndarray, v: np.ndarray, m: np.ndarray, accumulate: bool) -> None:
    if accumulate:
        gemm_tiled_add(u, v, m)
    else:
        gemm_tiled(u, v, m)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), depth=st.integers(0, 70), cols=st.integers(1, 130),
       dtype=st.sampled_from([np.float32, np.float64]), accumulate=st.booleans(),
       seed=st.integers(0, 2**16))
def test_tiles_and_every_remainder_match_numpy(rows: int, depth: int, cols: int, dtype: type,
                                               accumulate: bool, seed: int) -> None:
    """Full tiles, one-vector tiles, the zero-padded last columns and the rows past a multiple
    of 8, for both dtypes, writing and accumulating; the output's old values must not leak."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((rows, depth)).astype(dtype)
    v = rng.standard_normal((depth, cols)).astype(dtype)
    start = rng.standard_normal((rows, cols)).astype(dtype)
    m = start.copy()
    _product(u, v, m, accumulate)
    expected = u.astype(np.float64) @ v.astype(np.float64) + (start if accumulate else 0)
    tol = (2e-5 if dtype == np.float32 else 1e-12) * max(1, depth)
    np.testing.assert_allclose(m, expected, rtol=tol, atol=tol)


@njit(cache=True)
def _columns(u: np.ndarray, v: np.ndarray, m: np.ndarray, j0: int, j1: int) -> None:
    gemm_tiled_cols(u, v, m, j0, j1)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 20), depth=st.integers(1, 30), cols=st.integers(1, 140),
       data=st.data())
def test_column_ranges_touch_only_their_columns(rows: int, depth: int, cols: int,
                                                data: st.DataObject) -> None:
    j0 = data.draw(st.integers(0, cols - 1))
    j1 = data.draw(st.integers(j0, cols))
    rng = np.random.default_rng(rows * 1000 + cols)
    u = rng.standard_normal((rows, depth)).astype(np.float32)
    v = rng.standard_normal((depth, cols)).astype(np.float32)
    m = np.full((rows, cols), 7.0, np.float32)
    _columns(u, v, m, j0, j1)
    np.testing.assert_allclose(m[:, j0:j1], (u @ v)[:, j0:j1], rtol=1e-4, atol=1e-4)
    assert (m[:, :j0] == 7).all() and (m[:, j1:] == 7).all()


def test_views_of_rows_work_and_other_layouts_are_refused() -> None:
    rng = np.random.default_rng(0)
    u = rng.standard_normal((20, 9)).astype(np.float32)
    v = rng.standard_normal((9, 50)).astype(np.float32)
    m = np.zeros((20, 50), np.float32)
    _product(u[3:19], v, m[3:19], False)  # row slices stay C-contiguous
    np.testing.assert_allclose(m[3:19], u[3:19] @ v, rtol=1e-5, atol=1e-5)
    assert not m[:3].any() and not m[19:].any()
    with pytest.raises(Exception, match=r"(?i)typing|resolution|invalid"):
        _product(u, np.asfortranarray(v), m, False)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(2, 40), depth=st.integers(2, KC + 40), cols=st.integers(1, 70),
       skip=st.integers(0, 5), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_a_transposed_left_operand_reads_by_its_strides(rows: int, depth: int, cols: int,
                                                        skip: int, dtype: type,
                                                        seed: int) -> None:
    """A left operand that is a transposed view (rows of a weight, a slice of its columns, as
    the lowered input gradient passes it) gives the product of its values, bit for bit the
    product of a contiguous copy (the same sums in the same order)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((depth, rows + 2 * skip)).astype(dtype)
    u = weight[:, skip: skip + rows].T  # (rows, depth), strided both ways
    assert not u.flags.c_contiguous
    v = rng.standard_normal((depth, cols)).astype(dtype)
    m = np.full((rows, cols), np.nan, dtype)
    _product(u, v, m, False)
    copied = np.full((rows, cols), np.nan, dtype)
    _product(np.ascontiguousarray(u), v, copied, False)
    np.testing.assert_array_equal(m, copied)
    tol = (2e-5 if dtype == np.float32 else 1e-12) * depth
    np.testing.assert_allclose(m, u.astype(np.float64) @ v, rtol=tol, atol=tol)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize(("rows", "depth", "cols"), [
    (TILE_ROWS + 1, KC + 3, NC + 17),  # two slabs of the inner dimension, two column blocks
    (2 * TILE_ROWS, 2 * KC, 2 * NC),  # whole slabs and blocks
    (3, 3 * KC + 1, 5),  # a ragged band, one-column remainder slab, narrow tail only
    (MC + TILE_ROWS + 1, KC + 3, NC + 17),  # two blocks of rows, the second's last band ragged
    (2 * MC + 3, 70, 37),  # three blocks of rows; slivers of columns and a tail of five
])
def test_blocked_products_over_slabs_and_column_blocks(rows: int, depth: int, cols: int,
                                                       accumulate: bool) -> None:
    """Products longer than one ``KC`` slab, wider than one ``NC`` block and taller than one
    ``MC`` block of rows: the slabs after the first accumulate, each block of rows runs over
    every sliver of columns, the partial band and the narrow tail keep their running sums."""
    rng = np.random.default_rng(rows + depth + cols)
    u = rng.standard_normal((rows, depth)).astype(np.float32)
    v = rng.standard_normal((depth, cols)).astype(np.float32)
    start = rng.standard_normal((rows, cols)).astype(np.float32)
    m = start.copy()
    _product(u, v, m, accumulate)
    expected = u.astype(np.float64) @ v.astype(np.float64) + (start if accumulate else 0)
    np.testing.assert_allclose(m, expected, rtol=1e-4, atol=1e-4 * np.sqrt(depth))
    j0, j1 = 5, cols - 2
    if j1 > j0:
        m2 = np.full((rows, cols), 7.0, np.float32)
        _columns(u, v, m2, j0, j1)
        np.testing.assert_allclose(m2[:, j0:j1], expected[:, j0:j1] - (start[:, j0:j1] if accumulate
                                                                       else 0),
                                   rtol=1e-4, atol=1e-4 * np.sqrt(depth))
        assert (m2[:, :j0] == 7).all() and (m2[:, j1:] == 7).all()


def test_the_product_allocates_nothing_for_its_edges() -> None:
    """The last rows and columns (fewer than a tile) are done in place by masked tiles: numba's
    allocations go through Python's allocator, so tracemalloc would see any zero-padded copy."""
    import tracemalloc

    rng = np.random.default_rng(3)
    u = rng.standard_normal((TILE_ROWS + 5, 300)).astype(np.float32)  # ragged rows, two slabs
    v = rng.standard_normal((300, NC + 13)).astype(np.float32)  # ragged columns, two blocks
    m = np.zeros((TILE_ROWS + 5, NC + 13), np.float32)
    _product(u, v, m, False)
    tracemalloc.start()
    try:
        _product(u, v, m, True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(m, 2 * (u.astype(np.float64) @ v), rtol=1e-4, atol=1e-3)
    assert peak < 1024, f"{peak} B allocated"


_OTHER_GEOMETRY = """
import numpy as np
from numba import njit
from convlayers.kernels import simd
from convlayers.kernels.simd import gemm_tiled, gemm_tiled_add, gemm_tiled_cols

@njit
def run(u, v, m, mode, j0, j1):
    if mode == 0:
        gemm_tiled(u, v, m)
    elif mode == 1:
        gemm_tiled_add(u, v, m)
    else:
        gemm_tiled_cols(u, v, m, j0, j1)

rng = np.random.default_rng(5)
checked = 0
for rows, depth, cols in [(1, 3, 1), (7, 5, 15), (9, 300, 17), (17, 257, 16 * 12 + 33),
                          (24, 40, 48), (3, 1, 200), (11, 70, 31)]:
    for dtype in (np.float32, np.float64):
        u = rng.standard_normal((rows, depth)).astype(dtype)
        v = rng.standard_normal((depth, cols)).astype(dtype)
        start = rng.standard_normal((rows, cols)).astype(dtype)
        exact = u.astype(np.float64) @ v.astype(np.float64)
        tol = (2e-5 if dtype == np.float32 else 1e-12) * depth
        for mode in (0, 1, 2):
            m = start.copy()
            j0, j1 = (cols // 3, cols - cols // 4) if mode == 2 else (0, cols)
            run(u, v, m, mode, j0, j1)
            want = start.copy()
            want[:, j0:j1] = exact[:, j0:j1] + (start[:, j0:j1] if mode == 1 else 0)
            np.testing.assert_allclose(m, want, rtol=tol, atol=tol)
            checked += 1
print(simd.TILE_ROWS, simd.TILE_VECTORS, checked)
"""


def test_the_other_machines_tile_geometry_matches_numpy(tmp_path) -> None:
    """The geometry this machine does not use (AVX-512's 8 rows by 3 vectors of 16 float32, or
    AVX2's 6 by 2 of 8) is compiled here too (LLVM splits or joins the vectors), so the edges of
    both are checked wherever the tests run."""
    import os
    import subprocess
    import sys

    from convlayers.kernels.simd import vector_bytes as host_vector_bytes

    other = 96 - host_vector_bytes()

    env = {**os.environ, "CONVLAYERS_VECTOR_BYTES": str(other),
           "NUMBA_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _OTHER_GEOMETRY], capture_output=True,
                            text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = "8 3 42" if other == 64 else "6 2 42"
    assert result.stdout.split()[-3:] == expected.split()


@njit(cache=True)
def _few(u: np.ndarray, v: np.ndarray, m: np.ndarray) -> None:
    gemm_few(u, v, m)


@pytest.mark.parametrize(("rows", "depth", "cols"), [
    (1, 5, 1), (7, 3000, 1), (40, 2100, 2), (16, 1500, 3), (33, 1025, 4), (6, 0, 2),
])
def test_products_of_a_few_columns_match_numpy(rows: int, depth: int, cols: int) -> None:
    """Products one to four columns wide as dot products along the inner dimension (chunks of
    ``FEW_KC``, their partial sums carried; an empty inner dimension a zero product), for both
    dtypes; the output's old values must not leak."""
    from convlayers.kernels.simd import FEW_KC

    assert 2 * FEW_KC < 3000  # the longest product above spans three chunks
    rng = np.random.default_rng(rows * depth + cols)
    for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-11)):
        u = rng.standard_normal((rows, depth)).astype(dtype)
        v = rng.standard_normal((depth, cols)).astype(dtype)
        m = np.full((rows, cols), np.nan, dtype)
        _few(u, v, m)
        expected = u.astype(np.float64) @ v.astype(np.float64)
        np.testing.assert_allclose(m, expected, rtol=tol, atol=tol * np.sqrt(max(1, depth)))


def test_every_column_of_a_few_is_summed_alike() -> None:
    """The dots sum every output by one loop, so a column gives the same bits alone as beside
    others, and a row the same bits whatever its place among the rows: the lowered forward's
    result must not depend on how its units split the positions and the channels."""
    rng = np.random.default_rng(5)
    u = rng.standard_normal((37, 3000)).astype(np.float32)
    v = rng.standard_normal((3000, 4)).astype(np.float32)
    together = np.empty((37, 4), np.float32)
    _few(u, v, together)
    for j in range(4):
        alone = np.empty((37, 1), np.float32)
        _few(u, np.ascontiguousarray(v[:, j: j + 1]), alone)
        np.testing.assert_array_equal(alone[:, 0], together[:, j])
        rows = np.empty((6, 1), np.float32)
        _few(u[31:], np.ascontiguousarray(v[:, j: j + 1]), rows)
        np.testing.assert_array_equal(rows[:, 0], together[31:, j])


def test_a_product_of_one_column_allocates_nothing() -> None:
    """A matrix times a vector reads the column in place; two columns are copied (4 KiB), the
    control that tracemalloc sees numba's arrays. Under 1 KiB is the call's own boxing, as for
    the tiles above."""
    import tracemalloc

    rng = np.random.default_rng(4)
    u = rng.standard_normal((300, 2000)).astype(np.float32)
    peaks = []
    for cols in (1, 2):
        v = rng.standard_normal((2000, cols)).astype(np.float32)
        m = np.zeros((300, cols), np.float32)
        _few(u, v, m)
        tracemalloc.start()
        try:
            _few(u, v, m)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        np.testing.assert_allclose(m, u.astype(np.float64) @ v, rtol=1e-4, atol=1e-3)
    assert peaks[0] < 1024 <= 4096 <= peaks[1], peaks


def test_a_transposed_left_operand_times_one_column_is_summed_as_the_tiles() -> None:
    """A transposed left operand (the lowered input gradient's weights) times one column runs
    as scaled columns added in order along ``k``: the tiles' order of sums, so the same bits,
    and numpy's values."""
    rng = np.random.default_rng(6)
    weight = rng.standard_normal((100, 1617)).astype(np.float32)
    u = weight.T  # (1617, 100), columns contiguous
    v = rng.standard_normal((100, 1)).astype(np.float32)
    few = np.full((1617, 1), np.nan, np.float32)
    _few(u, v, few)
    tiles = np.full((1617, 1), np.nan, np.float32)
    _product(u, v, tiles, False)
    np.testing.assert_array_equal(few, tiles)
    np.testing.assert_allclose(few, u.astype(np.float64) @ v, rtol=1e-4, atol=1e-4)


def _packed_by_numpy(w: np.ndarray, strip: int) -> np.ndarray:
    """The direct kernel's weight layout, from its definition: ``W (kh*kw*C_in, C_out)`` with
    row ``(i*kw + j)*C_in + ci``, cut into strips of ``strip`` columns (zeros past
    ``C_out``), each strip's rows contiguous."""
    c_out, c_in, kh, kw = w.shape
    full = w.transpose(2, 3, 1, 0).reshape(kh * kw * c_in, c_out)
    strips = -(-c_out // strip)
    padded = np.zeros((full.shape[0], strips * strip), w.dtype)
    padded[:, :c_out] = full
    return np.concatenate([padded[:, s * strip:(s + 1) * strip] for s in range(strips)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 3, 7, 7), (100, 37, 2, 5), (297, 19, 3, 3),
                                   (70, 64, 3, 3), (130, 256, 3, 3), (64, 128, 1, 1),
                                   (95, 144, 6, 5), (13, 10, 6, 6), (1, 1, 1, 1)])
def test_packed_conv_weights_follow_the_layout(shape: tuple[int, ...], dtype: type) -> None:
    """The packing gives the layout the direct kernel reads, from its definition: whole and
    partial last strips (widths of whole vectors and not), inner sizes that are and are not
    whole vectors and chunks (130x256x3x3: 2304 columns, 9 chunks); nothing of the output's
    old contents is left (the zeros past ``C_out`` written too)."""
    from convlayers.kernels.simd import conv_strip, pack_conv_weights_into

    w = np.random.default_rng(sum(shape)).standard_normal(shape).astype(dtype)
    strip = conv_strip() // w.itemsize
    expected = _packed_by_numpy(w, strip)
    out = np.full_like(expected, np.nan)
    pack_conv_weights_into(w, out)
    np.testing.assert_array_equal(out, expected, err_msg=f"{shape}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,window", [((160, 37, 6, 6), (1, 1, 4, 4)),
                                          ((5, 3, 7, 5), (2, 0, 3, 5)),
                                          ((70, 64, 3, 3), (0, 1, 3, 1)),
                                          ((130, 9, 5, 5), (4, 4, 1, 1))])
def test_a_window_of_taps_packs_as_the_cropped_weight(shape: tuple[int, ...],
                                                      window: tuple[int, int, int, int],
                                                      dtype: type) -> None:
    """A window of the kernel, packed from the whole weight in place, gives the layout of the
    cropped weight (the definition's, on a copy): the spare rows past it take the other taps,
    the packed rows nothing else."""
    from convlayers.kernels.simd import PACK_SPARE_ROWS, conv_strip, pack_conv_weights_into

    w = np.random.default_rng(sum(shape)).standard_normal(shape).astype(dtype)
    r0, c0, kh, kw = window
    strip = conv_strip() // w.itemsize
    expected = _packed_by_numpy(np.ascontiguousarray(w[:, :, r0:r0 + kh, c0:c0 + kw]), strip)
    out = np.full((expected.shape[0] + PACK_SPARE_ROWS, strip), np.nan, dtype)
    pack_conv_weights_into(w, out, window)
    np.testing.assert_array_equal(out[:expected.shape[0]], expected, err_msg=f"{shape}")


@njit(cache=True)
def _transpose_part(src, base, stride, dst, table, q0, dst_base, rows, cols):  # type: ignore[no-untyped-def]
    transpose_part(src, base, stride, dst, table, q0, dst_base, rows, cols)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_part_transpose_reads_and_writes_only_its_rows_and_columns(dtype: type) -> None:
    """``transpose_part`` copies element ``c`` of row ``r`` (``src[base + r*stride + c]``)
    to ``dst[dst_base + table[q0 + c] + r]`` for ``r < rows``, ``c < cols``, and nothing
    else: every other element of ``dst`` keeps its sentinel, whatever ``src`` holds past the
    part (NaN there) and however short ``table`` is (no entry past ``q0 + cols`` is read)."""
    from convlayers.kernels.simd import VECTOR_BYTES

    n = VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(11)
    for rows, cols in [(n, n - 1), (n - 1, n), (1, 1), (n // 2, n), (n, 2), (n // 2 + 1, n - 1),
                       (n, n)]:
        stride, base, q0, dst_base = n + 3, 2, 1, 4
        src = np.full(base + n * stride + n, np.nan, dtype)
        for r in range(rows):
            src[base + r * stride: base + r * stride + cols] = rng.standard_normal(cols)
        spacing = n + 5  # each column's row of dst, apart
        table = np.arange(q0 + cols, dtype=np.int64) * spacing  # no entry past the part
        dst = np.full(dst_base + (q0 + n + 1) * spacing, -7.0, dtype)
        _transpose_part(src, base, stride, dst, table, q0, dst_base, rows, cols)
        expected = np.full_like(dst, -7.0)
        for c in range(cols):
            for r in range(rows):
                expected[dst_base + table[q0 + c] + r] = src[base + r * stride + c]
        np.testing.assert_array_equal(dst, expected, err_msg=f"rows {rows}, cols {cols}")


@njit(cache=True)
def _transpose_block(src, base, stride, rows, cols, dst, table, dst_base):  # type: ignore[no-untyped-def]
    transpose_block(src, base, stride, rows, cols, dst, table, dst_base)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_block_transpose_copies_any_rows_and_columns(dtype: type) -> None:
    """``transpose_block`` puts row ``r``, column ``q`` of a strided block at ``dst_base +
    table[q] + r`` (against NumPy's transpose), for blocks of whole vectors, of ragged ends
    on either side and of less than a vector; nothing else of ``dst`` changes."""
    rng = np.random.default_rng(12)
    for rows, cols in [(32, 48), (37, 21), (5, 70), (19, 3), (1, 1), (16, 16)]:
        stride, base, dst_base = cols + 5, 3, 2
        src = rng.standard_normal(base + rows * stride).astype(dtype)
        pitch = rows + 3  # each column's run of dst, apart
        table = np.arange(cols, dtype=np.int64) * pitch
        dst = np.full(dst_base + cols * pitch + 4, -7.0, dtype)
        _transpose_block(src, base, stride, rows, cols, dst, table, dst_base)
        block = src[base: base + rows * stride].reshape(rows, stride)[:, :cols]
        expected = np.full_like(dst, -7.0)
        expected[dst_base: dst_base + cols * pitch].reshape(cols, pitch)[:, :rows] = block.T
        np.testing.assert_array_equal(dst, expected, err_msg=f"rows {rows}, cols {cols}")
