"""convlayers.data: the bundled photo loads offline, without scikit-image."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

from convlayers.data import sample_photo


def test_sample_photo_rgb():
    img = sample_photo()
    assert img.shape == (300, 451, 3) and img.dtype == np.uint8
    assert 50 < img.mean() < 200 and img.std() > 20  # a real photo, not a blank


def test_sample_photo_gray_is_pillow_luma():
    rgb = sample_photo().astype(np.float64)
    gray = sample_photo(gray=True)
    assert gray.shape == (300, 451) and gray.dtype == np.uint8
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray - luma).max() <= 1.0


def test_sample_photo_returns_a_fresh_array():
    a = sample_photo(gray=True)
    a[:] = 0
    assert sample_photo(gray=True).max() > 0


def test_sample_photo_argument_check():
    with pytest.raises(TypeError, match="gray must be True or False"):
        sample_photo(gray="yes")  # type: ignore[arg-type]


def test_licence_is_shipped():
    text = (resources.files("convlayers") / "assets" / "LICENSE-chelsea.txt").read_text()
    assert "CC0" in text and "Stefan van der Walt" in text and "scikit-image" in text


def test_no_scikit_image_at_run_time():
    code = (
        "import sys, convlayers.data as d; d.sample_photo(); d.sample_photo(gray=True); "
        "print('skimage' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
