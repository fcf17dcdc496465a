"""Training SmallCNN on the digits: convlayers against PyTorch, same network, same batches, same run.

Both sides start from the same weights (the convlayers ``SmallCNN(rng=seed)`` copied into an
``nn.Sequential`` twin with the same keys), see the same mini-batches (the generator of
``convlayers.train.fit``: ``default_rng([seed, epoch])`` shuffles, then shifts), and use Adam
with the same learning rate and cosine schedule. Each side gets the same number of threads
(2 unless ``--threads``). Time is the training pass of each epoch (no evaluation); accuracy is
on the test split after each epoch.

Usage::

    python benchmarks/train_bench.py                # the CLI defaults: widths 32,64, 15 epochs
    python benchmarks/train_bench.py --epochs 3     # quicker
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/run.py

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
from threadpoolctl import threadpool_limits

from convlayers import config, nn
from convlayers.datasets import Split, batches, load_digits, random_shift
from convlayers.train import History, fit


class TorchSmallCNN(torch.nn.Module):
    """SmallCNN written in PyTorch: the same layers under the same ``state_dict`` keys."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        tnn = torch.nn
        layers: list[torch.nn.Module] = []
        channels = 1
        for w in widths:
            layers += [tnn.Sequential(tnn.Conv2d(channels, w, 3, padding=1, bias=False),
                                      tnn.BatchNorm2d(w), tnn.ReLU()), tnn.MaxPool2d(2)]
            channels = w
        side = 8 // 2 ** len(widths)
        self.features = tnn.Sequential(*layers)
        self.classifier = tnn.Sequential(tnn.Flatten(), tnn.Linear(channels * side * side, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def torch_twin(widths: tuple[int, ...], state: dict[str, np.ndarray]) -> torch.nn.Module:
    """The PyTorch SmallCNN with the convlayers weights copied in."""
    model = TorchSmallCNN(widths)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model


def torch_fit(model: torch.nn.Module, split: Split, epochs: int, batch_size: int, lr: float,
              shift: int, seed: int) -> History:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    x_test, y_test = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    history = History()
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])  # exactly fit's batches
        model.train()
        t0 = time.perf_counter()
        seen = 0
        for xb, yb in batches(split.x_train, split.y_train, batch_size, shuffle=True, seed=rng):
            if shift:
                xb = random_shift(xb, shift, seed=rng)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(xb)),
                                                     torch.from_numpy(yb))
            loss.backward()
            opt.step()
            seen += len(yb)
        seconds = time.perf_counter() - t0
        sched.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
        history._append(epoch=epoch + 1, seconds=seconds, test_accuracy=accuracy,
                        images_per_second=seen / seconds)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--widths", default="32,64")
    parser.add_argument("--shift", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    widths = tuple(int(w) for w in args.widths.split(","))

    torch.set_num_threads(args.threads)
    config.set_threads(args.threads)
    split = load_digits(seed=0)
    ours = nn.SmallCNN(widths=widths, rng=args.seed)
    theirs = torch_twin(widths, ours.state_dict())
    with threadpool_limits(limits=args.threads, user_api="blas"):
        t0 = time.perf_counter()
        h_ours = fit(ours, split, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     schedule="cosine", augment_shift=args.shift, seed=args.seed, progress=False)
        total_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        h_torch = torch_fit(theirs, split, args.epochs, args.batch_size, args.lr, args.shift,
                            args.seed)
        total_torch = time.perf_counter() - t0

    print(f"SmallCNN widths {args.widths} on the digits ({len(split.y_train)} train, "
          f"{len(split.y_test)} test), batch {args.batch_size}, Adam lr {args.lr} cosine, "
          f"shift {args.shift}, seed {args.seed}; {args.threads} threads each; "
          f"{platform.machine()}, torch {torch.__version__}")
    print(f"{'epoch':>5} {'ours s':>8} {'torch s':>8} {'ratio':>6} {'ours acc':>9} {'torch acc':>9}")
    for i in range(args.epochs):
        a, b = h_ours.seconds[i], h_torch.seconds[i]
        print(f"{i + 1:>5} {a:>8.3f} {b:>8.3f} {a / b:>6.2f} {h_ours.test_accuracy[i]:>9.2%} "
              f"{h_torch.test_accuracy[i]:>9.2%}")
    skip = 1 if args.epochs > 1 else 0  # the first epoch of ours includes compiling kernels
    mean_ours = float(np.mean(h_ours.seconds[skip:]))
    mean_torch = float(np.mean(h_torch.seconds[skip:]))
    print(f"mean s/epoch{' (after the first)' if skip else ''}: ours {mean_ours:.3f}, "
          f"torch {mean_torch:.3f}, ratio {mean_ours / mean_torch:.2f}x; images/s: ours "
          f"{np.mean(h_ours.images_per_second[skip:]):,.0f}, torch "
          f"{np.mean(h_torch.images_per_second[skip:]):,.0f}")
    print(f"final test accuracy: ours {h_ours.test_accuracy[-1]:.2%}, torch "
          f"{h_torch.test_accuracy[-1]:.2%}; whole run incl. evaluation: ours {total_ours:.1f} s, "
          f"torch {total_torch:.1f} s")


if __name__ == "__main__":
    main()
