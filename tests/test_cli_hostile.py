"""Issue 16, the command line: hostile images, absurd sizes, non-finite numbers, bad outputs.

Each test reproduces one defect through ``convlayers.cli.main`` (in process, fast) or a
subprocess (for memory, measured under ``RLIMIT_AS``), and asserts exit status 2 with one
``convlayers: error:`` line, bounded memory, or intact data.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlayers import config
from convlayers.cli import main

PHOTO = Path(__file__).resolve().parents[1] / "src" / "convlayers" / "assets" / "chelsea.png"


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("convlayers: error: ") and "internal error" not in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, width: int, height: int, *, rows: bool = True) -> Path:
    """A black RGB PNG built without its pixels in memory: one block of rows is deflated once
    and repeated (a full flush makes blocks independent), so a 12000x12000 file (432 MB of
    pixels, 0.4 MB on disk) takes a fraction of a second. ``rows=False``: the header alone."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = b""
    if rows:
        block_rows = min(height, 64)
        packer = zlib.compressobj(6, zlib.DEFLATED, -15)
        block = bytes((1 + 3 * width) * block_rows)  # filter byte 0, then black pixels
        deflated = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
        repeats, rest = divmod(height, block_rows)
        tail = packer.compress(block[: (1 + 3 * width) * rest]) + packer.flush()
        checksum = 1
        for _ in range(repeats):
            checksum = zlib.adler32(block, checksum)
        checksum = zlib.adler32(block[: (1 + 3 * width) * rest], checksum)
        idat = b"\x78\x9c" + deflated * repeats + tail + struct.pack(">I", checksum)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat)
                + png_chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------ 16.2 image bombs
@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """69 bytes whose header claims 60000x60000 pixels (Pillow's DecompressionBombError)."""
    path = write_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 60000, 60000, rows=False)
    assert path.stat().st_size < 80
    return path


def test_decompression_bomb_is_a_one_line_error_in_filter_and_gallery(capsys, tmp_path, bomb):
    for args in (("filter", bomb, "--filter", "blur", "-o", tmp_path / "f.png"),
                 ("gallery", bomb, "-o", tmp_path / "g.png")):
        code, _, err = run(capsys, *args)
        assert_one_line_error(code, err, "bomb.png")
    assert list(tmp_path.iterdir()) == []


def test_decompression_bomb_is_a_one_line_error_in_predict(capsys, tmp_path, bomb):
    from convlayers.nn import SmallCNN
    from convlayers.weights import save_weights

    weights = tmp_path / "w.safetensors"
    save_weights(SmallCNN(rng=0).state_dict(), weights)
    code, _, err = run(capsys, "predict", weights, bomb)
    assert_one_line_error(code, err, "bomb.png")


def test_decompression_bomb_is_a_one_line_error_in_classify(capsys, bomb):
    pytest.importorskip("convlayers.classify")
    code, _, err = run(capsys, "classify", bomb)
    if code == 2 and "pretrained" in err and "bomb.png" not in err:
        pytest.skip("the pretrained weights are not installed")
    assert_one_line_error(code, err, "bomb.png")


def test_pixel_limit_is_shared_and_settable(tmp_path):
    from convlayers.io import read_image

    path = write_png(tmp_path / "wide.png", 300, 200)
    assert read_image(path).shape == (200, 300, 3)
    with config.settings(max_image_pixels=300 * 200 - 1), \
            pytest.raises(ValueError, match=r"wide\.png.*300x200.*max_image_pixels"):
        read_image(path)


# The memory checks run in one child: it warms up (numba compiled, threads started), reads its
# own address-space size, caps it at that plus a budget, then runs each command.
_CHILD = textwrap.dedent("""
    import resource, sys
    from convlayers import config
    from convlayers.cli import main
    warm, out, budget, pixels, *images = sys.argv[1:]
    assert main(["filter", warm, "--filter", "blur", "-o", out]) == 0
    config.set_scratch_bytes(8 << 20)  # filter strips of at most a few MB
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    cap = size + int(budget)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    codes = [main(["filter", images[0], "--filter", "blur", "-o", out])]  # default limit
    config.set_max_image_pixels(int(pixels))
    codes.append(main(["filter", images[1], "--filter", "blur", "-o", out]))
    print("exit codes:", *codes)
""")
SIDE = 3000  # the image filtered under the cap: 27 MB of pixels


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``filter`` on a 12000x12000 PNG (default pixel limit), then on a SIDE x SIDE one (limit
    raised to fit), in a child whose address space may grow by 8x the smaller image only."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    folder = tmp_path_factory.mktemp("capped")
    huge = write_png(folder / "huge.png", 12000, 12000)
    assert huge.stat().st_size < 1_000_000  # 432 MB of pixels in about 0.4 MB
    big = write_png(folder / "big.png", SIDE, SIDE)
    warm = write_png(folder / "warm.png", 16, 16)
    env = {"MALLOC_ARENA_MAX": "2", "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "CONVLAYERS_COMPILE_NOTICE": "0",
           **{k: os.environ[k] for k in ("NUMBA_CACHE_DIR",) if k in os.environ}}
    result = subprocess.run([sys.executable, "-c", _CHILD, str(warm), str(folder / "out.png"),
                             str(8 * SIDE * SIDE * 3), str(SIDE * SIDE), str(huge), str(big)],
                            capture_output=True, text=True, timeout=300, env=env)
    return folder, result


def test_filter_12000x12000_png_is_refused_at_once_in_bounded_memory(capped):
    _, result = capped
    assert "exit codes: 2" in result.stdout, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[0]
    assert line.startswith("convlayers: error: ") and "huge.png" in line
    assert "12000x12000" in line and "max_image_pixels" in line


def test_filter_below_the_limit_stays_within_a_few_times_the_image(capped):
    folder, result = capped
    assert result.stdout.strip().endswith("exit codes: 2 0"), result.stderr[-2000:]
    with Image.open(folder / "out.png") as im:
        assert im.size == (SIDE, SIDE) and im.mode == "RGB"
        assert im.getextrema() == ((0, 0), (0, 0), (0, 0))  # blur of black is black


# ------------------------------------------------------------------ 16.3 absurd sizes
@pytest.mark.parametrize("args, words", [
    (("animate", "--input", "100000"), ("input_size=(100000, 100000)", "bytes")),
    (("animate", "--padding", "100000"), ("padding=(100000, 100000)", "bytes")),
    (("animate", "--padding", "1000", "--stride", "1000"), ("2005x2005", "max_cells")),
])
def test_animate_absurd_sizes_fail_at_once(capsys, tmp_path, args, words):
    code, _, err = run(capsys, *args, "-o", tmp_path / "a.gif")
    assert_one_line_error(code, err, *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, words", [
    (("--widths", "100000"), ("--widths 100000", "bytes")),
    (("--augment-shift", "100000"), ("--augment-shift", "8x8")),
])
def test_train_absurd_sizes_fail_at_once(capsys, tmp_path, args, words):
    code, _, err = run(capsys, "train", "digits", *args, "-o", tmp_path / "w.safetensors")
    assert_one_line_error(code, err, *words)
    assert list(tmp_path.iterdir()) == []


def test_fit_refuses_a_shift_as_large_as_the_image():
    from convlayers.nn import SmallCNN
    from convlayers.train import fit

    x = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="augment_shift must be smaller than the images' side 8"):
        fit(SmallCNN(rng=0), (x, np.arange(4)), epochs=1, augment_shift=8, progress=False)


# ------------------------------------------------------------------ 16.5 non-finite numbers
@pytest.mark.parametrize("lr", ["inf", "nan", "-inf"])
def test_train_refuses_non_finite_lr(capsys, tmp_path, lr):
    code, _, err = run(capsys, "train", "digits", f"--lr={lr}", "-o", tmp_path / "w.safetensors")
    assert_one_line_error(code, err, "--lr", "finite")
    assert list(tmp_path.iterdir()) == []


def test_fit_refuses_non_finite_lr():
    from convlayers.nn import SmallCNN
    from convlayers.train import fit

    x = np.zeros((4, 1, 8, 8), np.float32)
    for lr in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="lr must be a finite number"):
            fit(SmallCNN(rng=0), (x, np.arange(4)), epochs=1, lr=lr, progress=False)


def test_diverging_training_stops_and_keeps_the_good_files(capsys, tmp_path):
    """A learning rate that blows the weights up stops training with one line; the weights
    and checkpoint from an earlier good run stay as they were."""
    weights, ck = tmp_path / "w.safetensors", tmp_path / "ck.safetensors"
    good = ("train", "digits", "--widths", "4", "--epochs", "1", "--batch-size", "256",
            "--checkpoint", ck, "-o", weights)
    assert run(capsys, *good)[0] == 0
    before = weights.read_bytes(), ck.read_bytes()
    code, _, err = run(capsys, "train", "digits", "--widths", "4", "--epochs", "1",
                       "--optimizer", "sgd", "--lr", "1e30", "--checkpoint", ck, "-o", weights)
    assert_one_line_error(code, err, "diverged", "lr")
    assert (weights.read_bytes(), ck.read_bytes()) == before


# ------------------------------------------------------------------ 16.7 messages
def test_resume_with_other_widths_says_so(capsys, tmp_path):
    ck = tmp_path / "ck.safetensors"
    first = ("train", "digits", "--widths", "4", "--epochs", "1", "--batch-size", "256",
             "--checkpoint", ck, "-o", tmp_path / "a.safetensors")
    assert run(capsys, *first)[0] == 0
    code, _, err = run(capsys, "train", "digits", "--widths", "4,8", "--epochs", "2",
                       "--checkpoint", ck, "--resume", "-o", tmp_path / "b.safetensors")
    assert_one_line_error(code, err, "trained with other --widths", "(4, not 4,8)")
    assert not (tmp_path / "b.safetensors").exists()


# ------------------------------------------------------------------ 16.9 outputs checked first
def test_train_checks_the_output_is_writable_before_training(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    for out in ("/proc/w.safetensors", blocker / "w.safetensors"):
        code, out_text, err = run(capsys, "train", "digits", "-o", out)
        assert_one_line_error(code, err, "w.safetensors", "cannot be written")
        assert "epoch" not in out_text  # refused before the first epoch
    code, out_text, err = run(capsys, "train", "digits", "--checkpoint", tmp_path / "ck.txt",
                              "-o", tmp_path / "w.safetensors")
    assert_one_line_error(code, err, "--checkpoint", ".safetensors")


@pytest.mark.parametrize("args, words", [
    (("--input", "1,3,100000,100000"), ("--input 1,3,100000,100000", "120,000,000,000 bytes")),
    (("--width-mult", "1000"), ("--width-mult 1000", "parameters", "bytes")),
    (("--input", "1,3,20000,20000"), ("largest activation", "bytes")),
])
def test_summary_absurd_sizes_fail_at_once(capsys, args, words):
    code, _, err = run(capsys, "summary", "mobilenet_v2", *args)
    assert_one_line_error(code, err, *words)


@pytest.mark.parametrize("width_mult", [0.35, 1.0, 1.4])
def test_summary_size_check_counts_mobilenet_parameters_exactly(width_mult):
    from convlayers.cli.summary import _mobilenet_sizes
    from convlayers.nn import MobileNetV2

    built = sum(p.size for p in MobileNetV2(10, width_mult, rng=0).parameters())
    assert _mobilenet_sizes(width_mult, 3, 224, 224, 10)[0] == built


# ------------------------------------------------------------------ 16.7 NaN in arguments
@pytest.mark.parametrize("args, words", [
    (("summary", "mobilenet_v2", "--width-mult", "nan"), ("--width-mult", "finite")),
    (("summary", "mobilenet_v2", "--width-mult", "inf"), ("--width-mult", "finite")),
    (("explain", "conv", "--input", "1,nan;2,3"), ("input", "finite")),
    (("explain", "pool", "--input", "1,2;inf,3"), ("input", "finite")),
])
def test_nan_arguments_get_a_clear_message(capsys, args, words):
    code, _, err = run(capsys, *args)
    line = assert_one_line_error(code, err, *words)
    assert "cannot convert" not in line


# ------------------------------------------------------------------ 16.5 non-finite kernels/images
@pytest.mark.parametrize("kernel, words", [
    ("nan", ("kernel", "finite")),
    ("1,inf;0,1", ("kernel", "finite")),
    ("1e999", ("kernel", "finite")),
    ("1e308", ("--kernel", "too large")),
])
def test_filter_refuses_non_finite_or_overflowing_kernels(capsys, tmp_path, kernel, words):
    code, _, err = run(capsys, "filter", PHOTO, f"--kernel={kernel}", "-o", tmp_path / "k.png")
    assert_one_line_error(code, err, *words)
    assert list(tmp_path.iterdir()) == []


def test_apply_filter_refuses_non_finite_and_overflowing_kernels():
    from convlayers.filters import apply_filter

    image = np.full((4, 4), 200, np.uint8)
    with pytest.raises(ValueError, match="finite"):
        apply_filter(image, [[1.0, np.nan]])
    with pytest.raises(ValueError, match="beyond float64's range"):
        apply_filter(image, [[1e308, 1e308]])
    with pytest.raises(ValueError, match="beyond float32's range"):
        apply_filter(image.astype(np.float32), [[1e37, 1e37]])


@pytest.fixture()
def nan_tiff(tmp_path: Path) -> Path:
    """An 8x8 float TIFF: a bright bar on black, with one NaN and one +inf pixel."""
    pixels = np.zeros((8, 8), np.float32)
    pixels[2:6, 3:5] = 1.0
    pixels[0, 0], pixels[7, 7] = np.nan, np.inf
    path = tmp_path / "nan.tif"
    Image.fromarray(pixels).save(path)
    return path


def test_read_image_warns_once_about_non_finite_pixels(nan_tiff):
    from convlayers.io import NonFiniteImageWarning, read_image

    with pytest.warns(NonFiniteImageWarning, match=r"nan\.tif.* 2 NaN or infinite") as caught:
        pixels = read_image(nan_tiff)
    assert len(caught) == 1
    assert np.isnan(pixels[0, 0]) and np.isinf(pixels[7, 7])  # returned as stored


def test_filter_on_a_nan_tiff_warns_once_and_is_not_black(capsys, tmp_path, nan_tiff):
    code, _, err = run(capsys, "filter", nan_tiff, "--filter", "blur", "-o", tmp_path / "f.png")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convlayers: warning: ") and "nan.tif" in lines[0]
    with Image.open(tmp_path / "f.png") as im:
        result = np.array(im)
    assert result[3, 3] > 0 and result[4, 0] == 0  # the bar shows; far from it stays black


def test_predict_on_a_nan_tiff_warns_and_prints_a_probability(capsys, tmp_path, nan_tiff):
    from convlayers.nn import SmallCNN
    from convlayers.weights import save_weights

    weights = tmp_path / "w.safetensors"
    save_weights(SmallCNN(rng=0).state_dict(), weights)
    code, out, err = run(capsys, "predict", weights, nan_tiff)
    assert code == 0, err
    probability = float(out.strip().rsplit("(", 1)[1].rstrip(")"))
    assert 0.0 < probability <= 1.0  # not "0 (nan)"
    assert err.count("convlayers: warning: ") == 1 and "nan.tif" in err
