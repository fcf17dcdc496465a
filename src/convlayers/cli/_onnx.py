"""ONNX files on the command line: ``classify --model FILE.onnx`` and ``summary FILE.onnx``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from convlayers.cli._common import CLIError

__all__ = ["add_classify_options", "input_shape", "is_onnx", "load_cli_model"]

# torchvision's ImageNet statistics (convlayers.onnx.imagenet has the same; not imported here so
# that building the parser stays light)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_onnx(path: Any) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix).

    >>> is_onnx("net.onnx"), is_onnx("net.safetensors")
    (True, False)
    """
    return Path(str(path)).suffix.lower() == ".onnx"


def load_cli_model(path: str) -> Any:
    """``convlayers.onnx.load(path)`` with its errors as CLI errors."""
    if not Path(path).is_file():
        raise CLIError(f"ONNX file {path!r} does not exist")
    try:
        from convlayers import onnx

        return onnx.load(path)
    except (ImportError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def input_shape(model: Any, given: tuple[int, ...] | None, path: str) -> tuple[int, ...]:
    """``given``, else the model's declared input shape (a free batch axis taken as 1)."""
    if given is not None:
        return given
    spec = model.graph_inputs[0]
    shape = list(spec.shape or ())
    if shape and shape[0] is None:
        shape[0] = 1
    if not shape or any(d is None for d in shape):
        raise CLIError(f"{path} does not declare a fixed input shape ({spec.shape}); give --input")
    return tuple(int(d) for d in shape)


def _triple(text: str) -> tuple[float, float, float]:
    """argparse type for three numbers ``R,G,B``.

    >>> _triple("0.5,0.5,0.5")
    (0.5, 0.5, 0.5)
    """
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B, got {text!r}") from None
    if len(values) != 3 or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"expected three finite numbers R,G,B, got {text!r}")
    return (values[0], values[1], values[2])


def add_classify_options(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--size``, ``--mean`` and ``--std`` for ``convlayers classify``."""
    p.add_argument("--model", metavar="FILE.onnx", default=None,
                   help="classify with this ONNX model instead (1000 ImageNet logits out). Each "
                        "image is converted to RGB, resized to --size x --size (bilinear), scaled "
                        "to [0, 1], normalized per channel as (x - mean) / std and given as a "
                        "(1, 3, size, size) float32 batch (NCHW)")
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="input side for --model (default: the model's declared size, else 224)")
    p.add_argument("--mean", type=_triple, default=IMAGENET_MEAN, metavar="R,G,B",
                   help="per-channel mean for --model, of [0, 1] pixels (default ImageNet's "
                        "0.485,0.456,0.406)")
    p.add_argument("--std", type=_triple, default=IMAGENET_STD, metavar="R,G,B",
                   help="per-channel standard deviation for --model (default ImageNet's "
                        "0.229,0.224,0.225)")
