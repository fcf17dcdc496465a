"""``convlayers train`` and ``convlayers predict`` end to end, as subprocesses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from convlayers.datasets import load_digits
from convlayers.io import write_image


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "convlayers", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=180)


def assert_user_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("convlayers: error: ") and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("train")
    weights = folder / "w.safetensors"
    result = cli("train", "digits", "--model", "small-cnn", "--epochs", "2", "--widths", "16,32",
                 "--out", weights, "--plots", folder / "plots", "--checkpoint",
                 folder / "ckpt.safetensors", "--no-progress")
    return weights, result


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int]]:
    folder = tmp_path_factory.mktemp("digits")
    split = load_digits(seed=0)
    out = []
    for i in range(12):
        path = folder / f"digit{i:02d}.png"
        write_image(path, split.x_test[i, 0])
        out.append((path, int(split.y_test[i])))
    return out


def test_train_prints_the_accuracy_and_writes_weights_and_plots(trained):
    weights, result = trained
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a terminal: no progress bar
    assert "epoch 1/2:" in result.stdout and "images/s" in result.stdout
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", result.stdout).group(1))
    assert accuracy >= 90.0  # measured 97.5% after 2 epochs
    assert weights.is_file()
    plots = weights.parent / "plots"
    for name in ("loss.png", "accuracy.png", "confusion.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_classifies_digit_images(trained, digit_pngs):
    weights, _ = trained
    result = cli("predict", weights, *(p for p, _ in digit_pngs))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(digit_pngs)
    right = 0
    for line, (path, label) in zip(lines, digit_pngs, strict=True):
        match = re.fullmatch(r"(.+): (\d) \((0\.\d{3}|1\.000)\)", line)
        assert match and match.group(1) == str(path), line
        right += int(match.group(2)) == label
    assert right >= 10


def test_predict_json_and_folders(trained, digit_pngs):
    weights, _ = trained
    result = cli("predict", weights, digit_pngs[0][0].parent, "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["path"] for r in records] == [str(p) for p, _ in digit_pngs]
    first = records[0]
    assert set(first) == {"path", "class", "probability", "probabilities"}
    assert len(first["probabilities"]) == 10 and abs(sum(first["probabilities"]) - 1) < 1e-4


def test_resume_of_a_finished_run_and_predict_from_its_checkpoint(trained, digit_pngs):
    weights, first = trained
    ckpt = weights.parent / "ckpt.safetensors"
    again = weights.parent / "again.safetensors"
    result = cli("train", "digits", "--epochs", "2", "--widths", "16,32", "--checkpoint", ckpt,
                 "--resume", "--out", again)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/2" not in result.stdout  # nothing left to train
    line = next(t for t in first.stdout.splitlines() if t.startswith("test accuracy"))
    assert line.split(" after")[0] in result.stdout
    assert again.read_bytes() == weights.read_bytes()
    paths = [p for p, _ in digit_pngs[:3]]
    assert cli("predict", ckpt, *paths).stdout == cli("predict", weights, *paths).stdout


def test_predict_errors_are_one_line(trained, tmp_path):
    weights, _ = trained
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    assert_user_error(cli("predict", weights, text), "notes.png", "not an image")
    assert_user_error(cli("predict", tmp_path / "none.safetensors", text), "none.safetensors")
    assert_user_error(cli("predict", text, text), "notes.png")


def test_train_rejects_bad_options(tmp_path):
    assert_user_error(cli("train", "digits", "--epochs", "0", cwd=tmp_path), "--epochs")
    assert_user_error(cli("train", "mnist", cwd=tmp_path), "mnist")
    assert_user_error(cli("train", "digits", "--out", "w.txt", cwd=tmp_path), "w.txt")
    assert_user_error(cli("train", "digits", "--resume", cwd=tmp_path), "--checkpoint")
    assert list(tmp_path.iterdir()) == []
