"""Each layer against the same torch.nn layer with copied weights: forward, grads, buffers,
plus Module mechanics (state_dict keys and errors, modes, repr, init)."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch

from convlayers import Tensor, nn, tensor
from oracle import assert_close, random_array


def copy_weights(ours: nn.Module, theirs: torch.nn.Module) -> None:
    """Load our state_dict into torch (which also checks that the key names agree)."""
    theirs.load_state_dict({k: torch.tensor(np.array(v)) for k, v in ours.state_dict().items()})


_CONVS = {torch.nn.Conv1d: torch.nn.grad.conv1d_weight, torch.nn.Conv2d: torch.nn.grad.conv2d_weight,
          torch.nn.Conv3d: torch.nn.grad.conv3d_weight}


def parameter_grad_scales(theirs: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, Any]:
    """The accumulation of each parameter gradient of torch's convolutions, linear layers and
    batch norms (``sum |a| |b|`` over the terms the gradient sums: for a bias, ``sum |dL/dout|``;
    for a conv weight, the weight gradient of ``|input|`` and ``|dL/dout|``), from one float64
    pass with hooks. A bias before a training BatchNorm has a gradient that is zero in exact
    arithmetic: only this scale says how much rounding its sum may carry, and its terms are
    the batch norm's backward terms, so their accumulation is its scale (the test of the
    seed's separable block read 1.5x the plain sum's allowance once: both sides' rounding,
    summed in another order)."""
    model = copy.deepcopy(theirs).double()
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    produced: dict[int, str] = {}  # id of a conv's output -> the conv's name
    feeds: dict[str, str] = {}  # a conv's name -> the training batch norm reading its output
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (*_CONVS, torch.nn.Linear, torch.nn.modules.batchnorm._BatchNorm)):
            def keep(mod: Any, inputs: Any, outputs: Any, name: str = name) -> None:
                if isinstance(mod, tuple(_CONVS)):
                    produced[id(outputs)] = name
                elif mod.training and id(inputs[0]) in produced:
                    feeds[produced[id(inputs[0])]] = name
                outputs.register_hook(lambda grad: seen.__setitem__(name, (inputs[0].detach(), grad)))
            hooks.append(module.register_forward_hook(keep))
    out = model(x.double().requires_grad_(True))
    out.backward(g.double())
    for h in hooks:
        h.remove()
    scales: dict[str, Any] = {}
    modules = dict(model.named_modules())
    for name, module in model.named_modules():
        if name not in seen:
            continue
        inp, gout = (t.abs() for t in seen[name])
        prefix = f"{name}." if name else ""
        channel_axes = [a for a in range(gout.ndim) if a != (gout.ndim - 1 if isinstance(
            module, torch.nn.Linear) else 1)]
        scales[prefix + "bias"] = gout.sum(dim=channel_axes).numpy()
        if name in feeds and feeds[name] in seen:
            # the gradient a training batch norm passes back, (gamma/sigma) (g - mean g -
            # xhat mean(g xhat)), is summed from those three terms: the bias's sum (zero in
            # exact arithmetic) carries their rounding
            bn = modules[feeds[name]]
            x_bn, g_bn = seen[feeds[name]]
            keep_dims = [a for a in range(x_bn.ndim) if a != 1]
            mean = x_bn.mean(dim=keep_dims, keepdim=True)
            sigma = (x_bn.var(dim=keep_dims, unbiased=False, keepdim=True) + bn.eps).sqrt()
            xhat = (x_bn - mean) / sigma
            gamma = (bn.weight.detach() if bn.weight is not None else torch.ones(
                x_bn.shape[1], dtype=x_bn.dtype)).reshape(1, -1, *[1] * (x_bn.ndim - 2))
            terms = (gamma.abs() / sigma) * (g_bn.abs() + g_bn.mean(dim=keep_dims, keepdim=True).abs()
                                             + xhat.abs() * (g_bn * xhat).mean(
                                                 dim=keep_dims, keepdim=True).abs())
            scales[prefix + "bias"] = np.maximum(scales[prefix + "bias"],
                                                 terms.sum(dim=keep_dims).numpy())
        if isinstance(module, torch.nn.Linear):
            scales[prefix + "weight"] = (gout.reshape(-1, gout.shape[-1]).T
                                         @ inp.reshape(-1, inp.shape[-1])).numpy()
        elif isinstance(module, tuple(_CONVS)):
            grad_weight = _CONVS[type(module)]  # type: ignore[index]
            scales[prefix + "weight"] = grad_weight(
                inp, module.weight.shape, gout, module.stride, module.padding, module.dilation,
                module.groups).numpy() if isinstance(module.padding, tuple) else None
        else:  # batch norm: weight gradient sums dL/dout times xhat, |xhat| <= max |xhat|
            xhat = (inp - inp.mean(dim=channel_axes, keepdim=True)).abs()
            scales[prefix + "weight"] = (gout * xhat).sum(dim=channel_axes).numpy() / np.sqrt(
                inp.var(dim=channel_axes).numpy() + 1e-5)
    return {k: v for k, v in scales.items() if v is not None}


def compare_modules(ours: nn.Module, theirs: torch.nn.Module, x: np.ndarray, train: bool,
                    seed: int = 0, what: str = "") -> None:
    """Forward, backward (same upstream gradient), parameter and input grads, buffers after."""
    copy_weights(ours, theirs)
    ours.train(train)
    theirs.train(train)
    tx = torch.tensor(x, requires_grad=True)
    expected = theirs(tx)
    g = np.random.default_rng(seed).standard_normal(tuple(expected.shape)).astype(x.dtype)
    expected.backward(torch.tensor(g))

    ox = tensor(x, requires_grad=True)
    out = ours(ox)
    assert_close(out.data, expected, f"{what} forward ({'train' if train else 'eval'})")
    out.backward(g)
    assert_close(ox.grad, tx.grad, f"{what} grad input")
    their_params = dict(theirs.named_parameters())
    ours_params = dict(ours.named_parameters())
    assert set(ours_params) == set(their_params), f"{what}: parameter names differ"
    accumulations = parameter_grad_scales(theirs, tx.detach(), torch.tensor(g))
    for name, p in ours_params.items():
        want: Any = their_params[name].grad
        want = want.numpy() if want is not None else np.zeros_like(p.data)
        # the oracle's fallback magnitude (largest |element|, at least 1), raised to the last
        # sum's accumulation where that is larger: upstream rounding in a deep network is
        # relative to the whole gradient, a long sum's rounding to its accumulation
        scale = max(float(np.abs(want).max()) if want.size else 0.0, 1.0)
        if name in accumulations:
            scale = np.maximum(accumulations[name], scale)
        assert_close(p.grad, want, f"{what} grad {name}", scale=scale)
    their_state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        assert_close(np.asarray(value), their_state[name], f"{what} state {name} after the step")


R = np.random.default_rng(0)

LAYERS: list[tuple[str, Any, Any, tuple[int, ...]]] = [
    ("conv2d", lambda: nn.Conv2d(3, 8, 3, padding=1, rng=0),
     lambda: torch.nn.Conv2d(3, 8, 3, padding=1), (2, 3, 7, 7)),
    ("conv2d strided groups no bias", lambda: nn.Conv2d(4, 6, (3, 2), stride=2, dilation=(1, 2),
                                                        groups=2, bias=False, rng=1),
     lambda: torch.nn.Conv2d(4, 6, (3, 2), stride=2, dilation=(1, 2), groups=2, bias=False), (2, 4, 9, 8)),
    ("conv2d depthwise reflect", lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
     lambda: torch.nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"), (2, 4, 6, 6)),
    ("conv2d same", lambda: nn.Conv2d(2, 3, 4, padding="same"),
     lambda: torch.nn.Conv2d(2, 3, 4, padding="same"), (1, 2, 6, 5)),
    ("conv1d", lambda: nn.Conv1d(3, 5, 3, stride=2), lambda: torch.nn.Conv1d(3, 5, 3, stride=2), (2, 3, 11)),
    ("conv_transpose2d", lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
     lambda: torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
     (2, 4, 5, 5)),
    ("linear", lambda: nn.Linear(6, 4), lambda: torch.nn.Linear(6, 4), (3, 6)),
    ("linear no bias", lambda: nn.Linear(6, 4, bias=False), lambda: torch.nn.Linear(6, 4, bias=False),
     (2, 3, 6)),
    ("relu", nn.ReLU, torch.nn.ReLU, (2, 3, 4, 4)),
    ("relu6", nn.ReLU6, torch.nn.ReLU6, (2, 3, 4, 4)),
    ("maxpool2d", lambda: nn.MaxPool2d(3, 2, 1), lambda: torch.nn.MaxPool2d(3, 2, 1), (2, 3, 9, 9)),
    ("avgpool2d", lambda: nn.AvgPool2d(2, ceil_mode=True), lambda: torch.nn.AvgPool2d(2, ceil_mode=True),
     (2, 3, 7, 7)),
    ("adaptiveavgpool2d", lambda: nn.AdaptiveAvgPool2d(1), lambda: torch.nn.AdaptiveAvgPool2d(1),
     (2, 3, 5, 6)),
    ("flatten", nn.Flatten, torch.nn.Flatten, (2, 3, 4, 5)),
    ("zeropad2d", lambda: nn.ZeroPad2d((0, 1, 2, 1)), lambda: torch.nn.ZeroPad2d((0, 1, 2, 1)), (2, 3, 4, 4)),
    ("identity", nn.Identity, torch.nn.Identity, (2, 3)),
    ("batchnorm2d", lambda: nn.BatchNorm2d(3), lambda: torch.nn.BatchNorm2d(3), (4, 3, 5, 5)),
    ("batchnorm2d cumulative", lambda: nn.BatchNorm2d(3, momentum=None, eps=1e-3),
     lambda: torch.nn.BatchNorm2d(3, momentum=None, eps=1e-3), (4, 3, 5, 5)),
    ("batchnorm2d no affine", lambda: nn.BatchNorm2d(3, affine=False),
     lambda: torch.nn.BatchNorm2d(3, affine=False), (4, 3, 5, 5)),
    ("batchnorm1d", lambda: nn.BatchNorm1d(5), lambda: torch.nn.BatchNorm1d(5), (6, 5)),
    ("sequential", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                         nn.Flatten(), nn.Linear(36, 2)),
     lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(36, 2)),
     (2, 3, 8, 8)),
]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "ours", "theirs", "shape"), LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_matches_torch(name: str, ours: Any, theirs: Any, shape: tuple[int, ...], dtype: Any,
                             train: bool) -> None:
    torch_module = theirs().to(torch.float64 if dtype == np.float64 else torch.float32)
    module = ours().to(dtype)
    x = random_array(R, shape, dtype)
    for step in range(2):  # the second step sees running statistics moved by the first
        compare_modules(module, torch_module, x, train, seed=step, what=name)


def test_batchnorm_without_running_stats_always_uses_the_batch() -> None:
    ours = nn.BatchNorm2d(3, track_running_stats=False)
    theirs = torch.nn.BatchNorm2d(3, track_running_stats=False)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    compare_modules(ours, theirs, random_array(R, (4, 3, 3, 3), np.float32), train=False)


def test_dropout_layer_is_seeded_and_off_in_eval() -> None:
    x = np.ones((3, 40), np.float32)
    a, b = nn.Dropout(0.25, rng=3), nn.Dropout(0.25, rng=3)
    first = a(x)
    np.testing.assert_array_equal(first, b(x))
    assert set(np.unique(first)) == {0.0, np.float32(1 / 0.75)}
    np.testing.assert_array_equal(b.eval()(x), x)


def test_repr_matches_torch() -> None:
    pairs = [
        (nn.Conv2d(3, 64, 3, padding=1), torch.nn.Conv2d(3, 64, 3, padding=1)),
        (nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False, padding_mode="reflect"),
         torch.nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False, padding_mode="reflect")),
        (nn.ConvTranspose2d(4, 2, 4, 2, 1), torch.nn.ConvTranspose2d(4, 2, 4, 2, 1)),
        (nn.Linear(3, 2, bias=False), torch.nn.Linear(3, 2, bias=False)),
        (nn.ReLU(inplace=True), torch.nn.ReLU(inplace=True)),
        (nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU6()),
         torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU6())),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)
    assert repr(nn.BatchNorm2d(8, momentum=0.01)) == "BatchNorm2d(8, momentum=0.01)"  # non-defaults only
    assert repr(nn.MaxPool2d(3, 2, 1)) == "MaxPool2d(kernel_size=3, stride=2, padding=1)"


def test_default_init_follows_pytorch_and_is_seeded() -> None:
    conv = nn.Conv2d(16, 32, 3, groups=2, rng=0)
    bound = 1 / math.sqrt(8 * 9)  # fan_in = in/groups * k*k
    w = conv.weight.data
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound  # U(-b, b) has std b/sqrt(3)
    assert conv.bias is not None and np.abs(conv.bias.data).max() <= bound
    np.testing.assert_array_equal(w, nn.Conv2d(16, 32, 3, groups=2, rng=0).weight.data)
    assert not np.array_equal(w, nn.Conv2d(16, 32, 3, groups=2, rng=1).weight.data)
    fc = nn.Linear(100, 10, rng=np.random.default_rng(0))
    assert np.abs(fc.weight.data).max() <= 0.1 and np.abs(fc.bias.data).max() <= 0.1  # type: ignore[union-attr]


@pytest.mark.parametrize(("layer", "shape", "message"), [
    (nn.Conv2d(3, 8, 3), (1, 4, 5, 5),
     "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1)) expected input with 3 channels"),
    (nn.Conv1d(2, 8, 3), (4, 5, 5),
     "Conv1d(2, 8, kernel_size=(3,), stride=(1,)) expected input with 2 channels"),
    (nn.BatchNorm2d(16), (2, 8, 4, 4), "BatchNorm2d(16) expected input with 16 channels"),
    (nn.BatchNorm2d(16), (2, 16), "BatchNorm2d(16) expected a 4-D input"),
    (nn.Linear(10, 2), (3, 9), "Linear(in_features=10, out_features=2) expected input with 10 features"),
])
def test_channel_mismatch_names_the_layer(layer: nn.Module, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layer(np.ones(shape, np.float32))


def test_state_dict_keys_match_torch_and_errors_name_every_key() -> None:
    ours = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Linear(4, 2))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.Linear(4, 2))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())  # torch tensors load directly
    np.testing.assert_array_equal(ours[0].weight.data, theirs[0].weight.detach().numpy())
    assert ours.state_dict()["1.num_batches_tracked"].dtype == np.int64

    state = {k: np.array(v) for k, v in ours.state_dict().items()}
    del state["1.running_var"]
    state["3.weight"] = np.zeros((2, 5), np.float32)
    state["extra.weight"] = np.zeros(1)
    with pytest.raises(ValueError) as info:
        ours.load_state_dict(state)
    message = str(info.value)
    for needle in ("Sequential", "missing keys (1): 1.running_var", "unexpected keys (1): extra.weight",
                   "3.weight: checkpoint (2, 5) vs model (2, 4)"):
        assert needle in message
    del state["3.weight"]
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert missing == ["1.running_var", "3.weight"] and unexpected == ["extra.weight"]


def test_loading_keeps_parameter_identity_and_dtype() -> None:
    conv = nn.Conv2d(1, 1, 2)
    before = conv.weight
    conv.load_state_dict({"weight": np.ones((1, 1, 2, 2)), "bias": np.zeros(1)})
    assert conv.weight is before and conv.weight.dtype == np.float32 and conv.weight.data.sum() == 4


def test_module_mechanics() -> None:
    shared = nn.Conv2d(2, 2, 1)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Dropout())
    assert len(list(model.parameters())) == 2  # shared weights counted once
    assert [n for n, _ in model.named_modules()] == ["", "0", "1", "3"]
    assert model.eval() is model and not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    assert isinstance(model[0], nn.Conv2d) and len(model) == 4 and isinstance(model[1:], nn.Sequential)
    out = model(np.ones((1, 2, 3, 3), np.float32))
    assert isinstance(out, Tensor)
    out.sum().backward()
    assert shared.weight.grad is not None
    model.zero_grad()
    assert shared.weight.grad is None
    with pytest.raises(TypeError, match="cannot assign ndarray to 'weight'"):
        shared.weight = np.zeros(1)  # type: ignore[assignment]
    copy_weights(model.to(np.float64), torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.ReLU(),
                                                           torch.nn.Conv2d(2, 2, 1)).double())
    assert shared.weight.dtype == np.float64


def test_inplace_activations_reuse_buffers_only_when_nothing_is_recorded() -> None:
    from convlayers import no_grad, tensor

    x = np.array([-1.0, 3.0, 9.0], np.float32)
    out = nn.ReLU6(inplace=True)(x)
    assert out is x and x.tolist() == [0.0, 3.0, 6.0]  # PyTorch's meaning of inplace=True
    t = tensor(np.array([-1.0, 2.0]), requires_grad=True)
    y = nn.ReLU(inplace=True)(t)
    assert y is not t and t.data.tolist() == [-1.0, 2.0]  # recorded: the tape keeps its input
    y.sum().backward()
    assert t.grad.tolist() == [0.0, 1.0]
    with no_grad():
        z = tensor(np.array([-1.0, 2.0]))
        assert nn.ReLU(inplace=True)(z) is z


def test_blocks_give_the_same_numbers_with_buffer_reuse() -> None:
    """Inference (in-place activations and residual add) equals the recorded forward pass."""
    from convlayers import no_grad

    block = nn.InvertedResidual(8, 8, 1, 6, rng=0).eval()
    x = np.random.default_rng(0).standard_normal((2, 8, 9, 9)).astype(np.float32)
    keep = x.copy()
    recorded = block(x).numpy()
    with no_grad():
        reused = block(x).numpy()
    np.testing.assert_array_equal(reused, recorded)
    np.testing.assert_array_equal(x, keep)  # the caller's input is never overwritten


def test_feature_maps_are_not_changed_by_a_later_inplace_relu() -> None:
    block = nn.ConvNormAct(3, 4, rng=0).eval()
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)
    maps = nn.feature_maps(block, x, ["1", "2"])
    assert (maps["1"] < 0).any()  # BatchNorm output keeps its negative values
    np.testing.assert_array_equal(maps["2"], np.clip(maps["1"], 0, None))


@pytest.mark.parametrize("recording", [False, True])
def test_sequential_is_a_plain_loop_that_fuses_nothing(recording: bool) -> None:
    """A Sequential runs each child as it is (inference fusion is explicit, in
    convlayers.compile and nn.fuse): the numbers are torch's, the input is untouched."""
    import convlayers

    rng = np.random.default_rng(4)
    block = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, rng=0), nn.BatchNorm2d(5),
                          nn.ReLU6(inplace=True)).eval()
    bn = block[1]
    bn.running_mean[...] = rng.normal(0, 0.5, 5)
    bn.running_var[...] = rng.uniform(0.5, 2.0, 5)
    bn.weight.data[...] = rng.normal(1, 0.3, 5)
    bn.bias.data[...] = rng.normal(0, 0.3, 5)
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.BatchNorm2d(5),
                               torch.nn.ReLU6()).eval()
    twin.load_state_dict({k: torch.from_numpy(np.asarray(getattr(v, "data", v)))
                          for k, v in block.state_dict().items()})
    x = random_array(rng, (2, 3, 7, 6), np.float32) * 4
    x[1, 2, 3, 3] = np.nan  # must come out NaN where torch's does, through BatchNorm and the clip
    before = x.copy()
    calls: list[object] = []
    original = bn.forward

    def spy(data: object) -> object:
        calls.append(data)
        return original(data)

    bn.forward = spy  # type: ignore[method-assign]
    if recording:
        y = block(tensor(x, requires_grad=True))
        assert isinstance(y, Tensor) and y.requires_grad
        y = y.data
    else:
        with convlayers.no_grad():
            out = block(x)
        y = np.asarray(getattr(out, "data", out))
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.isnan(y).any()
    assert_close(np.nan_to_num(y), np.nan_to_num(expected), "Conv-BN-ReLU6")
    np.testing.assert_array_equal(x, before)
    assert len(calls) == 1  # the BatchNorm ran as a layer of its own: no hidden fusion


def test_inference_affine_is_torchs_eval_batch_norm_and_names_bad_arguments() -> None:
    from convlayers import functional as F

    rng = np.random.default_rng(6)
    mean, var = rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4)
    weight, bias = rng.normal(1, 0.3, 4), rng.normal(0, 0.3, 4)
    x = rng.standard_normal((2, 4, 3, 5))
    alpha, beta = F.inference_affine(mean, var, weight, bias, eps=1e-3)
    expected = torch.nn.functional.batch_norm(
        torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(var),
        torch.from_numpy(weight), torch.from_numpy(bias), training=False, eps=1e-3).numpy()
    assert_close(x * alpha[:, None, None] + beta[:, None, None], expected, "x * alpha + beta")
    assert_close(F.batch_norm(x, mean, var, weight, bias, eps=1e-3), expected, "batch_norm eval")
    with pytest.raises(ValueError, match="weight must have shape"):
        F.inference_affine(mean, var, np.ones(5))
    with pytest.raises(ValueError, match="running_mean and running_var"):
        F.inference_affine(mean, var[:3])
