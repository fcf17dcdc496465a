"""Thin adapters between HTTP requests and the library: decode, call, encode.

Every number the explorer shows comes from the library: filtered pixels from
:func:`convlayers.filters.apply_filter` (8-bit by the same rule as ``convlayers filter --scale``),
sizes from :mod:`convlayers.shapes`, window steps from :func:`convlayers.viz.sliding_plan`,
pictures of feature maps and kernels from :mod:`convlayers.viz`, predictions from the model
modules. This module only validates request values, decodes uploads defensively, bounds the
work, and turns results into PNG bytes or JSON-ready dicts.

Errors a user can cause raise :class:`ServiceError` with an HTTP status and a one-line message.

Examples
--------
>>> plan = playground("conv", 5, 3, padding=1)
>>> plan["output_size"], plan["filled"][0]
([5, 5], 'floor((5 + 2*1 - 1*(3 - 1) - 1) / 1) + 1 = 5')
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from convlayers import config

__all__ = [
    "BOUNDARIES",
    "MAX_DECODE_PIXELS",
    "MAX_SIDE",
    "MAX_UPLOAD_BYTES",
    "MODES",
    "SAMPLES",
    "SCALES",
    "ServiceError",
    "decode_image",
    "filter_png",
    "filters_catalog",
    "load_image",
    "parse_kernel",
    "playground",
]

#: Largest upload accepted, in bytes.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Largest image (width * height) decoded at all; bigger claims are refused before decoding.
MAX_DECODE_PIXELS = 25_000_000
#: Longest side an image is worked on at; larger uploads are downscaled first.
MAX_SIDE = 1024
#: Largest kernel side accepted from a typed kernel.
MAX_KERNEL_SIDE = 31
#: Formats Pillow may use to decode an upload.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")

MODES = ("same", "valid", "full")
BOUNDARIES = ("symm", "fill", "wrap")
SCALES = ("auto", "clip", "stretch", "abs", "signed", "percentile")
#: Bundled images, by fixed id: a request names one of these, never a path.
SAMPLES: dict[str, Callable[[bool], np.ndarray]] = {}

# Playground limits: the plan lists every cell of every window, so keep the layer small.
PLAYGROUND_LIMITS = {"input": 32, "kernel": 9, "stride": 8, "padding": 8, "dilation": 4,
                     "output_padding": 7}
PLAYGROUND_MAX_FRAMES = 2048


class ServiceError(Exception):
    """A request the explorer refuses: ``status`` is the HTTP status, the text says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _sample_chelsea(gray: bool) -> np.ndarray:
    from convlayers.data import sample_photo

    return sample_photo(gray=gray)


SAMPLES["chelsea"] = _sample_chelsea


# ----------------------------------------------------------------------------- images
def decode_image(data: bytes, *, gray: bool = False, max_side: int = MAX_SIDE) -> np.ndarray:
    """Decode uploaded bytes into ``(H, W, 3)`` (or ``(H, W)`` with ``gray``) uint8, in memory.

    Refuses empty or oversized data (413), data that is not an image (415), images whose
    header claims more than :data:`MAX_DECODE_PIXELS` pixels (413, checked before any pixel is
    decoded; Pillow's own decompression-bomb check is a second guard), and truncated or corrupt
    files (422). Images with a side longer than ``max_side`` are downscaled (Lanczos).
    """
    if not data:
        raise ServiceError(400, "the upload is empty: choose an image file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ServiceError(413, f"the upload is {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES}")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as opened:
            w, h = opened.size
            limit = min(MAX_DECODE_PIXELS, config.max_image_pixels())  # the readers' shared cap
            if w < 1 or h < 1 or w * h > limit:
                raise ServiceError(413, f"the image is too large: it claims {w}x{h} pixels; the "
                                        f"limit is {limit:,} pixels")
            if opened.format == "JPEG":  # decode at a reduced scale straight away
                opened.draft("RGB", (max_side, max_side))
            opened.load()
            img: Image.Image = ImageOps.exif_transpose(opened) or opened
            img = img.convert("L" if gray else "RGB")
            if max(img.size) > max_side:
                img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return np.array(img)
    except ServiceError:
        raise
    except Image.DecompressionBombError as exc:
        raise ServiceError(413, f"the image is too large to decode safely (a decompression "
                                f"bomb?): {exc}") from None
    except UnidentifiedImageError:
        raise ServiceError(415, "the upload is not an image file (PNG, JPEG, GIF, BMP, WebP, "
                                "TIFF or PPM expected)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ServiceError(422, f"the image could not be decoded (truncated or corrupt?): "
                                f"{' '.join(str(exc).split())}") from None


def load_image(data: bytes | None, sample: str | None, *, gray: bool = False) -> np.ndarray:
    """The image a request names: uploaded bytes, or a bundled sample by its fixed id."""
    if data:
        return decode_image(data, gray=gray)
    name = sample or "chelsea"
    if name not in SAMPLES:
        raise ServiceError(404, f"unknown sample {name!r}; known samples: {', '.join(SAMPLES)}")
    return SAMPLES[name](gray)


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes of an 8-bit ``(H, W)`` or ``(H, W, 3)`` array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def figure_png(fig: Any) -> bytes:
    """PNG bytes of a :mod:`convlayers.viz` figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


# ----------------------------------------------------------------------------- filters
def filters_catalog() -> dict[str, Any]:
    """The filter bank, the choices, and the limits, for the page to build its controls."""
    from convlayers.filters import FILTERS

    return {
        "filters": {name: np.asarray(k).tolist() for name, k in sorted(FILTERS.items())},
        "modes": list(MODES), "boundaries": list(BOUNDARIES), "scales": list(SCALES),
        "samples": list(SAMPLES), "max_upload_bytes": MAX_UPLOAD_BYTES, "max_side": MAX_SIDE,
    }


def parse_kernel(spec: str) -> np.ndarray:
    """A typed kernel, ``"1,0,-1; 2,0,-2; 1,0,-1"`` (the CLI's ``--kernel`` syntax)."""
    from convlayers.cli._common import CLIError, matrix

    if len(spec) > 20_000:
        raise ServiceError(400, "kernel text is too long")
    try:
        kernel = np.array(matrix(spec, "kernel"), dtype=np.float64)
    except CLIError as exc:
        raise ServiceError(400, str(exc)) from None
    if not np.isfinite(kernel).all():
        raise ServiceError(400, f"bad kernel spec {spec!r}: every value must be a finite number")
    if max(kernel.shape) > MAX_KERNEL_SIDE:
        raise ServiceError(400, f"kernel is {kernel.shape[0]}x{kernel.shape[1]}; the largest "
                                f"side allowed is {MAX_KERNEL_SIDE}")
    return kernel


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ServiceError(400, f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def filter_png(image: np.ndarray, filter_name: str | None, kernel: str | None, *,
               mode: str = "same", boundary: str = "symm", scale: str = "auto") -> bytes:
    """``apply_filter`` on ``image``, made 8-bit by the CLI's ``--scale`` rule, as PNG bytes."""
    from convlayers.cli.images import to_uint8
    from convlayers.filters import FILTERS, apply_filter

    _choice(mode, MODES, "mode")
    _choice(boundary, BOUNDARIES, "boundary")
    _choice(scale, SCALES, "scale")
    if kernel:
        chosen: Any = parse_kernel(kernel)
    elif filter_name in FILTERS:
        chosen = filter_name
    else:
        raise ServiceError(400, f"filter must be one of {', '.join(sorted(FILTERS))} (or type a "
                                f"kernel), got {filter_name!r}")
    try:
        response = apply_filter(image, chosen, mode=mode, boundary=boundary)
    except (ValueError, TypeError) as exc:
        raise ServiceError(400, str(exc)) from None
    return encode_png(to_uint8(response, scale, chosen))


# ----------------------------------------------------------------------------- playground
def _formulas() -> dict[str, str]:
    from convlayers.shapes import FORMULAS

    return {"conv": FORMULAS["conv"], "pool": FORMULAS["conv"],
            "pool_ceil": FORMULAS["pool_ceil"] + ", minus 1 if the last window would start in "
                                                 "the right padding",
            "conv_transpose": FORMULAS["conv_transpose"]}


def _bounded(value: int, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ServiceError(400, f"{name} must be an integer, got {value!r}")
    high = PLAYGROUND_LIMITS[name]
    if not low <= value <= high:
        raise ServiceError(400, f"{name} must be between {low} and {high} in the playground, "
                                f"got {value}")
    return value


def _typed(spec: str | None, name: str, side: int, what: str) -> np.ndarray | None:
    """Numbers typed for the playground (rows split by ';'), checked to be ``side x side``."""
    if spec is None or not spec.strip():
        return None
    try:
        values = parse_kernel(spec)
    except ServiceError as exc:
        raise ServiceError(400, f"{name}: {exc}".replace("bad kernel spec", "bad spec")) from None
    if values.shape != (side, side):
        raise ServiceError(400, f"{name} must be {side}x{side} numbers ({what}), got "
                                f"{values.shape[0]}x{values.shape[1]}")
    return values


def playground(op: str, input_size: int, kernel_size: int, stride: int | None = None,
               padding: int = 0, dilation: int = 1, *, output_padding: int = 0,
               ceil_mode: bool = False, input_values: str | None = None,
               kernel_values: str | None = None) -> dict[str, Any]:
    """Output size (from :mod:`convlayers.shapes`), its formula filled in, and the
    :func:`~convlayers.viz.sliding_plan` of a square layer, as a JSON-ready dict.

    With the numbers too: ``input`` (typed as ``input_values``, default 1, 2, ...),
    ``kernel`` (typed as ``kernel_values``, default all ones; None for a pool), every grid
    cell's number (``grid``; padding and inserted zeros 0, None for max pooling's padding),
    the ``output`` (:func:`convlayers.viz.output_values`) and each window's sum written out
    (``sums``, :func:`convlayers.viz.window_sum`).
    """
    from convlayers import shapes
    from convlayers.viz import OPS, sliding_plan

    _choice(op, tuple(OPS), "op")
    n = _bounded(input_size, "input", 1)
    k = _bounded(kernel_size, "kernel", 1)
    pool = op.endswith("_pool")
    s = _bounded(stride if stride is not None else (k if pool else 1), "stride", 1)
    p = _bounded(padding, "padding", 0)
    d = _bounded(dilation, "dilation", 1)
    op_pad = _bounded(output_padding, "output_padding", 0)
    try:
        kind = "conv_transpose" if op == "conv_transpose" else ("pool" if pool else "conv")
        formula = shapes.size_formula(kind, n, k, s, p, d, output_padding=op_pad,
                                      ceil_mode=pool and ceil_mode)
        out, filled = formula.size, str(formula)
        key = "pool_ceil" if pool and ceil_mode else kind
        if out * out > PLAYGROUND_MAX_FRAMES:
            raise ServiceError(400, f"the output would be {out}x{out}; the playground steps "
                                    f"through at most {PLAYGROUND_MAX_FRAMES} windows")
        plan = sliding_plan(op, n, k, s, p, d, output_padding=op_pad if op == "conv_transpose"
                            else 0, ceil_mode=ceil_mode if pool else False)
    except (ValueError, TypeError) as exc:
        raise ServiceError(400, str(exc)) from None
    numbers = _numbers(op, plan, n, k, (s, p, d, op_pad, ceil_mode), input_values, kernel_values)
    return {
        "op": op, "input_size": [n, n], "kernel_size": [k, k], "stride": [s, s],
        "padding": [p, p], "dilation": [d, d], "output_padding": [op_pad, op_pad],
        "ceil_mode": ceil_mode, "output_size": [out, out], "formula": _formulas()[key],
        "filled": [filled, filled], "plan": plan.to_dict(), **numbers,
    }


def _numbers(op: str, plan: Any, n: int, k: int, rest: tuple[int, int, int, int, bool],
             input_values: str | None, kernel_values: str | None) -> dict[str, Any]:
    """The playground's numbers: input, kernel, grid, output and each window's sum."""
    from convlayers.viz import output_values, window_sum

    s, p, d, op_pad, ceil_mode = rest
    x = _typed(input_values, "input_values", n, f"the input is {n}x{n}")
    if x is None:
        x = np.arange(1, n * n + 1, dtype=np.float64).reshape(n, n)
    w = _typed(kernel_values, "kernel_values", k, f"the kernel is {k}x{k}")
    if op.endswith("_pool"):
        if w is not None:
            raise ServiceError(400, f"kernel_values are the weights of a convolution; {op} "
                                    "has none")
    elif w is None:
        w = np.ones((k, k))
    try:
        out = output_values(op, x, w, k, s, p, d, output_padding=op_pad, ceil_mode=ceil_mode)
    except (ValueError, TypeError) as exc:
        raise ServiceError(400, str(exc)) from None
    assert out is not None
    grid = np.zeros(plan.grid_shape)
    shown: list[list[float | None]] = []
    for r, row in enumerate(plan.sources):
        shown.append([])
        for c, src in enumerate(row):
            if src is not None:
                grid[r, c] = x[src]
            pad = plan.cells[r][c] == "pad" and op == "max_pool"
            shown[-1].append(None if pad else float(grid[r, c]))
    ow = plan.output_shape[1]
    sums = [window_sum(plan, t, grid, w, float(out[divmod(t, ow)]))
            for t in range(len(plan.frames))]
    return {"input": x.tolist(), "kernel": None if w is None else w.tolist(), "grid": shown,
            "output": out.tolist(), "sums": sums}
