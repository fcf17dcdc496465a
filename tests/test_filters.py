"""convlayers.filters against scipy.signal: every mode, boundary, dtype and engine path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convlayers import config
from convlayers.data import sample_photo
from convlayers.filters import (
    FILTERS,
    apply_filter,
    box,
    convolve2d,
    correlate2d,
    engine,
    gaussian,
    get_filter,
    sobel_gradient,
    unsharp,
)

# Tolerances, stated once. Results may differ from SciPy by float rounding only (the separable
# and FFT paths sum in another order, float32 inputs are computed in float32), measured relative
# to the magnitude of the data: |ours - scipy| <= RTOL[dtype] * (max|image| + |fill|) * sum|kernel|.
RTOL = {
    np.dtype(np.float32): 1e-5,
    np.dtype(np.complex64): 1e-5,
    np.dtype(np.float64): 1e-12,
    np.dtype(np.complex128): 1e-12,
}
# The dtype rule: integers and bool become float64, floats and complex keep their precision.
EXPECTED_DTYPE = {
    "bool": np.float64,
    "uint8": np.float64,
    "int16": np.float64,
    "float32": np.float32,
    "float64": np.float64,
    "complex128": np.complex128,
}
MODES = ("full", "same", "valid")
BOUNDARIES = ("fill", "wrap", "symm")
SCIPY = {True: scipy.signal.convolve2d, False: scipy.signal.correlate2d}
OURS = {True: convolve2d, False: correlate2d}
HYPO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_matches_scipy(ours: np.ndarray, ref: np.ndarray, image, kernel, fillvalue=0) -> None:
    """The one oracle comparison: same shape, values within RTOL of the data's magnitude."""
    assert ours.shape == ref.shape
    scale = (np.abs(np.asarray(image)).max() + abs(fillvalue)) * np.abs(kernel).sum()
    err = np.abs(ours - ref).max() if ours.size else 0.0
    assert err <= RTOL[ours.dtype] * max(scale, 1e-30), f"max error {err} at scale {scale}"


def _image(dtype_name: str, shape: tuple[int, int]) -> st.SearchStrategy[np.ndarray]:
    if dtype_name == "bool":
        elements: st.SearchStrategy = st.booleans()
    elif dtype_name in ("uint8", "int16"):
        elements = st.integers(0 if dtype_name == "uint8" else -300, 255)
    elif dtype_name == "complex128":
        elements = st.complex_numbers(max_magnitude=100, allow_nan=False, allow_infinity=False)
    else:
        width = 32 if dtype_name == "float32" else 64
        elements = st.floats(-100, 100, width=width)
    return hnp.arrays(np.dtype(dtype_name), shape, elements=elements)


@st.composite
def configs(draw, kernel_kind: str = "any", max_kernel: int = 8):
    """(image, kernel, mode, boundary, fillvalue) with even/odd sizes, kernels > images too."""
    dtype_name = draw(st.sampled_from(sorted(EXPECTED_DTYPE)))
    image = draw(_image(dtype_name, (draw(st.integers(1, 10)), draw(st.integers(1, 10)))))
    kshape = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    values = st.floats(-5, 5)
    if kernel_kind == "rank1" or (kernel_kind == "any" and draw(st.booleans())):
        col = draw(hnp.arrays(np.float64, kshape[0], elements=values))
        row = draw(hnp.arrays(np.float64, kshape[1], elements=values))
        kernel = np.outer(col, row)
    else:
        kernel = draw(hnp.arrays(np.float64, kshape, elements=values))
    mode = draw(st.sampled_from(MODES))
    boundary = draw(st.sampled_from(BOUNDARIES))
    fillvalue = draw(st.floats(-10, 10))
    return image, kernel, mode, boundary, fillvalue


def _check_against_scipy(cfg, flip: bool, method: str = "auto") -> None:
    image, kernel, mode, boundary, fillvalue = cfg
    try:
        ref = SCIPY[flip](image, kernel, mode, boundary, fillvalue)
    except ValueError:  # e.g. "valid" with neither input the larger in both dimensions
        with pytest.raises(ValueError, match="valid"):
            engine.filter2d(image, kernel, mode, boundary, fillvalue, flip, method)
        return
    if method == "auto":
        ours = OURS[flip](image, kernel, mode, boundary, fillvalue)
    else:
        ours = engine.filter2d(image, kernel, mode, boundary, fillvalue, flip, method)
    assert ours.dtype == EXPECTED_DTYPE[image.dtype.name]
    assert_matches_scipy(ours, ref, image, kernel, fillvalue)


@HYPO
@given(cfg=configs(), flip=st.booleans())
def test_matches_scipy(cfg, flip):
    _check_against_scipy(cfg, flip)


@HYPO
@given(cfg=configs(max_kernel=14), flip=st.booleans())
def test_kernel_larger_than_image(cfg, flip):
    _check_against_scipy(cfg, flip)


@pytest.mark.parametrize("method", ["direct", "fft", "numpy"])
@HYPO
@given(cfg=configs(), flip=st.booleans())
def test_each_path_matches_scipy(method, cfg, flip):
    if method == "direct" and cfg[0].dtype.kind == "c":
        cfg = (cfg[0].real.copy(), *cfg[1:])
    _check_against_scipy(cfg, flip, method)


@HYPO
@given(cfg=configs(kernel_kind="rank1"), flip=st.booleans())
def test_separable_path_matches_scipy(cfg, flip):
    image, kernel, mode = cfg[0], cfg[1], cfg[2]
    if mode == "valid" and (image.shape[0] < kernel.shape[0] or image.shape[1] < kernel.shape[1]):
        kernel = image  # SciPy's rule: 'valid' swaps them, so the image is what gets factored
    if image.dtype.kind == "c" or engine._rank1_factors(np.asarray(kernel, float)) is None:
        return  # complex data, or an all-zero kernel: not rank 1
    _check_against_scipy(cfg, flip, "separable")


@pytest.mark.parametrize("shape", [(67, 45), (10, 130)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_paths_on_larger_images(shape, dtype, boundary):
    """Several row chunks per thread, borders wider than one chunk's halo."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal(shape).astype(dtype)
    kernels = {"separable": gaussian(7, 2.0), "direct": rng.standard_normal((4, 5)),
               "fft": rng.standard_normal((9, 8))}
    for method, kernel in kernels.items():
        for flip in (True, False):
            for mode in MODES:
                ours = engine.filter2d(image, kernel, mode, boundary, 0.5, flip, method)
                ref = SCIPY[flip](image, kernel, mode, boundary, 0.5)
                assert ours.dtype == dtype
                assert_matches_scipy(ours, ref, image, kernel, 0.5)


def test_auto_picks_each_path():
    f32, f64, c128 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.complex128)
    for name in ("sobel_x", "sobel_y", "prewitt_x", "scharr_y", "blur", "gaussian", "vertical"):
        assert engine._pick_method("auto", FILTERS[name], f32)[0] == "separable", name
    for name in ("laplacian", "sharpen", "emboss", "unsharp"):
        assert engine._pick_method("auto", FILTERS[name], f32)[0] == "direct", name
    big = np.random.default_rng(0).standard_normal((31, 31))
    assert engine._pick_method("auto", big, f32)[0] == "fft"
    assert engine._pick_method("auto", big, f64)[0] == "fft"
    assert engine._pick_method("auto", FILTERS["laplacian"], c128)[0] == "numpy"
    with pytest.raises(ValueError, match="rank-1"):
        engine._pick_method("separable", FILTERS["laplacian"], f64)


def test_rank1_factors_are_exact_for_integer_kernels():
    col, row = engine._rank1_factors(FILTERS["sobel_x"])
    assert np.array_equal(np.outer(col, row), FILTERS["sobel_x"])
    assert (row == 0).sum() == 1  # the zero tap stays exactly zero, so it is skipped


def test_thread_setting_does_not_change_results():
    image = np.random.default_rng(1).standard_normal((40, 33)).astype(np.float32)
    results = []
    for threads in (1, 2):
        with config.settings(threads=threads):
            results.append(convolve2d(image, FILTERS["laplacian"], "same", "symm"))
    np.testing.assert_array_equal(results[0], results[1])


# --- convolution versus correlation ---------------------------------------------------------


def test_sobel_sign_differs_between_convolve_and_correlate():
    step = np.zeros((5, 6))
    step[:, 3:] = 1.0  # dark to bright, left to right
    conv = convolve2d(step, FILTERS["sobel_x"], "same", "symm")
    corr = correlate2d(step, FILTERS["sobel_x"], "same", "symm")
    assert conv[2, 2] == -4 and corr[2, 2] == 4
    np.testing.assert_array_equal(conv, -corr)


@pytest.mark.parametrize("name", ["blur", "laplacian", "gaussian", "sharpen"])
def test_symmetric_kernels_agree_under_both(name):
    image = sample_photo(gray=True)[:40, :50]
    conv = convolve2d(image, FILTERS[name], "same", "symm")
    corr = correlate2d(image, FILTERS[name], "same", "symm")
    assert_matches_scipy(conv, corr, image, FILTERS[name])


def test_even_kernel_same_mode_centring_differs():
    """correlate2d == convolve2d(flipped kernel) except in "same" mode with an even side."""
    x = np.arange(30.0).reshape(5, 6)
    k = np.array([[1.0, 2.0], [3.0, 5.0]])
    for mode in ("full", "valid"):
        np.testing.assert_allclose(correlate2d(x, k, mode), convolve2d(x, k[::-1, ::-1], mode))
    assert not np.allclose(correlate2d(x, k, "same"), convolve2d(x, k[::-1, ::-1], "same"))


# --- the filter bank ------------------------------------------------------------------------


def test_seed_kernels():
    np.testing.assert_array_equal(FILTERS["vertical"], [[1, 0, -1]] * 3)
    np.testing.assert_array_equal(FILTERS["horizontal"], [[1, 1, 1], [0, 0, 0], [-1, -1, -1]])
    np.testing.assert_array_equal(FILTERS["sobel_x"], [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    np.testing.assert_array_equal(FILTERS["sobel_y"], FILTERS["sobel_x"].T)
    np.testing.assert_array_equal(FILTERS["blur"], np.ones((3, 3)) / 9)
    np.testing.assert_array_equal(FILTERS["laplacian"], [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]])
    for name, k in FILTERS.items():
        assert k.dtype == np.float64 and k.ndim == 2, name
        assert not k.flags.writeable, name


def test_builders():
    g = gaussian(7, 1.5)
    assert g.shape == (7, 7) and np.isclose(g.sum(), 1) and np.allclose(g, g.T)
    assert np.allclose(g, g[::-1, ::-1]) and g.argmax() == 24
    np.testing.assert_array_equal(box(4), np.full((4, 4), 1 / 16))
    u = unsharp(5, 1.0, 2.0)
    assert np.isclose(u.sum(), 1) and u[2, 2] > 1
    np.testing.assert_array_equal(FILTERS["gaussian"], gaussian())
    np.testing.assert_array_equal(FILTERS["unsharp"], unsharp())
    np.testing.assert_array_equal(FILTERS["box"], box())
    with pytest.raises(ValueError, match="sigma"):
        gaussian(5, sigma=0)
    with pytest.raises(ValueError, match="size"):
        gaussian(0)
    with pytest.raises(TypeError, match="n must be an integer"):
        box(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="odd"):
        unsharp(4)


def test_get_filter():
    k = get_filter("sobel_x")
    k[0, 0] = 99  # a writable copy
    assert FILTERS["sobel_x"][0, 0] == -1
    with pytest.raises(ValueError, match=r"'nope'.*known names: blur, box"):
        get_filter("nope")
    assert get_filter([[1, 2]]).dtype == np.float64


# --- photos ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vertical", "horizontal", "sobel_x", "sobel_y", "blur", "laplacian"])
def test_apply_filter_reproduces_seed_recipe_gray(name):
    gray = sample_photo(gray=True)
    ref = scipy.signal.convolve2d(gray, FILTERS[name], mode="same", boundary="symm")
    ours = apply_filter(gray, name)
    assert ours.dtype == np.float64
    assert_matches_scipy(ours, ref, gray, FILTERS[name])


@pytest.mark.parametrize("name", ["sobel_x", "laplacian", "gaussian"])
def test_apply_filter_rgb_per_channel(name):
    rgb = sample_photo()
    ours = apply_filter(rgb, name)
    assert ours.shape == rgb.shape
    for c in range(3):
        ref = scipy.signal.convolve2d(rgb[:, :, c], FILTERS[name], mode="same", boundary="symm")
        assert_matches_scipy(ours[:, :, c], ref, rgb, FILTERS[name])
    as_float = apply_filter(rgb.astype(np.float32) / 255, name)
    assert as_float.dtype == np.float32
    assert_matches_scipy(as_float * 255, ours.astype(np.float32), rgb, FILTERS[name])


def test_apply_filter_uint8_output():
    rgb = sample_photo()
    out = apply_filter(rgb, "sharpen", output="uint8")
    ref = np.clip(np.rint(apply_filter(rgb, "sharpen")), 0, 255).astype(np.uint8)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(apply_filter(rgb, [[1.0]], output="uint8"), rgb)


def test_sobel_gradient():
    gray = sample_photo(gray=True).astype(np.float64)
    mag, ang = sobel_gradient(gray)
    gx = scipy.signal.correlate2d(gray, FILTERS["sobel_x"], "same", "symm")
    gy = scipy.signal.correlate2d(gray, FILTERS["sobel_y"], "same", "symm")
    assert_matches_scipy(mag, np.hypot(gx, gy), gray, 2 * FILTERS["sobel_x"])
    ramp = np.tile(np.arange(6.0), (6, 1)).T  # brighter downwards
    _, down = sobel_gradient(ramp)
    np.testing.assert_allclose(down[2:4, 2:4], np.pi / 2)
    assert np.all(np.abs(ang) <= np.pi)


# --- validation -----------------------------------------------------------------------------


ONES = np.ones((4, 4))
K3 = np.ones((3, 3))


@pytest.mark.parametrize(
    ("func", "args", "kwargs", "error", "match"),
    [
        (convolve2d, (ONES, np.ones((3, 3, 1))), {}, ValueError, "kernel must be a 2-D"),
        (convolve2d, (np.ones((4, 4, 1)), K3), {}, ValueError, "image must be a 2-D"),
        (convolve2d, (np.ones((0, 4)), K3), {}, ValueError, "image must not be empty"),
        (convolve2d, (ONES, np.ones((0, 3))), {}, ValueError, "kernel must not be empty"),
        (convolve2d, (ONES, K3), {"mode": "half"}, ValueError,
         "mode must be one of 'full', 'same', 'valid', got 'half'"),
        (correlate2d, (ONES, K3), {"boundary": "reflect"}, ValueError,
         "boundary must be one of .*got 'reflect'"),
        (convolve2d, (np.array([["a"]]), K3), {}, TypeError, "image must be a numeric array"),
        (convolve2d, (ONES, np.array([["a"]])), {}, TypeError, "kernel must be a numeric array"),
        (convolve2d, (ONES, K3), {"fillvalue": "x"}, TypeError, "fillvalue must be a number"),
        (convolve2d, (ONES, K3), {"fillvalue": 1j}, ValueError, "fillvalue must be real"),
        (convolve2d, (np.ones((2, 5)), K3, "valid"), {}, ValueError, "mode='valid'"),
        (apply_filter, (ONES, "nope"), {}, ValueError, "known names"),
        (apply_filter, (ONES, "blur"), {"output": "int"}, ValueError, "output must be one of"),
        (apply_filter, (np.ones((2, 2, 2, 2)), "blur"), {}, ValueError, "2 dimensions"),
        (apply_filter, (ONES.astype(complex), "blur"), {}, TypeError, "image must be a real"),
        (apply_filter, (ONES, np.ones((2, 2, 2))), {}, ValueError, "filter must be a 2-D"),
        (sobel_gradient, (np.ones((4, 4, 3)),), {}, ValueError, "grayscale"),
    ],
)
def test_bad_input(func, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        func(*args, **kwargs)


def test_import_is_lazy():
    """`import convlayers.filters` must not load numba (it compiles on first use only)."""
    code = "import sys, convlayers.filters; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
