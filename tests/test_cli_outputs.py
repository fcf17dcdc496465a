"""Issue 16.12, the command line's outputs: checked before the work, nothing replaced that is
not the command's own (a wrong suffix, a file where a folder goes, a folder that is not a zarr
store), and the explorer's pixel limit shared with the CLI's.

Split from ``tests/test_cli_hostile.py`` (its helpers build the hostile files).
"""

from __future__ import annotations

import pytest
from PIL import Image

from convlayers import config
from test_cli_hostile import PHOTO, assert_one_line_error, run, write_png


def test_filter_output_with_a_wrong_suffix_creates_nothing(capsys, tmp_path):
    code, _, err = run(capsys, "filter", PHOTO, "--filter", "blur", "-o", tmp_path / "out.txt")
    assert_one_line_error(code, err, "out.txt", "image suffix")
    code, _, err = run(capsys, "filter", PHOTO, "--filter", "blur", "sobel_x",
                       "-o", tmp_path / "out.txt")
    assert_one_line_error(code, err, "out.txt", "folder")
    assert list(tmp_path.iterdir()) == []


def test_filter_into_a_folder_refuses_a_file_in_the_way(capsys, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("keep me")
    code, _, err = run(capsys, "filter", PHOTO, "--filter", "blur", "sobel_x", "-o", blocker)
    assert_one_line_error(code, err, "results", "not a folder")
    assert blocker.read_text() == "keep me"


def test_filter_to_zarr_runs_again_and_never_replaces_what_is_not_a_store(capsys, tmp_path):
    pytest.importorskip("dask")
    pytest.importorskip("zarr")
    small = tmp_path / "small.png"
    Image.open(PHOTO).resize((40, 30)).save(small)
    store = tmp_path / "x.zarr"
    for _ in range(2):  # without a Dask flag, and again over its own store
        code, _, err = run(capsys, "filter", small, "--filter", "blur", "-o", store)
        assert code == 0, err
    import zarr

    assert zarr.open(str(store), mode="r").shape == (30, 40, 3)
    precious = tmp_path / "precious.zarr"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    plain = tmp_path / "plain.zarr"
    plain.write_text("a file")
    for target in (precious, plain):
        code, _, err = run(capsys, "filter", small, "--filter", "blur", "-o", target)
        assert_one_line_error(code, err, target.name, "not a zarr store")
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert plain.read_text() == "a file"


def test_explorer_uses_the_shared_pixel_limit(tmp_path):
    from convlayers.web.services import ServiceError, decode_image

    data = write_png(tmp_path / "small.png", 20, 10).read_bytes()
    assert decode_image(data).shape == (10, 20, 3)
    with config.settings(max_image_pixels=199), pytest.raises(ServiceError) as refused:
        decode_image(data)
    assert refused.value.status == 413 and "20x10" in refused.value.message


def test_classify_checks_its_picture_folder_before_loading_the_model(capsys, tmp_path):
    blocker = tmp_path / "pictures"
    blocker.write_text("a file")
    code, _, err = run(capsys, "classify", PHOTO, "--kernels", "-o", blocker)
    assert_one_line_error(code, err, "pictures", "not a folder")
