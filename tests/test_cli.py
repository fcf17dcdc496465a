"""The ``convlayers`` command line, end to end in a subprocess (``python -m convlayers``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlayers import shapes
from convlayers.cli import main
from convlayers.data import sample_photo
from convlayers.filters import apply_filter

PHOTO = Path(__file__).resolve().parents[1] / "src" / "convlayers" / "assets" / "chelsea.png"


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "convlayers", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_user_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("convlayers: error: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


def numbers(text: str) -> list[float]:
    return [float(v.replace(",", "")) for v in re.findall(r"-?\d[\d,]*\.?\d*", text)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("demo") / "nested" / "demo"
    return out, cli("demo", "--output", out)


def test_demo_writes_pictures_of_the_expected_size(demo) -> None:
    out, result = demo
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    h, w = sample_photo(gray=True).shape
    with Image.open(out / "gallery.png") as im:
        im.verify()
    with Image.open(out / "gallery.png") as im:
        assert im.format == "PNG"
        # 4 panels of 3 in at 100 dpi; 2 rows of (3 in * h/w + 0.35 in title)
        assert im.size == (1200, round(2 * (300 * h / w + 35)))
    with Image.open(out / "max_pool.gif") as im:
        assert im.n_frames == 4  # 2x2 output
    with Image.open(out / "conv.gif") as im:
        assert im.n_frames == 9  # 5x5, k3, s2, p1 -> 3x3
    with Image.open(out / "stem_kernels.png") as im:
        assert im.format == "PNG"
    assert sorted(p.name for p in out.iterdir()) == [
        "conv.gif", "gallery.png", "max_pool.gif", "stem_kernels.png"]


def test_demo_names_the_cat(demo) -> None:
    _, result = demo
    lines = result.stdout.split("EfficientNet-Lite0", 1)[1].splitlines()
    assert "Egyptian cat (class 285)" in lines[1]


def test_demo_prints_pooling_and_conv_kinds(demo) -> None:
    _, result = demo
    text = result.stdout
    assert "[13 14 15 16] -> max = 16" in text
    assert "[9 10 11 12] -> mean = 42/4 = 10.5" in text
    table = {line.split()[0]: numbers(line) for line in text.splitlines()
             if line.split()[:1] in (["standard"], ["pointwise"], ["depthwise"], ["separable"],
                                     ["grouped"]) and "needs" not in line}
    assert table["standard"][0] == 64 * 128 * 3 * 3
    assert table["pointwise"][0] == 64 * 128
    assert table["depthwise"][0] == 64 * 3 * 3
    assert table["separable"][0] == 64 * 3 * 3 + 64 * 128
    assert table["grouped"][0] == (64 // 4) * 128 * 3 * 3


def test_filter_one_image_matches_apply_filter(tmp_path) -> None:
    result = cli("filter", PHOTO, "--filter", "blur", "-o", tmp_path / "blur.png")
    assert result.returncode == 0, result.stderr
    got = np.array(Image.open(tmp_path / "blur.png"))
    want = np.clip(np.rint(apply_filter(sample_photo(), "blur")), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, want)


def test_filter_folder_batch_and_custom_kernel(tmp_path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    small = Image.open(PHOTO).resize((40, 30))
    small.save(src / "a.png")
    small.convert("L").save(src / "b.jpg")
    (src / "notes.txt").write_text("not an image")
    result = cli("filter", src, "--filter", "sobel_x", "laplacian", "-o", tmp_path / "out",
                 "--no-progress")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["a_laplacian.png", "a_sobel_x.png", "b_laplacian.png", "b_sobel_x.png"]
    with Image.open(tmp_path / "out" / "b_sobel_x.png") as im:
        assert im.size == (40, 30)
    result = cli("filter", src / "a.png", "--gray", "--kernel=-1,0,1;-2,0,2;-1,0,1",
                 "-o", tmp_path / "k.png")
    assert result.returncode == 0, result.stderr
    assert np.array(Image.open(tmp_path / "k.png")).shape == (30, 40)


def test_filter_errors_are_one_line_and_leave_outputs_alone(tmp_path) -> None:
    target = tmp_path / "keep.png"
    target.write_bytes(b"previous result")
    bad = tmp_path / "bad.png"
    bad.write_text("this is not a picture")
    assert_user_error(cli("filter", tmp_path / "missing.png", "--filter", "blur", "-o", target),
                      "missing.png")
    assert_user_error(cli("filter", bad, "--filter", "blur", "-o", target), "bad.png")
    assert_user_error(cli("filter", PHOTO, "--kernel", "1,0;1", "-o", target), "kernel")
    assert_user_error(cli("filter", PHOTO, "--filter", "nope", "-o", target), "nope")
    assert_user_error(cli("filter", PHOTO, "-o", target), "--filter")
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "keep.png"]


def test_gallery_command(tmp_path) -> None:
    result = cli("gallery", PHOTO, "-o", tmp_path / "g.png", "--filters", "sobel_x", "blur")
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "g.png") as im:
        assert im.format == "PNG" and im.size[0] == 900  # 3 panels of 3 in at 100 dpi
    assert_user_error(cli("gallery", PHOTO, "-o", tmp_path / "g.gif"), "g.gif")


@pytest.mark.parametrize(("args", "want"), [
    (["--input", "32", "--kernel", "3", "--stride", "1", "--padding", "1"], "32"),
    (["--input", "8", "--kernel", "3", "--stride", "2"], "3"),
    (["--input", "224x160", "--kernel", "7", "--stride", "2", "--padding", "3"], "112x80"),
    (["--input", "5", "--kernel", "2", "--padding", "1", "--pool", "--ceil-mode"], "3"),
    (["--input", "7", "--kernel", "3", "--dilation", "2"], "3"),
    (["--input", "4", "--kernel", "4", "--stride", "2", "--padding", "1", "--transposed"], "8"),
])
def test_shape_in_process(capsys, args, want) -> None:
    assert main(["shape", *args]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"output size: {want}"


def test_shape_matches_shapes_module() -> None:
    result = cli("shape", "--input", "33", "--kernel", "5", "--stride", "3", "--padding", "2",
                 "--dilation", "2")
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == f"output size: {shapes.conv_output_size(33, 5, 3, 2, 2)}"
    assert "floor((33 + 2*2 - 2*(5 - 1) - 1) / 3) + 1 = 10" in result.stdout  # 28//3 + 1
    assert_user_error(cli("shape", "--input", "2", "--kernel", "5"), "kernel_size")
    assert_user_error(cli("shape", "--input", "abc", "--kernel", "3"), "--input")


def test_params_numbers(capsys) -> None:
    assert main(["params", "--in", "64", "--out", "128", "--kernel", "3", "--groups", "4"]) == 0
    rows = {line.split()[0]: numbers(line) for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows["standard"][:2] == [73728, 73728 * 56 * 56]
    assert rows["grouped"][0] == 128 * 16 * 9
    assert rows["depthwise"][0] == 576
    assert main(["params", "--in", "64", "--out", "128", "--groups", "5"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_explain_commands() -> None:
    result = cli("explain", "pool", "--kind", "avg")
    assert result.returncode == 0
    assert "2.5  6.5" in result.stdout and "10.5 14.5" in result.stdout
    result = cli("explain", "conv")
    assert result.returncode == 0
    assert result.stdout.count("= -6") == 4
    result = cli("explain", "conv", "--input", "1,2,3;4,5,6;7,8,9", "--kernel", "1,1;1,1")
    assert "Output (2x2):\n  12 16\n  24 28" in result.stdout
    assert_user_error(cli("explain", "conv", "--kernel", "1,x"), "kernel")


def test_animate_command(tmp_path) -> None:
    target = tmp_path / "anim.gif"
    result = cli("animate", "--op", "conv", "--input", "5", "--kernel", "3", "--stride", "2",
                 "--padding", "1", "-o", target)
    assert result.returncode == 0, result.stderr
    with Image.open(target) as im:
        assert im.n_frames == shapes.conv_output_size(5, 3, 2, 1) ** 2
    assert main(["animate", "--op", "conv_transpose", "--input", "2", "--stride", "2",
                 "--weights", "1,2;3,4", "-o", str(tmp_path / "t.gif")]) == 0
    with Image.open(tmp_path / "t.gif") as im:
        assert im.n_frames == 16  # (2-1)*2 + (2-1) + 1 = 4 per axis
    assert_user_error(cli("animate", "--input", "2", "--kernel", "5", "-o", target), "kernel")


@pytest.mark.parametrize("command", [[], ["demo"], ["gallery"], ["filter"], ["shape"],
                                     ["params"], ["explain"], ["explain", "pool"],
                                     ["explain", "conv"], ["animate"]])
def test_help_everywhere(capsys, command) -> None:
    assert main([*command, "--help"]) == 0
    assert "usage: convlayers" in capsys.readouterr().out


def test_console_script_if_installed() -> None:
    exe = shutil.which("convlayers", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("console script not installed in this environment")
    result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("convlayers ")
