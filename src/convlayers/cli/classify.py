"""``convlayers classify``: name what is in a photo with the pretrained EfficientNet-Lite0."""

from __future__ import annotations

import argparse
import json
from typing import Any

from convlayers.cli._common import CLIError, image_files, output_dir

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``classify`` command."""
    p = sub.add_parser(
        "classify", help="top ImageNet classes of photos (pretrained EfficientNet-Lite0)",
        description="Run EfficientNet-Lite0 with its ImageNet weights (the convlayers[pretrained] "
        "extra) on each IMAGE and print its most likely classes.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="photos to classify, or folders of photos")
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--maps", nargs="+", metavar="LAYER", default=[],
                   help="also draw these layers' feature maps for each image (names as in "
                        "'convlayers summary efficientnet_lite0', e.g. stem blocks.1 blocks.5)")
    p.add_argument("--kernels", action="store_true",
                   help="also draw the 32 learned stem kernels beside the hand-made filters")
    p.add_argument("-o", "--output", default="out/classify", metavar="DIR",
                   help="folder for --maps and --kernels pictures (default out/classify)")
    from convlayers.cli._onnx import add_classify_options

    add_classify_options(p)
    p.set_defaults(run=run_classify)


def _pictures(args: argparse.Namespace, model: Any) -> list[str]:
    """Feature maps of the chosen layers per image, and the stem kernels, as PNG files."""
    from pathlib import Path

    from convlayers.classify import preprocess
    from convlayers.nn import feature_maps
    from convlayers.viz import learned_vs_handmade, plot_feature_maps, save_figure

    if not (args.kernels or args.maps):
        return []
    folder = output_dir(args.output, "-o/--output")
    written = []
    if args.kernels:
        written.append(save_figure(learned_vs_handmade(model.stem[1].weight.data),
                                   folder / "stem_kernels.png"))
    for path in args.images:
        try:
            maps = feature_maps(model, preprocess(path), args.maps)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        for layer, values in maps.items():
            name = f"{Path(path).stem}_{layer.replace('.', '_') or 'model'}.png"
            title = f"layer {layer or 'output'!r} of {Path(path).name}"
            written.append(save_figure(plot_feature_maps(values[0], max_maps=32, title=title),
                                       folder / name))
    return [str(w) for w in written]


def _onnx_model(args: argparse.Namespace) -> tuple[Any, int]:
    """The --model ONNX file behind ImageNet preprocessing, and its input side."""
    from convlayers.cli import _onnx

    if args.kernels:
        raise CLIError("--kernels draws EfficientNet-Lite0's stem kernels; it does not apply with --model")
    net = _onnx.load_cli_model(args.model)
    declared = (net.graph_inputs[0].shape or (None,) * 4)[-1]
    size = args.size or declared or 224
    if size < 1:
        raise CLIError(f"--size must be >= 1, got {size}")
    args.maps = [f"net.{name}" for name in args.maps]  # the names 'convlayers summary FILE' shows
    from convlayers.onnx.imagenet import ImageNetInput

    try:
        return ImageNetInput(net, args.mean, args.std), size
    except ValueError as exc:
        raise CLIError(f"--std: {exc}") from None


def run_classify(args: argparse.Namespace) -> int:
    """Classify every image (folders hold images, as for 'filter' and 'predict')."""
    args.images = [str(p) for p in image_files(args.images)]
    if args.kernels or args.maps:
        output_dir(args.output, "-o/--output")  # checked before the model loads
    from convlayers.classify import classify, pretrained_model

    model, size = _onnx_model(args) if getattr(args, "model", None) else (None, 224)
    try:
        model = model if model is not None else pretrained_model()
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    results = {}
    for path in args.images:
        try:
            results[path] = classify(model, path, top=args.top, size=size)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    pictures = _pictures(args, model)
    if args.json:
        print(json.dumps({p: [vars(r) for r in preds] for p, preds in results.items()}, indent=2))
        return 0
    for path, preds in results.items():
        print(f"{path}:")
        for r in preds:
            print(f"  {r.probability:6.1%}  {r.name} ({r.index})")
    for picture in pictures:
        print(f"wrote {picture}")
    return 0
