"""Optimizers and schedules against torch.optim on the same parameters and gradients."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from convlayers import optim
from oracle import assert_close

CONFIGS = [
    (optim.SGD, torch.optim.SGD, dict(lr=0.1)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    (optim.Adam, torch.optim.Adam, dict(lr=1e-2)),
    (optim.Adam, torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
    (optim.AdamW, torch.optim.AdamW, dict(lr=1e-2)),
    (optim.AdamW, torch.optim.AdamW, dict(lr=3e-3, weight_decay=0.2, eps=1e-6, amsgrad=True)),
]


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_updates_match_torch_over_several_steps(ours, theirs, kwargs, dtype) -> None:
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,)]
    ps = [SimpleNamespace(data=rng.standard_normal(s).astype(dtype), grad=None) for s in shapes]
    ts = [torch.tensor(p.data.copy(), requires_grad=True) for p in ps]
    opt, topt = ours(ps, **kwargs), theirs(ts, **kwargs)
    for step in range(6):
        for p, t in zip(ps, ts, strict=True):
            g = rng.standard_normal(p.data.shape).astype(dtype)
            p.grad, t.grad = g, torch.tensor(g.copy())
        opt.step()
        topt.step()
        for p, t in zip(ps, ts, strict=True):
            assert_close(p.data, t.detach().numpy(), f"step {step}")


def test_parameters_without_gradient_are_left_alone() -> None:
    p = SimpleNamespace(data=np.ones(3), grad=None)
    optim.Adam([p], lr=0.1).step()
    np.testing.assert_array_equal(p.data, np.ones(3))


def test_state_dict_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(1)
    a = SimpleNamespace(data=rng.standard_normal(4), grad=rng.standard_normal(4))
    b = SimpleNamespace(data=a.data.copy(), grad=a.grad.copy())
    opt_a = optim.Adam([a], lr=0.1)
    opt_a.step()
    opt_b = optim.Adam([b], lr=0.1)
    opt_b.step()
    restored = optim.Adam([b], lr=0.5)
    restored.load_state_dict(opt_a.state_dict())
    opt_a.step()
    restored.step()
    np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [(optim.StepLR, torch.optim.lr_scheduler.StepLR, dict(step_size=3, gamma=0.5)),
     (optim.CosineAnnealingLR, torch.optim.lr_scheduler.CosineAnnealingLR, dict(T_max=7, eta_min=0.01))],
)
def test_schedules_match_torch(ours, theirs, kwargs) -> None:
    p = SimpleNamespace(data=np.zeros(1), grad=None)
    opt = optim.SGD([p], lr=0.2)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    sched, tsched = ours(opt, **kwargs), theirs(topt, **kwargs)
    for _ in range(10):
        topt.step()
        sched.step()
        tsched.step()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: optim.SGD([], lr=0.1), ValueError, "params is empty"),
        (lambda: optim.SGD([SimpleNamespace(data=np.ones(1), grad=None)], lr=-1), ValueError,
         "lr must be >= 0"),
        (lambda: optim.Adam([SimpleNamespace(data=np.ones(1), grad=None)], betas=(1.0, 0.9)), ValueError,
         "betas[0] must be in [0.0, 1.0)"),
        (lambda: optim.SGD([SimpleNamespace(data=np.ones(1), grad=None)], nesterov=True), ValueError,
         "nesterov=True needs momentum > 0"),
        (lambda: optim.SGD([object()], lr=0.1), TypeError, "params[0] has no NumPy .data array"),
    ],
)
def test_bad_arguments_are_named(call, error, message) -> None:
    import re

    with pytest.raises(error, match=re.escape(message)):
        call()


def _param() -> SimpleNamespace:
    return SimpleNamespace(data=np.ones(2), grad=np.ones(2))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -0.1])
@pytest.mark.parametrize(("make", "attribute", "label"), [
    (lambda: optim.SGD([_param()], lr=0.1), "lr", "lr"),
    (lambda: optim.SGD([_param()], lr=0.1, momentum=0.9), "momentum", "momentum"),
    (lambda: optim.SGD([_param()], lr=0.1), "dampening", "dampening"),
    (lambda: optim.SGD([_param()], lr=0.1), "weight_decay", "weight_decay"),
    (lambda: optim.Adam([_param()]), "lr", "lr"),
    (lambda: optim.Adam([_param()]), "eps", "eps"),
    (lambda: optim.AdamW([_param()]), "weight_decay", "weight_decay"),
    (lambda: optim.Adam([_param()]), "beta1", "betas[0]"),
    (lambda: optim.Adam([_param()]), "beta2", "betas[1]"),
])
def test_hyper_parameters_are_checked_on_assignment(make, attribute, label, value) -> None:
    """``opt.lr = nan`` used to be accepted and turned every weight into NaN at the next step
    (issue 16 item 8); now each assignment is refused, naming the hyper-parameter, and the
    optimizer keeps its value."""
    import re

    opt = make()
    before = getattr(opt, attribute)
    with pytest.raises(ValueError, match=re.escape(label) + " must be"):
        setattr(opt, attribute, value)
    assert getattr(opt, attribute) == before
    opt.step()
    assert np.isfinite(opt.params[0].data).all()


def test_valid_assignments_and_schedules_still_set_hyper_parameters() -> None:
    opt = optim.SGD([_param()], lr=0.1, momentum=0.5)
    opt.lr, opt.momentum = 0.25, np.float32(0.75)
    assert (opt.lr, opt.momentum) == (0.25, 0.75) and type(opt.momentum) is float
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    assert opt.lr == 0.125
    with pytest.raises(TypeError, match="lr must be a number"):
        opt.lr = "0.1"  # type: ignore[assignment]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr must be a finite number"):
            optim.SGD([_param()], lr=bad)
        with pytest.raises(ValueError, match="gamma must be a finite number"):
            optim.StepLR(opt, step_size=1, gamma=bad)
