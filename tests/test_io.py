"""convlayers.io: image round trips, the 8-bit rule, clear errors, atomic writes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from convlayers.io import atomic_write, read_image, write_image


@pytest.mark.parametrize(("shape", "mode"), [((7, 5), "L"), ((7, 5, 3), "RGB"), ((7, 5, 4), "RGBA")])
def test_png_round_trip(tmp_path, shape, mode):
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "img.png"
    write_image(path, arr)
    back = read_image(path)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, arr)
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(read_image(str(path), mode), arr)  # str paths too


def test_read_image_converts(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    path = tmp_path / "c.png"
    write_image(path, rgb)
    assert read_image(path, "L").shape == (4, 6)
    assert read_image(path, "RGBA")[..., 3].min() == 255
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (4, 6, 3)
    Image.fromarray(rgb[..., 0] > 128).save(tmp_path / "b.png")  # 1-bit
    assert set(np.unique(read_image(tmp_path / "b.png"))) <= {0, 255}
    with pytest.raises(ValueError, match="mode must be one of"):
        read_image(path, "CMYK")


def test_write_image_value_rule(tmp_path):
    path = tmp_path / "v.png"
    write_image(path, np.array([[0.0, 0.5, 1.0]]))  # floats in [0, 1]: times 255
    np.testing.assert_array_equal(read_image(path), [[0, 128, 255]])
    write_image(path, np.array([[-4.0, 0.0, 4.0]], dtype=np.float32))  # min-max rescaled
    np.testing.assert_array_equal(read_image(path), [[0, 128, 255]])
    write_image(path, np.array([[0, 17, 255]], dtype=np.int64))  # integers in range: as is
    np.testing.assert_array_equal(read_image(path), [[0, 17, 255]])
    write_image(path, np.array([[True, False]]))
    np.testing.assert_array_equal(read_image(path), [[255, 0]])
    write_image(path, np.full((2, 2, 1), 7.0))  # (H, W, 1) is gray; constant outside [0, 1]
    np.testing.assert_array_equal(read_image(path), np.zeros((2, 2)))


def test_write_image_errors(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_image(tmp_path / "x.png", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="suffix"):
        write_image(tmp_path / "x.weird", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "x.png", np.array([[np.nan, 0.0]]))
    with pytest.raises(TypeError, match="dtype"):
        write_image(tmp_path / "x.png", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="does not exist"):
        write_image(tmp_path / "missing" / "x.png", np.zeros((2, 2)))
    assert list(tmp_path.iterdir()) == []


def test_read_image_errors_name_the_path(tmp_path):
    missing = tmp_path / "nothing.png"
    with pytest.raises(ValueError, match=r"nothing\.png.*does not exist"):
        read_image(missing)
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(ValueError, match=r"fake\.png.*not an image"):
        read_image(fake)
    with pytest.raises(ValueError, match="directory"):
        read_image(tmp_path)


def test_atomic_write_keeps_original_on_error(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"original")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]  # temp removed


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    target = tmp_path / "config.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    with atomic_write(target, "w") as f:
        f.write("new ü")
    assert target.read_text(encoding="utf-8") == "new ü"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    fresh = tmp_path / "fresh.bin"
    with atomic_write(str(fresh)) as f:
        f.write(b"\x00\x01")
    assert fresh.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(fresh.stat().st_mode) & 0o600 == 0o600


def test_atomic_write_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="mode must be one of"), atomic_write(tmp_path / "a", "r"):
        pass
    with pytest.raises(ValueError, match="encoding must be None"), atomic_write(
        tmp_path / "a", "wb", encoding="utf-8"
    ):
        pass
    with pytest.raises(ValueError, match="directory"), atomic_write(tmp_path):
        pass
    with pytest.raises(ValueError, match="does not exist"), atomic_write(tmp_path / "no" / "a"):
        pass
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- output paths (issue 16)
def test_prepare_output_checks_suffix_and_what_is_in_the_way(tmp_path):
    from convlayers.io import prepare_output

    with pytest.raises(ValueError, match=r"-o '.*out\.txt' must end in an image suffix"):
        prepare_output(tmp_path / "out.txt", "image", what="-o")
    with pytest.raises(ValueError, match=r"new folder.*'\.txt'"):
        prepare_output(tmp_path / "out.txt", "folder")
    (tmp_path / "a.png").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        prepare_output(tmp_path / "a.png", "image")
    with pytest.raises(ValueError, match=r"must end in \.safetensors or \.npz"):
        prepare_output(tmp_path / "w.pt", "weights")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        prepare_output(tmp_path / "file", "folder")
    with pytest.raises(ValueError, match="is not a folder"):
        prepare_output(tmp_path / "file" / "w.npz", "weights")
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ValueError, match="not a regular file"):
        prepare_output(tmp_path / "pipe.png", "image")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "file", "pipe.png"]


def test_prepare_output_creates_parents_and_refuses_unwritable_folders(tmp_path):
    from convlayers.io import prepare_output

    target = prepare_output(tmp_path / "new" / "deeper" / "w.safetensors", "weights")
    assert target.parent.is_dir() and list(target.parent.iterdir()) == []  # probe removed
    with pytest.raises(ValueError, match="cannot be written"):
        prepare_output("/proc/w.safetensors", "weights")


def test_prepare_output_zarr_only_over_a_zarr_store(tmp_path):
    from convlayers.io import is_zarr_store, prepare_output

    store = tmp_path / "ok.zarr"
    store.mkdir()
    (store / ".zarray").write_text("{}")
    assert is_zarr_store(store) and prepare_output(store, "zarr") == store
    other = tmp_path / "other.zarr"
    other.mkdir()
    (other / "thesis.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a zarr store"):
        prepare_output(other, "zarr")
    assert (other / "thesis.txt").read_text() == "keep"


def test_read_image_limits_come_before_decoding(tmp_path):
    from convlayers import config

    path = tmp_path / "x.png"
    write_image(path, np.zeros((30, 40), np.uint8))
    with config.settings(max_image_pixels=40 * 30 - 1), \
            pytest.raises(ValueError, match=r"x\.png.*40x30.*max_image_pixels"):
        read_image(path)
    with config.settings(max_array_bytes=100), pytest.raises(ValueError, match=r"x\.png"):
        read_image(path)
    truncated = tmp_path / "t.png"
    truncated.write_bytes(path.read_bytes()[:45])  # cut inside the pixel data
    with pytest.raises(ValueError, match=r"t\.png"):
        read_image(truncated)
