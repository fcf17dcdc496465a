"""Shared test settings: hypothesis profile and the one tolerance policy."""

import os
from collections.abc import Callable, Iterator

# torch's libgomp reads this once, when it loads: its idle threads (the oracle's) then sleep
# instead of spinning beside the other test worker's kernels on a 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
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


@pytest.fixture
def without_winograd_backward() -> Iterator[None]:
    """Winograd off for the backward pass. Where the kernels run 32-byte vectors (AVX2) it
    serves the gradients of the 3x3 stride-1 layers whose forward it serves, by default
    (``winograd_backward``), with AVX-512 it does not: tests of the GEMM strategies' own rules
    on such layers turn it off, so the machine does not decide which rule they see."""
    from convlayers import config

    with config.engine_settings(winograd_backward=False):
        yield


@pytest.fixture
def wide_depthwise_defaults() -> Iterator[None]:
    """The depthwise planner's AVX-512 defaults on any machine (``channels_last_planes`` 384,
    ``planar_max_waste`` 2; with AVX2 they are 512 and 8): tests of the rules' thresholds
    name the layers on either side of those values."""
    from convlayers import config

    with config.engine_settings(channels_last_planes=384, planar_max_waste=2):
        yield


@pytest.fixture
def set_threads() -> Iterator[Callable[[int], None]]:
    """``config.set_threads``, the setting restored after the test: tests of the kernels on
    one thread and on two."""
    from convlayers import config

    before = config.threads()
    yield config.set_threads
    config.set_threads(before)
