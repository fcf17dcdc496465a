"""The helper process that compiles the common forward kernels beside a first call."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from convlayers.kernels import _cache_lock, precompile


def _recorder(log: list[str], name: str, busy_times: int = 0, fails: bool = False):
    """A task that is told another process compiles its kernel (as the compile lock tells
    it) on its first ``busy_times`` calls unless it may wait, or fails outright."""
    calls = [0]

    def call() -> None:
        calls[0] += 1
        if calls[0] <= busy_times and not _cache_lock.wait_for_others:
            _cache_lock._count_busy()
            raise RuntimeError(f"numba wraps the lock error from {name}")
        if fails:
            raise ValueError(name)
        log.append(name)
    return call


def test_tasks_run_in_order_and_a_busy_one_is_tried_again_after_the_next() -> None:
    log: list[str] = []
    tasks = [("a", _recorder(log, "a")), ("b", _recorder(log, "b", busy_times=2)),
             ("c", _recorder(log, "c")), ("d", _recorder(log, "d", fails=True)),
             ("e", _recorder(log, "e"))]
    precompile._run(tasks, os.getppid())
    # b busy: c runs; b is tried first again (busy once more), d fails and is dropped; then
    # b, free at last, runs before e
    assert log == ["a", "c", "b", "e"]
    assert _cache_lock.wait_for_others  # restored


def test_when_every_call_left_is_busy_the_first_waits() -> None:
    """Two calls whose kernels another process compiles: rather than try them again and
    again, the first runs waiting (the compile lock then waits for the other's save)."""
    log: list[str] = []
    precompile._run([("a", _recorder(log, "a", busy_times=10)),
                     ("b", _recorder(log, "b", busy_times=10))], os.getppid())
    assert log == ["a", "b"]
    assert _cache_lock.wait_for_others


def test_the_helper_stops_once_its_parent_is_gone() -> None:
    log: list[str] = []
    precompile._run([("a", _recorder(log, "a"))], parent=os.getppid() + 1_000_000)
    assert log == []


def test_no_helper_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(precompile.ENVIRONMENT_SWITCH, "0")
    assert precompile.start() is False


def test_the_forward_tasks_cover_every_compiled_strategy() -> None:
    from convlayers.functional.plan import STRATEGIES

    labels = [label for label, _ in precompile.forward_tasks()]
    assert labels[:3] == ["conv pointwise", "conv depthwise-channels-last",
                          "conv depthwise-planar"]
    assert {f"conv {s}" for s in STRATEGIES if s != "numpy"} <= set(labels)
    assert labels[-3:] == ["pooling", "linear", "batch norm"]


REACHED = """
import sys
from convlayers.cli.warmup import tasks
from convlayers.kernels import conv, linear, pooling, precompile

found = dict(precompile.forward_tasks() if sys.argv[1] == "helper" else tasks("float32"))
found["conv pointwise"]()
found["pooling"]()
found["linear"]()
parallel_max = (pooling._max_by_tap, pooling._max_3x3_stride_2_rows, pooling._max_pairs)
print(bool(conv.pointwise.signatures), any(kernel.signatures for kernel in parallel_max),
      bool(linear.linear_rows.signatures) and bool(linear.linear_tiles.signatures))
"""


@pytest.mark.parametrize("who", ["helper", "warmup"])
def test_the_tasks_reach_the_parallel_kernels_a_network_calls(who: str) -> None:
    """The examples are tiny (2x16x9x9): as they are, a 1x1 forward is NumPy's product, a
    pooling call a serial twin and a linear layer NumPy's ``@``. The helper's and the
    warmup's calls take the parallel kernels (``precompile.PARALLEL``), which a first
    MobileNetV2 forward otherwise compiled itself. In a fresh process: a kernel's signatures
    list what this process called it with (compiled or loaded from the cache)."""
    done = subprocess.run([sys.executable, "-c", REACHED, who], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]


FIRST_CALL = """
import sys, time
import numpy as np
from convlayers import functional as F
from convlayers import kernels
from convlayers.kernels import precompile
from numba import njit

@njit(cache=True)
def user_kernel(a):  # not convlayers': starts no helper
    return a.sum()

user_kernel(np.ones(3))
print("after user kernel", bool(precompile._helper), kernels.notice.helped, flush=True)
F.max_pool2d(np.ones((1, 1, 4, 4), np.float32), 2)  # a convlayers kernel: the helper starts
helper = precompile._helper[0]
print("helper", helper.pid, " ".join(helper.args[1:3]), flush=True)
sys.stdin.readline()  # the test ends this process: the helper stops before its next kernel
"""


def test_a_first_compile_of_a_convlayers_kernel_starts_one_helper(tmp_path: Path) -> None:
    script = tmp_path / "first.py"
    script.write_text(textwrap.dedent(FIRST_CALL))
    env = {**os.environ, precompile.ENVIRONMENT_SWITCH: "1",
           "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    parent = subprocess.Popen([sys.executable, str(script)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert parent.stdout is not None and parent.stdin is not None
    assert parent.stdout.readline().split() == ["after", "user", "kernel", "False", "False"]
    line = parent.stdout.readline().split()
    assert line[0] == "helper", parent.stderr.read() if parent.stderr else ""
    assert line[2:] == ["-m", "convlayers.kernels.precompile"]
    pid = int(line[1])
    parent.stdin.write("\n")
    parent.stdin.flush()
    parent.wait(timeout=120)
    _wait_gone(pid, 300)  # it finishes the kernel at hand, sees its parent gone, and stops


def _wait_gone(pid: int, seconds: float) -> None:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _running(pid):
            return
        time.sleep(0.2)
    raise AssertionError(f"the helper {pid} still runs {seconds} s after its parent ended")


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (an ended process nobody reaped yet, a zombie, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


PADDED = """
import sys
from convlayers.cli.warmup import tasks
from convlayers.kernels import pad, precompile

found = dict(precompile.gradient_tasks() if sys.argv[1] == "helper" else tasks("float32"))
found["padded copies"]()
print(bool(pad.pad_planes.signatures))
"""


@pytest.mark.parametrize("who", ["helper", "warmup"])
def test_the_tasks_compile_the_padding_kernel(who: str) -> None:
    """The helper's gradients and the warmup compile the padding kernel a transposed
    convolution's weight gradient calls (in a fresh process: its signatures list what this
    process called it with)."""
    done = subprocess.run([sys.executable, "-c", PADDED, who], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]
