"""A helper process that compiles the common forward kernels while a first call compiles its own.

numba compiles one function at a time, on one core, and a kernel's first call per dtype waits
for it. On an empty cache (a fresh installation) a first MobileNetV2 forward compiled about
24 s of kernels one after another (the stem's dense GEMM ~8 s, pointwise ~5 s, two depthwise
kernels ~5 s each), and its second call 8 s more: the measured forward strategies
(:mod:`convlayers.functional._measured`) time the dense GEMM the plan did not pick. The
machine's other core sat idle.

When one of this package's kernels first misses the cache in this process
(:class:`convlayers.kernels.CompileNotice`), :func:`start` launches ``python -m
convlayers.kernels.precompile PID``: a process at the lowest priority (``nice 19``) that makes
the float32 forward calls of :func:`forward_tasks` on tiny inputs, most common first. Each
compile it finishes lands in numba's on-disk cache, and this process loads it from there when
it reaches that kernel: numba looks in the cache before it compiles, and a process that misses
a function another is compiling waits for that compile instead of repeating it
(:mod:`convlayers.kernels._cache_lock`). The helper does not wait: a call of its own that
reaches a kernel this process is compiling stops and is tried again later, so the two work
on different kernels. Measured here, interleaved, three cold runs each: the first MobileNetV2
forward took 24-29 s alone and 15.5-16.6 s with the helper, the second call 8.7-10.3 s and
4.3-5.4 s (two processes on this machine's two cores each compile about a quarter slower than
one alone). At the lowest priority the helper takes only a core nobody else wants: it hardly
slows a process whose kernels keep both cores busy.

After the forwards it makes the gradients' calls (:func:`gradient_tasks`). While the helper
runs, this process does not compile a float32 convolution's kernels itself: the engine runs
such a call by its NumPy strategy until the helper has saved them
(:mod:`convlayers.functional._cold`; a first MobileNetV2 forward then took 2.1 s, not 19-23).

At most one helper runs per cache (a lock file in the temporary directory), a helper starts
none, and it stops before its next kernel once the process that started it has ended.
``CONVLAYERS_BACKGROUND_COMPILE=0`` in the environment starts none (the test suite sets it);
``convlayers warmup`` compiles every kernel, forward and backward, ahead of time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ENVIRONMENT_SWITCH", "FORWARDS_ONLY", "STRATEGY_EXAMPLES", "direct_weight_gradient",
           "forward_tasks", "gradient_tasks", "helping", "lock_path", "main", "running", "start"]

#: The environment variable that, set to ``0``, keeps :func:`start` from starting a helper.
ENVIRONMENT_SWITCH = "CONVLAYERS_BACKGROUND_COMPILE"

#: A weight each convolution strategy serves, with its padding and groups, for an input of
#: 16 channels (the warmup command's and the helper's calls). In the helper's order: the
#: strategies a network's forward reaches most, and those its measured forwards time.
STRATEGY_EXAMPLES: dict[str, tuple[tuple[int, int, int, int], int, int]] = {
    "pointwise": ((8, 16, 1, 1), 0, 1),
    "depthwise-channels-last": ((16, 1, 3, 3), 1, 16),
    "depthwise-planar": ((16, 1, 3, 3), 1, 16),
    "lowered": ((8, 16, 3, 3), 1, 1),
    "implicit": ((8, 16, 3, 3), 1, 1),
    "direct": ((8, 16, 3, 3), 1, 1),
    "direct-planar": ((8, 16, 3, 3), 1, 1),
    "dot": ((4, 16, 3, 3), 1, 1),
    "winograd": ((16, 16, 3, 3), 1, 1),
    "depthwise-rows": ((16, 1, 3, 3), 1, 16),
    "depthwise-flat": ((16, 1, 3, 3), 1, 16),
}

#: The strategies that serve a forward only.
FORWARDS_ONLY = ("direct", "direct-planar", "dot")

#: Settings under which the tiny examples take the kernels a network's layers call: the
#: parallel ones, not the serial twins of small calls or NumPy's product for a tiny 1x1 layer.
#: Without them the pointwise example compiled nothing, and a first MobileNetV2 forward
#: compiled ``pointwise`` itself (12 s of its 28-29 with the helper).
PARALLEL: dict[str, int] = {"serial_macs": 0, "pointwise_numpy_macs": 0, "serial_pool_taps": 0,
                            "global_pool_serial_taps": 0}

_started = threading.Lock()
_helper: list[subprocess.Popen[bytes]] = []


def lock_path() -> str:
    """The lock file that one helper per cache holds while it runs: named after the cache it
    fills (``NUMBA_CACHE_DIR``, or numba's default beside this package)."""
    where = os.environ.get("NUMBA_CACHE_DIR", "") + "|" + os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256(where.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"convlayers-precompile-{digest}.lock")


def forward_tasks() -> list[tuple[str, Callable[[], Any]]]:
    """``(label, call)``: the float32 forward of each convolution strategy
    (:data:`STRATEGY_EXAMPLES`, in its order), then pooling's, on tiny inputs.

    Examples
    --------
    >>> [label for label, _ in forward_tasks()][:2]
    ['conv pointwise', 'conv depthwise-channels-last']
    """
    import numpy as np

    from convlayers import config
    from convlayers import functional as F

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    out: list[tuple[str, Callable[[], Any]]] = []
    for name, w, pad, groups in _examples(rng, ()):

        def conv(w: np.ndarray = w, pad: int = pad, groups: int = groups,
                 name: str = name) -> None:
            with config.engine_settings(force=name, **PARALLEL):
                F.conv2d(x, w, padding=pad, groups=groups)
        out.append((f"conv {name}", conv))

    def pooling() -> None:
        with config.engine_settings(**PARALLEL):
            F.max_pool2d(x, 3, 2, 1)
            F.avg_pool2d(x, 3, 2, 1)
            F.adaptive_avg_pool2d(x, 1)
            F.adaptive_avg_pool2d(x, 3)

    out.append(("pooling", pooling))

    def linear() -> None:  # a classifier head at batch 1 and 4 (dot products, then tiles)
        w = rng.standard_normal((10, x[0].size)).astype(np.float32)
        with config.engine_settings(**PARALLEL):
            for rows in (1, 4):
                F.linear(np.tile(x.reshape(2, -1), (rows, 1))[:rows], w)

    def batch_norm() -> None:  # an eager network's inference batch norm (its compiled pass)
        c = x.shape[1]
        F.batch_norm(np.tile(x, (80, 1, 1, 1)), np.zeros(c, np.float32), np.ones(c, np.float32))

    out += [("linear", linear), ("batch norm", batch_norm)]
    return out


def _examples(rng: Any, leave_out: tuple[str, ...]) -> Iterator[tuple[str, Any, int, int]]:
    """``(strategy, weight, padding, groups)`` of :data:`STRATEGY_EXAMPLES` in its order (the
    strategies this build has, less ``leave_out``), random float32 weights from ``rng``."""
    import numpy as np

    from convlayers.functional.plan import STRATEGIES

    for name, (shape, pad, groups) in STRATEGY_EXAMPLES.items():
        if name in STRATEGIES and name not in leave_out:
            yield name, rng.standard_normal(shape).astype(np.float32), pad, groups


def gradient_tasks() -> list[tuple[str, Callable[[], Any]]]:
    """``(label, call)``: both float32 gradients of each convolution strategy that computes
    them (:data:`STRATEGY_EXAMPLES`, in its order: a training step's first call of a gradient
    measures the implicit GEMM against im2col, so both come early), then the transposed
    convolution's forward (an input gradient alone), on tiny inputs. The helper runs them
    after :func:`forward_tasks`: meanwhile a gradient whose kernels miss the cache runs the
    NumPy strategy (:mod:`convlayers.functional._cold`); a first MobileNetV2 training step on
    an empty cache had compiled them for 58 of its 63 s.

    Examples
    --------
    >>> [label for label, _ in gradient_tasks()][:2]
    ['gradients pointwise', 'gradients depthwise-channels-last']
    """
    import numpy as np

    from convlayers import config
    from convlayers import functional as F

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    out: list[tuple[str, Callable[[], Any]]] = []
    for name, w, pad, groups in _examples(rng, FORWARDS_ONLY):
        grad = rng.standard_normal((2, w.shape[0], 9, 9)).astype(np.float32)

        def gradients(w: np.ndarray = w, grad: np.ndarray = grad, pad: int = pad,
                      groups: int = groups, name: str = name) -> None:
            with config.engine_settings(force=name, **PARALLEL):
                F.conv_backward(grad, x, w, padding=pad, groups=groups)
        out.append((f"gradients {name}", gradients))

    out.append(("weight gradient direct", direct_weight_gradient))

    def transposed() -> None:
        w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
        for name in ("lowered", "implicit"):
            with config.engine_settings(force=name, **PARALLEL):
                F.conv_transpose2d(x, w, stride=2, padding=1)

    out.append(("transposed convolutions", transposed))
    out.append(("padded copies", padded_copies))
    return out


def padded_copies() -> None:
    """The compiled zero padding of float32 planes (:mod:`convlayers.kernels.pad`: a
    transposed convolution's weight gradient pads its output gradient, a max pool its input),
    forced on a tiny input."""
    import numpy as np

    from convlayers import config
    from convlayers.functional._common import pad_pairs

    with config.engine_settings(parallel_pad_elements=0):
        pad_pairs(np.ones((2, 3, 4, 5), np.float32), ((1, 1), (2, 0)))


def direct_weight_gradient() -> None:
    """A float32 weight gradient alone by ``direct`` (the one gradient it computes, which a
    layer's first backward measures against the GEMMs'), on tiny inputs."""
    import numpy as np

    from convlayers import config
    from convlayers.functional import _engine

    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 16, 11, 11)).astype(np.float32)
    grad = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    with config.engine_settings(force="direct", **PARALLEL):
        _engine.correlate_weight_grad(x, grad, (3, 3), (1, 1), (1, 1), 1)


def start() -> bool:
    """Start the helper (once per process): True if it was started now. Not from a helper,
    not when :data:`ENVIRONMENT_SWITCH` is ``0``, nor where Python cannot start itself."""
    if os.environ.get(ENVIRONMENT_SWITCH, "1") == "0" or not sys.executable:
        return False
    with _started:
        if _helper:
            return False
        env = dict(os.environ)
        env.update({ENVIRONMENT_SWITCH: "0", "CONVLAYERS_COMPILE_NOTICE": "0",
                    "NUMBA_NUM_THREADS": "1"})
        # this installation first on the helper's path, wherever this process found it
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(
            [package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        try:
            _helper.append(subprocess.Popen(
                [sys.executable, "-m", "convlayers.kernels.precompile", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=env))
        except OSError:
            return False
    # reaped when it ends, not left a zombie for the rest of this process
    threading.Thread(target=_helper[0].wait, name="convlayers-precompile-reaper",
                     daemon=True).start()
    return True


def helping() -> bool:
    """Whether this process's helper runs now, started here if it has not been (by
    :func:`start`'s rules): the engine then serves a forward whose kernels miss the cache by
    its NumPy strategy while the helper compiles them
    (:func:`convlayers.kernels._cache_lock.deferring_misses`)."""
    start()
    return running()


def running() -> bool:
    """Whether this process's helper has been started and runs now."""
    return bool(_helper) and _helper[0].poll() is None


def main(argv: list[str] | None = None) -> int:
    """The helper: ``argv[0]`` is the starting process's id. Returns 0, also when another
    helper holds the cache's lock or the starting process has ended."""
    from filelock import FileLock, Timeout

    args = sys.argv[1:] if argv is None else argv
    parent = int(args[0])
    if hasattr(os, "nice"):
        os.nice(19)
    lock = FileLock(lock_path(), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return 0
    try:
        _run(forward_tasks() + gradient_tasks(), parent)
    finally:
        lock.release()
    return 0


def _run(tasks: list[tuple[str, Callable[[], Any]]], parent: int) -> None:
    """The calls of ``tasks`` while process ``parent`` lives, the first in order whose kernels
    no other process is compiling: a call that reaches such a kernel stops (without waiting)
    and is tried again after the next call that completes; when every call left would stop,
    the first waits for the other process's compile instead (tried again and again, each
    would redo its partial compile). A call that fails for any other reason is dropped."""
    from convlayers.kernels import _cache_lock

    remaining = list(tasks)
    try:
        while remaining and os.getppid() == parent:
            _cache_lock.wait_for_others = False
            for i, (_, call) in enumerate(remaining):
                busy = _cache_lock.busy_count
                try:
                    call()
                except Exception:  # CompilingElsewhereError as numba wraps it, or a failure
                    if _cache_lock.busy_count != busy:
                        continue
                del remaining[i]
                break
            else:
                _cache_lock.wait_for_others = True
                with contextlib.suppress(Exception):
                    remaining.pop(0)[1]()
    finally:
        _cache_lock.wait_for_others = True


if __name__ == "__main__":
    sys.exit(main())
