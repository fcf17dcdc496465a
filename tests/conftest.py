"""Shared test settings: hypothesis profile and the one tolerance policy."""

import os

# torch and numba share libgomp, which reads this once when it loads: test modules import torch
# before convlayers, so set it here (convlayers would otherwise warn that it came too late).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("CONVLAYERS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
    print_blob=True,
)
settings.load_profile("ci")
