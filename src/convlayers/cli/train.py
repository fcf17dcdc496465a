"""``convlayers train`` and ``convlayers predict``: a digits CNN from scratch, then used.

The defaults of ``convlayers train digits`` (SmallCNN widths 32,64, Adam lr 0.003 with cosine
decay, batch 32, 15 epochs, random shifts of 1 pixel, seed 0) reach about 99% test accuracy on
the seeded split in a few seconds on two cores.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from convlayers.cli._common import (
    CLIError,
    add_progress_flag,
    image_files,
    output_dir,
    output_file,
    progress_enabled,
)
from convlayers.cli._dask import add_dask_flags, wants_dask
from convlayers.cli.train_folder import (
    add_folder_options,
    check_folder_args,
    predict_folder_model,
    run_train_folder,
)

DEFAULTS: dict[str, int | float] = {"epochs": 15, "lr": 3e-3, "batch_size": 32, "seed": 0,
                                    "augment_shift": 1}
DEFAULT_WIDTHS = "32,64"
SPLIT_SEED = 0  # the train/test split is fixed, so runs with different seeds are comparable
_WEIGHT_SUFFIXES = (".safetensors", ".npz")


def _widths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths such as 32,64, got {text!r}") from None
    if not 1 <= len(values) <= 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected 1 to 3 positive widths (8x8 images halve "
                                         f"per stage), got {text!r}")
    return values


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _epochs(n: int) -> str:
    """``"1 epoch"``, ``"3 epochs"``.

    >>> _epochs(1), _epochs(0)
    ('1 epoch', '0 epochs')
    """
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def register(sub: Any) -> None:
    """Add the ``train`` and ``predict`` commands."""
    t = sub.add_parser(
        "train", help="train a CNN from scratch on a dataset and save its weights",
        description="Train a small CNN on scikit-learn's 8x8 handwritten digits (a fixed, "
        "seeded 80/20 split), print the test accuracy and save the weights (safetensors). "
        "The same --seed gives the same weights.",
    )
    t.add_argument("dataset", choices=("digits", "folder"),
                   help="digits (scikit-learn's 8x8 digits) or folder (your images in DIR)")
    t.add_argument("folder", nargs="?", metavar="DIR",
                   help="with 'folder': one sub-folder of images per class")
    t.add_argument("--model", default="small_cnn", metavar="NAME",
                   help="the network: small_cnn (default: conv-BN-ReLU-pool per width, linear); "
                   "for folders also mobilenet_v2, efficientnet_lite0, resnet18")
    t.add_argument("--widths", type=_widths, default=_widths(DEFAULT_WIDTHS),
                   metavar="W1,W2", help=f"channels per stage (default {DEFAULT_WIDTHS})")
    t.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], metavar="N",
                   help=f"epochs (default {DEFAULTS['epochs']})")
    t.add_argument("--lr", type=float, default=DEFAULTS["lr"],
                   help=f"learning rate, cosine-decayed to 0 (default {DEFAULTS['lr']})")
    t.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam",
                   help="optimizer (default adam; sgd uses momentum 0.9)")
    t.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], metavar="N",
                   help=f"mini-batch size (default {DEFAULTS['batch_size']})")
    t.add_argument("--augment-shift", type=int, default=DEFAULTS["augment_shift"], metavar="PX",
                   help=f"random shifts of up to PX pixels (default {DEFAULTS['augment_shift']})")
    t.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seeds the initial weights, shuffling and augmentation (default 0)")
    t.add_argument("--target-accuracy", type=_fraction, metavar="FRACTION",
                   help="stop once the test accuracy reaches it, e.g. 0.99")
    t.add_argument("--checkpoint", metavar="PATH",
                   help="write a checkpoint after every epoch (safetensors)")
    t.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint if it exists")
    t.add_argument("-o", "--out", default=None, metavar="PATH",
                   help="weights to write (.safetensors or .npz; default "
                   "digits-small_cnn.safetensors, or DIR-MODEL.safetensors for a folder)")
    t.add_argument("--plots", metavar="DIR",
                   help="also write loss.png, accuracy.png and confusion.png into DIR")
    add_folder_options(t)
    add_progress_flag(t)
    t.set_defaults(run=run_train)

    p = sub.add_parser(
        "predict", help="classify images with weights from 'convlayers train'",
        description="Classify each IMAGE (a folder means every image in it) with the weights "
        "'convlayers train' wrote. Weights from 'train folder' carry their model, classes and "
        "image size: each picture is resized as the training images were, and a top "
        "probability under 0.5 is flagged. Weights from 'train digits' are a digits SmallCNN: "
        "the picture becomes 8x8 gray with bright ink like the training data (inverted if its "
        "background is light, cropped to the digit, averaged down). Prints "
        "'path: class (probability)'.",
    )
    p.add_argument("weights", metavar="WEIGHTS",
                   help="weights (or a --checkpoint file) written by 'convlayers train'")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.add_argument("--batch-size", type=int, default=256, metavar="N",
                   help="images per task on Dask (default 256)")
    add_dask_flags(p, chunks=False)
    p.set_defaults(run=run_predict)


def digit_chw(image: Any) -> Any:
    """One picture as the digits model's ``(1, 8, 8)`` input (Dask workers call this)."""
    from convlayers.train import digit_input

    return digit_input(image)[0]


def _check_train_args(args: argparse.Namespace) -> Path:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.augment_shift < 0 or args.seed < 0:
        raise CLIError("--augment-shift and --seed must be >= 0")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise CLIError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.resume and not args.checkpoint:
        raise CLIError("--resume needs --checkpoint PATH")
    if args.checkpoint:
        output_file(args.checkpoint, "checkpoint", "--checkpoint")
    return output_file(args.out, "weights", "-o/--out")


def _check_digits_sizes(args: argparse.Namespace, side: int = 8) -> None:
    """Refuse, before building the model, --widths or --augment-shift that cannot fit: the
    SmallCNN's weights with their gradients and Adam moments, and one batch's activations
    (forward and backward) in training and in evaluation (batches of 256)."""
    from convlayers import limits, shapes

    if args.augment_shift >= side:
        raise CLIError(f"--augment-shift must be smaller than the {side}x{side} images, got "
                       f"{args.augment_shift}")
    params, activations, channels, size = 0, 0, 1, side
    for width in args.widths:
        params += shapes.conv_params(channels, width, 3) + 2 * width  # conv + BatchNorm
        activations += 4 * width * size * size  # conv, norm, activation, pooled (upper bound)
        channels, size = width, size // 2
    params += (channels * size * size + 1) * 10
    need = 4 * (4 * params + 2 * max(args.batch_size, 256) * activations)
    limits.check_bytes(need, f"training SmallCNN with --widths {','.join(map(str, args.widths))}"
                       f" and --batch-size {args.batch_size}")


def _check_resume_widths(args: argparse.Namespace, model: Any) -> None:
    """A checkpoint trained with other --widths: say so, before loading anything into the model."""
    from convlayers.weights import load_weights

    saved = {k[len("model."):]: v.shape for k, v in load_weights(args.checkpoint).items()
             if k.startswith("model.")}
    own = {k: v.shape for k, v in model.state_dict().items()}
    if saved and saved != own:
        widths = [shape[0] for key, shape in sorted(saved.items())
                  if key.startswith("features.") and key.endswith(".0.weight") and len(shape) == 4]
        raise CLIError(f"--checkpoint {args.checkpoint!r} was trained with other --widths "
                       f"({','.join(map(str, widths)) or 'another model'}, not "
                       f"{','.join(map(str, args.widths))}); resume with those, or start a new "
                       "checkpoint")


def run_train(args: argparse.Namespace) -> int:
    """Train, report, save the weights (and the plots)."""
    from convlayers.datasets import load_digits
    from convlayers.nn import SmallCNN
    from convlayers.train import History, fit, predict_logits
    from convlayers.weights import save_weights

    if args.dataset == "folder":
        check_folder_args(args)
        _check_train_args(args)
        return run_train_folder(args)
    if args.folder or args.model.replace("-", "_") != "small_cnn":
        raise CLIError("train digits takes no folder and trains --model small_cnn")
    args.model = "small_cnn"  # one spelling in what is printed and saved
    args.out = args.out or "digits-small_cnn.safetensors"
    out = _check_train_args(args)
    _check_digits_sizes(args)
    plots = output_dir(args.plots, "--plots") if args.plots else None
    show = progress_enabled(args)
    split = load_digits(seed=SPLIT_SEED)
    model = SmallCNN(widths=args.widths, rng=args.seed)
    if args.resume and Path(args.checkpoint).is_file():
        _check_resume_widths(args, model)

    def report(h: History) -> None:
        if not show:
            print(f"epoch {h.epoch[-1]}/{args.epochs}: loss {h.train_loss[-1]:.4f}, "
                  f"train accuracy {h.train_accuracy[-1]:.2%}, test accuracy "
                  f"{h.test_accuracy[-1]:.2%} ({h.images_per_second[-1]:,.0f} images/s)",
                  flush=True)

    history = fit(model, split, epochs=args.epochs, batch_size=args.batch_size,
                  optimizer=args.optimizer, lr=args.lr, schedule="cosine",
                  augment_shift=args.augment_shift, seed=args.seed,
                  target_accuracy=args.target_accuracy, checkpoint=args.checkpoint,
                  resume=args.resume, progress=show, callback=report)
    predicted = predict_logits(model, split.x_test).argmax(axis=1)
    right = int((predicted == split.y_test).sum())
    accuracy = right / len(split.y_test)
    seconds = sum(history.seconds)
    print(f"test accuracy: {accuracy:.2%} ({right}/{len(split.y_test)}) after "
          f"{_epochs(history.epoch[-1] if history.epoch else 0)}, {seconds:.1f} s of training"
          + (" (stopped early)" if history.stopped_early else ""))
    metadata = {"model": args.model, "dataset": args.dataset, "classes": ",".join(split.classes),
                "widths": ",".join(map(str, args.widths)), "seed": str(args.seed),
                "test_accuracy": f"{accuracy:.6f}"}
    if out.suffix.lower() == ".npz":
        save_weights(model.state_dict(), out)
    else:
        save_weights(model.state_dict(), out, metadata=metadata)
    print(f"wrote weights to {out}")
    if plots is not None:
        _write_plots(plots, history, split.y_test, predicted, split.classes)
        print(f"wrote loss.png, accuracy.png and confusion.png to {plots}")
    return 0


def _write_plots(folder: Path, history: Any, truth: Any, predicted: Any, classes: Any) -> None:
    from convlayers.train import confusion_matrix, plot_confusion, plot_curves
    from convlayers.viz import save_figure

    save_figure(plot_curves(history, "loss"), folder / "loss.png")
    save_figure(plot_curves(history, "accuracy"), folder / "accuracy.png")
    matrix = confusion_matrix(truth, predicted, num_classes=len(classes))
    save_figure(plot_confusion(matrix, classes), folder / "confusion.png")


def run_predict(args: argparse.Namespace) -> int:
    """Classify every image; one line (or one JSON record) per image."""
    import numpy as np

    from convlayers.cli._common import read_picture, read_trained_weights
    from convlayers.functional import softmax
    from convlayers.train import digit_input, predict_logits, small_cnn_from_state_dict

    weights = Path(args.weights)
    state, described = read_trained_weights(weights)
    if described.get("dataset") == "folder":  # written by 'train folder'
        return predict_folder_model(state, described, image_files(args.images), args.json)
    model = small_cnn_from_state_dict(state)
    if model.features[0][0].weight.data.shape[1] != 1:
        raise CLIError(f"weights {str(weights)!r} are not a digits model (1 input channel)")
    classes = [str(c) for c in range(model.classifier[1].weight.data.shape[0])]
    named = described.get("classes", "").split(",")  # .npz files carry none: the indices
    classes = named if len(named) == len(classes) else classes
    paths = image_files(args.images)
    if wants_dask(args):
        from convlayers import dask as cd
        from convlayers.cli._dask import dask_session

        if args.batch_size < 1:
            raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
        with dask_session(args):
            logits = cd.predict(model, [str(p) for p in paths], batch_size=args.batch_size,
                                preprocess=digit_chw)
    else:
        logits = predict_logits(model, np.concatenate([digit_input(read_picture(p)) for p in paths]))
    probs = np.asarray(softmax(logits, dim=1), dtype=np.float64)
    records = [{"path": str(p), "class": classes[int(row.argmax())],
                "probability": round(float(row.max()), 6),
                "probabilities": [round(float(v), 6) for v in row]}
               for p, row in zip(paths, probs, strict=True)]
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        for r in records:
            print(f"{r['path']}: {r['class']} ({r['probability']:.3f})")
    return 0
