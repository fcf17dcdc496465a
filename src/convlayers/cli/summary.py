"""``convlayers summary``: the per-layer table of a model, a block of the course, or saved weights."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from convlayers.cli._common import CLIError, canonical_name

MODELS = ("mobilenet_v2", "efficientnet_lite0", "small_cnn")
#: The course chapter's blocks: Conv-BN-ReLU, the depthwise-separable convolution, and its
#: MobileNetV2-type block (expand x6, depthwise, project; no norm, activation or residual).
BLOCKS = ("conv_bn_relu", "separable", "mobile_block")
DEFAULT_INPUT = {"mobilenet_v2": (1, 3, 224, 224), "efficientnet_lite0": (1, 3, 224, 224),
                 "small_cnn": (1, 1, 8, 8)}
_WEIGHT_SUFFIXES = (".safetensors", ".npz")


def model_or_weights(text: str) -> str:
    """argparse type for MODEL: a model or block name (``-`` or ``_``), or a weights file.

    >>> model_or_weights("small-cnn"), model_or_weights("MobileNet-V2")
    ('small_cnn', 'mobilenet_v2')
    """
    if Path(text).suffix.lower() in (*_WEIGHT_SUFFIXES, ".onnx"):
        return text
    try:
        return canonical_name(text, MODELS + BLOCKS, "MODEL")
    except CLIError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, a .safetensors/.npz weights file or an .onnx "
                                         f"model") from None


def shape4(text: str) -> tuple[int, ...]:
    """argparse type for ``N,C,H,W`` (commas or ``x``), positive integers.

    >>> shape4("1,3,224,224"), shape4("2x3x32x32")
    ((1, 3, 224, 224), (2, 3, 32, 32))
    """
    parts = str(text).lower().replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W such as 1,3,224,224, got {text!r}") from None
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive sizes N,C,H,W, got {text!r}")
    return values


def register(sub: Any) -> None:
    """Add the ``summary`` command."""
    p = sub.add_parser(
        "summary", help="per-layer output shapes, parameters and multiply-adds of a model",
        description="Run MODEL once on zeros and print, per layer, the output shape, trainable "
        "parameters, multiply-adds (MACs; FLOPs = 2 x MACs) and output memory. Conv and linear "
        "weights count (the papers' and torchinfo's convention: mobilenet_v2 300.8 M); bias adds, "
        "BatchNorm, pooling and activations only with --bias/--norm/--pooling/--activations. "
        "The course chapter's blocks take their input channels from --input and map them to "
        "--out-channels: conv_bn_relu (its Conv-BN-ReLU block), separable (its depthwise-"
        "separable convolution: depthwise 3x3, then pointwise 1x1) and mobile_block (its "
        "MobileNetV2-type block: expand x6, depthwise, project). MODEL may also be weights "
        "saved by 'convlayers train' (.safetensors or .npz).",
    )
    p.add_argument("model", type=model_or_weights, metavar="MODEL",
                   help=f"one of {', '.join(MODELS + BLOCKS)} ('-' or '_'), a weights file, or "
                        f"an ONNX model (FILE.onnx; --input defaults to its declared shape)")
    p.add_argument("--input", type=shape4, default=None, metavar="N,C,H,W",
                   help="input shape (default 1,3,224,224 for the ImageNet models, 1,1,8,8 for "
                   "small_cnn, 1,3,32,32 for the blocks, the training size for weights)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="a Markdown table")
    fmt.add_argument("--csv", action="store_true", help="CSV rows (name,type,output_shape,...)")
    p.add_argument("--bias", action="store_true", help="count bias adds")
    p.add_argument("--norm", action="store_true", help="count BatchNorm (one per output)")
    p.add_argument("--pooling", action="store_true", help="count pooling windows")
    p.add_argument("--activations", action="store_true", help="count activations")
    p.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convs first")
    p.add_argument("--num-classes", type=int, default=None, metavar="K",
                   help="classifier outputs (default 1000; 10 for small_cnn)")
    p.add_argument("--width-mult", type=positive_float, default=1.0, metavar="W",
                   help="mobilenet_v2 channel multiplier (default 1.0)")
    p.add_argument("--out-channels", type=int, default=64, metavar="C",
                   help="output channels of a block (default 64)")
    p.add_argument("--widths", type=_widths, default=None, metavar="W1,W2,...",
                   help="small_cnn channels per stage (default 8,16, as 'train --widths')")
    p.set_defaults(run=run_summary)


def positive_float(text: str) -> float:
    """argparse type for a finite number > 0 (``nan`` and ``inf`` are refused).

    >>> positive_float("0.35")
    0.35
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def check_sizes(args: argparse.Namespace, shape: tuple[int, ...]) -> None:
    """Refuse, before anything is built, sizes the run cannot fit: the zeros of ``--input``, the
    model's weights and its largest activation (from the shapes arithmetic, nothing allocated)."""
    import numpy as np

    from convlayers import limits

    shown = ",".join(map(str, shape))
    limits.check_elements(shape, np.float32, f"--input {shown}")
    n, channels, h, w = shape
    if args.model == "mobilenet_v2":
        classes = 1000 if args.num_classes is None else args.num_classes
        params, largest = _mobilenet_sizes(args.width_mult, channels, h, w, classes)
        limits.check_bytes(4 * params, f"mobilenet_v2 with --width-mult {args.width_mult:g} "
                                       f"({params:,} parameters)")
    elif args.model == "efficientnet_lite0":
        largest = 96 * -(-h // 2) * -(-w // 2)  # its first expanded block, at half resolution
    elif args.model == "small_cnn":
        largest = max(getattr(args, "widths", None) or (16, 32)) * h * w
    else:  # the blocks, at full resolution; mobile_block expands x6
        largest = max(args.out_channels, 6 * channels) * h * w
    limits.check_bytes(4 * n * largest, f"the largest activation of {args.model} for --input "
                                        f"{shown}")


def _mobilenet_sizes(width_mult: float, channels: int, h: int, w: int,
                     classes: int) -> tuple[int, int]:
    """Parameters and largest activation (per image) of MobileNetV2, from its stage table."""
    from convlayers import shapes
    from convlayers.nn.models.mobilenetv2 import SETTINGS, make_divisible

    ch, last = make_divisible(32 * width_mult), make_divisible(1280 * max(1.0, width_mult))
    h, w = -(-h // 2), -(-w // 2)  # the stem: 3x3, stride 2, padding 1
    params, largest = shapes.conv_params(channels, ch, 3) + 2 * ch, ch * h * w  # conv + BN
    for t, c, repeats, stride in SETTINGS:
        out = make_divisible(c * width_mult)
        for i in range(repeats):
            hidden = ch * t
            expand = shapes.conv_params(ch, hidden, 1) + 2 * hidden if t != 1 else 0
            params += expand + shapes.conv_params(hidden, hidden, 3, groups=hidden) + 2 * hidden
            params += shapes.conv_params(hidden, out, 1) + 2 * out
            largest = max(largest, hidden * h * w)
            if i == 0 and stride > 1:
                h, w = -(-h // stride), -(-w // stride)
            ch = out
    params += shapes.conv_params(ch, last, 1) + 2 * last + (last + 1) * classes
    return params, max(largest, last * h * w)


def build(args: argparse.Namespace, shape: tuple[int, ...]) -> Any:
    """The model or block named by ``args.model`` for inputs of ``shape``."""
    from convlayers import nn
    from convlayers.nn import models

    name, channels = args.model, shape[1]
    classes = args.num_classes
    if args.widths is not None and name != "small_cnn":
        raise CLIError(f"--widths applies to small_cnn only, got MODEL {name}")
    if name == "mobilenet_v2":
        return nn.MobileNetV2(1000 if classes is None else classes, args.width_mult, rng=0)
    if name == "small_cnn":
        if shape[2] != shape[3]:
            raise CLIError(f"small_cnn needs a square input, got --input {','.join(map(str, shape))}")
        widths = {} if args.widths is None else {"widths": args.widths}
        return nn.SmallCNN(channels, 10 if classes is None else classes, shape[2], rng=0,
                           **widths)
    if name == "efficientnet_lite0":
        factory = getattr(models, "efficientnet_lite0", None)  # lands separately
        if factory is None:
            raise CLIError("efficientnet_lite0 is not available in this version of convlayers")
        return factory(num_classes=1000 if classes is None else classes, rng=0)
    out = args.out_channels
    if name == "conv_bn_relu":
        return nn.ConvNormAct(channels, out, bias=True, rng=0)
    if name == "separable":
        return nn.DepthwiseSeparable(channels, out, bias=True, rng=0)
    return nn.InvertedResidual(channels, out, 1, expand_ratio=6, norm=False, activation=None,
                               residual=False, bias=True, rng=0)


def run_summary(args: argparse.Namespace) -> int:
    """Print the table (text, Markdown or CSV)."""
    from convlayers.nn import fuse
    from convlayers.summary import summary

    if Path(args.model).suffix.lower() == ".onnx":
        from convlayers.cli import _onnx

        model = _onnx.load_cli_model(args.model)
        shape = _onnx.input_shape(model, args.input, args.model)
    elif Path(args.model).suffix.lower() in _WEIGHT_SUFFIXES:
        model, trained = load_saved(args.model)
        shape = args.input or trained
    else:
        shape = args.input or DEFAULT_INPUT.get(args.model, (1, 3, 32, 32))
        check_sizes(args, shape)
        model = build(args, shape)
    if args.fuse:
        model = fuse(model)
    result = summary(model, shape, bias=args.bias, norm=args.norm,
                     pooling=args.pooling, activations=args.activations)
    if args.csv:
        print(result.to_csv(), end="")
    elif args.markdown:
        print(result.to_markdown(), end="")
    else:
        print(result)
    return 0


def _widths(text: str) -> tuple[int, ...]:
    """argparse type for ``8,16,32``: positive channel counts.

    >>> _widths("8,16")
    (8, 16)
    """
    try:
        values = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected channel counts such as 8,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive channel counts, got {text!r}")
    return values


def load_saved(path: str) -> tuple[Any, tuple[int, int, int, int]]:
    """A model rebuilt from weights saved by ``convlayers train`` and its training input shape."""
    from convlayers.cli._common import read_trained_weights
    from convlayers.train import small_cnn_from_state_dict
    from convlayers.train.folder import classifier_from_weights

    target = Path(path)
    state, described = read_trained_weights(target)
    model: Any
    try:
        if described.get("dataset") == "folder":
            model, _, size = classifier_from_weights(state, described)
            return model, (1, int(described["channels"]), size, size)
        model = small_cnn_from_state_dict(state)
    except (KeyError, ValueError) as exc:
        raise CLIError(f"weights {str(target)!r}: {exc}") from None
    channels = int(model.features[0][0].weight.data.shape[1])
    convs = [m[0].weight.data.shape for m in model.features if hasattr(m, "__getitem__")]
    cells = int(model.classifier[1].weight.data.shape[1]) // int(convs[-1][0])
    side = round(cells**0.5) * 2 ** len(convs)  # each stage halves the image
    return model, (1, channels, side, side)
