"""``convlayers warmup``: compile the kernels ahead of time, with a progress bar.

Every compiled kernel compiles on its first call per dtype (tens of seconds for all of them)
and numba keeps the machine code on disk (``cache=True``), so later processes load it in
milliseconds. This command makes those first calls on tiny inputs: every convolution strategy
of :mod:`convlayers.functional.plan` forward and backward (``direct``: its float32 forward
and weight gradient alone), the transposed convolution, pooling
(max with indices, average, adaptive) and their backward, the value check of large arrays, and
the steps of compiled plans (MobileNetV2, EfficientNet-Lite0, ResNet-18 on 32x32 images: the
channels-last kernels and the NCHW ones), for the dtypes asked (float32 unless ``--dtype`` says
otherwise: nobody pays for float64 kernels they never call).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

__all__ = ["register", "run", "tasks"]


def tasks(dtype: str) -> list[tuple[str, Callable[[], Any]]]:
    """``(label, call)`` for each group of kernels, in ``dtype``."""
    import numpy as np

    from convlayers import config
    from convlayers import functional as F
    from convlayers.functional._common import pad_pairs
    from convlayers.functional.plan import STRATEGIES
    from convlayers.kernels.precompile import (
        FORWARDS_ONLY,
        PARALLEL,
        STRATEGY_EXAMPLES,
        direct_weight_gradient,
    )

    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(dt)

    x = arr(2, 16, 9, 9)
    # each call as a network's layers make it (the parallel kernels), then as a small call
    # (the serial twins, NumPy's product for a tiny 1x1 forward)
    as_called: tuple[dict[str, int], ...] = (PARALLEL, {})
    out: list[tuple[str, Callable[[], Any]]] = []
    for name in STRATEGIES:
        if name not in STRATEGY_EXAMPLES or (name.startswith("direct") and dt != np.float32):
            continue
        wshape, pad, groups = STRATEGY_EXAMPLES[name]
        w = arr(*wshape)
        b = arr(wshape[0])

        def conv(w: np.ndarray = w, b: np.ndarray = b, pad: int = pad, groups: int = groups,
                 name: str = name) -> None:
            for settings in as_called:
                with config.engine_settings(force=name, **settings):
                    y = F.conv2d(x, w, b, padding=pad, groups=groups)
                    if name in FORWARDS_ONLY:
                        continue
                    F.conv_backward(np.ones_like(y), x, w, padding=pad, groups=groups)
                    if name not in ("winograd", "depthwise-flat", "depthwise-channels-last"):
                        F.conv_transpose2d(x[:, : w.shape[0]], w, padding=pad, groups=groups)
        out.append((f"conv {name}", conv))

    if dt == np.float32:
        out.append(("weight gradient direct", direct_weight_gradient))

    def pooling() -> None:
        for settings in as_called:
            with config.engine_settings(**settings):
                y, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
                F.max_pool2d(x, 2)
                F.max_pool_backward(np.ones_like(y), x, idx)
                a = F.avg_pool2d(x, 3, 2, 1)
                F.avg_pool_backward(np.ones_like(a), x, 3, 2, 1)

    def adaptive() -> None:
        for settings in as_called:
            with config.engine_settings(**settings):
                a = F.adaptive_avg_pool2d(x, 3)
                F.adaptive_avg_pool_backward(np.ones_like(a), x)
                F.adaptive_max_pool2d(x, 2, return_indices=True)
        F.adaptive_avg_pool2d(x, 1)  # global pooling of a small input: the serial kernels
        F.adaptive_max_pool2d(x, 1, return_indices=True)
        with config.engine_settings(global_pool_serial_taps=0):  # large inputs: on every thread
            F.adaptive_max_pool2d(x, 1, return_indices=True)
            F.adaptive_avg_pool2d(x, 1)

    def padded_copies() -> None:  # zero padding on every thread (a transposed conv's gradient)
        with config.engine_settings(parallel_pad_elements=0):
            pad_pairs(x, ((1, 1), (2, 0)))

    def value_check() -> None:  # the engine's inf/NaN check of large arrays
        with config.engine_settings(parallel_check_elements=0, force="lowered"):
            F.conv2d(x, arr(8, 16, 3, 3), padding=1)

    def linear() -> None:  # fully connected layers: dot products for few rows, tiles for more
        w = arr(10, x[0].size)
        for rows in (1, 4):
            with config.engine_settings(serial_macs=0):
                flat = np.tile(x.reshape(2, -1), (rows, 1))[:rows]
                y = F.linear(flat, w, arr(10))
                F.linear_backward(np.ones_like(y), flat, w)

    def batch_norm() -> None:  # its compiled passes (inference; training and its gradients)
        big = np.tile(x, (80, 1, 1, 1))  # over COMPILED_BATCH_NORM_ELEMENTS
        c = x.shape[1]
        F.batch_norm(big, np.zeros(c, dt), np.ones(c, dt))
        out, stats = F.batch_norm_with_statistics(big, None, None, arr(c), arr(c), training=True)
        F.batch_norm_backward(np.ones_like(out), big, None, None, arr(c), training=True,
                              batch_statistics=stats)

    def activations() -> None:  # ReLU and ReLU6 and their gradients over large arrays
        with config.engine_settings(parallel_elementwise=0):
            for op, grad in ((F.relu, F.relu_backward), (F.relu6, F.relu6_backward)):
                grad(op(x), x)

    def compiled_plans() -> None:  # convlayers.compile's kernels, both layouts
        from convlayers import nn
        from convlayers.inference import compile
        from convlayers.nn.models import efficientnet_lite0

        image = arr(1, 3, 32, 32)
        for model in (nn.MobileNetV2(rng=0), efficientnet_lite0(rng=0), nn.resnet18(rng=0)):
            compile(model.eval(), image)(image)

    out += [("pooling", pooling), ("adaptive pooling", adaptive),
            ("padded copies", padded_copies), ("value check", value_check),
            ("linear", linear), ("batch norm", batch_norm), ("activations", activations),
            ("compiled plans", compiled_plans)]
    return out


def register(sub: Any) -> None:
    """Add the ``warmup`` command."""
    p = sub.add_parser(
        "warmup", help="compile the kernels ahead of time (cached on disk for every process)",
        description="Compile convlayers' numba kernels now, on tiny inputs, so that the first "
        "real call does not wait for them; numba caches the machine code on disk (next to the "
        "package, or in NUMBA_CACHE_DIR). Only the dtypes asked are compiled.")
    p.add_argument("--dtype", nargs="+", choices=("float32", "float64"), default=["float32"],
                   help="dtypes to compile for (default float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, only the summary line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from convlayers import config, kernels

    kernels.notice.shown = True  # the progress bar says it already
    jobs = [(f"{label} ({dt})", call) for dt in args.dtype for label, call in tasks(dt)]
    start = time.perf_counter()
    bar = tqdm(jobs, desc="compiling", unit="group", disable=args.quiet, leave=False)
    # every kernel compiled here, none left to the helper (convlayers.functional._cold)
    with config.engine_settings(defer_cold_compiles=False):
        for label, call in bar:
            bar.set_postfix_str(label)
            call()
    bar.close()
    print(f"warmup: {len(jobs)} kernel groups ready ({', '.join(args.dtype)}) in "
          f"{time.perf_counter() - start:.1f} s")
    return 0
