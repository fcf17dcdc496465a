"""`convlayers filter` and `predict` on Dask give what the in-memory commands give."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convlayers.filters import apply_filter
from convlayers.io import read_image, write_image


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "convlayers", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from convlayers.data import sample_photo

    path = tmp_path_factory.mktemp("in") / "cat.png"
    write_image(path, sample_photo(gray=True))
    return path


def test_filter_on_a_local_cluster_equals_in_memory(photo: Path, tmp_path: Path) -> None:
    plain, dasked = tmp_path / "plain.png", tmp_path / "dask.png"
    assert _cli("filter", photo, "--filter", "sobel_x", "-o", plain).returncode == 0
    done = _cli("filter", photo, "--filter", "sobel_x", "-o", dasked, "--workers", "2",
                "--chunks", "64")
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(read_image(dasked), read_image(plain))


def test_filter_to_zarr_keeps_float_values(photo: Path, tmp_path: Path) -> None:
    import zarr

    target = tmp_path / "out.zarr"
    done = _cli("filter", photo, "--filter", "laplacian", "-o", target, "--scheduler", "threads",
                "--chunks", "100")
    assert done.returncode == 0, done.stderr
    stored = np.asarray(zarr.open(str(target), mode="r")[...])
    expected = apply_filter(read_image(photo), "laplacian")
    np.testing.assert_allclose(stored, expected, rtol=1e-12, atol=1e-9)


def test_predict_on_dask_equals_in_memory(tmp_path: Path) -> None:
    from convlayers.datasets import load_digits

    weights = tmp_path / "w.safetensors"
    assert _cli("train", "digits", "--epochs", "1", "--widths", "8,16", "-o", weights,
                "--no-progress").returncode == 0
    split = load_digits(seed=0)
    for i in range(5):
        write_image(tmp_path / f"d{i}.png", (split.x_test[i, 0] * 255).astype(np.uint8))
    images = [tmp_path / f"d{i}.png" for i in range(5)]
    plain = _cli("predict", weights, *images, "--json")
    dasked = _cli("predict", weights, *images, "--json", "--scheduler", "processes",
                  "--workers", "2", "--batch-size", "2")
    assert plain.returncode == 0 and dasked.returncode == 0, dasked.stderr
    ours, theirs = json.loads(dasked.stdout), json.loads(plain.stdout)
    assert [r["class"] for r in ours] == [r["class"] for r in theirs]
    np.testing.assert_allclose([r["probabilities"] for r in ours],
                               [r["probabilities"] for r in theirs], atol=1e-5)


def test_bad_dask_flags_are_one_line_errors(photo: Path, tmp_path: Path) -> None:
    done = _cli("filter", photo, "--filter", "blur", "-o", tmp_path / "x.png", "--workers", "0")
    assert done.returncode == 2 and "--workers must be >= 1" in done.stderr
    assert "Traceback" not in done.stderr
