"""The convolution planner: one place that decides how each pass of a convolution runs.

Every convolution call (forward, input gradient, weight gradient; ``conv_transpose`` is an
input gradient) asks :func:`choose` for a *strategy*, a name from the table below, given the
call's geometry (shapes, stride, padding, dilation, groups, dtype) and the thread count. The
engine (:mod:`convlayers.functional._engine`) then runs that strategy's kernels. The
thresholds the rules read are the fields of :data:`convlayers.config.engine`
(:class:`convlayers.config.EngineSettings`); ``config.engine_settings(force=name)`` makes every
pass use one strategy (a pass it cannot serve raises ValueError), which is how the tests run
each strategy against its twins.

============== =================================================================================
strategy       what it does, and what it serves
============== =================================================================================
winograd       Winograd F(2x2,3x3): input/output transforms and 16 register-tiled GEMMs per
               block of tiles in one parallel region. 3x3, stride 1, dilation 1; forward and
               both gradients. Chosen from ``winograd_min_channels`` channels per group,
               for forwards of at least ``winograd_min_tiles`` tiles whose channels'
               harmonic mean reaches ``winograd_harmonic_channels``; for gradients per
               ``winograd_backward`` (where the kernels run 32-byte vectors, as the forward).
               An input gradient alone (a stride-1 ``conv_transpose``) as the forward of the
               flipped weights (:func:`full_geometry`), where measured faster.
depthwise-flat Depthwise (``C_in/groups == 1``, any channel multiplier), stride 1 with the width
               kept (3x3 padding 1, ...): each tap one loop straight over the flat planes, row
               edges masked. Forward and both gradients.
depthwise-     Depthwise, small planes (``planar_bytes``): a zero-padded polyphase copy of each
planar         plane, then the same flat loops (any stride). Every pass.
depthwise-rows Depthwise, any geometry: loops along output rows, borders read by bounds. Every
               pass.
depthwise-     Depthwise without a channel multiplier on small maps (at most
channels-last  ``channels_last_pixels`` output pixels a plane, ``channels_last_backward_pixels``
               for the gradients, ``channels_last_channels`` planes or more in all; the
               forward's blocks within ``channels_last_block_bytes`` where planar serves): per
               block of 64 consecutive planes (images and channels flattened), a padded
               channels-last copy, register tiles of 8 pixels by a vector of planes over
               every tap, transposed back. Forward and both gradients (each output pixel's
               taps scattered a vector of planes at a time).
pointwise      1x1 kernels: register-tiled GEMMs over blocks of pixel columns (``W @ X`` per
               image and group, no copy at stride 1). Every pass. Few channels per group
               (depthwise ones, and ``pointwise_few_macs`` products a pixel at stride 1 along
               the width) sum rows in place instead: each output plane its bias plus a scaled
               row of each input plane of its group (the input gradient the same sums
               transposed), each weight's gradient one dot product.
implicit       Implicit GEMM: a zero-padded, stride-phase-split copy of a slab of input rows,
               whose windows the register-tiled GEMM reads as its rows (no im2col); each
               output row computes ``(kw-1)*dw // sw`` extra positions it drops. Every pass of
               any 2-D kernel, stride, dilation and groups; the input gradient is the forward
               of the output gradient by the flipped weights, one per stride phase (chosen at
               stride 1, and strided with few output channels where the phases' products
               are not thin: ``implicit_input_grad_channels``). Chosen
               over ``lowered`` when the dropped positions cost less than im2col's copy
               (``im2col_copy_macs``), and for the forward of a depthwise convolution
               with a channel multiplier and a kernel larger than 1x1: per input channel a
               GEMM of ``multiplier`` rows by ``kh*kw`` taps (on 10 random stride-1 layers
               0.27-1.09x the time of the depthwise kernels, 0.7x or less on half; on 48
               strided ones 0.84x the planar or lowered kernels' time, geo-mean, with
               the phase layout that reads only the stride phases some tap uses).
lowered        im2col and register-tiled GEMMs in one parallel region per pass, in units of
               (image, group, slab of output rows, block of channels) sized so one image keeps
               every thread busy. Every 1-D/2-D float pass, any kernel, stride, dilation and
               group count: the general fast path.
               Between implicit and lowered (and ``direct``) the engine measures once: the
               forward where the two costs are close, on its second call (its first while
               training), each gradient of a dense or grouped layer always, on its first
               (``measure_band``, ``measure_min_macs``;
               :mod:`convlayers.functional._measured`).
direct         A dense (one-group) float32 forward on the channels-last direct kernel of
               compiled plans: the input copied zero-padded to NHWC, register tiles of pixels
               by vectors of output channels summed over every tap, transposed back
               (:mod:`convlayers.functional._engine_direct`). No dropped positions, no
               copied windows. Never chosen by rule: measured against the implicit GEMM or
               im2col the planner chose (``direct_min_channels`` input channels or more).
               Forward, and a stride-1 input gradient (as Winograd's) where measured faster.
direct-planar  The same tiles on the NCHW input itself, for at most three vectors of output
               channels (two with AVX2): each (input channel, tap) pair one tap of a single
               channel, the weights packed in their own column order. It spares the
               channels-last copy of a large input with a small output (thin strided layers).
               Never chosen by rule: measured against the planner's choice where there is no
               padding and the input holds more values than the output. Forward only.
dot            Few output channels, many input channels: each output a dot product along the
               input channels of a channels-last copy (register tiles of 4 positions by 4
               output channels, summed across lanes once), only the taps inside the input
               (:mod:`convlayers.functional._engine_dot`). Any kernel, stride, dilation and
               groups. Never chosen by rule: measured against the implicit GEMM or im2col
               the planner chose (16 or more input channels a group, and at most 32 output
               channels a group or 16 output positions an image).
               Forward only.
numpy          The NumPy loop: one GEMM per kernel offset over the outputs whose tap lies inside
               the input (borders read by bounds, nothing padded). Any rank, any float dtype;
               the twin of every other strategy, and the fallback for non-finite weights.
============== =================================================================================

Before any of this, where ``config.engine.reduce_skipping_strides`` asks for it (off by
default), an axis of a depthwise convolution whose stride skips input (a one-tap kernel, or a
dilation that is a multiple of the stride, so every tap reads one stride phase) is rewritten
as a stride-1 convolution of that phase (:mod:`convlayers.functional._engine_phases`), and
the planner plans the rewritten call; :func:`plan` says so. Then a kernel with taps that read
only the zero padding (wide padding on small maps) is cropped to the taps that reach the input,
the padding before reduced to match (:mod:`convlayers.functional._engine_crop`, while
``config.engine.crop_padding_taps``), and the cropped call is planned. A dense or grouped 2-D call
whose implicit GEMM or im2col costs less with height and width swapped (a wide kernel on a
narrow map: the dropped positions are per output row) runs on transposed planes where that
saves more than the transposes cost (:func:`swaps_axes`); :func:`plan` says that too.

Values, not shapes, can also move a call off its planned strategy, so that outputs are inf or
NaN exactly where torch's are (on while ``config.engine.check_values``; the checks cost far
less than the convolution):

- Winograd's transforms add and subtract neighbouring pixels, so an inf becomes NaN where
  torch keeps inf, a NaN weight spreads to more outputs, and values near the dtype's maximum
  can overflow where a direct sum does not. Its kernels flag any inf or NaN they write (an
  inf or NaN, once made, always reaches an output), and such a call is computed again by the
  strategy the planner picks without Winograd.
- Strategies that multiply the zero padding by the weights (lowered, pointwise with padding,
  depthwise-planar, Winograd, and ``direct`` and Winograd on an input gradient, whose output
  gradient they pad) would turn an inf or NaN weight into NaN at outputs
  whose windows meet it only in the padding, where torch's direct convolution skips those taps.
  A forward with a non-finite weight and padding takes depthwise-rows (depthwise) or numpy.
- The implicit GEMM multiplies the input (and, for the input gradient, the output gradient's
  zero padding) at the positions it drops: an inf or NaN input takes ``lowered`` for the
  weight gradient, a non-finite weight ``lowered`` for the input gradient (as for the input
  gradients of ``direct`` and Winograd).
- The planar depthwise kernels run their dot products and scatters over whole flat planes, row
  ends and padding included: a non-finite weight sends their input gradient, a non-finite
  weight gradient their weight gradient, to the row kernels.

(torch itself multiplies the padding on some of its slower paths: grouped convolutions with few
channels per group, depthwise with a channel multiplier, 1x1 kernels with padding. There its
outputs are NaN where a tap with a non-finite weight lies in the padding; convlayers follows its
direct convolution's rule everywhere.)

Examples
--------
>>> print(plan((8, 64, 56, 56), (64, 64, 7, 7), padding=3))
conv2d (8, 64, 56, 56) float32 -> 64 channels, kernel 7x7, stride 1, padding 3, dilation 1, groups 1
  forward: implicit, lowered or direct, the fastest as measured on the second call
  input grad: implicit, lowered or direct, the fastest as measured on the first call
  weight grad: implicit, lowered or direct, the fastest as measured on the first call
  forward      implicit
  input grad   implicit
  weight grad  implicit
>>> plan((8, 64, 56, 56), (64, 64, 3, 3), padding=1).forward
'winograd'
>>> plan((1, 32, 112, 112), (32, 1, 3, 3), padding=1, groups=32).forward
'depthwise-planar'
>>> plan((4, 64, 56, 56), (128, 64, 1, 1), stride=2).weight_grad
'pointwise'
>>> from convlayers import config
>>> with config.engine_settings(reduce_skipping_strides=True):
...     print(plan((6, 143, 39, 39), (143, 1, 3, 1), stride=3, dilation=2, groups=143))
conv2d (6, 143, 39, 39) float32 -> 143 channels, kernel 3x1, stride 3, padding 0, dilation 2, groups 143
  reads one stride phase (39x13): stride 3x1, dilation 2x1
  forward: depthwise-channels-last or depthwise-planar, the fastest as measured on the second call
  forward      depthwise-channels-last
  input grad   depthwise-channels-last
  weight grad  depthwise-channels-last
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from convlayers import config

__all__ = ["FLIPPED_FORWARDS", "PASSES", "STRATEGIES", "Geometry", "Plan", "check_strategy_name",
           "choose", "full_geometry", "plan"]

#: The strategies, in the order the planner prefers them (see the module's table).
STRATEGIES: dict[str, str] = {
    "winograd": "Winograd F(2x2,3x3): 3x3, stride 1, dilation 1",
    "depthwise-flat": "depthwise, stride 1 with the width kept: flat loops over the planes",
    "depthwise-planar": "depthwise, small planes: a zero-padded polyphase copy, flat loops",
    "depthwise-rows": "depthwise, any geometry: loops along output rows, borders by bounds",
    "depthwise-channels-last": "depthwise on small maps: channels-last, taps over channels",
    "pointwise": "1x1 kernels: register-tiled GEMMs over blocks of pixel columns",
    "implicit": "implicit GEMM over a padded, phase-split input slab: no im2col",
    "lowered": "im2col and register-tiled GEMMs in units sized for the threads (col2im back)",
    "direct": "dense forward, channels-last: tiles of pixels x output channels over every tap",
    "direct-planar": "dense forward of few output channels on the NCHW input itself: tiles of "
                     "pixels x output channels over every (input channel, tap)",
    "dot": "forward, few output channels or positions: dot products along channels-last "
           "input channels",
    "numpy": "NumPy: one GEMM per kernel offset, borders by bounds (any rank and float dtype)",
}

#: The passes a strategy is chosen for: ``backward`` is both gradients of a convolution with
#: zero padding (a joint strategy computes them together), ``input_grad`` and ``weight_grad``
#: one gradient alone (``conv_transpose``, other padding modes), on an already padded input.
PASSES = ("forward", "backward", "input_grad", "weight_grad")

_DEPTHWISE = ("depthwise-flat", "depthwise-planar", "depthwise-rows")
_CHANNELS_LAST = "depthwise-channels-last"
#: Strategies that compute both gradients in one pass.
JOINT = frozenset(("winograd", *_DEPTHWISE, _CHANNELS_LAST))


def check_strategy_name(name: Any) -> str:
    """``name`` if it is a strategy, else a ValueError listing them."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown convolution strategy {name!r}; the strategies are "
                         f"{', '.join(STRATEGIES)}")
    return str(name)


@dataclass(frozen=True)
class Geometry:
    """A convolution as the planner sees it: 1-D problems are 2-D with ``h == kh == 1``.

    ``(h, w)`` is the input the pass reads (unpadded when the engine reads the borders by
    bounds, else already padded, with zero pads here), ``(pt, pb, pl, pr)`` its implicit zero
    padding, ``(ho, wo)`` the output. ``compiled`` says whether the compiled kernels can serve
    it at all (1-D or 2-D, float32 or float64, nothing empty).
    """

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pb: int
    pl: int
    pr: int
    groups: int
    ho: int
    wo: int
    itemsize: int
    compiled: bool
    spatial: int = 2

    def __post_init__(self) -> None:
        # the per-geometry caches hash it on every call: once, not 21 fields each time
        object.__setattr__(self, "_hash", hash(tuple(getattr(self, f) for f in _GEOMETRY_FIELDS)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]

    @property
    def c_in_g(self) -> int:
        return self.c_in // self.groups

    @property
    def c_out_g(self) -> int:
        return self.c_out // self.groups

    @property
    def macs(self) -> int:
        """Multiply-adds of the forward pass."""
        return self.n * self.c_out * self.ho * self.wo * self.c_in_g * self.kh * self.kw

    @property
    def padded(self) -> bool:
        return bool(self.pt or self.pb or self.pl or self.pr)


_GEOMETRY_FIELDS = tuple(f.name for f in fields(Geometry))


def geometry(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, ...],
             dilation: tuple[int, ...], groups: int, pairs: tuple[tuple[int, int], ...] | None,
             out_shape: tuple[int, ...], dtype: Any) -> Geometry:
    """The :class:`Geometry` of a call with input ``x_shape`` (``(N, C_in, *S)``), weight
    ``w_shape``, and zero padding ``pairs`` per spatial axis (None: none)."""
    dims = len(x_shape) - 2
    pairs = pairs if pairs is not None else ((0, 0),) * dims
    dt = np.dtype(dtype)
    compiled = (dims in (1, 2) and dt in (np.float32, np.float64)
                and 0 not in x_shape and 0 not in w_shape and 0 not in out_shape)
    if dims == 2:
        h, w = x_shape[2:]
        kh, kw = w_shape[2:]
        (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (ho, wo) = stride, dilation, pairs, out_shape
    elif dims == 1:
        h, kh, sh, dh, pt, pb, ho = 1, 1, 1, 1, 0, 0, 1
        w, kw, sw, dw, (pl, pr), wo = x_shape[2], w_shape[2], stride[0], dilation[0], pairs[0], \
            out_shape[0]
    else:  # 3-D and up: only the NumPy loop; the 2-D fields describe the last two axes
        lead = math.prod(x_shape[2:-2])
        h, w = lead * x_shape[-2], x_shape[-1]
        kh, kw = math.prod(w_shape[2:-1]), w_shape[-1]
        sh, sw, dh, dw = stride[-2], stride[-1], dilation[-2], dilation[-1]
        (pt, pb), (pl, pr) = pairs[-2], pairs[-1]
        ho, wo = math.prod(out_shape[:-1]), out_shape[-1]
    return Geometry(x_shape[0], x_shape[1], h, w, w_shape[0], kh, kw, sh, sw, dh, dw,
                    pt, pb, pl, pr, groups, ho, wo, dt.itemsize, compiled, dims)


# ----------------------------------------------------------------------------- the rules

def _winograd_shape(g: Geometry) -> bool:
    return (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1) and g.spatial == 2


def _wide_default(value: Any, wide: Any, narrow: Any) -> Any:
    """``value``, or when it is None the default for the machine: ``wide`` where the kernels
    run 64-byte vectors (AVX-512), else ``narrow``."""
    if value is not None:
        return value
    from convlayers.kernels.simd import VECTOR_BYTES

    return wide if VECTOR_BYTES == 64 else narrow


def winograd_channels_pay(c_in_g: int, c_out_g: int, ho: int, wo: int) -> bool:
    """Whether a 3x3 stride-1 forward has the channels Winograd needs: ``winograd_min_channels``
    input channels per group, and a harmonic mean of the input and output channels per group of
    ``winograd_harmonic_channels`` (``winograd_small_map_channels`` on small maps)."""
    e = config.engine
    if c_in_g < e.winograd_min_channels:
        return False
    need = 64 if e.winograd_harmonic_channels is None else e.winograd_harmonic_channels
    if min(ho, wo) < e.winograd_small_map:
        need = max(need, e.winograd_small_map_channels) if need else 0
    return 2 * c_in_g * c_out_g >= need * (c_in_g + c_out_g)


def winograd_min_tiles() -> int:
    """``config.engine.winograd_min_tiles``, 768 when it is None."""
    tiles = config.engine.winograd_min_tiles
    return 768 if tiles is None else int(tiles)


def _winograd_backward(g: Geometry) -> bool:
    """``config.engine.winograd_backward``, or when it is None the machine's default: never
    with 64-byte vectors, else where the forward takes Winograd."""
    if config.engine.winograd_backward is not None:
        return bool(config.engine.winograd_backward)
    return bool(_wide_default(None, False, True)) and _winograd_forward(g)


def _winograd_forward(g: Geometry) -> bool:
    """Winograd for the forward: 3x3 stride 1, the channels of :func:`winograd_channels_pay`,
    and ``winograd_min_tiles`` 2x2 output tiles in the call."""
    if not (_winograd_shape(g) and winograd_channels_pay(g.c_in_g, g.c_out_g, g.ho, g.wo)):
        return False
    tiles = g.n * -(-g.ho // 2) * -(-g.wo // 2)
    return bool(tiles >= winograd_min_tiles())


def _flat_shape(g: Geometry) -> bool:
    return g.sh == g.sw == 1 and g.wo == g.w


def planar_fits(g: Geometry) -> bool:
    """Whether the planar depthwise kernels' scratch (``sh*sw`` phase planes) fits
    ``planar_bytes``."""
    from convlayers.kernels.depthwise import planar_geometry

    block = planar_geometry((g.ho, g.wo), (g.kh, g.kw), (g.sh, g.sw), (g.dh, g.dw))[3]
    return g.sh * g.sw * block * g.itemsize <= config.engine.planar_bytes


def planar_waste(g: Geometry) -> float:
    """Flat positions the planar kernels compute per output pixel: their loops run over the
    output plane laid out with the kernel's reach added to each row, rounded up to 64."""
    from convlayers.kernels.depthwise import planar_geometry

    length = planar_geometry((g.ho, g.wo), (g.kh, g.kw), (g.sh, g.sw), (g.dh, g.dw))[2]
    return length / max(1, g.ho * g.wo)


def _depthwise(g: Geometry) -> str:
    """Planar while its scratch fits (its four-taps-per-pass loops ran 1.4-8x faster than the
    row kernels, and faster than the flat ones, whose masks cost a load per tap), unless the
    output plane is tiny (64 pixels or fewer) and the flat loops mostly compute positions they
    drop (a 4x6 output plane runs 64 positions; there the row kernels were 1.4-1.6x faster);
    then flat, then rows.

    On larger planes the planar kernels serve however many positions they drop: the row
    kernels' inner loop along an output row runs scalar on rows shorter than the compiled
    vector body (several vectors), so narrow rows cost them a multiply-add per pixel and tap.
    On 38 depthwise layers I picked, of 100-27000 output pixels in rows of 1-196 columns
    (dilations up to 16, strides 1-3, waste up to 49 positions per pixel kept), the planar
    forward took 0.08-0.99x the row kernels' time (median of three; under 0.75x on all but
    four planes of at most 28x8 or 10x10), the gradients 0.11-1.02x on 10 of them:
    5x5x187x30 6x6 dilation 3, 172x15 outputs, 0.22x (2.6x torch's time -> 0.5x)."""
    if planar_fits(g) and (g.ho * g.wo > 64
                           or planar_waste(g) <= _wide_default(config.engine.planar_max_waste,
                                                               2, 8)):
        return "depthwise-planar"
    if _flat_shape(g) and g.ho * g.wo <= config.engine.flat_pixels:
        return "depthwise-flat"
    return "depthwise-rows"


def _implicit_pays(g: Geometry, pass_: str) -> bool:
    """Whether the implicit GEMM costs less than im2col for ``pass_`` of ``g``: its dropped
    positions (``(kw-1)*dw // sw`` per output row, each costing a product's row of
    multiply-adds) against the copy of ``C_in/g*kh*kw`` values per output position (each
    ``im2col_copy_macs``, or ``im2col_copy_macs_few_images`` for one or two images). For the
    input gradient (stride 1) the kernel runs on the output gradient and its output is the
    input: rows ``h`` of ``w + (kw-1)*dw`` positions, and ``C_in/g`` rows of the product, which
    must not be thin beside lowered's on small maps (``implicit_input_grad_ratio`` and
    ``implicit_input_grad_positions`` of ``config.engine``). For the weight gradient at stride
    1 of as many output channels as a wide tile's columns or more, the gradient must be small beside
    the positions, and at any stride small (:func:`_large_weight_grad`; fewer output channels
    take other kernels, see ``_engine_implicit.channels_last_pays``). A forward of one image of
    at most ``lowered_batch1_positions`` output positions takes im2col."""
    if pass_ == "input_grad":
        alpha = _copy_price(g)
        if (g.sh, g.sw) != (1, 1):
            return _phased_input_grad_pays(g)
        e = config.engine
        thin = (g.c_out_g > e.implicit_input_grad_ratio * g.c_in_g
                and g.ho * g.wo < e.implicit_input_grad_positions)
        return not thin and (g.c_out_g * g.h * (g.w + (g.kw - 1) * g.dw)
                             <= (g.c_out_g + alpha) * g.ho * g.wo)
    if pass_ == "weight_grad" and _large_weight_grad(g):
        return False
    if (pass_ == "forward" and g.n == 1
            and g.ho * g.wo <= config.engine.lowered_batch1_positions):
        return False
    implicit, lowered = dense_position_costs(g)
    return implicit <= lowered


def _large_weight_grad(g: Geometry) -> bool:
    """Whether the implicit weight gradient's per-thread copy of the gradient is too large for
    its products: at stride 1, for as many output channels as a wide tile's columns or more,
    more than ``implicit_weight_grad_elements`` elements per output position of one image;
    at any stride, more than ``implicit_weight_grad_bytes``."""
    e = config.engine
    elements = g.c_in_g * g.kh * g.kw * g.c_out_g
    if elements * g.groups * g.itemsize > e.implicit_weight_grad_bytes:
        return True
    return ((g.sh, g.sw) == (1, 1) and g.c_out_g >= _tile_columns(g)
            and elements > e.implicit_weight_grad_elements * g.ho * g.wo)


def dense_position_costs(g: Geometry) -> tuple[float, float]:
    """``(implicit, lowered)``: the planner's price of one output position of a dense forward
    (or weight gradient), per row of the product, in multiply-adds: the implicit GEMM's
    (:func:`_implicit_costs`, the cheaper of its two slab layouts), im2col's ``C_out/g`` plus
    its copy (:func:`_copy_price`). The one cost model behind :func:`_implicit_pays`,
    :func:`swaps_axes` and the measured choices (:mod:`convlayers.functional._measured`)."""
    return min(_implicit_costs(g)), float(g.c_out_g + _copy_price(g))


def _implicit_costs(g: Geometry) -> tuple[float, float]:
    """``(phase planes, column planes)``: the implicit GEMM's price of one output position per
    row of the product with each slab layout (:mod:`convlayers.kernels.implicit`). Phase
    planes: ``C_out/g`` times the ``wq / wo`` positions computed per one kept (``(kw-1)*dw //
    sw`` dropped a row). Column planes (a plane per kernel column, rows ``wo`` long): nothing
    dropped, but ``kw`` copies of each input pixel where im2col makes ``kh*kw``: ``C_out/g``
    plus a ``kh``-th of im2col's copy (1x48x21x21 -> 86 7x7, padding 3: 0.93x the time of
    phase planes on two threads, 0.84-0.91x on one, which computed 27 positions a row for
    21; 1x142x15x15 -> 371 6x6, dilation 3: 1.91x torch's time -> 1.15x, lowered's 1.14x)."""
    wq = g.wo + (g.kw - 1) * g.dw // g.sw
    return g.c_out_g * wq / g.wo, g.c_out_g + _copy_price(g) / g.kh


def column_planes(g: Geometry) -> bool:
    """Whether the implicit forward of ``g`` runs on column planes: a kernel wider than one
    whose dropped positions cost more than the copies (:func:`_implicit_costs`)."""
    phase, columns = _implicit_costs(g)
    return g.kw > 1 and columns < phase


def _tile_columns(g: Geometry) -> int:
    """Columns of a wide register tile of the GEMM (its vectors' elements)."""
    from convlayers.kernels.simd import TILE_VECTORS, VECTOR_BYTES

    return TILE_VECTORS * VECTOR_BYTES // g.itemsize


def _copy_price(g: Geometry) -> int:
    """Multiply-adds one im2col copy (or col2im add) costs as much as: ``im2col_copy_macs``,
    or ``im2col_copy_macs_few_images`` for one or two images; their ``_strided`` twins when a
    stride is above 1."""
    e = config.engine
    if g.sh > 1 or g.sw > 1:
        return e.im2col_copy_macs_strided_few_images if g.n <= 2 else e.im2col_copy_macs_strided
    return e.im2col_copy_macs_few_images if g.n <= 2 else e.im2col_copy_macs


def work(g: Geometry, strategies: tuple[str, ...]) -> int:
    """The work of running ``strategies`` (one per pass) on ``g``, in multiply-adds: each pass
    its product's, a ``lowered`` pass its column copies too (``C_in*kh*kw`` per output
    position and image, at :func:`_copy_price` each), any other its reading of the input (the
    implicit GEMM's slabs copy each pixel once; depthwise and 1x1 kernels read it). Calls
    under ``config.engine.serial_macs`` of it run on one thread. The copies matter where the
    product is thin: a transposed convolution 8->31 4x4 s2 on 2x8x15x15 (1.8M multiply-adds,
    3.6M of col2im adds) ran on one thread 1.7-2.6x as long as on two."""
    return _work(g, strategies, config.engine_version())


@functools.lru_cache(maxsize=1024)
def _work(g: Geometry, strategies: tuple[str, ...], version: int) -> int:
    """:func:`work`, remembered per engine settings (each layer asks on every call)."""
    copies = g.n * g.c_in * g.kh * g.kw * g.ho * g.wo * _copy_price(g)
    # the implicit GEMM's slabs copy each input pixel about once (11->4 2x2 s2 on 5x11x39x166:
    # 1.4M multiply-adds, a 1.4 MB input, ran 2.4x torch's time on one thread), and the other
    # kernels read it at least once (depthwise and 1x1 layers: on 115 random layers this
    # moved to the threads, 0.38-1.13x the time, geo-mean 0.67)
    reads = g.n * g.c_in * g.h * g.w * _copy_price(g)
    return sum(g.macs + (copies if s == "lowered" else reads) for s in strategies)


def _phased_input_grad_pays(g: Geometry) -> bool:
    """Whether the implicit GEMM serves a strided input gradient (one forward per stride
    phase, each a product with the phase's taps and positions): few output channels (at most
    ``config.engine.implicit_input_grad_channels``), where lowered's col2im adds outweigh its
    thin product, and phases whose products are not thin themselves (maps of 16 output
    positions or more): a dilation that is a multiple of the stride puts every tap in one
    phase (kernels of 5 taps or more: 5x1 and 1x7 stride 2 dilation 2 took 0.76x and 0.85x
    lowered's time); or stride 2 on maps of 25 output positions or more,
    where the largest phase takes 12 taps or more (a 5x7 or 7x7 kernel), or 6 or more for at
    most 7 output channels (an inner dimension of ``C_out/g`` times the taps). On 91 random
    stride-2/3 gradients of at most 16 output channels, implicit's time against lowered's:
    0.46-0.94x on the 20 stride-2 layers this admits (4x5-7x7 kernels; 3-16 output
    channels); 1.3-3.1x on 5x5 kernels of 8-13 channels and on 16-output-position maps; 1.0-10x
    on 3x3, 4x4 and 1xk kernels. Also, ungrouped, on maps of 400 output positions or more at
    any stride whose largest phase takes 9 taps or more: on 65 more random layers, the seven
    lowered had served ran 0.41-0.72x its time (6x6 stride 2 of 6-16 output channels, 7x7
    stride 3 on 7x9x113x113); phases of 4 taps ran 0.7-1.45x, mixed, and stay lowered.
    Depthwise gradients keep their own kernels."""
    if (g.c_out_g > config.engine.implicit_input_grad_channels or g.c_in_g == 1
            or g.ho * g.wo < 16):
        return False
    if g.dh % g.sh == 0 and g.dw % g.sw == 0:
        return g.kh * g.kw >= 5
    if (g.groups == 1 and g.ho * g.wo >= 400
            and len(_phase_taps(g.kh, g.dh, g.sh)) * len(_phase_taps(g.kw, g.dw, g.sw)) >= 9):
        return True  # large maps: a phase of 9 taps or more is a product thick enough
    if (g.sh, g.sw) != (2, 2) or g.ho * g.wo < 25:
        return False
    # the most taps one phase takes: its product's inner dimension is C_out/g times as many
    taps = len(_phase_taps(g.kh, g.dh, 2)) * len(_phase_taps(g.kw, g.dw, 2))
    return taps >= 12 or (taps >= 6 and g.c_out_g <= 7)


def _phase_taps(k: int, d: int, s: int) -> list[int]:
    """The taps of an axis (kernel ``k``, dilation ``d``) in its largest stride-``s`` phase."""
    return max(([a for a in range(k) if (a * d) % s == r] for r in range(s)), key=len)


def transposed(g: Geometry) -> Geometry:
    """``g`` with its two spatial axes swapped (the input, kernel and output planes
    transposed)."""
    return dataclasses.replace(g, h=g.w, w=g.h, kh=g.kw, kw=g.kh, sh=g.sw, sw=g.sh, dh=g.dw,
                               dw=g.dh, pt=g.pl, pb=g.pr, pl=g.pt, pr=g.pb, ho=g.wo, wo=g.ho)


def swaps_axes(g: Geometry) -> bool:
    """Whether a dense or grouped 2-D convolution runs with its spatial axes swapped
    (:func:`transposed`): its forward's implicit GEMM or im2col costs under
    ``config.engine.swap_axes_percent`` (62%) as much so in the planner's model, by more
    multiply-adds than the transposes of the input and output at
    ``transpose_copy_macs`` an element. Every pass of the call follows the forward's choice
    (the gradients' products drop the same positions). Not while a strategy is forced."""
    return _swaps_axes(g, config.engine_version())


@functools.lru_cache(maxsize=1024)
def _swaps_axes(g: Geometry, version: int) -> bool:
    e = config.engine
    if (not g.compiled or g.spatial != 2 or e.force is not None or g.c_in_g == 1
            or (g.kh, g.kw) == (1, 1) or _winograd_forward(g)):
        return False
    t = transposed(g)
    now, then = min(dense_position_costs(g)), min(dense_position_costs(t))
    saved = (now - then) * g.n * g.groups * g.ho * g.wo * g.c_in_g * g.kh * g.kw
    copies = (g.n * g.c_in * g.h * g.w + g.n * g.c_out * g.ho * g.wo) * e.transpose_copy_macs
    return then * 100 < e.swap_axes_percent * now and saved > copies


def _dense(g: Geometry, pass_: str) -> str:
    """``pointwise`` for 1x1 kernels, else ``implicit`` or ``lowered`` (:func:`_implicit_pays`)."""
    if g.kh == g.kw == 1:
        return "pointwise"
    return "implicit" if _implicit_pays(g, pass_) else "lowered"


def channels_last_fits(channels: int, in_hw: tuple[int, int], pad: tuple[int, int],
                       out_hw: tuple[int, int], kernel: tuple[int, int],
                       stride: tuple[int, int], dilation: tuple[int, int], itemsize: int,
                       backward: bool = False, images: int = 1) -> bool:
    """Whether a depthwise forward (no multiplier) of ``images`` times ``channels`` output
    planes ``out_hw`` (of input maps ``in_hw`` padded ``pad`` rows above and columns left)
    runs channels-last (or its gradients, when ``backward``): planes of at
    most ``channels_last_pixels`` (``channels_last_backward_pixels``) pixels,
    ``channels_last_channels`` or more planes in all, and a block's padded input within
    ``planar_bytes`` (a large stride reaches far for few outputs)."""
    from convlayers.kernels.depthwise_nhwc import channels_last_shapes

    e = config.engine
    padded = channels_last_shapes(1, channels, in_hw, pad, out_hw, kernel, stride, dilation)[0]
    pixels = e.channels_last_backward_pixels if backward else e.channels_last_pixels
    return (images * channels >= e.channels_last_channels
            and out_hw[0] * out_hw[1] <= pixels
            and math.prod(padded) * itemsize <= e.planar_bytes)


def multiplier_forward(g: Geometry) -> bool:
    """Whether ``g`` is a depthwise convolution with a channel multiplier and a kernel larger
    than 1x1, whose forward the planner gives the implicit GEMM (a 1x1 one scales channels on
    the 1x1 kernels)."""
    return g.c_in_g == 1 and g.c_out != g.c_in and g.kh * g.kw > 1


def channels_last_serves(g: Geometry) -> bool:
    """Whether the channels-last depthwise forward can run ``g``: a depthwise layer without a
    multiplier within :func:`channels_last_fits` (whether it should is
    :func:`_channels_last_forward`'s rule, or a measurement's)."""
    if g.c_in_g != 1 or g.c_out != g.c_in:
        return False
    shape = ((g.h, g.w), (g.pt, g.pl), (g.ho, g.wo), (g.kh, g.kw), (g.sh, g.sw), (g.dh, g.dw))
    return channels_last_fits(g.c_in, *shape, g.itemsize, images=g.n)


def _channels_last_forward(g: Geometry) -> bool:
    """Whether a depthwise forward without a multiplier runs channels-last:
    :func:`channels_last_fits`, enough planes (:func:`_many_planes`) and its block's padded
    input within ``channels_last_block_bytes``, unless the planar kernels cannot serve (then
    only the row kernels could, 2.5-14x slower on the layers measured)."""
    from convlayers.kernels.depthwise_nhwc import channels_last_shapes

    if not channels_last_serves(g):
        return False
    shape = ((g.h, g.w), (g.pt, g.pl), (g.ho, g.wo), (g.kh, g.kw), (g.sh, g.sw), (g.dh, g.dw))
    padded = channels_last_shapes(1, g.c_in, *shape)[0]
    return ((_many_planes(g)
             and math.prod(padded) * g.itemsize <= config.engine.channels_last_block_bytes)
            or _depthwise(g) != "depthwise-planar")


def _many_planes(g: Geometry, backward: bool = False) -> bool:
    """Whether a depthwise layer has planes enough (channels times images) for the eager
    channels-last kernels (``backward``: its gradients): ``channels_last_planes``, or a
    quarter as many on output planes of at most 64 pixels; on tall outputs (more than 64
    pixels) of at most 4 columns, half as many, or any number where the planar rows compute
    more than twice the positions they keep."""
    planes = g.n * g.c_in
    # AVX2's forward needs more planes (see channels_last_planes); its backward does not
    # (planar's gradients took 1.1-1.4x channels-last's on 444-495 planes)
    least = _wide_default(config.engine.channels_last_planes, 384, 384 if backward else 512)
    # tall output rows of 4 pixels or fewer: the planar loops compute whole padded rows (50
    # channels 7x4 dilation 2 on 5x50x53x8, 41x2 outputs: 3.1x channels-last's time), and
    # their copies run a row at a time (AVX2, 403 planes of 36x3 outputs from 107x8 maps: 1.9x;
    # 100 planes of 41x2: 0.65x). On tiny planes channels-last loses (AVX2: 1.2-2.6x planar's
    # time on 8 layers of 1-32 pixels)
    tall = g.wo <= 4 and g.ho * g.wo > 64
    return (planes >= least or (planes >= least // 4 and g.ho * g.wo <= 64)
            or (tall and (planes >= least // 2 or planar_waste(g) > 2)))


def few_positions(g: Geometry) -> bool:
    """Whether the lowered gradients of ``g`` make one product over all its images, gathered
    and scattered across them (:func:`convlayers.kernels.conv.lowered_input_grad_merged`):
    two images or more, of at most ``merged_gradient_positions`` output positions each, with
    at most ``merged_gradient_groups`` groups or depthwise."""
    e = config.engine
    return (g.n >= 2 and g.ho * g.wo <= e.merged_gradient_positions
            and (g.groups <= e.merged_gradient_groups or g.c_in_g == 1))


def _natural(g: Geometry, pass_: str, threads: int, winograd: bool = True) -> tuple[str, str]:
    """The planner's own choice: ``(strategy, strategy)`` for forward and the one-gradient
    passes, ``(input_grad, weight_grad)`` for ``backward``."""
    if not g.compiled:
        return "numpy", "numpy"
    if g.c_in_g == 1 and g.kh == g.kw == 1:
        # a depthwise 1x1 (any multiplier) scales channels: the 1x1 kernels' one-row products
        # ran 0.45-0.65x the depthwise kernels' time on 9 layers (none slower than 1.1x)
        return "pointwise", "pointwise"
    e = config.engine
    if pass_ == "forward":
        if g.c_in_g == 1 and g.c_out == g.c_in and _channels_last_forward(g):
            s = _CHANNELS_LAST
        elif multiplier_forward(g):
            # a channel multiplier: each group's taps are a product of `multiplier` rows, which
            # the implicit GEMM runs at any stride (on 48 random strided layers 0.84x the
            # time of the planar or lowered kernels the rule here picked before, geo-mean;
            # 0.54x on 7x18x11x11 to 72 channels, 6x7 stride 3; planar's best 0.76x of it)
            s = "implicit"
        elif g.c_in_g == 1:
            s = _depthwise(g)
        elif winograd and _winograd_forward(g):
            s = "winograd"
        else:
            s = _dense(g, "forward")
        return s, s
    if pass_ == "backward":
        if g.c_in_g == 1 and g.c_out == g.c_in and channels_last_fits(
                g.c_in, (g.h, g.w), (g.pt, g.pl), (g.ho, g.wo), (g.kh, g.kw), (g.sh, g.sw),
                (g.dh, g.dw), g.itemsize, backward=True, images=g.n) and (
                    _many_planes(g, backward=True) or _depthwise(g) != "depthwise-planar"):
            return _CHANNELS_LAST, _CHANNELS_LAST
        if (winograd and _winograd_shape(g) and g.c_in_g >= e.winograd_min_channels
                and g.c_out_g >= e.winograd_min_channels and _winograd_backward(g)):
            return "winograd", "winograd"
        if g.c_in_g == 1 and g.c_out != g.c_in and few_positions(g):
            # a channel multiplier on maps of a few windows: the lowered gradients make one
            # product over all the images (49->147 7x7 stride 3 on 15x49x19x19, one window:
            # forward+backward 2.07x torch's time on the planar kernels, 0.62x lowered)
            return "lowered", "lowered"
        if g.c_in_g == 1:
            s = _depthwise(g)
            if s == "depthwise-rows" and g.c_out != g.c_in and planar_fits(g):
                s = "depthwise-planar"  # the row kernels' input gradient takes no multiplier
            if s != "depthwise-rows" or g.c_out == g.c_in:
                return s, s
            return _dense(g, "input_grad"), "depthwise-rows"  # a multiplier on large planes
        return _dense(g, "input_grad"), _dense(g, "weight_grad")
    # one gradient alone, on the padded input
    if g.c_in_g == 1:
        if planar_fits(g):
            return "depthwise-planar", "depthwise-planar"
        if pass_ == "weight_grad" or g.c_out == g.groups:
            return "depthwise-rows", "depthwise-rows"
    s = _dense(g, pass_)
    return s, s


@functools.lru_cache(maxsize=1024)
def full_geometry(g: Geometry) -> Geometry:
    """The forward geometry whose output is the input gradient of the stride-1 ``g``: the output
    gradient ``(N, C_out, Ho, Wo)`` correlated with the flipped, transposed weights, padded by
    ``(k-1)*d - p`` before each axis (negative: rows or columns dropped)."""
    return dataclasses.replace(
        g, c_in=g.c_out, h=g.ho, w=g.wo, c_out=g.c_in, pt=(g.kh - 1) * g.dh - g.pt,
        pb=(g.kh - 1) * g.dh - g.pb, pl=(g.kw - 1) * g.dw - g.pl, pr=(g.kw - 1) * g.dw - g.pr,
        ho=g.h, wo=g.w)


#: Forward strategies that also run a stride-1 input gradient alone, as the forward of
#: :func:`full_geometry` (the flipped, transposed weights over the output gradient): a
#: transposed convolution of stride 1 is such a forward, and with them the slow ones of the
#: sweeps ran 0.85-1.10x torch's time (the measured choice) where the gradient kernels took
#: 1.17-1.51x.
FLIPPED_FORWARDS = ("winograd", "direct")


def _flipped_forward_fits(strategy: str, g: Geometry) -> str | None:
    """Why ``strategy`` (of :data:`FLIPPED_FORWARDS`) cannot run the input gradient of ``g``
    alone as a forward (None: it can)."""
    if (g.sh, g.sw) != (1, 1):
        return f"{strategy} computes an input gradient at stride 1 only"
    full = full_geometry(g)
    if min(full.pt, full.pb, full.pl, full.pr) < 0:
        return f"{strategy} computes no input gradient of padding wider than the kernel"
    return cannot_serve(strategy, full, "forward")


def cannot_serve(strategy: str, g: Geometry, pass_: str) -> str | None:
    """Why ``strategy`` cannot run ``pass_`` of ``g`` (None: it can)."""
    if strategy == "numpy":
        return None
    if not g.compiled:
        return "only the numpy strategy serves 3-D, non-float32/float64 or empty convolutions"
    if strategy == "lowered":
        return None
    alone = pass_ in ("input_grad", "weight_grad")
    if strategy == "winograd":
        if not _winograd_shape(g):
            return "winograd needs a 3x3 kernel, stride 1 and dilation 1"
        if pass_ == "input_grad":
            return _flipped_forward_fits(strategy, g)
        if alone:
            return "winograd computes the weight gradient together with the input gradient only"
        return None
    if strategy in _DEPTHWISE:
        if g.c_in_g != 1:
            return f"{strategy} needs a depthwise convolution (C_in/groups == 1)"
        if strategy == "depthwise-flat":
            if not _flat_shape(g):
                return "depthwise-flat needs stride 1 and an output as wide as the input"
            return "depthwise-flat computes the gradients together only" if alone else None
        return None
    if strategy == "pointwise":
        return None if g.kh == g.kw == 1 else "pointwise needs a 1x1 kernel"
    if strategy == _CHANNELS_LAST:
        if g.c_in_g != 1 or g.c_out != g.c_in:
            return f"{strategy} needs a depthwise convolution without a channel multiplier"
        return f"{strategy} computes the gradients together only" if alone else None
    if strategy == "implicit":
        return None
    if strategy == "direct":
        # the input gradient at stride 1 as the forward of the flipped weights, the weight
        # gradient by its own kernel (convlayers.kernels.direct_grad); both for ``backward``
        from convlayers.functional._engine_direct import direct_fits, direct_weight_grad_fits

        if pass_ == "forward":
            return direct_fits(g)
        if pass_ in ("input_grad", "backward"):
            why = _flipped_forward_fits(strategy, g)
            if why is not None or pass_ == "input_grad":
                return why
        return direct_weight_grad_fits(g)
    if strategy == "direct-planar":
        if pass_ != "forward":
            return "direct-planar computes the forward only"
        from convlayers.functional._engine_direct import direct_planar_fits

        return direct_planar_fits(g)
    if strategy == "dot":
        if pass_ != "forward":
            return "dot computes the forward only"
        from convlayers.functional._engine_dot import dot_fits

        return dot_fits(g)
    raise AssertionError(strategy)


def choose(g: Geometry, pass_: str, threads: int, winograd: bool = True) -> tuple[str, str]:
    """The strategy of ``pass_`` for ``g`` on ``threads`` threads, ``(strategy, strategy)``, or
    ``(input_grad, weight_grad)`` for ``backward``; a forced strategy
    (``config.engine.force``) when it serves, else a ValueError. ``winograd=False`` is the
    value checks' fallback: the same choice with Winograd ruled out."""
    forced = config.engine.force
    if forced is not None and (winograd or forced != "winograd"):
        why = cannot_serve(forced, g, pass_)
        if why is not None:
            raise ValueError(f"the forced convolution strategy {forced!r} cannot serve the "
                             f"{pass_.replace('_', ' ')} pass of {describe(g)}: {why}")
        return forced, forced
    return _natural(g, pass_, threads, winograd)


def describe(g: Geometry) -> str:
    """A one-line description of a geometry, for messages."""
    return (f"a {g.kh}x{g.kw} convolution {g.c_in}->{g.c_out} (groups {g.groups}, stride "
            f"{g.sh}x{g.sw}, dilation {g.dh}x{g.dw}) on {g.n}x{g.c_in}x{g.h}x{g.w}")


# ----------------------------------------------------------------------------- value checks

def magnitude(a: np.ndarray) -> float:
    """The largest ``|value|`` of ``a`` as a Python float: ``inf`` when any is inf or NaN."""
    if a.size == 0:
        return 0.0
    hi, lo = float(a.max()), float(a.min())
    if not (math.isfinite(hi) and math.isfinite(lo)):
        return math.inf
    return max(hi, -lo)


# ----------------------------------------------------------------------------- the public plan

@dataclass(frozen=True)
class Plan:
    """The strategy of each pass of one convolution (see the module's table).

    ``threads`` is how many threads the forward runs on (1 for small layers).
    """

    spec: str
    forward: str
    input_grad: str
    weight_grad: str
    threads: int

    def __str__(self) -> str:
        return (f"{self.spec}\n  forward      {self.forward}\n  input grad   {self.input_grad}"
                f"\n  weight grad  {self.weight_grad}")


def plan(input_shape: Any, weight_shape: Any, stride: Any = 1, padding: Any = 0,
         dilation: Any = 1, groups: int = 1, dtype: Any = "float32") -> Plan:
    """Which strategy each pass of ``convNd(input, weight, ...)`` takes, with zero padding.

    Arguments are those of :func:`convlayers.functional.conv2d` (shapes instead of arrays;
    ``input_shape`` batched or not). Values can still move a call off the plan (non-finite
    inputs or weights; see the module's notes).

    >>> plan((8, 64, 56, 56), (64, 64, 3, 3), padding=1).forward
    'winograd'
    >>> p = plan((1, 64, 28, 28), (32, 64, 7, 7), stride=2, padding=3)
    >>> p.forward, p.input_grad, p.weight_grad
    ('implicit', 'lowered', 'implicit')
    >>> plan((2, 16, 9, 9), (8, 16, 5, 5), dtype="float16").forward
    'numpy'
    """
    from convlayers.functional._compiled import numba_threads
    from convlayers.functional._engine_crop import planned_crop
    from convlayers.functional._engine_phases import planned_reduction
    from convlayers.functional._measured import SWAPPED, candidates, remembered_choice
    from convlayers.functional.conv import conv_spec

    dt = np.dtype(dtype)
    w = np.broadcast_to(np.zeros((), dt), tuple(int(s) for s in weight_shape))
    x = np.broadcast_to(np.zeros((), dt), tuple(int(s) for s in input_shape))
    if x.ndim == w.ndim - 1:
        x = x[None]
    spec = conv_spec(x, w, None, stride, padding, dilation, groups, "zeros")
    reduced = planned_reduction(x.shape, w.shape, spec.stride, spec.dilation, spec.pairs,
                                spec.out_shape)
    x_shape, w_shape = x.shape, w.shape
    stride_, dilation_, pairs_ = spec.stride, spec.dilation, spec.pairs
    if reduced is not None:  # what runs: the stride phase its taps read (see _engine_phases)
        x_shape = (*x.shape[:2], *reduced.lengths)
        stride_, dilation_, pairs_ = reduced.stride, reduced.dilation, reduced.pairs
    cropped = planned_crop(x_shape, w_shape, stride_, dilation_, pairs_, spec.out_shape)
    if cropped is not None:  # what runs: the taps that reach the input (see _engine_crop)
        w_shape, pairs_ = (*w.shape[:2], *cropped.kernel()), cropped.pairs
    g = geometry(x_shape, w_shape, stride_, dilation_, spec.groups, pairs_, spec.out_shape, dt)
    threads = numba_threads() if g.compiled else 1
    swapped, as_given = swaps_axes(g), g
    if swapped:  # what runs: the transposed planes (see swaps_axes)
        g = transposed(g)
    planned = {"forward": choose(g, "forward", threads)[0]}
    planned["input_grad"], planned["weight_grad"] = choose(g, "backward", threads)
    # where the engine measures strategies once: what it measured
    measured = {pass_: candidates(g, s, pass_) for pass_, s in planned.items()}
    measured = {pass_: names for pass_, names in measured.items() if names}
    chosen = {pass_: remembered_choice(g, pass_) or s if pass_ in measured else s
              for pass_, s in planned.items()}
    fwd = chosen["forward"]
    pads = [p[0] if p[0] == p[1] else p for p in spec.pairs]
    text = (f"conv{len(spec.stride)}d {x.shape} {dt.name} -> {w.shape[0]} channels, kernel "
            f"{'x'.join(map(str, w.shape[2:]))}, stride {_one(spec.stride)}, padding "
            f"{_one(pads)}, dilation {_one(spec.dilation)}, groups {spec.groups}")
    if reduced is not None:
        text += (f"\n  reads one stride phase ({'x'.join(map(str, reduced.lengths))}): "
                 f"stride {_one(reduced.stride)}, dilation {_one(reduced.dilation)}")
    if cropped is not None:
        kept = ", ".join(f"{a}-{b - 1}" for a, b in zip(cropped.starts, cropped.stops,
                                                       strict=True))
        text += (f"\n  taps {kept} reach the input, the rest only the padding: runs with the "
                 f"kernel cropped to {'x'.join(map(str, cropped.kernel()))}")
    if swapped:
        text += "\n  runs with height and width swapped: its products drop fewer positions"
        others = [name for name in candidates(as_given, SWAPPED) if name != SWAPPED]
        if others:
            found = remembered_choice(as_given)
            text += (f", or its forward by {' or '.join(others)} as the planes are, as measured "
                     "on the second call" + (f" (measured: {found})" if found in others else
                                             " (measured)" if found else ""))
            fwd = found if found in others else fwd
    for pass_, names in measured.items():
        call = "second" if pass_ == "forward" else "first"
        text += (f"\n  {pass_.replace('_', ' ')}: {', '.join(names[:-1])} or {names[-1]}, the "
                 f"fastest as measured on the {call} call"
                 + (" (measured)" if remembered_choice(g, pass_) else ""))
    serial = work(g, (fwd,)) < config.engine.serial_macs
    return Plan(text, fwd, chosen["input_grad"], chosen["weight_grad"], 1 if serial else threads)


def _one(values: Any) -> str:
    """``1`` for ``(1, 1)``, ``1x2`` for ``(1, 2)``."""
    values = list(values)
    if all(v == values[0] for v in values):
        return str(values[0])
    return "x".join(str(v) for v in values)
