"""One epoch on an image folder: convlayers against PyTorch, same network, weights and batches.

The data is a folder of drawn shapes (3 classes) made at start, decoded once by
``convlayers.datasets.ImageFolder``; each epoch's batches and augmentations (crop, flip,
colour jitter) are drawn once and fed to both sides. Both start from the same weights (copied
into the torch twins of ``tests/twins.py``), use Adam with the same learning rate, and get the
same threads (2 unless ``--threads``). Epochs alternate between the two sides, and the table
reports the median epoch time after a warm-up epoch each (the first convlayers epoch compiles
kernels).

Usage::

    python benchmarks/train_folder_bench.py              # small-cnn, MobileNetV2, Lite0 head, Lite0 full
    python benchmarks/train_folder_bench.py --quick      # fewer images and epochs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/run.py

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch
import torch.nn as tnn

from convlayers import config
from convlayers import functional as F
from convlayers.augment import training_pipeline
from convlayers.datasets import ImageFolder, batches
from convlayers.optim import Adam
from convlayers.train.folder import ImageClassifier, build_classifier
from test_train_folder import SHAPES, draw_shapes
from twins import TMobileNetV2, TorchLite0


class TorchSmallCNN(tnn.Module):
    """convlayers' SmallCNN (3 channels, widths 32-64-128) in torch, under its key names."""

    def __init__(self, widths: tuple[int, ...], side: int, classes: int) -> None:
        super().__init__()
        layers: list[tnn.Module] = []
        c = 3
        for w in widths:
            layers += [tnn.Sequential(tnn.Conv2d(c, w, 3, padding=1, bias=False), tnn.BatchNorm2d(w),
                                      tnn.ReLU()), tnn.MaxPool2d(2)]
            c = w
        self.features = tnn.Sequential(*layers)
        s = side // 2 ** len(widths)
        self.classifier = tnn.Sequential(tnn.Flatten(), tnn.Linear(c * s * s, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def torch_twin(ours: ImageClassifier, size: int) -> tnn.Module:
    """The torch network with ``ours``' weights, frozen like ours."""
    state = [torch.from_numpy(np.array(v)) for k, v in ours.net.state_dict().items()]
    if ours.name == "small_cnn":
        widths = tuple(m[0].weight.data.shape[0] for m in ours.net.features if hasattr(m, "__len__"))
        twin: tnn.Module = TorchSmallCNN(widths, size, len(SHAPES))
    elif ours.name == "mobilenet_v2":
        twin = TMobileNetV2(num_classes=len(SHAPES))
    else:
        twin = TorchLite0()
        twin._fc = tnn.Linear(1280, len(SHAPES))
    keys = list(twin.state_dict())
    if len(keys) != len(state):
        raise SystemExit(f"{ours.name}: {len(state)} arrays for {len(keys)} torch tensors")
    twin.load_state_dict(dict(zip(keys, state, strict=True)))  # same order, checked shapes
    head = twin._fc if ours.name == "efficientnet_lite0" else twin.classifier
    if ours.frozen:
        keep = {id(p) for p in head.parameters()}
        for p in twin.parameters():
            p.requires_grad = id(p) in keep
    return twin


def epoch_ours(model: ImageClassifier, opt: Adam, data: list[tuple[np.ndarray, np.ndarray]]) -> float:
    model.train()
    t0 = time.perf_counter()
    for xb, yb in data:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return time.perf_counter() - t0


def epoch_torch(model: tnn.Module, opt: torch.optim.Optimizer, frozen: bool, mean: np.ndarray,
                std: np.ndarray, data: list[tuple[np.ndarray, np.ndarray]]) -> float:
    model.train()
    if frozen:  # only the head in train mode, as ours
        for name, child in model.named_children():
            if name not in ("classifier", "_fc"):
                child.eval()
    m, s = torch.from_numpy(mean), torch.from_numpy(std)
    t0 = time.perf_counter()
    for xb, yb in data:
        opt.zero_grad()
        x = (torch.from_numpy(xb) - m) / s
        torch.nn.functional.cross_entropy(model(x), torch.from_numpy(yb)).backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images per class (default 64)")
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per side (default 4)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="16 images per class, 2 epochs")
    args = parser.parse_args()
    if args.quick:
        args.images, args.epochs = 16, 2
    torch.set_num_threads(args.threads)
    config.set_threads(args.threads)
    runs = (("small_cnn", 64, False, False), ("mobilenet_v2", 96, False, False),
            ("efficientnet_lite0", 96, True, True), ("efficientnet_lite0", 96, True, False))
    print(f"one epoch of {3 * args.images} images, batch {args.batch_size}, Adam 1e-3, "
          f"{args.threads} threads each, median of {args.epochs} epochs after one warm-up each")
    print(f"{'model':<34} {'size':>4} {'ours s':>8} {'torch s':>8} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        root = draw_shapes(Path(tmp) / "shapes", per_class=args.images, side=128)
        for name, size, pretrained, freeze in runs:
            x, y = ImageFolder(root, size=size).load()
            augment = training_pipeline(size)
            epochs = []
            for e in range(args.epochs + 1):
                rng = np.random.default_rng([0, e])
                epochs.append([(augment(xb, rng), yb) for xb, yb in
                               batches(x, y, args.batch_size, shuffle=True, seed=rng)])
            ours = build_classifier(name, SHAPES, image_size=size, pretrained=pretrained,
                                    freeze=freeze, rng=0)
            theirs = torch_twin(ours, size)
            opt_ours = Adam([p for p in ours.parameters() if p.requires_grad], lr=1e-3)
            opt_torch = torch.optim.Adam([p for p in theirs.parameters() if p.requires_grad], lr=1e-3)
            times_ours, times_torch = [], []
            for data in epochs:
                times_ours.append(epoch_ours(ours, opt_ours, data))
                times_torch.append(epoch_torch(theirs, opt_torch, freeze, ours.mean, ours.std, data))
            a, b = float(np.median(times_ours[1:])), float(np.median(times_torch[1:]))
            label = name + (" (pretrained, head only)" if freeze else
                            " (pretrained, all)" if pretrained else " (from scratch)")
            print(f"{label:<34} {size:>4} {a:>8.3f} {b:>8.3f} {a / b:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
