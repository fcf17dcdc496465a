"""A compiled plan's steady-state call allocates nothing but its output (issue 15), measured
with tracemalloc in a process of its own.

numba's allocations inside kernels go through Python's allocator, so tracemalloc sees them too:
this test found the GEMM's zero-padded copies of its last rows (a full-width row block per
unit, 57 KB or 113 KB a call depending on how many threads held one at once); the edge tiles of
:mod:`convlayers.kernels.simd` now work in place."""

from __future__ import annotations

import os

_STEADY_STATE = """
import sys, tracemalloc
import numpy as np
sys.path.insert(0, sys.argv[1])
import convlayers
from convlayers import nn
from test_compile import randomize_norms
model = randomize_norms(nn.MobileNetV2(num_classes=10, width_mult=0.5, rng=0), 10)
x = np.random.default_rng(2).standard_normal((2, 3, 96, 96)).astype(np.float32)
plan = convlayers.compile(model, x)
plan(x)  # first call: kernels compiled, arena made
peaks = []
tracemalloc.start()
for _ in range(3):
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = plan(x)
    peaks.append(tracemalloc.get_traced_memory()[1] - base)
tracemalloc.stop()
largest = max(plan._elements(v, 2) * 4 for v in plan._graph.shapes)
print(max(peaks), out.nbytes, largest)
"""


def test_steady_state_call_allocates_only_its_output() -> None:
    """In a process of its own: tracemalloc sees every allocation of the process, and state
    that earlier tests leave behind (a Dask client's threads) would count against the plan."""
    import subprocess
    import sys
    from pathlib import Path

    # a clean environment: only what Python and numba need (the suite's numba cache is shared)
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "NUMBA_CACHE_DIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    result = subprocess.run([sys.executable, "-c", _STEADY_STATE, str(Path(__file__).parent)],
                            capture_output=True, text=True, timeout=600, check=False, env=env)
    assert result.returncode == 0, result.stderr
    peak, output, largest = (int(v) for v in result.stdout.split())
    slack = 65_536  # Python objects of the calls (views, arguments), not array data
    assert largest > 4 * slack  # so any intermediate array would show
    assert peak <= output + slack, f"peak {peak} B for a {output} B output"
