"""convlayers.compile: compiled plan vs eager model vs torch twin, fusion, arena, threads."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn as tnn

import convlayers
from convlayers import nn
from convlayers.interop.torch import to_torch
from convlayers.kernels.simd import VECTOR_BYTES
from convlayers.nn.models.efficientnet import EfficientNetLite, load_wheel_state_dict
from oracle import assert_close
from test_nn_layers import copy_weights
from twins import TorchLite0


def randomize_norms(model: nn.Module, seed: int) -> nn.Module:
    """Running statistics and affine parameters away from 0/1, so folding is really tested."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.standard_normal(m.num_features) * 0.2
            m.running_var[...] = rng.random(m.num_features) + 0.5
            m.weight.data[...] = rng.random(m.num_features) + 0.5
            m.bias.data[...] = rng.standard_normal(m.num_features) * 0.2
    return model


def eager(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with convlayers.no_grad():
        out = model.eval()(x)
    return np.asarray(getattr(out, "data", out))


def torch_eval(twin: tnn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return twin.eval()(torch.from_numpy(x)).numpy()


def check(model: nn.Module, twin: tnn.Module | None, shapes: list[tuple[int, ...]],
          channels_last: bool = True, chunk_bytes: int | None = None,
          blocks: bool = True) -> convlayers.Plan:
    """Compile at the first shape; every shape (other batch sizes) against eager and torch."""
    rng = np.random.default_rng(0)
    plan = convlayers.compile(model, rng.standard_normal(shapes[0]).astype(np.float32),
                              channels_last=channels_last, chunk_bytes=chunk_bytes, blocks=blocks)
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        got = plan(x)
        if twin is not None:
            assert_close(got, torch_eval(twin, x), f"compiled vs torch at {shape}")
        assert_close(got, eager(model, x), f"compiled vs eager at {shape}")
    return plan


def block(*layers: nn.Module) -> tuple[nn.Module, tnn.Module]:
    """A convlayers Sequential and its torch twin (same keys, weights copied)."""
    ours = randomize_norms(nn.Sequential(*layers), 1)
    twin = to_torch(ours)
    copy_weights(ours, twin)
    return ours, twin


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: Any = None,
            dilation: int = 1, rng: int = 0) -> list[nn.Module]:
    pad = (k - 1) // 2 * dilation
    layers = [nn.Conv2d(cin, cout, k, stride, pad, dilation, groups, bias=False, rng=rng),
              nn.BatchNorm2d(cout)]
    return layers + ([act()] if act is not None else [])


BATCHES = [(1, 8, 11, 9), (2, 8, 11, 9), (5, 8, 11, 9)]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("act", [None, nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh])
def test_conv_bn_activation_fuses(act: Any, channels_last: bool) -> None:
    ours, twin = block(*conv_bn(8, 12, act=act))
    plan = convlayers.compile(ours, np.zeros((1, 8, 11, 9), np.float32), channels_last=channels_last)
    # conv, norm and activation are one step (channels-last: between the two conversions)
    ops = ["to_nhwc", "conv", "to_nchw"] if channels_last else ["conv"]
    assert [s.node.op for s in plan._steps] == ops
    check(ours, twin, BATCHES, channels_last)


@pytest.mark.parametrize("act", [nn.Hardswish, nn.SiLU])
def test_swish_activations_fuse(act: Any) -> None:
    ours = randomize_norms(nn.Sequential(*conv_bn(8, 12, act=act)), 2)
    twin = tnn.Sequential(tnn.Conv2d(8, 12, 3, 1, 1, bias=False), tnn.BatchNorm2d(12),
                          getattr(tnn, act.__name__)())
    copy_weights(ours, twin)
    check(ours, twin, BATCHES)


@pytest.mark.parametrize(("channels_last", "blocks"), [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize(("k", "stride", "dilation"), [(3, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2)])
def test_depthwise_and_pointwise(k: int, stride: int, dilation: int, channels_last: bool,
                                 blocks: bool) -> None:
    """Channels-last, the two layers run as one block step (``blocks``) or as two steps;
    NCHW, as two steps whatever ``blocks`` says."""
    ours, twin = block(*conv_bn(8, 8, k, stride, groups=8, act=nn.ReLU6, dilation=dilation),
                       *conv_bn(8, 16, 1, act=nn.ReLU, rng=1))
    plan = convlayers.compile(ours, np.zeros((1, 8, 11, 9), np.float32), channels_last=channels_last,
                              blocks=blocks)
    inner = ["BlockLast"] if blocks else ["DepthwiseLast", "DenseLast"]
    expected = (["ToChannelsLast", *inner, "ToChannelsFirst"]
                if channels_last else ["Depthwise", "Pointwise"])
    assert [type(s).__name__ for s in plan._steps] == expected
    check(ours, twin, BATCHES, channels_last, blocks=blocks)


def test_channels_last_segment_converts_at_its_ends_only() -> None:
    """A grouped conv (NCHW) feeds an inverted residual (channels-last, its shortcut the grouped
    conv's output, converted once), then another grouped conv reads NCHW again."""
    ours = randomize_norms(nn.Sequential(*conv_bn(8, 24, 3, groups=2, act=nn.ReLU),
                                         nn.InvertedResidual(24, 24, 1, expand_ratio=3, rng=1),
                                         *conv_bn(24, 8, 3, groups=4, rng=2)), 6)
    twin = to_torch(ours)
    copy_weights(ours, twin)
    for blocks, inner in ((False, ["conv", "conv", "conv"]), (True, ["block"])):
        plan = convlayers.compile(ours, np.zeros((1, 8, 11, 9), np.float32), blocks=blocks)
        ops = [s.node.op for s in plan._steps]
        assert ops == ["conv", "to_nhwc", *inner, "to_nchw", "conv"]
        residual = plan._steps[1 + len(inner)].node.attrs["residual"]
        assert residual == plan._steps[1].out  # the shortcut reads the converted copy
        assert "NHWC" in plan.explain() and "2 conversions" in plan.explain()
        check(ours, twin, [(1, 8, 11, 9), (2, 8, 11, 9), (5, 8, 11, 9)], blocks=blocks)


def test_a_stem_of_few_channels_writes_channels_last_directly() -> None:
    """MobileNetV2's pattern: a 3-channel stem, a depthwise block, a global pool and a linear
    layer convert nothing: the stem reads the NCHW image, the pool reads NHWC. The stem's 8
    output channels are fewer than a tile's strip on any machine (16 float32 with AVX2, 48 with
    AVX-512), so it splats rather than run the direct kernel."""
    ours = randomize_norms(nn.Sequential(*conv_bn(3, 8, 3, 2, act=nn.ReLU6),
                                         *conv_bn(8, 8, 3, groups=8, act=nn.ReLU6, rng=1),
                                         *conv_bn(8, 24, 1, rng=2), nn.AdaptiveAvgPool2d(1),
                                         nn.Flatten(), nn.Linear(24, 5, rng=3)), 7)
    twin = to_torch(ours)
    copy_weights(ours, twin)
    plan = convlayers.compile(ours, np.zeros((1, 3, 17, 14), np.float32))
    assert [type(s).__name__ for s in plan._steps] == [
        "StemLast", "BlockLast", "GlobalAvgPoolLast", "Flatten", "Linear"]
    check(ours, twin, [(1, 3, 17, 14), (2, 3, 17, 14), (5, 3, 17, 14)])


def test_a_wide_stem_runs_the_direct_kernel_on_a_transposed_copy() -> None:
    """ResNet's pattern: a 3-channel stem with a tile's worth of output channels (64) reads
    the NCHW image through a padded channels-last copy, then a max pool and a residual block
    (Winograd) run channels-last; only the output converts."""
    from test_resnet import TBasicBlock

    ours = randomize_norms(nn.Sequential(*conv_bn(3, 64, 7, 2, act=nn.ReLU),
                                         nn.MaxPool2d(3, 2, 1),
                                         nn.models.BasicBlock(64, 64, rng=1)), 8)
    twin = tnn.Sequential(tnn.Conv2d(3, 64, 7, 2, 3, bias=False), tnn.BatchNorm2d(64), tnn.ReLU(),
                          tnn.MaxPool2d(3, 2, 1), TBasicBlock(64, 64))
    copy_weights(ours, twin)
    plan = convlayers.compile(ours, np.zeros((1, 3, 29, 30), np.float32))
    assert [type(s).__name__ for s in plan._steps] == [
        "DenseLast", "MaxPoolLast", "WinogradLast", "WinogradLast", "ToChannelsFirst"]
    assert "1 conversions" in plan.explain()
    check(ours, twin, [(1, 3, 29, 30), (2, 3, 29, 30), (3, 3, 29, 30)])


@pytest.mark.parametrize("shape", [(1, 160, 3, 5), (5, 160, 3, 5), (1, 160, 1, 1)])
def test_channels_last_blocks_of_channels_and_columns(shape: tuple[int, ...]) -> None:
    """Few output rows split a depthwise layer's channels into blocks (64, 64, 32 here); more
    than 256 output channels split the 1x1 GEMM's columns (192 + 108)."""
    c = shape[1]
    ours, twin = block(*conv_bn(c, c, 3, groups=c, act=nn.ReLU6), *conv_bn(c, 300, 1, act=nn.Sigmoid))
    check(ours, twin, [shape, (2, *shape[1:])])


def test_grouped_strided_and_strided_pointwise_convs() -> None:
    ours, twin = block(*conv_bn(8, 12, 3, 2, groups=2, act=nn.ReLU),
                       nn.Conv2d(12, 6, 1, 2, bias=True, rng=3), nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    check(ours, twin, [(2, 8, 13, 15), (1, 8, 13, 15), (5, 8, 13, 15)])


@pytest.mark.parametrize("stride", [1, 2])
def test_inverted_residual_fuses_the_add(stride: int) -> None:
    ours = randomize_norms(nn.InvertedResidual(8, 8, stride, expand_ratio=3, rng=0), 3)
    twin = to_torch(ours)
    copy_weights(ours, twin)
    for blocks in (True, False):
        plan = convlayers.compile(ours, np.zeros((1, 8, 9, 7), np.float32), blocks=blocks)
        last = [s.node for s in plan._steps if s.node.op in ("conv", "block")][-1]
        assert (last.attrs["residual"] is not None) == (stride == 1)
        check(ours, twin, [(1, 8, 9, 7), (2, 8, 9, 7), (5, 8, 9, 7)], blocks=blocks)


def test_tf_same_padding_folds_into_the_conv() -> None:
    ours = randomize_norms(nn.InvertedResidual(8, 16, 2, 6, 5, padding="tf_same", rng=0), 4)
    plan = convlayers.compile(ours, np.zeros((1, 8, 10, 9), np.float32))
    assert "pad" not in [s.node.op for s in plan._steps]
    assert "conv.1.0" in plan.explain()  # the SamePad2d's path is listed with its conv
    check(ours, None, [(1, 8, 10, 9), (2, 8, 10, 9)])  # the torch twin of Lite0 covers it below


@pytest.mark.parametrize("channels_last", [True, False])
def test_resnet_blocks_fuse_residual_and_relu(channels_last: bool) -> None:
    """A basic block with a strided 1x1 shortcut and a bottleneck. Channels-last (the direct
    kernel for every conv, the shortcuts read in place) converts only the output."""
    from test_resnet import TBasicBlock, TBottleneck

    down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False, rng=0), nn.BatchNorm2d(16))
    ours = randomize_norms(nn.Sequential(nn.models.BasicBlock(8, 16, 2, down, rng=1),
                                         nn.models.Bottleneck(16, 4, rng=2)), 5)
    twin = tnn.Sequential(
        TBasicBlock(8, 16, 2, tnn.Sequential(tnn.Conv2d(8, 16, 1, 2, bias=False), tnn.BatchNorm2d(16))),
        TBottleneck(16, 4))
    copy_weights(ours, twin)
    plan = convlayers.compile(ours, np.zeros((1, 8, 11, 9), np.float32), channels_last=channels_last)
    fused = [s.node for s in plan._steps if s.node.attrs.get("residual") is not None]
    assert len(fused) == 2 and all(n.attrs["act"] == "relu" for n in fused)
    if channels_last:
        steps = [type(s).__name__ for s in plan._steps]
        assert steps == ["ToChannelsLast"] + ["DenseLast"] * 6 + ["ToChannelsFirst"]
    check(ours, twin, [(1, 8, 11, 9), (2, 8, 11, 9), (5, 8, 11, 9)], channels_last)


def test_dense_layers_run_the_engines_implicit_gemm_where_its_planner_does() -> None:
    """Where the eager planner takes the implicit GEMM (a strided 5x5 conv here), so does the
    plan, its scratch in the arena; a Winograd-shaped layer takes it on calls of fewer tiles
    than the threshold and Winograd on the others. Every batch size matches the eager model
    and torch."""
    from convlayers import config

    ours, twin = block(*conv_bn(8, 24, 5, 2, act=nn.ReLU, rng=1))
    shapes = [(1, 8, 13, 11), (2, 8, 13, 11), (5, 8, 13, 11)]
    plan = convlayers.compile(ours, np.zeros(shapes[0], np.float32), channels_last=False)
    assert "implicit GEMM" in plan.explain()
    check(ours, twin, shapes, channels_last=False)
    wide, twin = block(*conv_bn(24, 32, 3, act=nn.ReLU6, rng=3))
    # 7x7 maps: 16 tiles an image; 24 -> 32 channels, under the machine's default mean
    with config.engine_settings(winograd_min_tiles=60, winograd_harmonic_channels=0):
        plan = convlayers.compile(wide, np.zeros((1, 24, 7, 7), np.float32), channels_last=False)
        step = plan._steps[0]
        assert "Winograd" in plan.explain()
        assert step._few_tiles(3) and not step._few_tiles(4)
        check(wide, twin, [(1, 24, 7, 7), (3, 24, 7, 7), (4, 24, 7, 7), (6, 24, 7, 7)],
              channels_last=False)
        plan(np.zeros((4, 24, 7, 7), np.float32))
        assert step.fallback is None  # the Winograd kernel ran (its arguments still match)


def test_unfusable_norm_activation_and_add_still_run() -> None:
    # BatchNorm first (no conv to fold into), an activation after a pool, a pad before a pool
    ours, twin = block(nn.BatchNorm2d(4), nn.ReLU(), nn.ZeroPad2d((1, 0, 2, 1)), nn.MaxPool2d(2),
                       nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 6 * 5, 3, rng=0), nn.ReLU6())
    plan = convlayers.compile(ours, np.zeros((1, 4, 9, 9), np.float32))
    assert [s.node.op for s in plan._steps] == ["bn", "pad", "maxpool", "act", "flatten", "linear"]
    check(ours, twin, [(1, 4, 9, 9), (3, 4, 9, 9), (6, 4, 9, 9)])


@pytest.mark.parametrize("act", [None, nn.ReLU, nn.ReLU6, nn.Sigmoid])
def test_a_linear_layer_on_dot_products_and_on_the_tiles(act: Any) -> None:
    """A classifier and its fused activation at batch sizes below ``Linear.MIN_GEMM_ROWS``
    (dot products) and from it (the register tiles: a tile's rows and a ragged last one,
    more outputs than a strip, ReLU and ReLU6 finished in registers, sigmoid after)."""
    from convlayers.inference.steps import Linear

    layers = [nn.Flatten(), nn.Linear(3 * 5 * 7, 37, rng=1)] + ([act()] if act else [])
    ours, twin = block(*layers)
    plan = convlayers.compile(ours, np.zeros((1, 3, 5, 7), np.float32))
    assert type(plan._steps[-1]).__name__ == "Linear"
    sizes = (1, Linear.MIN_GEMM_ROWS - 1, Linear.MIN_GEMM_ROWS, 9, 17)
    check(ours, twin, [(n, 3, 5, 7) for n in sizes])


def test_small_cnn_and_mobilenet_v2() -> None:
    small = randomize_norms(nn.SmallCNN(image_size=8, rng=0), 6)
    check(small, to_torch(small), [(2, 1, 8, 8), (1, 1, 8, 8), (5, 1, 8, 8)])
    mobile = randomize_norms(nn.MobileNetV2(num_classes=7, width_mult=0.5, rng=0), 7)
    check(mobile, to_torch(mobile), [(1, 3, 33, 29), (2, 3, 33, 29)])


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnets(name: str, channels_last: bool) -> None:
    model = randomize_norms(getattr(nn, name)(num_classes=7, rng=0), 8)
    check(model, to_torch(model), [(1, 3, 35, 37), (2, 3, 35, 37)], channels_last)


def test_efficientnet_lite0_against_the_torch_twin() -> None:
    torch.manual_seed(0)
    twin = TorchLite0()
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    ours = EfficientNetLite(rng=0)
    load_wheel_state_dict(ours, {k: v.numpy() for k, v in twin.state_dict().items()})
    check(ours, twin, [(1, 3, 37, 35), (2, 3, 37, 35)])


@pytest.mark.parametrize(("name", "chunk_bytes", "shape", "expected"), [
    # with AVX2's tiles the 3 -> 16 stem fills a strip and runs the direct kernel on a
    # padded channels-last copy of the image, more scratch than AVX-512's splats: 2 images
    # a chunk where 3 fit
    ("mobilenet_v2", 96 << 10, (5, 3, 33, 29),
     [(0, 3, 3 if VECTOR_BYTES == 64 else 2), (3, 5, 1), (5, 55, 5)]),
    ("mobilenet_v2", 16 << 10, (2, 3, 33, 29), [(0, 11, 1), (11, 55, 2)]),
    ("resnet18", 256 << 10, (5, 3, 35, 37), [(0, 2, 2), (2, 24, 5)])])
def test_large_maps_run_a_few_images_at_a_time(name: str, chunk_bytes: int,
                                               shape: tuple[int, ...],
                                               expected: list[tuple[int, int, int]]) -> None:
    """The first steps run through the batch in chunks of images (a small ``chunk_bytes``
    makes these small maps count as large; chunks of 3 then 2 (AVX2: 2, 2 then 1), of 1, of
    2, 2 then 1), the
    rest at once: against eager and torch, and against the same plan run whole-batch, at
    batch sizes the chunks do not divide; ``explain`` names the chunked runs."""
    if name == "mobilenet_v2":
        model = randomize_norms(nn.MobileNetV2(num_classes=7, width_mult=0.5, rng=0), 7)
    else:
        model = randomize_norms(nn.resnet18(num_classes=7, rng=0), 8)
    others = [(b, *shape[1:]) for b in (1, 3) if b != shape[0]]
    # the layers as separate steps: the segments' working sets are the layers' own
    plan = check(model, to_torch(model), [shape, *others], chunk_bytes=chunk_bytes, blocks=False)
    assert [(s.start, s.stop, s.images) for s in plan._segments(shape[0])] == expected
    whole = convlayers.compile(model, np.zeros(shape, np.float32), chunk_bytes=0, blocks=False)
    assert len(whole._segments(shape[0])) == 1
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    assert_close(plan(x), whole(x), "chunked vs whole batch")
    first = expected[0]
    assert (f"steps {first[0]}-{first[1] - 1} run {first[2]} of the {shape[0]} images at a time"
            in plan.explain(shape[0]))
    # its own values are sized for a chunk: the arena is smaller than the whole-batch plan's
    # (ResNet-18's: no larger, the per-thread transforms of its Winograd steps, after the
    # chunked run, set the size of both)
    chunked, unchunked = plan._layout(shape[0])[1], whole._layout(shape[0])[1]
    assert chunked < unchunked if name == "mobilenet_v2" else chunked <= unchunked


def test_chunk_bytes_is_checked() -> None:
    model = nn.ConvNormAct(3, 8, rng=0).eval()
    x = np.zeros((1, 3, 6, 6), np.float32)
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(ValueError, match="chunk_bytes"):
            convlayers.compile(model, x, chunk_bytes=bad)


def test_compile_leaves_the_model_alone_and_keeps_its_own_weights() -> None:
    model = randomize_norms(nn.resnet18(num_classes=3, rng=0), 9).train()
    before = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    plan = convlayers.compile(model, x)
    assert model.training
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(np.asarray(value), before[key], key)
    expected = plan(x)
    model.fc.weight.data[...] = 0  # later changes to the model do not reach the plan
    np.testing.assert_array_equal(plan(x), expected)


def test_four_threads_give_the_single_threaded_results() -> None:
    model = randomize_norms(nn.MobileNetV2(num_classes=10, width_mult=0.35, rng=0), 11)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((2, 3, 40, 40)).astype(np.float32) for _ in range(4)]
    plan = convlayers.compile(model, xs[0], chunk_bytes=16 << 10)  # its first steps in chunks
    assert plan._segments(2)[0].images == 1
    expected = [plan(x) for x in xs]
    results: list[Any] = [None] * 4

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = plan(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_explain_lists_fused_layers_strategies_layout_and_offsets() -> None:
    model = randomize_norms(nn.InvertedResidual(8, 8, 1, 6, rng=0), 12)
    plan = convlayers.compile(model, np.zeros((1, 8, 6, 6), np.float32), channels_last=False)
    text = plan.explain()
    assert text == repr(plan)
    lines = text.splitlines()
    assert len(lines) == 4  # header, expand, depthwise, project (+ residual)
    assert "0 values channels-last" in lines[0] and "0 conversions" in lines[0]
    assert "conv.0.0 + conv.0.1 + conv.0.2" in lines[1] and "relu6" in lines[1]
    assert "depthwise channels-last" in lines[2] and "arena @" in lines[2] and "NCHW" in lines[2]
    assert "scratch @" in lines[2]  # its blocks live in the arena, not in fresh memory
    assert "residual" in lines[3] and "output" in lines[3]
    lines = convlayers.compile(model, np.zeros((1, 8, 6, 6), np.float32),
                               blocks=False).explain().splitlines()
    assert len(lines) == 6  # header, to_nhwc, the three convs, to_nchw
    assert "4 values channels-last" in lines[0] and "2 conversions" in lines[0]
    assert "to_nhwc" in lines[1] and "NHWC; arena @" in lines[1]
    assert "residual" in lines[4] and "NHWC; arena @" in lines[4]
    assert "to_nchw" in lines[5] and "NCHW; output" in lines[5]
    lines = convlayers.compile(model, np.zeros((1, 8, 6, 6), np.float32)).explain().splitlines()
    assert len(lines) == 4  # header, to_nhwc, the block, to_nchw
    assert "block + residual [conv.0.0 + conv.0.1 + conv.0.2 + conv.1.0" in lines[2]
    assert ("expand 1x1 to 48 + relu6, depthwise 3x3 + relu6, project 1x1 to 8" in lines[2]
            and "NHWC; arena @" in lines[2] and "scratch @" in lines[2])


def test_bad_layers_and_inputs_are_named() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.AvgPool2d(2))
    with pytest.raises(TypeError, match=r"'1'.*AvgPool2d"):
        convlayers.compile(model, np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="example_input"):
        convlayers.compile(nn.ReLU(), np.zeros((3, 8, 8), np.float32))
    with pytest.raises(TypeError, match="blocks must be True or False, got 'no'"):
        convlayers.compile(nn.ReLU(), np.zeros((1, 3, 8, 8), np.float32), blocks="no")
    with pytest.raises(TypeError, match="model"):
        convlayers.compile(tnn.ReLU(), np.zeros((1, 3, 8, 8), np.float32))
    plan = convlayers.compile(nn.Sequential(nn.Conv2d(3, 4, 3, rng=0)), np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, 8, 8\)"):
        plan(np.zeros((1, 3, 9, 8), np.float32))
    with pytest.raises(TypeError, match="x must be float32"):
        plan(np.zeros((1, 3, 8, 8), np.float64))


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("shape", [(1, 8, 7, 9), (2, 8, 5, 40)])  # flat small planes, long rows
def test_depthwise_with_asymmetric_padding_folded(shape: tuple[int, ...], channels_last: bool) -> None:
    ours, twin = block(nn.ZeroPad2d((2, 0, 1, 2)), nn.Conv2d(8, 8, 5, groups=8, bias=True, rng=0),
                       nn.BatchNorm2d(8), nn.ReLU6())
    plan = convlayers.compile(ours, np.zeros(shape, np.float32), channels_last=channels_last)
    ops = ["to_nhwc", "conv", "to_nchw"] if channels_last else ["conv"]
    assert [s.node.op for s in plan._steps] == ops
    check(ours, twin, [shape, (3, *shape[1:])], channels_last)
