"""A random sweep of layer configurations, convlayers against torch (``make bench-sweep``).

The named workloads of ``benchmarks/run.py`` are the shapes the engine was tuned on; this
script draws ordinary layers the way a new user would write them and reports how far from torch
each one is. It draws ``--n`` configurations (default 200) from ``--seed``:

- convolutions (about 80%): kernels 1-7, square or not; stride 1-3; dilation 1-3; dense,
  grouped, depthwise and depthwise with a channel multiplier; batch 1-32, channels 3-512,
  spatial 7-224 (log-uniform), padding none, "same"-like or random; each configuration's
  multiply-adds are capped (``--max-macs``) by shrinking its batch, then its map;
- pooling: max and average (kernels 2-3, strides 1-2) and adaptive average/max;
- transposed convolutions: kernels 2-4, strides 1-2.

Per configuration it first checks that both give the same numbers (a mismatch is reported and
left out of the ratios), then times the forward and the forward+backward (convlayers'
functional backward against torch's autograd), interleaving the two libraries call by call, and
keeps the medians. Both run on ``--threads`` threads (default 2): ``torch.set_num_threads``,
``convlayers.config.set_threads`` (numba), ``threadpoolctl`` for NumPy's BLAS; the settings are
checked before every configuration. Inputs are normal float32 numbers (no denormals).

The ratio is convlayers' time / torch's (below 1: convlayers faster). The summary gives, for
the forward and the forward+backward, the median, geometric mean, 90th percentile, worst, the
share of configurations slower than torch and the 10 worst with their specs.

``--torch-first`` imports torch before convlayers (as anyone using the torch interop does).
Nothing here sets ``OMP_WAIT_POLICY``: torch runs with its default (idle threads spin for a
while), numba on a runtime of its own whose idle threads sleep (``config.start_numba_threads``),
in either order.

Usage::

    python benchmarks/sweep.py                     # 200 configurations, seed 0
    python benchmarks/sweep.py --quick             # 30 configurations
    python benchmarks/sweep.py --seed 3 --torch-first --csv out/sweep.csv
    python benchmarks/sweep.py --kinds pool --n 40 --seed 7   # pooling only
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


@dataclass
class Config:
    """One drawn layer: what it is and how to run it on both sides."""

    kind: str  # conv, pool, transpose
    spec: str
    macs: int
    params: dict[str, Any]
    ratios: dict[str, float] = field(default_factory=dict)
    times: dict[str, tuple[float, float]] = field(default_factory=dict)
    error: str = ""
    strategy: str = ""  # convolutions: forward / input-grad / weight-grad as they ran


# ----------------------------------------------------------------------------- drawing

def _log_uniform(rng: np.random.Generator, lo: int, hi: int) -> int:
    return round(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _conv_config(rng: np.random.Generator, max_macs: float) -> Config:
    kind = rng.choice(["dense", "dense", "grouped", "depthwise", "depthwise-mult"])
    if rng.random() < 0.6:
        k = int(rng.integers(1, 8))
        kernel = (k, k)
    else:
        kernel = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
    stride = int(rng.choice([1, 1, 1, 2, 2, 3]))
    dilation = int(rng.choice([1, 1, 1, 1, 2, 3])) if max(kernel) > 1 else 1
    if kind == "dense":
        groups = 1
        c_in, c_out = _log_uniform(rng, 3, 512), _log_uniform(rng, 3, 512)
    elif kind == "grouped":
        groups = int(rng.choice([2, 4, 8, 16, 32]))
        c_in = groups * max(1, _log_uniform(rng, 3, 512) // groups)
        c_out = groups * max(1, _log_uniform(rng, 3, 512) // groups)
        if c_in // groups == 1:  # that is depthwise; keep it grouped
            c_in *= 2
    else:
        c_in = _log_uniform(rng, 3, 512)
        groups = c_in
        c_out = c_in * (int(rng.choice([2, 3, 4])) if kind == "depthwise-mult" else 1)
    padding_kind = rng.choice(["none", "same", "same", "random"])
    span = [dilation * (k - 1) + 1 for k in kernel]
    if padding_kind == "none":
        padding = (0, 0)
    elif padding_kind == "same":
        padding = tuple(dilation * (k - 1) // 2 for k in kernel)
    else:
        padding = tuple(int(rng.integers(0, dilation * (k - 1) // 2 + 1)) for k in kernel)
    side = _log_uniform(rng, 7, 224)
    hw = [side, side] if rng.random() < 0.8 else [side, _log_uniform(rng, 7, 224)]
    hw = [max(h, s - 2 * p) for h, s, p in zip(hw, span, padding, strict=True)]
    batch = _log_uniform(rng, 1, 32)

    def macs_of(b: int, hw: list[int]) -> int:
        out = [(h + 2 * p - s) // stride + 1 for h, p, s in zip(hw, padding, span, strict=True)]
        return b * c_out * out[0] * out[1] * (c_in // groups) * kernel[0] * kernel[1]

    while macs_of(batch, hw) > max_macs and batch > 1:
        batch = max(1, batch // 2)
    while macs_of(batch, hw) > max_macs and max(hw) > 7:
        hw = [max(7, s - 2 * p, h * 3 // 4) for h, s, p in zip(hw, span, padding, strict=True)]
    while macs_of(batch, hw) > max_macs and max(c_in, c_out) > 8:
        if kind.startswith("depthwise"):
            c_in = max(3, c_in * 3 // 4)
            mult = c_out // groups
            groups, c_out = c_in, c_in * mult
        else:
            c_in = max(groups, c_in * 3 // 4 // groups * groups)
            c_out = max(groups, c_out * 3 // 4 // groups * groups)
    params = dict(batch=batch, c_in=c_in, c_out=c_out, kernel=kernel, stride=(stride, stride),
                  padding=padding, dilation=(dilation, dilation), groups=groups, hw=tuple(hw),
                  bias=bool(rng.random() < 0.5))
    k_txt = f"{kernel[0]}x{kernel[1]}"
    g_txt = {"dense": "", "grouped": f" g{groups}", "depthwise": " dw",
             "depthwise-mult": f" dw*{c_out // c_in}"}[kind]
    spec = (f"conv {c_in}->{c_out} {k_txt} s{stride} d{dilation} p{padding[0]},{padding[1]}"
            f"{g_txt}, {batch}x{c_in}x{hw[0]}x{hw[1]}")
    return Config("conv", spec, macs_of(batch, hw), params)


def _pool_config(rng: np.random.Generator, max_macs: float) -> Config:
    op = str(rng.choice(["max", "avg", "adaptive_avg", "adaptive_max"]))
    c = _log_uniform(rng, 3, 512)
    side = _log_uniform(rng, 7, 224)
    batch = _log_uniform(rng, 1, 32)
    while batch * c * side * side * 9 > max_macs and batch > 1:
        batch //= 2
    while batch * c * side * side * 9 > max_macs and side > 7:
        side = side * 3 // 4
    if op.startswith("adaptive"):
        out = int(rng.choice([1, 1, 2, 3, 5, 7]))
        out = min(out, side)
        params = dict(op=op, batch=batch, c=c, hw=(side, side), out=out)
        spec = f"{op}_pool {side}->{out}, {batch}x{c}"
    else:
        k = int(rng.integers(2, 4))
        s = int(rng.choice([1, 2, 2]))
        p = int(rng.integers(0, k // 2 + 1))
        params = dict(op=op, batch=batch, c=c, hw=(side, side), kernel=k, stride=s, padding=p)
        spec = f"{op}_pool {k}x{k} s{s} p{p}, {batch}x{c}x{side}x{side}"
    return Config("pool", spec, batch * c * side * side, params)


def _transpose_config(rng: np.random.Generator, max_macs: float) -> Config:
    k = int(rng.integers(2, 5))
    s = int(rng.choice([1, 2, 2]))
    p = int(rng.integers(0, (k - 1) // 2 + 1))
    c_in, c_out = _log_uniform(rng, 3, 256), _log_uniform(rng, 3, 256)
    side = _log_uniform(rng, 7, 112)
    batch = _log_uniform(rng, 1, 16)
    while batch * c_in * c_out * side * side * k * k > max_macs and batch > 1:
        batch //= 2
    while batch * c_in * c_out * side * side * k * k > max_macs and side > 7:
        side = side * 3 // 4
    while batch * c_in * c_out * side * side * k * k > max_macs and max(c_in, c_out) > 8:
        c_in, c_out = max(3, c_in * 3 // 4), max(3, c_out * 3 // 4)
    params = dict(batch=batch, c_in=c_in, c_out=c_out, kernel=k, stride=s, padding=p,
                  hw=(side, side))
    spec = f"conv_transpose {c_in}->{c_out} {k}x{k} s{s} p{p}, {batch}x{c_in}x{side}x{side}"
    return Config("transpose", spec, batch * c_in * c_out * side * side * k * k, params)


def draw_configs(n: int, seed: int, max_macs: float) -> list[Config]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.8:
            out.append(_conv_config(rng, max_macs))
        elif r < 0.9:
            out.append(_pool_config(rng, max_macs))
        else:
            out.append(_transpose_config(rng, max_macs))
    return out


# ----------------------------------------------------------------------------- running

def _callables(cfg: Config, F: Any, torch: Any, tF: Any, rng: np.random.Generator,
               ) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """``{"fwd": (ours, theirs), "fwd+bwd": (ours, theirs)}`` for one configuration; each
    callable returns what is compared (arrays / tensors)."""
    p = cfg.params

    def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    if cfg.kind == "conv":
        x = rand(p["batch"], p["c_in"], *p["hw"])
        fan = p["c_in"] // p["groups"] * p["kernel"][0] * p["kernel"][1]
        w = rand(p["c_out"], p["c_in"] // p["groups"], *p["kernel"], scale=1 / math.sqrt(fan))
        b = rand(p["c_out"]) if p["bias"] else None
        kw = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"],
                  groups=p["groups"])
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        tb = None if b is None else torch.from_numpy(b)
        y_shape = tuple(tF.conv2d(tx, tw, tb, **kw).shape)
        gy = rand(*y_shape)
        tgy = torch.from_numpy(gy)

        def ours() -> Any:
            return F.conv2d(x, w, b, **kw)

        def theirs() -> Any:
            with torch.no_grad():
                return tF.conv2d(tx, tw, tb, **kw)

        def ours_both() -> Any:
            y = F.conv2d(x, w, b, **kw)
            gx, gw, gb = F.conv_backward(gy, x, w, with_bias=b is not None, **kw)
            return (y, gx, gw) if gb is None else (y, gx, gw, gb)

        def theirs_both() -> Any:
            xs, ws = tx.detach().requires_grad_(), tw.detach().requires_grad_()
            bs = None if tb is None else tb.detach().requires_grad_()
            y = tF.conv2d(xs, ws, bs, **kw)
            y.backward(tgy)
            return (y, xs.grad, ws.grad) if bs is None else (y, xs.grad, ws.grad, bs.grad)

        return {"fwd": (ours, theirs), "fwd+bwd": (ours_both, theirs_both)}
    if cfg.kind == "transpose":
        x = rand(p["batch"], p["c_in"], *p["hw"])
        w = rand(p["c_in"], p["c_out"], p["kernel"], p["kernel"],
                 scale=1 / math.sqrt(p["c_in"] * p["kernel"] ** 2))
        kw = dict(stride=p["stride"], padding=p["padding"])
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        gy = rand(*tF.conv_transpose2d(tx, tw, **kw).shape)
        tgy = torch.from_numpy(gy)

        def ours_t() -> Any:
            return F.conv_transpose2d(x, w, **kw)

        def theirs_t() -> Any:
            with torch.no_grad():
                return tF.conv_transpose2d(tx, tw, **kw)

        def ours_t_both() -> Any:
            y = F.conv_transpose2d(x, w, **kw)
            gx, gw, _ = F.conv_transpose_backward(gy, x, w, with_bias=False, **kw)
            return y, gx, gw

        def theirs_t_both() -> Any:
            xs, ws = tx.detach().requires_grad_(), tw.detach().requires_grad_()
            y = tF.conv_transpose2d(xs, ws, **kw)
            y.backward(tgy)
            return y, xs.grad, ws.grad

        return {"fwd": (ours_t, theirs_t), "fwd+bwd": (ours_t_both, theirs_t_both)}
    # pooling
    x = rand(p["batch"], p["c"], *p["hw"])
    tx = torch.from_numpy(x)
    op = p["op"]
    if op.startswith("adaptive"):
        out = p["out"]
        ours_f = {"adaptive_avg": lambda: F.adaptive_avg_pool2d(x, out),
                  "adaptive_max": lambda: F.adaptive_max_pool2d(x, out)}[op]
        t_op = tF.adaptive_avg_pool2d if op == "adaptive_avg" else tF.adaptive_max_pool2d
        gy = rand(p["batch"], p["c"], out, out)
        tgy = torch.from_numpy(gy)

        def theirs_f() -> Any:
            with torch.no_grad():
                return t_op(tx, out)

        if op == "adaptive_avg":
            def ours_b() -> Any:
                return F.adaptive_avg_pool2d(x, out), F.adaptive_avg_pool_backward(gy, x)
        else:
            def ours_b() -> Any:
                y, idx = F.adaptive_max_pool2d(x, out, return_indices=True)
                return y, F.max_pool_backward(gy, x, idx)

        def theirs_b() -> Any:
            xs = tx.detach().requires_grad_()
            y = t_op(xs, out)
            y.backward(tgy)
            return y, xs.grad

        return {"fwd": (ours_f, theirs_f), "fwd+bwd": (ours_b, theirs_b)}
    k, s, pad = p["kernel"], p["stride"], p["padding"]
    t_op = tF.max_pool2d if op == "max" else tF.avg_pool2d
    gy = rand(*t_op(tx, k, s, pad).shape)
    tgy = torch.from_numpy(gy)
    if op == "max":
        def ours_p() -> Any:
            return F.max_pool2d(x, k, s, pad)

        def ours_pb() -> Any:
            y, idx = F.max_pool2d(x, k, s, pad, return_indices=True)
            return y, F.max_pool_backward(gy, x, idx)
    else:
        def ours_p() -> Any:
            return F.avg_pool2d(x, k, s, pad)

        def ours_pb() -> Any:
            return F.avg_pool2d(x, k, s, pad), F.avg_pool_backward(gy, x, k, s, pad)

    def theirs_p() -> Any:
        with torch.no_grad():
            return t_op(tx, k, s, pad)

    def theirs_pb() -> Any:
        xs = tx.detach().requires_grad_()
        y = t_op(xs, k, s, pad)
        y.backward(tgy)
        return y, xs.grad

    return {"fwd": (ours_p, theirs_p), "fwd+bwd": (ours_pb, theirs_pb)}


def _strategy(cfg: Config, F: Any) -> str:
    """The strategies of a convolution, ``forward/input-grad/weight-grad``: asked after its
    timings, each pass's measured choice where it measured (:func:`convlayers.functional.plan`
    reports it), else the planner's. Asked before, the worst list named the planner's choice
    where another had been measured faster and ran."""
    if cfg.kind != "conv":
        return ""
    p = cfg.params
    plan = F.plan((p["batch"], p["c_in"], *p["hw"]),
                  (p["c_out"], p["c_in"] // p["groups"], *p["kernel"]), p["stride"],
                  p["padding"], p["dilation"], p["groups"])
    return f"{plan.forward}/{plan.input_grad}/{plan.weight_grad}"


def _agree(ours: Any, theirs: Any) -> str:
    """"" when the results match (float32 tolerance relative to their size), else why not."""
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    for i, (a, t) in enumerate(zip(ours, theirs, strict=True)):
        b = t.detach().numpy()
        if a.shape != b.shape:
            return f"output {i}: shape {a.shape} != torch's {b.shape}"
        scale = max(1.0, float(np.abs(b).max(initial=0)))
        err = float(np.abs(a.astype(np.float64) - b).max(initial=0))
        if not err <= 1e-3 * scale:
            return f"output {i}: max error {err:.3g} (scale {scale:.3g})"
    return ""


def _interleaved(ours: Callable[[], Any], theirs: Callable[[], Any], budget_s: float,
                 max_reps: int, block: int = 3, warm_s: float = 0.025) -> tuple[float, float]:
    """Median seconds of each, after one warm-up each: turns of one side, then of the other,
    the side that goes first alternating. Each turn makes untimed calls for ``warm_s`` (at
    least one), then ``block`` timed ones.

    Turns, not single calls: each side is timed as a network's layers call it, back to back,
    its threads awake. A side's first calls after the other's turn measure the two runtimes'
    hand-over, not either engine: torch's idle OpenMP threads keep spinning for milliseconds,
    holding a core that convlayers' second thread then waits for, and on this machine (a
    virtual one) a core left idle for a few milliseconds takes about a millisecond to wake.
    Measured: an adaptive max pool of 0.07-0.14 ms back to back took 1.36 ms right after a
    torch convolution, 1.15 ms when it ran for 4 ms after three torch calls, 0.11 ms after 16
    ms, and 1.2-1.4 ms after 16-64 ms of sleep with no torch at all. Turns of three calls (the
    previous design) left every call of an op under a millisecond in that window. The untimed
    calls of each turn take it up, for both sides alike.

    Before any of that, both sides are called in turn until neither's last call took more
    than 1.25x its fastest (at most 8 rounds or 2 s): this virtual machine backs memory the
    process has not touched before lazily, and a first call's output of tens of MB took
    5-10x its steady time, for several calls (a depthwise 3x3 on 8x338x70x70: 322, 288, 102,
    41, then 14 ms; filling a new 53 MB array 265-530 ms the first time, 9 ms once the
    memory had been used). Whichever side first grew the process paid it, either engine."""
    _settle(ours, theirs)
    a: list[float] = []
    b: list[float] = []
    start = time.perf_counter()
    for i in range(-(-max_reps // block)):
        for fn, acc in ((ours, a), (theirs, b)) if i % 2 == 0 else ((theirs, b), (ours, a)):
            warm_until = time.perf_counter() + warm_s
            fn()
            while time.perf_counter() < warm_until:
                fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        if len(a) >= 3 and time.perf_counter() - start > budget_s:
            break
    return statistics.median(a), statistics.median(b)


def _settle(ours: Callable[[], Any], theirs: Callable[[], Any], rounds: int = 8,
            limit_s: float = 2.0, slack: float = 1.25) -> None:
    """Call both sides in turn, untimed, until each one's last call took at most ``slack``
    times its fastest, ``rounds`` rounds or ``limit_s`` seconds (see :func:`_interleaved`)."""
    best = [math.inf, math.inf]
    start = time.perf_counter()
    for _ in range(rounds):
        settled = True
        for side, fn in enumerate((ours, theirs)):
            t0 = time.perf_counter()
            fn()
            took = time.perf_counter() - t0
            settled = settled and took <= slack * best[side]
            best[side] = min(best[side], took)
        if settled or time.perf_counter() - start > limit_s:
            return


def _check_threads(threads: int, torch: Any) -> None:
    import numba
    from threadpoolctl import threadpool_info

    assert torch.get_num_threads() == threads, f"torch threads {torch.get_num_threads()}"
    assert numba.get_num_threads() == threads, f"numba threads {numba.get_num_threads()}"
    for lib in threadpool_info():
        if lib["user_api"] == "blas":
            assert lib["num_threads"] <= threads, f"BLAS {lib['prefix']}: {lib['num_threads']}"


def _summary(configs: list[Config], key: str, worst: int = 10) -> list[str]:
    rows = [c for c in configs if key in c.ratios]
    if not rows:
        return [f"{key}: no configurations"]
    r = np.array([c.ratios[key] for c in rows])
    lines = [
        f"{key}: {len(r)} configurations",
        f"  median {np.median(r):.3f}   geo-mean {math.exp(np.log(r).mean()):.3f}   "
        f"p90 {np.percentile(r, 90):.3f}   worst {r.max():.3f}   "
        f"slower than torch {100 * (r > 1).mean():.0f}% ({int((r > 1).sum())})",
    ]
    for kind in ("conv", "pool", "transpose"):
        sub = np.array([c.ratios[key] for c in rows if c.kind == kind])
        if sub.size:
            lines.append(f"    {kind:<10} n={sub.size:<4} geo-mean "
                         f"{math.exp(np.log(sub).mean()):.3f}   worst {sub.max():.3f}")
    lines.append(f"  worst {min(worst, len(rows))}:")
    for c in sorted(rows, key=lambda c: -c.ratios[key])[:worst]:
        ours, theirs = c.times[key]
        lines.append(f"    {c.ratios[key]:6.2f}x  {1e3 * ours:8.2f} ms vs {1e3 * theirs:8.2f} ms  "
                     f"{c.spec}" + (f"  [{c.strategy}]" if c.strategy else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="configurations to draw (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="30 configurations, shorter timings")
    ap.add_argument("--torch-first", action="store_true", help="import torch before convlayers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-macs", type=float, default=1.5e8,
                    help="cap on one configuration's multiply-adds (default 1.5e8)")
    ap.add_argument("--budget", type=float, default=0.4,
                    help="seconds of timing per configuration and pass (default 0.4)")
    ap.add_argument("--fwd-only", action="store_true", help="skip forward+backward")
    ap.add_argument("--csv", type=Path, help="write every configuration's times here")
    ap.add_argument("--quiet", action="store_true", help="print the summary only")
    ap.add_argument("--kinds", default="conv,pool,transpose",
                    help="comma-separated kinds to keep (default all): the first N drawn of them")
    args = ap.parse_args(argv)
    kinds = set(args.kinds.split(","))
    if not kinds <= {"conv", "pool", "transpose"}:
        ap.error(f"--kinds: expected some of conv, pool, transpose, got {args.kinds!r}")
    n = 30 if args.quick and args.n == 200 else args.n
    budget = args.budget / 2 if args.quick else args.budget

    import importlib
    import os

    # kernels missing from numba's cache compile in this process, on their first (untimed)
    # call: with the helper process (convlayers.kernels.precompile) the first calls ran the
    # NumPy strategy while it compiled beside them on the second core, and their times were
    # taken as ours (seed 26096: a 5x8x29x29 forward+backward at 6.4x torch's time, 0.55x
    # compiled)
    os.environ.setdefault("CONVLAYERS_BACKGROUND_COMPILE", "0")
    for name in ("torch", "convlayers") if args.torch_first else ("convlayers", "torch"):
        importlib.import_module(name)
    import torch
    import torch.nn.functional as tF
    from threadpoolctl import threadpool_limits

    import convlayers
    from convlayers import config
    from convlayers import functional as F

    torch.set_num_threads(args.threads)
    config.set_threads(args.threads)
    configs = draw_configs(n, args.seed, args.max_macs)
    if kinds != {"conv", "pool", "transpose"}:  # the same draws, filtered: pooling is 10% of them
        configs = [c for c in draw_configs(n * 50, args.seed, args.max_macs) if c.kind in kinds][:n]
    passes = ["fwd"] if args.fwd_only else ["fwd", "fwd+bwd"]
    rng = np.random.default_rng(args.seed + 1)
    started = time.perf_counter()
    with threadpool_limits(args.threads, user_api="blas"):
        for i, cfg in enumerate(configs):
            fns = _callables(cfg, F, torch, tF, rng)
            for key in passes:
                ours, theirs = fns[key]
                try:
                    why = _agree(ours(), theirs())
                except Exception as exc:  # report it and go on
                    why = f"{type(exc).__name__}: {exc}"
                if why:
                    cfg.error = f"{key}: {why}"
                    break
                config.apply_numba_threads()
                _check_threads(args.threads, torch)
                t_ours, t_theirs = _interleaved(ours, theirs, budget, 25)
                cfg.times[key] = (t_ours, t_theirs)
                cfg.ratios[key] = t_ours / t_theirs
            cfg.strategy = _strategy(cfg, F)
            if not args.quiet:
                shown = "  ".join(f"{k} {cfg.ratios[k]:5.2f}x ({1e3 * cfg.times[k][0]:.2f} ms)"
                                  for k in passes if k in cfg.ratios)
                print(f"[{i + 1:3d}/{n}] {cfg.spec:<62} {shown or 'MISMATCH ' + cfg.error}",
                      flush=True)
    elapsed = time.perf_counter() - started
    import numba

    print()
    print(f"sweep: seed {args.seed}, {n} configurations, {args.threads} threads each, "
          f"{'torch' if args.torch_first else 'convlayers'} imported first, "
          f"numba {numba.__version__} ({numba.threading_layer()} layer), torch "
          f"{torch.__version__}, convlayers {convlayers.__version__}; {elapsed:.0f} s")
    print("ratio = convlayers time / torch time (below 1: convlayers faster), medians of "
          "interleaved calls")
    for key in passes:
        print()
        print("\n".join(_summary(configs, key)))
    bad = [c for c in configs if c.error]
    if bad:
        print(f"\n{len(bad)} configurations disagree with torch:")
        for c in bad:
            print(f"    {c.spec}: {c.error}")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w") as f:
            f.write("kind,spec,macs,fwd_ours_ms,fwd_torch_ms,fwd_ratio,both_ours_ms,"
                    "both_torch_ms,both_ratio,strategy,error\n")
            for c in configs:
                cells = [c.kind, f'"{c.spec}"', str(c.macs)]
                for key in ("fwd", "fwd+bwd"):
                    if key in c.times:
                        cells += [f"{1e3 * c.times[key][0]:.4f}", f"{1e3 * c.times[key][1]:.4f}",
                                  f"{c.ratios[key]:.4f}"]
                    else:
                        cells += ["", "", ""]
                cells.append(c.strategy)
                cells.append(f'"{c.error}"')
                f.write(",".join(cells) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
