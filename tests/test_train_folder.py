"""`convlayers train folder` and `predict` on a folder of drawn shapes made at test time.

The small CNN's run (120 training images of 32x32, 12 epochs) takes about 10 s on two idle cores;
the accuracy bar is stated here, the time only in this note (speed lives in the benchmarks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from convlayers.cli import main
from convlayers.datasets import ImageFolder
from convlayers.train import fit
from convlayers.train.folder import build_classifier, classifier_metadata
from convlayers.weights import save_weights

SHAPES = ("circle", "square", "triangle")


def draw_shapes(root: Path, per_class: int, side: int = 32, seed: int = 0) -> Path:
    """Bright circles, squares and triangles of random size, place and colour on dark ground."""
    rng = np.random.default_rng(seed)
    for name in SHAPES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ground = tuple(int(v) for v in rng.integers(0, 80, 3))
            img = Image.new("RGB", (side, side), ground)
            pen = ImageDraw.Draw(img)
            r = int(rng.integers(side // 5, side // 3))
            cx, cy = (int(v) for v in rng.integers(r + 1, side - r - 1, 2))
            colour = tuple(int(v) for v in rng.integers(150, 256, 3))
            if name == "circle":
                pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            elif name == "square":
                pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
            else:
                pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            img.save(root / name / f"{i}.png")
    return root


def test_small_cnn_learns_the_shapes_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = draw_shapes(tmp_path / "shapes", per_class=40)
    out = tmp_path / "shapes.safetensors"
    plots = tmp_path / "plots"
    code = main(["train", "folder", str(data), "--size", "32", "--epochs", "12", "--lr", "0.005",
                 "-o", str(out), "--plots", str(plots), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "3 classes (circle, square, triangle); 96 training and 24 validation images" in text
    accuracy = float(text.split("validation accuracy: ")[1].split("%")[0]) / 100
    assert accuracy >= 0.8, text
    assert {p.name for p in plots.iterdir()} == {"loss.png", "accuracy.png", "confusion.png"}
    fresh = draw_shapes(tmp_path / "fresh", per_class=4, seed=7)
    assert main(["predict", str(out), str(fresh / "square"), "--json"]) == 0
    import json

    records = json.loads(capsys.readouterr().out)
    assert len(records) == 4 and all(set(r["probabilities"]) == set(SHAPES) for r in records)
    assert sum(r["class"] == "square" for r in records) >= 3


def test_lite0_head_fine_tunes_from_imagenet_weights_and_predicts_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = draw_shapes(tmp_path / "few", per_class=8, side=48)
    out = tmp_path / "lite0.safetensors"
    assert main(["train", "folder", str(data), "--model", "efficientnet-lite0", "--pretrained",
                 "--freeze", "--size", "64", "--epochs", "2", "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), str(data / "triangle" / "0.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split(": ")[1].split(" ")[0] in SHAPES


def test_freeze_trains_only_the_head_until_unfrozen(tmp_path: Path) -> None:
    data = ImageFolder(draw_shapes(tmp_path / "s", per_class=6), size=16)
    x, y = data.load()
    model = build_classifier("small_cnn", SHAPES, image_size=16, freeze=True, rng=0)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    fit(model, (x, y), epochs=1, batch_size=8, progress=False)
    after = {k: v.copy() for k, v in model.state_dict().items()}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith("net.classifier.")}  # BN stats kept too
    fit(model, (x, y), epochs=2, batch_size=8, progress=False,
        on_epoch_start=lambda epoch: model.freeze(epoch < 1))
    assert not np.array_equal(model.state_dict()["net.features.0.0.weight"],
                              after["net.features.0.0.weight"])


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_a_frozen_network_runs_its_compiled_plan_and_sees_weight_changes(name: str) -> None:
    """A frozen classifier feeds its head from a compiled plan of the rest of the network:
    the same logits as the eager network (eval mode, float32 rounding), in train mode too
    (the frozen layers stay in eval mode), one plan per image size, made again when a frozen
    weight changes; unfrozen, the eager network runs again."""
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, 32, 32)).astype(np.float32)
    model = build_classifier(name, SHAPES, image_size=32, freeze=True, rng=1)
    model.train()
    head = model.head
    for layer in ([head] if name == "resnet18" else list(head)):
        layer.eval()  # Dropout off, to compare the logits
    def eager() -> np.ndarray:
        return np.asarray(getattr(model.net((x - model.mean) / model.std), "data", None))

    def close(a: np.ndarray, b: np.ndarray) -> bool:  # relative: untrained logits are tiny
        return bool(np.allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max()))

    logits = np.asarray(model(x).data)
    plan = model.__dict__["_trunk"][1]
    assert plan is not None and close(logits, eager())
    model(x[:2])
    assert model.__dict__["_trunk"][1] is plan  # the same plan at another batch size
    frozen = next(p for n, p in model.named_parameters() if not n.startswith("net." + model.head_name))
    frozen.data[...] *= 2
    again = np.asarray(model(x).data)
    assert model.__dict__["_trunk"][1] is not plan
    assert close(again, eager()) and not close(again, logits)
    model.freeze(False)
    model.eval()  # the eager network again: bit for bit
    assert np.array_equal(np.asarray(getattr(model(x), "data", None)), eager())


def test_predict_says_when_the_top_probability_is_low(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    model = build_classifier("small_cnn", SHAPES, image_size=16, rng=0)
    for p in model.head.parameters():
        p.data[...] = 0  # every class equally likely: probability exactly 1/3
    out = tmp_path / "flat.safetensors"
    meta = classifier_metadata(model, SHAPES, 16) | {"dataset": "folder"}
    save_weights(model.state_dict(), out, metadata=meta)
    image = draw_shapes(tmp_path / "one", per_class=1) / "circle" / "0.png"
    assert main(["predict", str(out), str(image)]) == 0
    text = capsys.readouterr().out
    assert "(0.333)" in text and "low confidence" in text


def test_a_test_folder_with_an_unknown_class_is_refused(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    train = draw_shapes(tmp_path / "train", per_class=2)
    test = draw_shapes(tmp_path / "test", per_class=1)
    (test / "star").mkdir()
    Image.new("RGB", (8, 8)).save(test / "star" / "0.png")
    code = main(["train", "folder", str(train), "--test", str(test), "--epochs", "1",
                 "-o", str(tmp_path / "w.safetensors"), "--no-progress"])
    assert code == 2
    assert "['star']" in capsys.readouterr().err


def test_an_npz_output_is_refused_before_any_image_is_read(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = draw_shapes(tmp_path / "s", per_class=1)
    (data / "circle" / "0.png").write_bytes(b"not a picture")  # would be reported if it were read
    code = main(["train", "folder", str(data), "--epochs", "1", "-o", str(tmp_path / "w.npz"),
                 "--no-progress"])
    err = capsys.readouterr()
    assert code == 2 and "writes .safetensors" in err.err and "w.npz" in err.err
    assert "classes" not in err.out and not (tmp_path / "w.npz").exists()


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"image_size": -8}, "image_size"), ({"channels": 0}, "channels"),
    ({"classes": ("a", "a")}, "distinct"), ({"classes": ("a", "b\nc")}, "line breaks"),
    ({"model": "Mobilenet-V3"}, "model must be one of"),
])
def test_build_classifier_arguments_name_themselves(kwargs: dict, named: str) -> None:
    args = {"model": "small_cnn", "classes": ("a", "b")} | kwargs
    with pytest.raises(ValueError, match=named):
        build_classifier(args.pop("model"), args.pop("classes"), **args)
