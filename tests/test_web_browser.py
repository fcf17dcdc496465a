"""The explorer in a real browser: Debian's Chromium driven by Playwright, the real server.

The server runs in a thread (uvicorn on a free port). Every request the page makes to anything
but that server is aborted and recorded, and the test asserts there were none. Pixels shown in
the page are read back as PNG bytes and compared with ``convlayers.filters``; the
playground's size with ``convlayers.shapes``. The last test takes a screenshot (to
``$CONVLAYERS_SCREENSHOT`` when set: that is how ``docs/explorer.png`` was made).

Chromium is required: without ``/usr/bin/chromium`` (``apt-get install -y chromium``) these
tests fail, unless ``CONVLAYERS_SKIP_BROWSER=1`` says to skip them.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
SKIP = os.environ.get("CONVLAYERS_SKIP_BROWSER") == "1"
# set CONVLAYERS_SCREENSHOT=docs/explorer.png to refresh the README's picture
SCREENSHOT_ENV = "CONVLAYERS_SCREENSHOT"


def _require_browser() -> None:
    why = None
    if not os.path.exists(CHROMIUM):
        why = (f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium) "
               "or set CONVLAYERS_SKIP_BROWSER=1 to skip the browser tests")
    else:
        try:
            import playwright.sync_api  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as exc:
            why = (f"the browser tests need playwright and uvicorn ({exc}); install them, or set "
                   "CONVLAYERS_SKIP_BROWSER=1 to skip the browser tests")
    if why:
        if SKIP:
            pytest.skip(why)
        pytest.fail(why, pytrace=False)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    _require_browser()
    import uvicorn

    from convlayers.web import bind, create_app

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the explorer server did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser_page(server: str) -> Iterator[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        state: dict[str, Any] = {"page": page, "url": server, "external": [], "requests": [],
                                 "console_errors": []}
        local = urlsplit(server).netloc

        def gate(route: Any) -> None:
            url = route.request.url
            parts = urlsplit(url)
            if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != local:
                state["external"].append(url)
                route.abort()
            else:
                route.continue_()

        page.route("**/*", gate)
        page.on("request", lambda request: state["requests"].append(request.url))
        page.on("console", lambda msg: msg.type == "error" and state["console_errors"].append(msg.text))
        page.goto(server + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        yield state
        browser.close()


def _png_from_img(page: Any, selector: str) -> np.ndarray:
    """The bytes behind a displayed <img> (its blob: URL), decoded with Pillow."""
    from PIL import Image

    encoded = page.eval_on_selector(selector, """async (img) => {
        const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
        let text = "";
        for (let i = 0; i < bytes.length; i += 0x8000) {
            text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
        }
        return btoa(text);
    }""")
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as img:
        assert img.format == "PNG"
        return np.array(img)


def test_page_loads_with_no_external_requests(browser_page: dict[str, Any]) -> None:
    page = browser_page["page"]
    assert page.title() == "convlayers explorer"
    assert browser_page["requests"], "no request was seen at all"
    local = urlsplit(browser_page["url"]).netloc
    seen = [u for u in browser_page["requests"] if urlsplit(u).scheme in ("http", "https")]
    assert all(urlsplit(u).netloc == local for u in seen), seen
    assert browser_page["external"] == []
    assert browser_page["console_errors"] == []
    assert page.locator("#f-bank input").count() >= 15


def test_page_opens_with_results_shown(browser_page: dict[str, Any]) -> None:
    page = browser_page["page"]  # nothing clicked yet: the default filters ran on load
    shown = [img.get_attribute("data-filter")
             for img in page.locator("#f-results img").all()]
    assert shown == ["original", "blur", "sobel_x"] or shown == ["original", "sobel_x", "blur"]
    assert "2 filter(s) applied" in page.inner_text("#f-status")


def test_filter_in_page_equals_library(browser_page: dict[str, Any]) -> None:
    from convlayers.cli.images import to_uint8
    from convlayers.data import sample_photo
    from convlayers.filters import apply_filter

    page = browser_page["page"]
    page.click("button.tab[data-panel='filters']")
    page.check("input[name=f-source][value=sample]")
    for box in page.locator("#f-bank input").all():
        box.uncheck()
    page.check("#f-bank-sobel_x")
    page.check("#f-bank-blur")
    page.select_option("#f-boundary", "symm")
    page.select_option("#f-scale", "auto")
    page.fill("#f-kernel", "")
    page.click("#f-apply")
    page.wait_for_selector("#f-results img[data-filter='blur']", timeout=90_000)  # may compile
    photo = sample_photo()
    np.testing.assert_array_equal(_png_from_img(page, "#f-results img[data-filter='original']"),
                                  photo)
    for name in ("sobel_x", "blur"):
        shown = _png_from_img(page, f"#f-results img[data-filter='{name}']")
        np.testing.assert_array_equal(shown, to_uint8(apply_filter(photo, name), "auto", name))
    link = page.locator("#f-results figure:has(img[data-filter='blur']) a[download]")
    assert link.get_attribute("download") == "chelsea_blur.png"
    assert browser_page["external"] == []


def test_malformed_kernel_shows_a_message(browser_page: dict[str, Any]) -> None:
    page = browser_page["page"]
    page.click("button.tab[data-panel='filters']")
    for box in page.locator("#f-bank input").all():
        box.uncheck()
    page.fill("#f-kernel", "1,2;3")
    page.click("#f-apply")
    page.wait_for_selector("#f-error:not([hidden])", timeout=10_000)
    assert "row 2 has 1 values" in page.inner_text("#f-error")
    page.fill("#f-kernel", "")
    page.check("#f-bank-sobel_x")
    page.check("#f-bank-blur")
    page.click("#f-apply")
    page.wait_for_selector("#f-error[hidden]", state="attached", timeout=20_000)
    page.wait_for_selector("#f-results img[data-filter='blur']", timeout=90_000)  # may compile


def _wait_for_answer(page: Any, condition: str, arg: str) -> None:
    """Wait until the playground has drawn the answer to the last question asked and `condition`
    (JavaScript reading `arg`) holds.

    Every field's change event also asks the server, so an earlier answer can show the awaited
    text and then be replaced by a later one (which resets the step). On an empty numba cache
    the first answer of an operation compiles its kernels first (a transposed convolution's
    took 10-20 s), hence the long timeout.
    """
    page.wait_for_function(
        "arg => document.getElementById('arithmetic').getAttribute('aria-busy') === 'false'"
        f" && ({condition})", arg=arg, timeout=90_000)


@pytest.mark.parametrize(("op", "n", "k", "s", "p"), [
    ("conv", 7, 3, 2, 1),
    ("max_pool", 6, 2, 2, 0),
    ("conv_transpose", 3, 3, 2, 1),
])
def test_playground_size_equals_shapes(browser_page: dict[str, Any], op: str, n: int, k: int,
                                       s: int, p: int) -> None:
    from convlayers import shapes

    page = browser_page["page"]
    page.click("button.tab[data-panel='arithmetic']")
    page.select_option("#pg-op", op)
    for field, value in (("#pg-input", n), ("#pg-kernel", k), ("#pg-stride", s),
                         ("#pg-padding", p), ("#pg-dilation", 1)):
        page.fill(field, str(value))
    page.click("#pg-compute")
    if op == "conv":
        out = shapes.conv_output_size(n, k, s, p)
    elif op == "max_pool":
        out = shapes.pool_output_size(n, k, s, p)
    else:
        out = shapes.conv_transpose_output_size(n, k, s, p)
    _wait_for_answer(page, "document.getElementById('pg-size').textContent === arg", f"{out} x {out}")
    assert page.inner_text("#pg-step") == f"window 1 of {out * out}"
    page.click("#pg-next")
    assert page.inner_text("#pg-step") == f"window 2 of {out * out}"
    # the grids are redrawn after the step text: wait for the first finished output cell
    page.wait_for_function("() => document.querySelectorAll('#pg-out svg rect.done').length === 1",
                           timeout=10_000)
    window = page.locator("#pg-grid svg rect.window").count()
    assert 0 < window <= k * k
    assert page.locator("#pg-out svg rect.done").count() == 1
    assert page.locator("#pg-out svg rect.current").count() == 1
    if p:
        assert page.locator("#pg-grid svg rect.pad").count() > 0
    assert page.is_visible("#pg-legend-pad") == (page.locator("#pg-grid svg rect.pad").count() > 0)
    zeros = page.locator("#pg-grid svg rect.zero").count() > 0
    assert page.is_visible("#pg-legend-zero") == zeros == (op == "conv_transpose" and s > 1)
    assert f"= {out}" in page.inner_text("#pg-filled")


def _numbers(page: Any, selector: str) -> list[float]:
    return [float(t) for t in page.locator(f"{selector} svg text").all_text_contents()]


def test_playground_shows_and_takes_numbers(browser_page: dict[str, Any]) -> None:
    from convlayers import reference

    page = browser_page["page"]
    page.click("button.tab[data-panel='arithmetic']")
    page.select_option("#pg-op", "conv")
    for field, value in (("#pg-input", 4), ("#pg-kernel", 3), ("#pg-stride", 1),
                         ("#pg-padding", 0), ("#pg-dilation", 1)):
        page.fill(field, str(value))
    page.fill("#pg-values", "")
    page.fill("#pg-weights", "")
    page.click("#pg-compute")
    _wait_for_answer(page, "document.getElementById('pg-size').textContent === arg", "2 x 2")
    assert _numbers(page, "#pg-grid") == list(range(1, 17))  # default input 1..16
    assert _numbers(page, "#pg-kernel-grid") == [1.0] * 9  # default kernel: ones
    assert page.inner_text("#pg-sum").endswith("= 54")  # 1+2+3+5+6+7+9+10+11
    x = np.array([[3, 1, 4, 1], [5, 9, 2, 6], [5, 3, 5, 8], [9, 7, 9, 3]], dtype=float)
    w = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=float)
    page.fill("#pg-values", "\n".join(" ".join(str(int(v)) for v in row) for row in x))
    page.fill("#pg-weights", "1,0,-1; 2,0,-2; 1,0,-1")
    page.click("#pg-compute")
    want = reference.correlate2d_simple(x, w)
    _wait_for_answer(page, "document.getElementById('pg-sum').textContent.endsWith(arg)",
                     f"= {want[0, 0]:g}")
    assert _numbers(page, "#pg-grid") == x.ravel().tolist()
    assert _numbers(page, "#pg-kernel-grid") == w.ravel().tolist()
    for _ in range(3):
        page.click("#pg-next")
    assert _numbers(page, "#pg-out") == want.ravel().tolist()  # every output written in
    page.fill("#pg-weights", "1,0;0,1")
    page.click("#pg-compute")
    page.wait_for_selector("#pg-error:not([hidden])", timeout=10_000)
    assert "kernel_values must be 3x3" in page.inner_text("#pg-error")
    page.fill("#pg-weights", "")
    page.fill("#pg-values", "")
    page.click("#pg-compute")
    page.wait_for_selector("#pg-error[hidden]", state="attached", timeout=10_000)
    # the only console messages are the browser's notes on the refused (400) requests
    assert all("400" in m for m in browser_page["console_errors"]), browser_page["console_errors"]


def test_screenshot(browser_page: dict[str, Any], tmp_path: Path) -> None:
    page = browser_page["page"]
    shot = Path(os.environ.get(SCREENSHOT_ENV, tmp_path / "explorer.png"))
    page.click("button.tab[data-panel='filters']")
    page.wait_for_selector("#f-results img[data-filter='blur']", timeout=90_000)  # may compile
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert browser_page["external"] == []
