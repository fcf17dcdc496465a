"""Grad mode is per thread and per asyncio task: one thread's ``no_grad`` never stops another
thread from recording (nor lets an in-place activation overwrite what that thread recorded)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from convlayers import is_grad_enabled, nn, no_grad, tensor


def _model() -> nn.Module:
    # the in-place ReLU only overwrites its input when nothing records it: with a process-wide
    # switch, the inference thread's no_grad would let it overwrite the training thread's array
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, rng=0, dtype=np.float64), nn.ReLU(inplace=True),
                         nn.Conv2d(6, 4, 3, rng=1, dtype=np.float64))


def _gradients(model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """Input and parameter gradients of ``sum(model(x) ** 2)``."""
    for p in model.parameters():
        p.grad = None
    inp = tensor(x, requires_grad=True)
    out = model(inp)
    (out * out).sum().backward()
    assert inp.grad is not None
    return [inp.grad.copy()] + [np.array(p.grad) for p in model.parameters()]


def test_no_grad_in_one_thread_leaves_recording_on_in_another() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9))
    model = _model()
    expected = _gradients(model, x)  # the single-threaded run

    in_no_grad, done = threading.Event(), threading.Event()
    forwards: list[int] = []
    errors: list[BaseException] = []

    def infer() -> None:
        try:
            with no_grad():
                in_no_grad.set()
                while not done.is_set():  # the other thread records while this one is inside
                    out = model(rng.standard_normal((1, 3, 9, 9)))
                    assert not getattr(out, "requires_grad", False)
                    forwards.append(1)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            in_no_grad.set()

    worker = threading.Thread(target=infer)
    worker.start()
    try:
        assert in_no_grad.wait(30)
        assert is_grad_enabled()
        got = [_gradients(model, x) for _ in range(5)]
    finally:
        done.set()
        worker.join(60)
    assert not errors, errors
    assert forwards, "the inference thread ran no forward"
    for run in got:
        for g, want in zip(run, expected, strict=True):
            np.testing.assert_allclose(g, want, rtol=1e-12, atol=0)


def test_grad_mode_is_per_asyncio_task() -> None:
    seen: dict[str, bool] = {}

    async def inference(entered: asyncio.Event, release: asyncio.Event) -> None:
        with no_grad():
            entered.set()
            await release.wait()
            seen["inference"] = is_grad_enabled()

    async def training(entered: asyncio.Event, release: asyncio.Event) -> None:
        await entered.wait()
        w = tensor([1.0, 2.0], requires_grad=True)
        seen["training"] = (w * w).sum().requires_grad
        release.set()

    async def main() -> None:
        entered, release = asyncio.Event(), asyncio.Event()
        await asyncio.gather(inference(entered, release), training(entered, release))

    asyncio.run(main())
    assert seen == {"inference": False, "training": True}
    assert is_grad_enabled()
