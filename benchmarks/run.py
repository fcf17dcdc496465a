"""convlayers against its peers, measured in the same process and run (entry for ``make bench``).

Every side gets the same number of threads (2 unless ``--threads``): ``torch.set_num_threads``,
``numba.set_num_threads`` through ``convlayers.config``, ``threadpoolctl`` for the BLAS NumPy
links, ``cv2.setNumThreads``; the settings are checked before every measurement. Inputs are
normal float32 numbers (no denormals). Each case is warmed up, then timed ``repeats`` times and
the median reported. GFLOP/s counts ``2 x multiply-adds`` (pooling: one op per window tap).
"Extra MiB" is the peak memory traced by ``tracemalloc`` during one call of ours minus the size
of its result (NumPy reports its allocations to tracemalloc; torch does not, so only ours).

Usage::

    python benchmarks/run.py                 # everything, batch 32
    python benchmarks/run.py --quick         # fewer repeats, batch 8
    python benchmarks/run.py --only W2,W5,F  # a subset (W1..W8, F for the filters)
    python benchmarks/run.py --only MBV2,LITE0 --quick  # the models (see benchmarks/models.py)

W8 is the real ``convlayers.nn.InvertedResidual(32, 32, 1, 6)`` module against its torch twin
(``W8f``: the same block written with ``functional`` calls, BN folded by hand); ``MBV2`` and
``LITE0`` time MobileNetV2 and EfficientNet-Lite0 inference at batch 1 and 16, with peak memory
(``benchmarks/models.py`` says what is measured on each side).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# libgomp threads of one runtime spinning after a parallel region steal the cores of the other
# (torch and numba each load their own); passive waiting keeps the two from fighting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# kernels missing from numba's cache compile in this process, in the warm-up calls: the helper
# process would run them on the NumPy strategy while it compiles on the second core
os.environ.setdefault("CONVLAYERS_BACKGROUND_COMPILE", "0")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as tF
from threadpoolctl import threadpool_info, threadpool_limits

import convlayers
from convlayers import config
from convlayers import functional as F


@dataclass
class Case:
    """One workload: our callable, the peers' callables, and the work it does."""

    name: str
    what: str
    flops: float
    ours: Callable[[], Any]
    peers: dict[str, Callable[[], Any]]
    group: str  # "fwd", "fwd+bwd", "block", "filter", "extra"
    results: dict[str, float] = field(default_factory=dict)
    extra_mib: float = float("nan")
    peer_mib: float = float("nan")  # torch's peak-RSS growth (models only; a lower bound)


# ----------------------------------------------------------------------------- timing helpers

def _check_threads(threads: int) -> None:
    import numba

    assert torch.get_num_threads() == threads, f"torch threads {torch.get_num_threads()} != {threads}"
    assert numba.get_num_threads() == threads, f"numba threads {numba.get_num_threads()} != {threads}"
    for lib in threadpool_info():
        if lib["user_api"] == "blas":
            assert lib["num_threads"] <= threads, f"BLAS {lib['prefix']} has {lib['num_threads']} threads"


def _median_time(fn: Callable[[], Any], warmup: int, repeats: int, budget_s: float) -> float:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def _nbytes(result: Any) -> int:
    if isinstance(result, np.ndarray):
        return result.nbytes
    if isinstance(result, (tuple, list)):
        return sum(_nbytes(r) for r in result)
    return 0


def _extra_mib(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return max(0, peak - base - _nbytes(result)) / 2**20


# ----------------------------------------------------------------------------- workloads

def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _conv_cases(rng: np.random.Generator, batch: int, only: set[str] | None) -> list[Case]:
    specs = [
        # name, N, C_in, C_out, k, stride, pad, groups, H
        ("W1", max(1, batch // 4), 3, 64, 3, 1, 1, 1, 224),
        ("W2", batch, 64, 64, 3, 1, 1, 1, 56),
        ("W3", batch, 128, 256, 3, 2, 1, 1, 28),
        ("W4", batch, 64, 128, 1, 1, 0, 1, 56),
        ("W5", batch, 384, 384, 3, 1, 1, 384, 28),
        ("W6", batch, 64, 128, 3, 1, 1, 4, 56),
    ]
    cases = []
    for name, n, ci, co, k, s, p, g, h in specs:
        if only and name not in only:
            continue
        x = _rand(rng, n, ci, h, h)
        w = _rand(rng, co, ci // g, k, k) * np.float32(1 / np.sqrt(ci // g * k * k))
        b = _rand(rng, co)
        ho = (h + 2 * p - k) // s + 1
        macs = n * co * ho * ho * (ci // g) * k * k
        gy = _rand(rng, n, co, ho, ho)
        tx, tw, tb, tgy = (torch.from_numpy(a) for a in (x, w, b, gy))
        what = f"{ci}->{co} {k}x{k} s{s} p{p} g{g}, {n}x{ci}x{h}x{h}"

        def ours_fwd(x=x, w=w, b=b, s=s, p=p, g=g):
            return F.conv2d(x, w, b, stride=s, padding=p, groups=g)

        def torch_fwd(tx=tx, tw=tw, tb=tb, s=s, p=p, g=g):
            with torch.no_grad():
                return tF.conv2d(tx, tw, tb, stride=s, padding=p, groups=g)

        def ours_both(x=x, w=w, b=b, gy=gy, s=s, p=p, g=g):
            y = F.conv2d(x, w, b, stride=s, padding=p, groups=g)
            return y, F.conv_backward(gy, x, w, stride=s, padding=p, groups=g)

        def torch_both(tx=tx, tw=tw, tb=tb, tgy=tgy, s=s, p=p, g=g):
            xs, ws, bs = (t.detach().requires_grad_() for t in (tx, tw, tb))
            y = tF.conv2d(xs, ws, bs, stride=s, padding=p, groups=g)
            y.backward(tgy)
            return y, xs.grad, ws.grad, bs.grad

        cases.append(Case(name, what, 2 * macs, ours_fwd, {"torch": torch_fwd}, "fwd"))
        cases.append(Case(name, what, 6 * macs, ours_both, {"torch": torch_both}, "fwd+bwd"))
    return cases


def _pool_cases(rng: np.random.Generator, batch: int, only: set[str] | None) -> list[Case]:
    if only and "W7" not in only:
        return []
    x = _rand(rng, batch, 64, 112, 112)
    tx = torch.from_numpy(x)
    taps = x.size  # 2x2 stride 2: every input element is one tap
    y, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    gy = _rand(rng, *y.shape)
    tgy, tidx = torch.from_numpy(gy), torch.from_numpy(idx)
    what = f"2x2 s2, {batch}x64x112x112"

    def t_max() -> Any:
        with torch.no_grad():
            return tF.max_pool2d(tx, 2, 2)

    def t_avg() -> Any:
        with torch.no_grad():
            return tF.avg_pool2d(tx, 2, 2)

    def t_max_bwd() -> Any:
        return torch.ops.aten.max_pool2d_with_indices_backward(tgy, tx, [2, 2], [2, 2], [0, 0],
                                                               [1, 1], False, tidx)

    def t_avg_bwd() -> Any:
        return torch.ops.aten.avg_pool2d_backward(tgy, tx, [2, 2], [2, 2], [0, 0], False, True,
                                                  None)

    return [
        Case("W7max", "max " + what, taps, lambda: F.max_pool2d(x, 2, 2), {"torch": t_max}, "fwd"),
        Case("W7avg", "avg " + what, taps, lambda: F.avg_pool2d(x, 2, 2), {"torch": t_avg}, "fwd"),
        Case("W7max_idx", "max+indices " + what, taps,
             lambda: F.max_pool2d(x, 2, 2, return_indices=True),
             {"torch": lambda: tF.max_pool2d(tx, 2, 2, return_indices=True)}, "extra"),
        Case("W7max_bwd", "max backward " + what, taps,
             lambda: F.max_pool_backward(gy, x, idx), {"torch": t_max_bwd}, "extra"),
        Case("W7avg_bwd", "avg backward " + what, taps,
             lambda: F.avg_pool_backward(gy, x, 2, 2), {"torch": t_avg_bwd}, "extra"),
    ]


def _block_case(rng: np.random.Generator, batch: int, only: set[str] | None) -> list[Case]:
    """MobileNetV2 inverted residual, eval mode, BN folded into the conv biases."""
    if only and "W8" not in only and "W8f" not in only:
        return []
    c, e, h = 32, 32 * 6, 56
    x = _rand(rng, batch, c, h, h)
    w1 = _rand(rng, e, c, 1, 1) * np.float32(1 / np.sqrt(c))
    b1 = _rand(rng, e)
    wd = _rand(rng, e, 1, 3, 3) * np.float32(1 / 3)
    bd = _rand(rng, e)
    w2 = _rand(rng, c, e, 1, 1) * np.float32(1 / np.sqrt(e))
    b2 = _rand(rng, c)
    t = [torch.from_numpy(a) for a in (x, w1, b1, wd, bd, w2, b2)]
    six, zero = np.float32(6), np.float32(0)

    def ours() -> np.ndarray:
        y = F.conv2d(x, w1, b1)
        np.clip(y, zero, six, out=y)
        y = F.conv2d(y, wd, bd, padding=1, groups=e)
        np.clip(y, zero, six, out=y)
        y = F.conv2d(y, w2, b2)
        y += x
        return y

    def theirs() -> torch.Tensor:
        tx, tw1, tb1, twd, tbd, tw2, tb2 = t
        with torch.no_grad():
            y = tF.relu6(tF.conv2d(tx, tw1, tb1))
            y = tF.relu6(tF.conv2d(y, twd, tbd, padding=1, groups=e))
            return tF.conv2d(y, tw2, tb2) + tx

    macs = batch * h * h * (c * e + e * 9 + e * c)
    return [Case("W8f", f"inverted residual {c}->{e}->{c}, {batch}x{c}x{h}x{h}", 2 * macs,
                 ours, {"torch": theirs}, "block")]


def _filter_cases(rng: np.random.Generator, only: set[str] | None) -> list[Case]:
    if only and "F" not in only:
        return []
    try:
        from convlayers.filters import correlate2d
    except ImportError:
        print("convlayers.filters not available: filter benchmarks skipped")
        return []
    import cv2
    import scipy.ndimage as ndi
    import scipy.signal as sig

    img = rng.random((2160, 3840), dtype=np.float32) + np.float32(0.5)
    g1 = np.exp(-0.5 * ((np.arange(7) - 3) / 1.5) ** 2)
    kernels = {
        "sobel3": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32),
        "box3": np.full((3, 3), 1 / 9, np.float32),
        "gauss7": (np.outer(g1, g1) / np.outer(g1, g1).sum()).astype(np.float32),
    }
    cases = []
    for name, k in kernels.items():
        flipped = np.ascontiguousarray(k[::-1, ::-1])  # convolve with the flipped = correlate

        def ours(k=k) -> np.ndarray:
            return correlate2d(img, k, mode="same")

        peers = {
            "scipy.signal": lambda f=flipped: sig.convolve2d(img, f, mode="same"),
            "ndimage": lambda k=k: ndi.correlate(img, k, mode="constant"),
            "cv2": lambda k=k: cv2.filter2D(img, -1, k, borderType=cv2.BORDER_CONSTANT),
        }
        cases.append(Case(f"F-{name}", f"{k.shape[0]}x{k.shape[1]} on 3840x2160 float32",
                          2 * img.size * k.size, ours, peers, "filter"))
    return cases


# ----------------------------------------------------------------------------- running

def _run(cases: list[Case], threads: int, repeats: int, budget_s: float) -> None:
    for case in cases:
        for who, fn in [("convlayers", case.ours), *case.peers.items()]:
            _check_threads(threads)
            reps = max(3, repeats // 3) if who == "scipy.signal" else repeats
            case.results[who] = _median_time(fn, 2 if who == "convlayers" else 1, reps, budget_s)
        case.extra_mib = _extra_mib(case.ours)
        ours = case.results["convlayers"]
        ratios = "  ".join(f"{p} {t * 1e3:8.2f} ms  x{ours / t:5.2f}"
                           for p, t in case.results.items() if p != "convlayers")
        if case.group == "model":
            ratios += f"  torch peak-RSS growth {case.peer_mib:.1f} MiB"
        print(f"{case.name:10s} {case.group:8s} ours {ours * 1e3:8.2f} ms "
              f"{case.flops / ours / 1e9:7.1f} GFLOP/s  extra {case.extra_mib:7.1f} MiB  | {ratios}",
              flush=True)


def _geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def _report(cases: list[Case], threads: int) -> None:
    print("\n| workload | pass | shape | convlayers ms | GFLOP/s | extra MiB | peer | peer ms | ratio |"
          " peer MiB |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|")
    for c in cases:
        ours = c.results["convlayers"]
        for peer, t in c.results.items():
            if peer == "convlayers":
                continue
            print(f"| {c.name} | {c.group} | {c.what} | {ours * 1e3:.2f} | "
                  f"{c.flops / ours / 1e9:.1f} | {c.extra_mib:.1f} | {peer} | {t * 1e3:.2f} | "
                  f"{ours / t:.2f} | {'' if c.peer_mib != c.peer_mib else f'{c.peer_mib:.1f}'} |")
    print("\nGeometric mean of time ratios convlayers / peer (below 1: convlayers faster):")
    groups = [("fwd", "torch", "forward W1-W7"), ("fwd+bwd", "torch", "forward+backward W1-W6"),
              ("block", "torch", "W8 blocks"), ("model", "torch", "models"),
              ("extra", "torch", "pool extras")]
    groups += [("filter", p, f"filters vs {p}") for p in ("scipy.signal", "ndimage", "cv2")]
    for group, peer, label in groups:
        ratios = [c.results["convlayers"] / c.results[peer] for c in cases
                  if c.group == group and peer in c.results]
        if ratios:
            print(f"  {label:28s} {_geomean(ratios):.3f}  ({len(ratios)} cases)")
    print(f"\n{threads} threads each; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; numpy {np.__version__}, torch {torch.__version__}, "
          f"convlayers {convlayers.__version__ if hasattr(convlayers, '__version__') else '?'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 8 and fewer repeats")
    parser.add_argument("--only", default="", help="comma-separated: W1..W8 (W7: pools), F")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    batch = 8 if args.quick else 32
    repeats = args.repeats or (3 if args.quick else 7)

    import numba

    torch.set_num_threads(args.threads)
    config.set_threads(args.threads)  # numba.set_num_threads through the library's setting
    numba.set_num_threads(args.threads)
    limits = threadpool_limits(limits=args.threads, user_api="blas")
    try:
        import cv2

        cv2.setNumThreads(args.threads)
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    from models import model_cases, rss_growth_mib

    cases = (_conv_cases(rng, batch, only) + _pool_cases(rng, batch, only)
             + _block_case(rng, batch, only) + _filter_cases(rng, only)
             + model_cases(batch, only, Case))
    for c in cases:  # torch's first calls, before anything else of torch's has run
        if c.group == "model":
            c.peer_mib = rss_growth_mib(c.peers["torch"])
    t0 = time.perf_counter()
    for c in cases:  # first calls compile the numba kernels (cached on disk afterwards)
        c.ours()
    print(f"first calls (compile or load from cache): {time.perf_counter() - t0:.1f} s", flush=True)
    _run(cases, args.threads, repeats, budget_s=20.0 if not args.quick else 5.0)
    _report(cases, args.threads)
    limits.restore_original_limits()


if __name__ == "__main__":
    main()
