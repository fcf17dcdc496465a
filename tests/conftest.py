"""Shared test settings: hypothesis profile and the one tolerance policy."""

import os

# torch's libgomp reads this once, when it loads: its idle threads (the oracle's) then sleep
# instead of spinning beside the other test worker's kernels on a 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]

# CI replays the same examples every run (reproducible); `make test-deep` draws fresh ones.
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("CONVLAYERS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=_QUIET,
    derandomize=True,
    print_blob=True,
)
settings.register_profile(
    "deep",
    max_examples=int(os.environ.get("CONVLAYERS_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=_QUIET,
    derandomize=False,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
