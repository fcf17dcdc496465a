"""First calls on an empty kernel cache (:mod:`convlayers.functional._cold`): while the helper
process compiles the common kernels, a float32 forward whose kernel misses the cache runs the
NumPy strategy instead of compiling it, and the compiled kernel once the helper has saved it.

Run in a child process with an empty numba cache and the helper allowed (the suite itself
keeps it off)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent('''
    import sys, time
    import numpy as np
    import torch
    from convlayers import config
    from convlayers import functional as F
    from convlayers.functional import _cold
    from convlayers.kernels import _cache_lock, precompile

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    w = rng.standard_normal((8, 16, 1, 1)).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    with config.engine_settings(**precompile.PARALLEL):  # the helper's pointwise kernel
        first = F.conv2d(x, w)
        with config.engine_settings(force="numpy"):
            by_numpy = F.conv2d(x, w)
        # the first call ran the NumPy strategy: its very bits
        assert np.array_equal(first, by_numpy), "first call"
        assert _cache_lock.deferred_count >= 1 and _cold.pending(), "deferred"
        assert precompile.running(), "helper"
        np.testing.assert_allclose(first, want, rtol=1e-4, atol=1e-4)
        # the helper compiles the pointwise kernel first: it is loaded once saved
        deadline = time.monotonic() + 240
        while "pointwise" in _cold._MISSED and time.monotonic() < deadline:
            time.sleep(0.3)
            later = F.conv2d(x, w)
            np.testing.assert_allclose(later, want, rtol=1e-4, atol=1e-4)
        assert "pointwise" not in _cold._MISSED, "the helper's kernel was never loaded"
    precompile._helper[0].kill()
    print("ok")
''')


def test_a_cold_forward_runs_numpy_while_the_helper_compiles(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update({"NUMBA_CACHE_DIR": str(tmp_path / "numba"), "CONVLAYERS_BACKGROUND_COMPILE": "1",
                "CONVLAYERS_COMPILE_NOTICE": "0"})
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_an_error_that_is_no_deferral_goes_through() -> None:
    """Inside ``trying`` an error of the strategy itself (no cache miss deferred in this
    thread) reaches the caller, and no miss is recorded."""
    import numpy as np

    from convlayers.functional import _cold
    from convlayers.functional.plan import geometry

    g = geometry((1, 4, 6, 6), (2, 4, 3, 3), (1, 1), (1, 1), 1, ((1, 1), (1, 1)), (6, 6),
                 np.float32)
    try:
        with _cold.trying("lowered", g):
            raise ValueError("the strategy's own error")
    except ValueError as error:
        assert "own error" in str(error)
    else:
        raise AssertionError("the error was swallowed")
    assert not _cold.deferred("lowered", g)


def test_nothing_defers_past_the_window(monkeypatch) -> None:
    """Past ``DEFER_SECONDS`` from the first deferral nothing defers (a busy process starves
    the helper): ``trying`` then runs the call as it is, and no miss is pending."""
    import time

    import numpy as np

    from convlayers.functional import _cold
    from convlayers.functional.plan import geometry

    g = geometry((1, 4, 6, 6), (2, 4, 3, 3), (1, 1), (1, 1), 1, ((1, 1), (1, 1)), (6, 6),
                 np.float32)
    assert _cold._applies(g)  # the suite's process has deferred nothing
    monkeypatch.setattr(_cold, "_first", [time.monotonic() - _cold.DEFER_SECONDS - 1])
    monkeypatch.setattr(_cold, "_MISSED", {"lowered": time.monotonic()})
    assert not _cold._applies(g) and not _cold.pending() and not _cold._MISSED
    assert not _cold.deferred("lowered", g)
