"""``convlayers train folder DIR`` and ``predict`` for its models: your own pictures.

The training side reads ``DIR/<class>/*`` (:class:`convlayers.datasets.ImageFolder`), holds out
a seeded share of each class for validation unless ``--test DIR`` is given, augments each batch
(random crop with padding, flip, colour jitter), trains one of the library's networks (optionally
EfficientNet-Lite0 from its ImageNet weights, only its head with ``--freeze``), and writes the
weights with what predicting needs (model, classes, image size) as safetensors metadata. This
module has no ``register``: :mod:`convlayers.cli.train` adds its options and calls it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convlayers.cli._common import CLIError, output_dir, output_file, progress_enabled

#: Below this top probability, ``predict`` says the picture looks unlike the training images.
LOW_CONFIDENCE = 0.5


def add_folder_options(t: argparse.ArgumentParser) -> None:
    """The options only ``train folder`` uses."""
    g = t.add_argument_group("train folder (your own images in DIR/<class>/*.png|jpg|...)")
    g.add_argument("--test", metavar="DIR",
                   help="a test folder with the same classes (default: hold out --val-fraction)")
    g.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                   help="share of each class held out for validation when there is no --test "
                   "(default 0.2, seeded by --split-seed)")
    g.add_argument("--split-seed", type=int, default=0, metavar="N",
                   help="seed of the train/validation split (default 0)")
    g.add_argument("--size", type=int, default=None, metavar="PX",
                   help="images are resized to PX x PX (default 64; 224 with --pretrained)")
    g.add_argument("--pretrained", action="store_true",
                   help="start EfficientNet-Lite0 from its ImageNet weights, with a new head")
    g.add_argument("--freeze", action="store_true",
                   help="train only the head (the rest keeps its weights and statistics)")
    g.add_argument("--unfreeze-after", type=int, metavar="N",
                   help="with --freeze: train the whole network from epoch N+1 on")
    g.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                   help="learning-rate schedule per epoch (default cosine)")
    g.add_argument("--workers", type=int, default=2, metavar="N",
                   help="threads decoding images (default 2)")


def check_folder_args(args: argparse.Namespace) -> None:
    """Check and complete the options of ``train folder`` (model spelling, size, output name)."""
    from convlayers.train.folder import canonical_model_name

    if not args.folder:
        raise CLIError("train folder needs the folder: convlayers train folder DIR")
    args.model = canonical_model_name(args.model)
    if not 0 < args.val_fraction < 1:
        raise CLIError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.size is None:
        args.size = 224 if args.pretrained else 64
    if args.out is None:  # named after the data
        args.out = f"{Path(args.folder).resolve().name}-{args.model}.safetensors"
    if not 8 <= args.size <= 1024:
        raise CLIError(f"--size must be in [8, 1024] pixels, got {args.size}")
    if args.unfreeze_after is not None and (not args.freeze or args.unfreeze_after < 0):
        raise CLIError("--unfreeze-after N needs --freeze and N >= 0")
    if args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")


def run_train_folder(args: argparse.Namespace) -> int:
    """Train on ``args.folder``; print per-epoch lines; save weights (and plots)."""
    from convlayers.augment import training_pipeline
    from convlayers.datasets import ImageFolder
    from convlayers.train import History, confusion_matrix, fit, predict_logits
    from convlayers.train.folder import build_classifier, classifier_metadata
    from convlayers.weights import save_weights

    check_folder_args(args)
    out = output_file(args.out, "weights", "-o/--out")
    if out.suffix.lower() != ".safetensors":  # checked before the images are read and trained on
        raise CLIError("train folder writes .safetensors (the classes travel in its metadata), "
                       f"got -o/--out {str(out)!r}")
    plots = output_dir(args.plots, "--plots") if args.plots else None
    data = ImageFolder(args.folder, size=args.size)
    if args.test:
        x_train, y_train = data.load(workers=args.workers)
        x_test, y_test = ImageFolder(args.test, size=args.size, classes=data.classes) \
            .load(workers=args.workers)
    else:
        train_idx, held_idx = data.split(args.val_fraction, seed=args.split_seed)
        x_train, y_train = data.load(train_idx, workers=args.workers)
        x_test, y_test = data.load(held_idx, workers=args.workers)
    classes = data.classes or ()
    print(f"{len(classes)} classes ({', '.join(classes)}); {len(y_train)} training and "
          f"{len(y_test)} {'test' if args.test else 'validation'} images at {args.size}x{args.size}"
          + (f"; skipped {len(data.skipped)} unreadable" if data.skipped else ""), flush=True)
    model = build_classifier(args.model, classes, image_size=args.size,
                             pretrained=args.pretrained, freeze=args.freeze, rng=args.seed)
    unfreeze = args.unfreeze_after

    def epoch_start(epoch: int) -> None:
        if args.freeze:
            model.freeze(unfreeze is None or epoch < unfreeze)

    def report(h: History) -> None:
        print(f"epoch {h.epoch[-1]}/{args.epochs}: loss {h.train_loss[-1]:.4f}, train accuracy "
              f"{h.train_accuracy[-1]:.2%}, {'test' if args.test else 'validation'} accuracy "
              f"{h.test_accuracy[-1]:.2%} ({h.images_per_second[-1]:,.0f} images/s)", flush=True)

    history = fit(model, (x_train, y_train, x_test, y_test), epochs=args.epochs,
                  batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                  schedule=args.schedule, augment=training_pipeline(args.size),
                  on_epoch_start=epoch_start, seed=args.seed,
                  target_accuracy=args.target_accuracy, checkpoint=args.checkpoint,
                  resume=args.resume, progress=progress_enabled(args), callback=report)
    predicted = predict_logits(model, x_test).argmax(axis=1) if len(y_test) else y_test
    accuracy = float((predicted == y_test).mean()) if len(y_test) else float("nan")
    print(f"{'test' if args.test else 'validation'} accuracy: {accuracy:.2%} after "
          f"{history.epoch[-1] if history.epoch else 0} epochs, {sum(history.seconds):.1f} s")
    metadata = classifier_metadata(model, classes, args.size)
    metadata.update(dataset="folder", seed=str(args.seed), accuracy=f"{accuracy:.6f}")
    save_weights(model.state_dict(), out, metadata=metadata)
    print(f"wrote weights to {out}")
    if plots is not None:
        from convlayers.train import plot_confusion, plot_curves
        from convlayers.viz import save_figure

        save_figure(plot_curves(history, "loss"), plots / "loss.png")
        save_figure(plot_curves(history, "accuracy"), plots / "accuracy.png")
        matrix = confusion_matrix(y_test, predicted, num_classes=len(classes))
        save_figure(plot_confusion(matrix, list(classes)), plots / "confusion.png")
        print(f"wrote loss.png, accuracy.png and confusion.png to {plots}")
    return 0


def predict_folder_model(state: dict[str, Any], metadata: dict[str, str], paths: list[Path],
                         as_json: bool) -> int:
    """``convlayers predict`` for weights written by ``train folder``."""
    import json

    import numpy as np

    from convlayers.cli._common import read_picture
    from convlayers.functional import softmax
    from convlayers.image_folder import image_to_input
    from convlayers.train import predict_logits
    from convlayers.train.folder import classifier_from_weights

    model, classes, size = classifier_from_weights(state, metadata)
    # read like every other command (NaN pixels: one warning, counted as 0), then prepared as
    # the training images were
    images = np.stack([image_to_input(read_picture(p), size, model.mean.shape[1]) for p in paths])
    probs = np.asarray(softmax(predict_logits(model, images), dim=1), dtype=np.float64)
    records: list[dict[str, Any]] = [{"path": str(p), "class": classes[int(row.argmax())],
                "probability": round(float(row.max()), 6),
                "probabilities": {c: round(float(v), 6) for c, v in zip(classes, row, strict=True)}}
               for p, row in zip(paths, probs, strict=True)]
    if as_json:
        print(json.dumps(records, indent=2))
    else:
        for r in records:
            note = "" if r["probability"] >= LOW_CONFIDENCE else \
                "  (low confidence: the picture may be unlike the training images)"
            print(f"{r['path']}: {r['class']} ({r['probability']:.3f}){note}")
    return 0

