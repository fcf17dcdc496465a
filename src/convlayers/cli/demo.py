"""``convlayers demo``: a tour on the bundled photo, written to a folder and printed."""

from __future__ import annotations

import argparse
from typing import Any

from convlayers.cli._common import add_progress_flag, output_dir, progress, progress_enabled


def register(sub: Any) -> None:
    """Add the ``demo`` command."""
    p = sub.add_parser(
        "demo", help="filters, animations, explanations and layer costs on the bundled photo",
        description="Write gallery.png (the six classic filters on the bundled photo), "
        "max_pool.gif and conv.gif (the window sliding) into the output folder, and print the "
        "pooling walk-through, the conv-kind cost table, a block summary and what the pretrained "
        "EfficientNet-Lite0 sees in the photo (with its learned kernels in stem_kernels.png).",
    )
    p.add_argument("--output", default="out/demo", metavar="DIR",
                   help="folder for the pictures (default out/demo; created if missing)")
    add_progress_flag(p)
    p.set_defaults(run=run)


def _summary_block() -> str | None:
    """A per-layer table of a small conv block, once :mod:`convlayers.summary` exists."""
    try:
        from convlayers import nn
        from convlayers.summary import summary
    except ImportError:
        return None
    try:
        block = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        return str(summary(block, (1, 3, 224, 224)))
    except (AttributeError, TypeError, ValueError, RuntimeError):  # an API still taking shape
        return None


def _classify_photo(folder: Any) -> list[str]:
    """The pretrained EfficientNet-Lite0 on the bundled photo, and its stem kernels drawn."""
    from convlayers.classify import classify, pretrained_model
    from convlayers.data import sample_photo
    from convlayers.viz import learned_vs_handmade, save_figure

    try:
        model = pretrained_model()
    except ImportError as exc:
        return [f"(skipped: {exc})"]
    lines = [f"{p.probability:6.1%}  {p.name} (class {p.index})"
             for p in classify(model, sample_photo(), top=3)]
    path = folder / "stem_kernels.png"
    save_figure(learned_vs_handmade(model.stem[1].weight.data), path)
    return [*lines, f"wrote {path} (its 32 learned 3x3 kernels beside the hand-made filters)"]


def run(args: argparse.Namespace) -> int:
    """Write the pictures, then print the explanations."""
    from convlayers import shapes
    from convlayers.data import sample_photo
    from convlayers.explain import SEED_CONV_KERNEL, SEED_POOL_INPUT, explain_pool
    from convlayers.viz import animate, filter_gallery, save_figure

    folder = output_dir(args.output)
    steps = [
        ("gallery.png", lambda path: save_figure(filter_gallery(sample_photo()), path)),
        ("max_pool.gif", lambda path: animate("max_pool", 4, 2, path=path,
                                              values=SEED_POOL_INPUT)),
        ("conv.gif", lambda path: animate("conv", 5, 3, 2, 1, path=path,
                                          kernel=SEED_CONV_KERNEL)),
    ]
    written = []
    for name, make in progress(steps, progress_enabled(args), desc="demo"):
        make(folder / name)
        written.append(folder / name)

    print("== Pooling, step by step (the course chapter's 4x4 example) ==")
    print(explain_pool(kind="max"))
    print()
    print(explain_pool(kind="avg"))
    print()
    print("== Parameters of the conv kinds, 64 -> 128 channels, 3x3, output 56x56 ==")
    print(f"{'kind':<10} {'parameters':>11} {'multiply-adds':>14}  what")
    rows = shapes.compare_conv_kinds(64, 128, 3, (56, 56), groups=4)
    for row in rows:
        print(f"{row.kind:<10} {row.params:>11,} {row.macs:>14,}  {row.description}")
    print(f"separable needs {rows[3].ratio_to(rows[0]):.1f}x fewer parameters than standard")
    block = _summary_block()
    if block is not None:
        print()
        print("== A standard block (Conv2d 3->64, BatchNorm2d, ReLU) on 224x224 ==")
        print(block)
    print()
    print("== EfficientNet-Lite0 (ImageNet weights, built from these blocks) on the photo ==")
    for line in _classify_photo(folder):
        print(line)
    print()
    for path in written:
        print(f"wrote {path}")
    return 0
