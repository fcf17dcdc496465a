"""The one-pass inverted-residual block of compiled plans (``inference.block_last``) against
torch's three convolutions, and the plan step that runs it (``BlockLast``) against the same
plan's separate steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as tf

import convlayers
from convlayers import config, nn
from convlayers.inference import block_last as BL
from convlayers.inference.steps_channels_last import BlockLast
from convlayers.interop.torch import to_torch
from convlayers.kernels.simd import pack_conv_weights
from oracle import assert_close
from test_channels_last import TORCH_ACT, _nhwc
from test_compile import check, randomize_norms


def _torch_block(x: torch.Tensor, w1: torch.Tensor | None, b1: torch.Tensor, act1: int,
                 wd: torch.Tensor, b2: torch.Tensor, act2: int, stride: int, pad: tuple[int, int],
                 dilation: int, w3: torch.Tensor | None, b3: torch.Tensor, act3: int,
                 res: torch.Tensor | None) -> torch.Tensor:
    """The block as torch's separate layers (NCHW in and out); ``res`` is added before the last
    layer's activation."""
    t = x
    if w1 is not None:
        t = TORCH_ACT[act1](tf.conv2d(t, w1, b1))
    t = tf.conv2d(t, wd, b2, stride, pad, dilation, groups=wd.shape[0])
    if w3 is None:
        return TORCH_ACT[act2](t + res if res is not None else t)
    t = tf.conv2d(TORCH_ACT[act2](t), w3, b3)
    return TORCH_ACT[act3](t + res if res is not None else t)


@dataclass
class _Block:
    """A random block's layers, input, residual and torch's result (NCHW tensors)."""

    expand: bool
    project: bool
    x: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    wd: torch.Tensor
    b2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor
    acts: list[int]
    stride: int
    dilation: int
    pads: tuple[int, int]
    res: torch.Tensor | None
    want: np.ndarray  # NHWC

    def operands(self, out: np.ndarray) -> tuple[Any, ...]:
        """Both kernels' leading arguments, from ``x`` to ``has_res``."""
        s, d, (pt, pl) = self.stride, self.dilation, self.pads
        return (_nhwc(self.x), self.expand, pack_conv_weights(self.w1.numpy()), self.b1.numpy(),
                self.acts[0], np.ascontiguousarray(self.wd[:, 0].permute(1, 2, 0).numpy()),
                self.b2.numpy(), self.acts[1], s, s, d, d, pt, pl, self.project,
                pack_conv_weights(self.w3.numpy()), self.b3.numpy(), self.acts[2],
                out if self.res is None else _nhwc(self.res), self.res is not None)


def _random_block(rng: np.random.Generator, kind: int, most_channels: int, most_size: int) -> _Block:
    """Kernels 1-5, strides and dilations 1-2, padding 0 to the kernel's size on each side,
    every activation, a residual or none; ``kind`` 0 expands and projects, 1 only projects,
    2 only expands."""
    n, c_in = int(rng.integers(1, 4)), int(rng.integers(1, 40))
    expand, project = [(True, True), (False, True), (True, False)][kind % 3]
    c = int(rng.integers(1, most_channels)) if expand else c_in
    c_out = int(rng.integers(1, 60)) if project else c
    k = int(rng.choice([1, 3, 5]))
    stride, dilation = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    pt, pl = int(rng.integers(0, k + 1)), int(rng.integers(0, k + 1))
    span = (k - 1) * dilation + 1
    h = int(rng.integers(max(1, span - 2 * pt), most_size))
    w = int(rng.integers(max(1, span - 2 * pl), most_size))
    acts = [int(a) for a in rng.integers(0, 7, 3)]
    x = torch.from_numpy(rng.standard_normal((n, c_in, h, w)).astype(np.float32))
    w1, wd, w3 = (torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * 0.35)
                  for shape in ((c, c_in, 1, 1), (c, 1, k, k), (c_out, c, 1, 1)))
    b1, b2, b3 = (torch.from_numpy(rng.standard_normal(m).astype(np.float32)) for m in (c, c, c_out))
    ho, wo = (h + 2 * pt - span) // stride + 1, (w + 2 * pl - span) // stride + 1
    res = (torch.from_numpy(rng.standard_normal((n, c_out, ho, wo)).astype(np.float32))
           if rng.random() < 0.5 else None)
    want = _torch_block(x, w1 if expand else None, b1, acts[0], wd, b2, acts[1], stride,
                        (pt, pl), dilation, w3 if project else None, b3, acts[2], res)
    return _Block(expand, project, x, w1, b1, wd, b2, w3, b3, acts, stride, dilation, (pt, pl),
                  res, _nhwc(want))


@pytest.mark.parametrize("seed", range(24))
def test_block_matches_torch(seed: int) -> None:
    """Random blocks (:func:`_random_block`) by rows: units of a few rows (chunks that split
    images, bands of 1-3 rows, buffers of the fewest rows, so the rows bands share are kept,
    compacted and recomputed across chunks) and of whole images."""
    rng = np.random.default_rng(seed)
    b = _random_block(rng, seed, 70, 17)
    n, h, w, _ = _nhwc(b.x).shape
    ho, wo = b.want.shape[1:3]
    c, k = b.wd.shape[0], b.wd.shape[2]
    band = int(rng.integers(1, 4)) if seed % 2 else BL.band_rows(ho, wo, c, 4)
    rows = BL.buffer_rows(band, k, b.stride, b.dilation, h, w, c, 4)
    if seed % 4 == 1:  # the fewest rows a band needs: compacted at every band
        rows = min(h, (band - 1) * b.stride + (k - 1) * b.dilation + 1)
    chunk = int(rng.integers(1, ho + 1))
    threads = 8  # numba's threads claim units in turn; buffers for any count
    out = np.full(b.want.shape, np.nan, np.float32)
    BL.block(*b.operands(out), chunk, band, threads,
             np.arange(n * h * w, dtype=np.int64) * b.x.shape[1],
             np.arange(band * wo, dtype=np.int64) * c,
             np.full((threads, rows * w * c if b.expand else 0), np.nan, np.float32),
             np.full((threads, band * wo * c if b.project else 0), np.nan, np.float32), out)
    assert_close(out, b.want, f"block seed {seed} (chunk {chunk}, band {band}, rows {rows})")


def _inverted(c_in: int, c_out: int, stride: int, ratio: int, act: Any, k: int = 3,
              seed: int = 0) -> nn.Module:
    block = nn.InvertedResidual(c_in, c_out, stride, ratio, k, activation=act, rng=seed)
    return randomize_norms(block, seed + 1)


@pytest.mark.parametrize(("c_in", "c_out", "stride", "ratio", "act", "k"), [
    (8, 8, 1, 6, nn.ReLU6, 3),     # residual
    (8, 12, 2, 3, nn.ReLU6, 3),    # strided, no residual
    (16, 16, 1, 1, nn.ReLU6, 3),   # no expansion: depthwise -> project
    (8, 8, 1, 4, nn.Hardswish, 5),
    (12, 20, 2, 6, nn.SiLU, 5)])
def test_compiled_blocks_match_torch_and_the_separate_steps(c_in: int, c_out: int, stride: int,
                                                            ratio: int, act: Any, k: int) -> None:
    """``compile`` runs each inverted residual as one ``BlockLast`` step: against torch and
    eager at batch 1, 2 and 5 on an odd map, and against the plan compiled with
    ``blocks=False`` (the same layers as separate steps)."""
    model = _inverted(c_in, c_out, stride, ratio, act, k)
    # to_torch converts ReLU6, not Hardswish or SiLU: the twin of the same block with ReLU6
    # (the same weights: the activation draws nothing from the rng), its activations swapped
    twin = to_torch(_inverted(c_in, c_out, stride, ratio, nn.ReLU6, k))
    for name, module in list(twin.named_modules()):
        if isinstance(module, torch.nn.ReLU6) and act is not nn.ReLU6:
            parent = twin.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[1], getattr(torch.nn, act.__name__)())
    shapes = [(1, c_in, 13, 11), (2, c_in, 13, 11), (5, c_in, 13, 11)]
    plan = check(model, twin, shapes, blocks=True)
    assert [type(s).__name__ for s in plan._steps] == ["ToChannelsLast", "BlockLast",
                                                       "ToChannelsFirst"]
    separate = convlayers.compile(model, np.zeros(shapes[0], np.float32), blocks=False)
    assert "BlockLast" not in [type(s).__name__ for s in separate._steps]
    x = np.random.default_rng(3).standard_normal(shapes[2]).astype(np.float32)
    assert_close(plan(x), separate(x), "one pass vs separate steps")


def test_small_maps_at_few_images_split_the_channels() -> None:
    """A 7x7 map at batch 1 on two threads would expand 9 of its 7 rows in chunks of rows
    (each chunk the rows its first windows share): the step splits the expanded channels
    between the threads instead; at batch 2 each thread takes a whole image."""
    model = _inverted(16, 80, 1, 6, nn.ReLU6, seed=4)
    plan = convlayers.compile(model, np.zeros((1, 16, 7, 7), np.float32))
    step = plan._steps[1]
    assert isinstance(step, BlockLast)
    assert step.chunk_rows(1, 2) == 0 and step.chunk_rows(2, 2) == 7
    assert step.chunk_rows(1, 1) == 7
    big = convlayers.compile(model, np.zeros((1, 16, 56, 56), np.float32))._steps[1]
    assert big.chunk_rows(1, 2) == 28  # 58 rows for 56: each half once, two rows twice
    twin = to_torch(model)
    for n in (1, 2, 3):
        with config.settings(threads=2):
            x = np.random.default_rng(n).standard_normal((n, 16, 7, 7)).astype(np.float32)
            with torch.no_grad():
                want = twin.eval()(torch.from_numpy(x)).numpy()
            assert_close(plan(x), want, f"7x7 block at batch {n}, two threads")


@pytest.mark.parametrize("seed", range(12))
def test_block_by_channels_matches_torch(seed: int) -> None:
    """Random blocks (:func:`_random_block`, up to 200 expanded channels: several strips)
    with the channels split into 1-4 parts of whole strips, some empty."""
    from convlayers.kernels.simd import conv_strip

    rng = np.random.default_rng(100 + seed)
    b = _random_block(rng, seed, 200, 12)
    n, h, w, _ = _nhwc(b.x).shape
    _, ho, wo, c_out = b.want.shape
    c = b.wd.shape[0]
    parts = int(rng.integers(1, 5))
    bounds = BL.channel_parts(c, parts, conv_strip() // 4)
    out = np.full(b.want.shape, np.nan, np.float32)
    BL.block_channels(*b.operands(out), bounds, np.arange(n * h * w, dtype=np.int64) * b.x.shape[1],
                      np.arange(n * ho * wo, dtype=np.int64) * c,
                      np.full(n * h * w * c, np.nan, np.float32),
                      np.full(n * ho * wo * c, np.nan, np.float32),
                      np.full((parts, n * ho * wo, c_out if b.project else 1), np.nan, np.float32),
                      out)
    assert_close(out, b.want, f"block by channels seed {seed} (bounds {list(bounds)})")


def test_a_pointwise_layer_between_two_depthwise_ones_joins_one_block() -> None:
    """MobileNet v1's pattern, depthwise -> 1x1 -> depthwise -> 1x1: the first 1x1 layer
    projects the first block and does not also expand the second."""
    from test_compile import block, conv_bn

    ours, twin = block(*conv_bn(8, 8, 3, groups=8, act=nn.ReLU), *conv_bn(8, 16, 1, act=nn.ReLU),
                       *conv_bn(16, 16, 3, 2, groups=16, act=nn.ReLU, rng=1),
                       *conv_bn(16, 24, 1, act=nn.ReLU, rng=2))
    plan = check(ours, twin, [(1, 8, 15, 13), (3, 8, 15, 13)])
    blocks = [s for s in plan._steps if isinstance(s, BlockLast)]
    assert len(blocks) == 2 and all(b.expand is None and b.project is not None for b in blocks)
