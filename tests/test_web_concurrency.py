"""The explorer runs model forwards side by side (grad mode is per thread), and gives the summary
and feature maps, which wrap the modules' forward while they record, the model to themselves."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from convlayers.web.models import ModelEntry, ModelRegistry


class _Meeting:
    """A 'model' whose forward waits until ``parties`` forwards are inside it at once."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=20)

    def __call__(self, x: Any) -> np.ndarray:
        self.barrier.wait()  # BrokenBarrierError if the forwards were serialised
        return np.arange(10.0)[None]


def _registry(model: Any) -> ModelRegistry:
    registry = ModelRegistry()
    registry.entries["digits"] = ModelEntry("digits", "test", lambda: model, (1, 1, 8, 8),
                                            labels=str, module=model)
    return registry


def test_two_forwards_of_one_model_run_at_the_same_time() -> None:
    registry = _registry(_Meeting(2))
    image = np.zeros((8, 8, 3), np.uint8)
    results: list[Any] = []

    def ask() -> None:
        try:
            results.append(registry.classify("digits", image, top=1))
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r[0]["name"] if isinstance(r, list) else r for r in results] == ["9", "9"]


def test_a_recording_call_waits_for_forwards_in_flight() -> None:
    entry = _registry(_Meeting(1)).entry("digits")
    order: list[str] = []
    inside = threading.Event()

    def forward() -> None:
        with entry.access.shared():
            inside.set()
            time.sleep(0.3)
            order.append("forward done")

    t = threading.Thread(target=forward)
    t.start()
    assert inside.wait(20)
    with entry.access.sole():
        order.append("recording")
    t.join(20)
    assert order == ["forward done", "recording"]
