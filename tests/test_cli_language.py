"""The command line speaks one language: one spelling per idea, old spellings still work.

Sizes are ``--kernel-size`` and kernel values ``--kernel`` everywhere (the old spellings are
hidden aliases that give identical output); model names take ``-`` or ``_``; ``classify``
takes folders; ``shape`` knows ``--padding same`` and stacks of layers (checked against
PyTorch); ``params`` compares layers that map the same channels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from convlayers.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convlayers: error: ") and len(err.splitlines()) == 1
    return err


@pytest.mark.parametrize(("old", "new"), [
    (["shape", "--input", "32", "--kernel", "5", "--stride", "2"],
     ["shape", "--input", "32", "--kernel-size", "5", "--stride", "2"]),
    (["params", "--in", "32", "--out", "64", "--kernel", "5"],
     ["params", "--in", "32", "--out", "64", "--kernel-size", "5"]),
    (["summary", "small-cnn"], ["summary", "small_cnn"]),
    (["summary", "conv-bn-relu", "--input", "1,3,8,8"], ["summary", "Conv_BN_ReLU", "--input", "1,3,8,8"]),
    (["summary", "mobile-block", "--input", "1,8,8,8", "--csv"],
     ["summary", "mobile_block", "--input", "1,8,8,8", "--csv"]),
])
def test_old_and_new_spellings_print_the_same(capsys, old, new) -> None:
    assert run(capsys, *old) == run(capsys, *new)


def test_new_spellings_are_the_ones_help_shows(capsys) -> None:
    shape_help = run(capsys, "shape", "--help")
    assert "--kernel-size" in shape_help and "--kernel " not in shape_help
    animate_help = run(capsys, "animate", "--help")
    assert "--kernel-size" in animate_help and "--weights" not in animate_help
    assert "--kernel-size" in run(capsys, "explain", "pool", "--help")
    summary_help = " ".join(run(capsys, "summary", "--help").split())
    assert "seed" not in summary_help.lower()
    assert "Conv-BN-ReLU" in summary_help and "MobileNetV2-type block" in summary_help
    assert "small_cnn" in summary_help and "small-cnn" not in summary_help  # one spelling printed


def test_animate_aliases_write_identical_gifs(tmp_path, capsys) -> None:
    def gif(*args: str) -> bytes:
        target = tmp_path / "a.gif"
        run(capsys, "animate", "--input", "3", *args, "-o", str(target))
        return target.read_bytes()

    assert gif("--kernel-size", "2") == gif("--kernel", "2")  # old: --kernel was the size
    with_values = gif("--kernel", "1,0;0,-1")
    assert with_values == gif("--weights", "1,0;0,-1")  # old: --weights were the values
    assert with_values != gif("--kernel-size", "2")  # the values change the numbers drawn
    assert "kernel" in error(capsys, "animate", "--kernel-size", "2", "--kernel", "3",
                             "-o", str(tmp_path / "b.gif"))


@pytest.mark.parametrize(("n", "k", "d"), [(32, 3, 1), (32, 4, 1), (17, 5, 2), (10, 2, 3)])
def test_shape_padding_same_matches_torch(capsys, n, k, d) -> None:
    out = run(capsys, "shape", "--input", str(n), "--kernel-size", str(k), "--dilation", str(d),
              "--padding", "same")
    want = tF.conv2d(torch.zeros(1, 1, n, n), torch.zeros(1, 1, k, k), padding="same",
                     dilation=d).shape[-1]
    assert out.strip().splitlines()[-1] == f"output size: {want}x{want}"[: 13 + len(str(want))]
    assert "stride 1" in error(capsys, "shape", "--input", "8", "--kernel-size", "3",
                               "--padding", "same", "--stride", "2")
    valid = run(capsys, "shape", "--input", str(n), "--kernel-size", str(k), "--padding", "valid")
    assert valid.strip().splitlines()[-1] == f"output size: {n - k + 1}"


def _torch_stack(spec: list[tuple[str, int, int, int, int]], n: int) -> tuple[int, int]:
    """Output side and receptive field of a stack, measured in PyTorch.

    The field is how many input pixels (along one axis) move the centre output pixel: the
    gradient of that pixel with respect to the input, with all-ones weights (average pools).
    """
    x = torch.zeros(1, 1, n, n, dtype=torch.float64, requires_grad=True)
    y = x
    for kind, k, s, p, d in spec:
        if kind == "conv":
            y = tF.conv2d(y, torch.ones(1, 1, k, k, dtype=torch.float64), stride=s, padding=p,
                          dilation=d)
        else:
            y = tF.avg_pool2d(y, k, s, p)
    side = y.shape[-1]
    y[0, 0, side // 2, side // 2].backward()
    rows = np.nonzero(x.grad[0, 0].abs().sum(dim=1).numpy())[0]
    return side, int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize(("text", "spec"), [
    ("conv3; conv3; conv3", [("conv", 3, 1, 0, 1)] * 3),
    ("conv3,s2,p1; conv3; pool2; conv3,d2",
     [("conv", 3, 2, 1, 1), ("conv", 3, 1, 0, 1), ("pool", 2, 2, 0, 1), ("conv", 3, 1, 0, 2)]),
    ("conv7,s2,p3; pool3,s2,p1; conv3,p1",
     [("conv", 7, 2, 3, 1), ("pool", 3, 2, 1, 1), ("conv", 3, 1, 1, 1)]),
])
def test_shape_stack_matches_torch(capsys, text, spec) -> None:
    n = 64
    side, field = _torch_stack(spec, n)
    lines = run(capsys, "shape", "--input", str(n), "--stack", text).strip().splitlines()
    assert lines[-2].split()[-2:] == [f"{field}x{field}", f"{side}x{side}"]
    assert lines[-1].endswith(f"see {field}x{field} input pixels per output pixel")
    assert len(lines) == 2 + len(spec)


def test_shape_stack_errors_name_the_layer(capsys) -> None:
    assert "layer 2" in error(capsys, "shape", "--stack", "conv3; relu")
    assert "layer 1" in error(capsys, "shape", "--input", "4", "--stack", "conv7")
    assert "--kernel-size" in error(capsys, "shape", "--input", "4")
    assert "describes every layer" in error(capsys, "shape", "--input", "8", "--stride", "2",
                                            "--stack", "conv3")


def test_params_compares_layers_mapping_the_same_channels(capsys) -> None:
    out = run(capsys, "params", "--in", "64", "--out", "128")
    rows = {line.split()[0]: line for line in out.splitlines()[3:]}
    dense, separable = 64 * 128 * 9, 64 * 9 + 64 * 128  # written out by hand
    assert f"{dense:,}" in rows["standard"] and "1.0x" in rows["standard"]
    assert f"{separable:,}" in rows["depthwise-separable"]
    assert f"{dense / separable:.1f}x" in rows["depthwise-separable"]
    assert "64->128" in rows["depthwise-separable"]
    assert "128.0x" not in out  # the depthwise step alone (64->64) gets no ratio
    assert "64->64" in rows["depthwise"] and "x " not in rows["depthwise"].split("64->64")[0][-8:]


def test_summary_other_widths_and_saved_weights(tmp_path, capsys) -> None:
    from convlayers.nn import SmallCNN
    from convlayers.weights import save_weights

    out = run(capsys, "summary", "small_cnn", "--widths", "4,8")
    # by hand: conv 1*4*9 + BN 2*4, conv 4*8*9 + BN 2*8, linear (8*2*2)*10 + 10
    assert "Total params: 678" in out
    model = SmallCNN(in_channels=1, num_classes=3, image_size=16, widths=(4, 8, 8), rng=1)
    target = tmp_path / "m.safetensors"
    save_weights(model.state_dict(), target)
    saved = run(capsys, "summary", str(target))
    trainable = sum(p.data.size for p in model.parameters())
    assert f"Total params: {trainable:,}" in saved
    head = next(line for line in saved.splitlines() if line.startswith("classifier.1"))
    assert head.split()[2] == "1x3"  # the saved model's 3 classes
    assert "1x8x2x2" in saved  # the 16x16 training input, halved three times
    assert "weights" in error(capsys, "summary", str(tmp_path / "missing.safetensors"))
    assert "--widths" in error(capsys, "summary", "mobilenet_v2", "--widths", "4")


def test_classify_takes_folders(tmp_path, capsys, monkeypatch) -> None:
    import convlayers.classify as classify_module
    from convlayers.io import write_image

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        write_image(folder / name, np.zeros((8, 8, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not a photo")
    seen: list[str] = []

    class Result:
        index, name, probability = 1, "goldfish", 0.5

    monkeypatch.setattr(classify_module, "pretrained_model", lambda: object())
    monkeypatch.setattr(classify_module, "classify",
                        lambda model, path, **options: seen.append(str(path)) or [Result()])
    out = run(capsys, "classify", str(folder))
    assert seen == [str(folder / "a.png"), str(folder / "b.png")]
    assert out.count("goldfish") == 2
