"""The explorer's routes: a Starlette app over :mod:`convlayers.web.services`.

Pages and scripts are three files bundled with the package, read once and served by fixed
name. JSON endpoints answer errors as ``{"error": "..."}`` with a 4xx status (5xx only for a
bug or a missing optional piece: 501). Uploaded images travel as the raw request body (no
multipart, nothing written to disk), capped at :data:`~convlayers.web.services.MAX_UPLOAD_BYTES`.
CPU work runs in worker threads, at most ``workers`` at a time, so one large request cannot
stall the event loop that serves everyone else.

=======  ===============================  ==================================================
method   path                             answer
=======  ===============================  ==================================================
GET      /                                the page
GET      /static/app.js, playground.js, style.css
GET      /api/filters                     the filter bank (kernels), modes, boundaries, ...
POST     /api/image                       the image as the server works on it (PNG)
POST     /api/filter                      one filtered image (PNG)
GET      /api/playground                  output size, filled-in formula, sliding plan, numbers
GET      /api/models                      models on offer, available or not
GET      /api/models/{id}/layers          named modules, conv weight shapes
GET      /api/models/{id}/summary         per-layer table (rows and Markdown)
GET      /api/models/{id}/kernels         a convolution's kernels (PNG), ``?layer=``
POST     /api/models/{id}/classify        top classes of an image, ``?top=``
POST     /api/models/{id}/features        one layer's feature maps (PNG), ``?layer=``
=======  ===============================  ==================================================

POST endpoints take the image as the body, or an empty body and ``?sample=chelsea``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from convlayers.web import services
from convlayers.web.models import ModelRegistry
from convlayers.web.services import ServiceError

__all__ = ["create_app"]

T = TypeVar("T")

_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
           "playground.js": "text/javascript; charset=utf-8",
           "index.html": "text/html; charset=utf-8"}

#: Everything the page loads comes from this server; images may be blob: URLs made by app.js.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")


def _static_files() -> dict[str, bytes]:
    folder = resources.files("convlayers.web") / "static"
    return {name: (folder / name).read_bytes() for name in _STATIC}


class _SecurityHeaders:
    """Adds the content-security policy and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()),
                            (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"),
                            (b"cache-control", b"no-store")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ----------------------------------------------------------------------------- helpers
def _int(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ServiceError(400, f"{name} must be an integer, got {raw!r}") from None


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "").lower()
    if raw not in ("", "0", "1", "true", "false", "on", "off"):
        raise ServiceError(400, f"{name} must be true or false, got {raw!r}")
    return raw in ("1", "true", "on")


async def _body(request: Request) -> bytes:
    """The request body, refused (413) as soon as it passes the upload cap."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > services.MAX_UPLOAD_BYTES:
        raise ServiceError(413, f"the upload is {declared} bytes; the limit is "
                                f"{services.MAX_UPLOAD_BYTES}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > services.MAX_UPLOAD_BYTES:
            raise ServiceError(413, f"the upload is over the limit of {services.MAX_UPLOAD_BYTES}"
                                    " bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _work(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run CPU work in a worker thread, at most ``workers`` at once across the server."""
    limiter: anyio.CapacityLimiter = request.app.state.limiter
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)


async def _image(request: Request, gray: bool = False) -> Any:
    data = await _body(request)
    sample = request.query_params.get("sample")
    return await _work(request, lambda: services.load_image(data, sample, gray=gray))


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png")


# ----------------------------------------------------------------------------- endpoints
async def index(request: Request) -> Response:
    return Response(request.app.state.static["index.html"], media_type=_STATIC["index.html"])


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _STATIC or name == "index.html":
        raise ServiceError(404, "not found")
    return Response(request.app.state.static[name], media_type=_STATIC[name])


async def filters(request: Request) -> Response:
    return JSONResponse(services.filters_catalog())


async def image(request: Request) -> Response:
    img = await _image(request, _flag(request, "gray"))
    return _png(await _work(request, services.encode_png, img))


async def filter_image(request: Request) -> Response:
    q = request.query_params
    img = await _image(request, _flag(request, "gray"))
    png = await _work(request, lambda: services.filter_png(
        img, q.get("filter"), q.get("kernel"), mode=q.get("mode", "same"),
        boundary=q.get("boundary", "symm"), scale=q.get("scale", "auto")))
    return _png(png)


async def playground(request: Request) -> Response:
    args = (request.query_params.get("op", "conv"), _int(request, "input", 5) or 0,
            _int(request, "kernel", 3) or 0, _int(request, "stride"),
            _int(request, "padding", 0) or 0, _int(request, "dilation", 1) or 0)
    output_padding = _int(request, "output_padding", 0) or 0
    ceil_mode = _flag(request, "ceil_mode")
    typed = request.query_params.get("input_values"), request.query_params.get("kernel_values")
    return JSONResponse(await _work(request, lambda: services.playground(
        *args, output_padding=output_padding, ceil_mode=ceil_mode, input_values=typed[0],
        kernel_values=typed[1])))


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.models
    return registry


async def models(request: Request) -> Response:
    return JSONResponse({"models": _registry(request).listing()})


async def upload_model(request: Request) -> Response:
    """``POST /api/models?name=FILE.onnx`` with the file as the body: an ONNX model offered
    beside the built-in ones (the upload cap of images applies; 400 when it is not a model the
    library can run)."""
    name = request.query_params.get("name", "model.onnx")
    if not name.lower().endswith(".onnx"):
        raise ServiceError(400, f"only ONNX models (.onnx) can be uploaded, got {name!r}; start "
                                "the explorer with --weights FILE for other weight files")
    body = await _body(request)
    model_id = await _work(request, _registry(request).add_onnx, body, name)
    return JSONResponse({"id": model_id, "models": _registry(request).listing()})


async def layers(request: Request) -> Response:
    model_id = request.path_params["model"]
    return JSONResponse({"layers": await _work(request, _registry(request).layers, model_id)})


async def summary(request: Request) -> Response:
    model_id = request.path_params["model"]
    return JSONResponse(await _work(request, _registry(request).summary, model_id))


async def kernels(request: Request) -> Response:
    model_id, layer = request.path_params["model"], request.query_params.get("layer", "")
    return _png(await _work(request, _registry(request).kernels_png, model_id, layer))


async def classify(request: Request) -> Response:
    model_id = request.path_params["model"]
    _registry(request).entry(model_id)  # 404/501 before reading the upload
    img = await _image(request)
    top = _int(request, "top", 5) or 5
    return JSONResponse({"top": await _work(request, _registry(request).classify, model_id,
                                            img, top)})


async def features(request: Request) -> Response:
    model_id, layer = request.path_params["model"], request.query_params.get("layer", "")
    _registry(request).entry(model_id)
    img = await _image(request)
    name = request.query_params.get("name", "")  # the picture's name, for the figure's title
    return _png(await _work(request, _registry(request).features_png, model_id, layer, img,
                            name))


# ----------------------------------------------------------------------------- errors
async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)


def create_app(*, weights: str | None = None, workers: int = 2,
               allowed_hosts: list[str] | None = None) -> Starlette:
    """Build the explorer app.

    Parameters
    ----------
    weights : str, optional
        A SmallCNN weights file (any format :func:`convlayers.weights.load_weights` reads): the
        digits model is then offered. Loaded now, so a bad file fails at start-up.
    workers : int, default 2
        CPU-bound requests that may run at once; the others wait their turn.
    allowed_hosts : list of str, optional
        Values of the Host header accepted (a guard against DNS rebinding); default the
        loopback names. Add the address you bind when you serve beyond loopback.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]", "::1"]
    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/filters", filters),
        Route("/api/image", image, methods=["POST"]),
        Route("/api/filter", filter_image, methods=["POST"]),
        Route("/api/playground", playground),
        Route("/api/models", models),
        Route("/api/models", upload_model, methods=["POST"]),
        Route("/api/models/{model}/layers", layers),
        Route("/api/models/{model}/summary", summary),
        Route("/api/models/{model}/kernels", kernels),
        Route("/api/models/{model}/classify", classify, methods=["POST"]),
        Route("/api/models/{model}/features", features, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_SecurityHeaders),
                    Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={ServiceError: _service_error, HTTPException: _http_error,
                            Exception: _internal_error},
    )
    app.state.static = _static_files()
    app.state.models = ModelRegistry(weights)
    app.state.limiter = anyio.CapacityLimiter(workers)
    return app
