"""The process-wide settings: OpenMP's wait policy, chosen before libgomp loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run(code: str, policy: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=env,
                          capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize(("first", "policy", "warns", "final"), [
    ("convlayers", None, False, "PASSIVE"),  # convlayers first: it sets PASSIVE in time
    ("torch", None, True, "PASSIVE"),  # torch first: libgomp already read the policy
    ("torch", "ACTIVE", False, "ACTIVE"),  # the user's own choice is kept, and no warning
])
def test_openmp_wait_policy_is_set_before_libgomp_loads_or_a_warning_says_why(
        first: str, policy: str | None, warns: bool, final: str) -> None:
    other = "torch" if first == "convlayers" else "convlayers"
    code = (f"import {first}, {other}, torch, os; torch.set_num_threads(1); "
            "print(os.environ['OMP_WAIT_POLICY'])")
    done = _run(code, policy)
    assert done.stdout.strip() == final
    assert ("PerformanceWarning" in done.stderr) == warns, done.stderr
