"""``convlayers classify``: name what is in a photo with the pretrained EfficientNet-Lite0."""

from __future__ import annotations

import argparse
import json
from typing import Any

from convlayers.cli._common import CLIError

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``classify`` command."""
    p = sub.add_parser(
        "classify", help="top ImageNet classes of photos (pretrained EfficientNet-Lite0)",
        description="Run EfficientNet-Lite0 with its ImageNet weights (the convlayers[pretrained] "
        "extra) on each IMAGE and print its most likely classes.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="photos to classify")
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    from convlayers.classify import classify, pretrained_model

    try:
        model = pretrained_model()
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    results = {}
    for path in args.images:
        try:
            results[path] = classify(model, path, top=args.top)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps({p: [vars(r) for r in preds] for p, preds in results.items()}, indent=2))
        return 0
    for path, preds in results.items():
        print(f"{path}:")
        for r in preds:
            print(f"  {r.probability:6.1%}  {r.name} ({r.index})")
    return 0
