"""``convlayers classify --model FILE.onnx`` and ``convlayers summary FILE.onnx``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx")

from convlayers import nn
from convlayers import onnx as conv_onnx
from convlayers.cli import main
from convlayers.data import sample_photo

# EfficientNet-Lite0's own scaling, (pixel - 127) / 128, written as a mean and std of [0, 1] pixels
LITE_MEAN, LITE_STD = f"{127 / 255!r}," * 2 + f"{127 / 255!r}", f"{128 / 255!r}," * 2 + f"{128 / 255!r}"


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from convlayers.nn.models import efficientnet_lite0

    path = tmp_path_factory.mktemp("onnx") / "lite0.onnx"
    conv_onnx.save(efficientnet_lite0(pretrained=True), path, np.zeros((1, 3, 224, 224), np.float32))
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "cat.png"
    Image.fromarray(sample_photo()).save(path)
    return path


def test_classify_with_an_onnx_model_matches_the_builtin_model(lite0_file, photo, capsys) -> None:
    assert main(["classify", str(photo), "--json", "--top", "3"]) == 0
    builtin = json.loads(capsys.readouterr().out)[str(photo)]
    assert main(["classify", str(photo), "--json", "--top", "3", "--model", str(lite0_file),
                 "--mean", LITE_MEAN, "--std", LITE_STD]) == 0
    ours = json.loads(capsys.readouterr().out)[str(photo)]
    assert [p["index"] for p in ours] == [p["index"] for p in builtin]
    np.testing.assert_allclose([p["probability"] for p in ours], [p["probability"] for p in builtin],
                               rtol=1e-4)
    # ImageNet normalisation (the default) still finds a cat in the top 3 classes
    assert main(["classify", str(photo), "--json", "--model", str(lite0_file), "--top", "3"]) == 0
    assert any("cat" in p["name"] for p in json.loads(capsys.readouterr().out)[str(photo)])


def test_classify_help_states_the_preprocessing(capsys) -> None:
    assert main(["classify", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--model FILE.onnx", "bilinear", "(x - mean) / std", "0.485,0.456,0.406", "NCHW"):
        assert words in text


def test_classify_errors_name_the_problem(tmp_path, photo, capsys) -> None:
    assert main(["classify", str(photo), "--model", str(tmp_path / "none.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0a\xff\xff")
    assert main(["classify", str(photo), "--model", str(bad)]) == 2
    assert "bad.onnx" in capsys.readouterr().err
    assert main(["classify", str(photo), "--model", str(bad), "--mean", "1,2"]) == 2
    assert "--mean: expected three finite numbers R,G,B" in capsys.readouterr().err


def test_summary_of_an_onnx_file(tmp_path, capsys) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, rng=0), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4, rng=0))
    path = tmp_path / "small.onnx"
    conv_onnx.save(model, path, np.zeros((1, 3, 16, 16), np.float32))
    assert main(["summary", str(path), "--csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert any(r.split(",")[1:4] == ["Conv2d", "1x8x16x16", "224"] for r in rows), rows
    assert any("Linear" in r for r in rows)
    assert main(["summary", str(path), "--input", "2,3,16,16", "--csv"]) == 0
    assert any(r.split(",")[1:3] == ["Conv2d", "2x8x16x16"] for r in capsys.readouterr().out.splitlines())
    assert main(["summary", str(tmp_path / "missing.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_explorer_offers_an_onnx_model(lite0_file, tmp_path) -> None:
    """``convlayers explore --weights FILE.onnx``: listed, summarised, classified, its layers
    drawn; an upload over the size limit or not an ONNX model is refused with its status."""
    testclient = pytest.importorskip("starlette.testclient")
    from convlayers.web import create_app, services
    from convlayers.web.models import ModelRegistry
    from convlayers.web.services import ServiceError

    client = testclient.TestClient(create_app(weights=str(lite0_file)), base_url="http://127.0.0.1")
    models = {m["id"]: m for m in client.get("/api/models").json()["models"]}
    assert models["onnx_lite0"]["input_shape"] == [1, 3, 224, 224]
    top = client.post("/api/models/onnx_lite0/classify?sample=chelsea").json()
    assert any("cat" in p["name"] for p in top["top"][:3]), top
    layers = client.get("/api/models/onnx_lite0/layers").json()["layers"]
    assert any(layer["type"] == "Conv2d" for layer in layers)
    registry = ModelRegistry()
    with pytest.raises(ServiceError) as too_big:
        registry.add_onnx(b"\0" * (services.MAX_UPLOAD_BYTES + 1), "big.onnx")
    assert too_big.value.status == 413
    with pytest.raises(ServiceError, match=r"junk\.onnx") as junk:
        registry.add_onnx(b"\x0a\xff\xff", "junk.onnx")
    assert junk.value.status == 400


def test_explorer_takes_an_onnx_upload(tmp_path) -> None:
    """``POST /api/models?name=FILE.onnx``: the uploaded model is listed and classifies like
    onnxruntime running the same file; a non-ONNX name or junk bytes are refused."""
    testclient = pytest.importorskip("starlette.testclient")
    import onnxruntime

    from convlayers import nn, onnx
    from convlayers.web import create_app

    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, rng=0), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3, rng=1)).eval()
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path, np.zeros((1, 3, 16, 16), np.float32))
    client = testclient.TestClient(create_app(), base_url="http://127.0.0.1")
    reply = client.post("/api/models?name=tiny.onnx", content=path.read_bytes())
    assert reply.status_code == 200, reply.text
    model_id = reply.json()["id"]
    listed = {m["id"]: m for m in client.get("/api/models").json()["models"]}
    assert listed[model_id]["input_shape"] == [1, 3, 16, 16]
    layers = client.get(f"/api/models/{model_id}/layers").json()["layers"]
    assert [layer["type"] for layer in layers if layer["type"] == "Conv2d"] == ["Conv2d"]
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(np.asarray(onnx.load(path.read_bytes())(x)), expected,
                               rtol=1e-5, atol=1e-6)
    assert client.post("/api/models?name=tiny.pt", content=b"x").status_code == 400
    junk = client.post("/api/models?name=junk.onnx", content=b"\x0a\xff\xff")
    assert junk.status_code == 400 and "junk.onnx" in junk.text
