"""The library's few explicit settings: scratch-memory cap, thread count, engine tuning.

These are the only global state in convlayers. Change them with the setters or, for a block of
code, with :func:`settings`; the convolution engine's thresholds live in :data:`engine` (see
:class:`EngineSettings`) and change for a block with :func:`engine_settings`.

Examples
--------
>>> from convlayers import config
>>> with config.settings(scratch_bytes=1 << 20):
...     config.scratch_bytes()
1048576
>>> with config.engine_settings(force="lowered"):
...     config.engine.force
'lowered'
>>> config.engine.force is None
True
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from convlayers._validate import as_int

__all__ = [
    "EngineSettings", "PerformanceWarning", "apply_numba_threads", "engine", "engine_settings",
    "max_array_bytes", "max_image_pixels", "scratch_bytes", "set_max_array_bytes",
    "set_max_image_pixels", "set_scratch_bytes", "set_threads", "settings", "start_numba_threads",
    "threads",
]

_DEFAULT_SCRATCH = 256 * 1024 * 1024
#: Images may hold at most this many pixels (Pillow's own bomb limit is about 89 M).
_DEFAULT_IMAGE_PIXELS = 50_000_000


def _physical_memory() -> int:
    """Bytes of physical memory (1 TiB where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return 1 << 40


_state = {"scratch_bytes": _DEFAULT_SCRATCH, "threads": os.cpu_count() or 1,
          "max_array_bytes": _physical_memory() // 2, "max_image_pixels": _DEFAULT_IMAGE_PIXELS}


def _set_positive(name: str, n: int) -> None:
    """Store setting ``name`` after checking that it is an int >= 1 (the message names it)."""
    if as_int(n, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    _state[name] = int(n)


def max_array_bytes() -> int:
    """Largest array (an op's output, a decoded image, a tensor read from a file) the library
    will allocate, in bytes (default: half the physical memory). Checked before allocating by
    :func:`convlayers.limits.check_bytes`."""
    return _state["max_array_bytes"]


def set_max_array_bytes(n: int) -> None:
    """Set the largest array the library allocates, in bytes."""
    _set_positive("max_array_bytes", n)


def max_image_pixels() -> int:
    """Most pixels (width x height) an image may have to be decoded (default 50 M), for every
    reader: the CLI, the explorer, datasets."""
    return _state["max_image_pixels"]


def set_max_image_pixels(n: int) -> None:
    """Set the pixel limit of the image readers."""
    _set_positive("max_image_pixels", n)


def scratch_bytes() -> int:
    """Upper bound on the temporary memory one lowering (e.g. a window copy) may use."""
    return _state["scratch_bytes"]


def set_scratch_bytes(n: int) -> None:
    """Set the scratch-memory cap in bytes (default 256 MiB). Results do not depend on it."""
    _set_positive("scratch_bytes", n)


def threads() -> int:
    """Number of threads compiled kernels use (default: all cores)."""
    return _state["threads"]


def set_threads(n: int) -> None:
    """Set the number of threads for compiled kernels (and numba, when it is loaded).

    The compiled kernels apply it on every call (``numba.set_num_threads``, capped at numba's
    pool size); NumPy's BLAS keeps its own setting (use ``threadpoolctl`` to change it).
    """
    _set_positive("threads", n)
    if "numba" in sys.modules:
        apply_numba_threads()


class PerformanceWarning(UserWarning):
    """The process is set up in a way that makes convlayers' compiled kernels much slower."""


#: Busy-wait iterations of numba's idle OpenMP threads before they sleep (``GOMP_SPINCOUNT``
#: for its own libgomp, unless the environment sets it or ``OMP_WAIT_POLICY``): about 0.1-0.2
#: ms. Asleep, a thread took ~19 us to wake for each parallel region (2 threads), and a
#: compiled MobileNetV2 runs about 55 regions per call; spinning this briefly, 2.4-4 us. Not
#: the milliseconds of libgomp's default, which stole the cores of whatever ran next.
NUMBA_SPIN_COUNT = 20_000

#: Bytes of a cache line on the machines the kernels are tuned for (x86-64 and most ARM cores):
#: where scratch starts (:data:`convlayers.functional._engine_shared.SCRATCH_ALIGN`) and how
#: the lowered kernels' and the 1x1 kernel's scratch rows are spaced
#: (:func:`convlayers.kernels._bounds.line_stride`).
CACHE_LINE_BYTES = 64


def start_numba_threads() -> None:
    """Start numba's thread pool on an OpenMP runtime of its own, whose idle threads sleep.

    Called when the compiled kernels are first imported, before any of them runs. numba's
    OpenMP layer would otherwise run on whichever libgomp the process loaded globally first:
    after ``import torch``, torch's, which reads ``OMP_WAIT_POLICY`` once and by default keeps
    idle threads spinning for milliseconds after every parallel region. Spinning threads steal
    the cores of whatever runs next (a NumPy BLAS call after a convolution took 8 ms instead
    of 1; MobileNetV2's eager forward 2.5x as long), so convlayers' speed depended on the order
    of the imports. Here numba's pool is started with ``RTLD_DEEPBIND`` (its OpenMP layer binds
    to its own libgomp, not the global one) and ``OMP_WAIT_POLICY=PASSIVE`` with a short spin
    (:data:`NUMBA_SPIN_COUNT`) in the environment only while that libgomp loads, unless the
    user set the variables: torch's runtime, and any loaded later, keep their own defaults
    whatever the order of the imports.

    A :class:`PerformanceWarning` says so when numba's layer still ended up on a runtime loaded
    before it (no new libgomp was mapped: one built with the same file, or a platform without
    ``RTLD_DEEPBIND``) and the user chose no policy.

    Examples
    --------
    >>> from convlayers import config
    >>> config.start_numba_threads()  # once per process; later calls return at once
    >>> import numba
    >>> numba.get_num_threads() >= 1
    True
    """
    from numba.np.ufunc import parallel

    if parallel._is_initialized:
        return
    import numba

    choose = "OMP_WAIT_POLICY" not in os.environ
    spin = "GOMP_SPINCOUNT" not in os.environ and choose
    before = _mapped_openmp()
    flags = sys.getdlopenflags() if hasattr(sys, "getdlopenflags") else None
    deep = getattr(os, "RTLD_DEEPBIND", 0)
    if choose:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if spin:
        os.environ["GOMP_SPINCOUNT"] = str(NUMBA_SPIN_COUNT)
    try:
        if flags is not None and deep:
            sys.setdlopenflags(flags | deep)
        numba.get_num_threads()  # loads the threading layer and starts its pool
    finally:
        if flags is not None:
            sys.setdlopenflags(flags)
        if choose:
            os.environ.pop("OMP_WAIT_POLICY", None)
        if spin:
            os.environ.pop("GOMP_SPINCOUNT", None)
    if choose and before and numba.threading_layer() == "omp" and not _mapped_openmp() - before:
        import warnings

        warnings.warn(
            "numba's OpenMP threads run on a libgomp another library loaded first, whose idle "
            "threads keep spinning after each parallel region and slow down what runs next "
            "(NumPy's BLAS calls several times). Set OMP_WAIT_POLICY=PASSIVE (or ACTIVE, to "
            "keep spinning and silence this) in the environment before starting Python.",
            PerformanceWarning, stacklevel=2)


def _mapped_openmp() -> set[str]:
    """Paths of the GNU OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return {line.split(None, 5)[-1].strip() for line in maps
                    if line.rstrip().rsplit("/", 1)[-1].startswith("libgomp")}
    except OSError:
        return set()


def apply_numba_threads() -> None:
    """Make numba's thread count follow :func:`threads` (the kernels call this before running)."""
    get, put, _ = numba_controls()
    want = max(1, min(_state["threads"], _pool_size[0]))
    if get() != want:
        put(want)


def numba_controls() -> tuple[Any, Any, Any]:
    """``(get_threads, set_threads, set_chunksize)`` of this thread's numba settings, past the
    public functions' per-call pool check and process lock (a pair of those took longer than a
    small pooling kernel). ``set_chunksize`` returns the previous chunk size. The public
    ``numba`` functions where numba no longer has these."""
    if _fast_controls:
        return _fast_controls[0]
    import numba
    from numba.np.ufunc import parallel

    start_numba_threads()  # starts the pool once, which binds the functions below
    fast = [getattr(parallel, name, None) for name in
            ("_get_num_threads", "_set_num_threads", "_set_parallel_chunksize")]
    controls: tuple[Any, Any, Any] = (fast[0], fast[1], fast[2]) if all(map(callable, fast)) \
        else (numba.get_num_threads, numba.set_num_threads, numba.set_parallel_chunksize)
    _pool_size.append(int(numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    _fast_controls.append(controls)
    return controls


_fast_controls: list[tuple[Any, Any, Any]] = []
#: numba's pool size (``NUMBA_NUM_THREADS``), fixed once the pool has started.
_pool_size: list[int] = []


@contextmanager
def settings(*, scratch_bytes: int | None = None, threads: int | None = None,
             max_array_bytes: int | None = None,
             max_image_pixels: int | None = None) -> Iterator[None]:
    """Temporarily change settings inside a ``with`` block."""
    saved = dict(_state)
    try:
        if scratch_bytes is not None:
            set_scratch_bytes(scratch_bytes)
        if threads is not None:
            set_threads(threads)
        if max_array_bytes is not None:
            set_max_array_bytes(max_array_bytes)
        if max_image_pixels is not None:
            set_max_image_pixels(max_image_pixels)
        yield
    finally:
        _state.update(saved)
        if "numba" in sys.modules:
            apply_numba_threads()


# ----------------------------------------------------------------------------- engine tuning

@dataclass
class EngineSettings:
    """Every tuning threshold of the convolution engine, in one place.

    The planner (:mod:`convlayers.functional.plan`) reads these to choose a strategy for each
    pass of a convolution; ``convlayers.functional.plan(...)`` shows its choice. Results do not
    depend on them beyond float rounding (each strategy is exact up to the order of its sums);
    only speed and scratch memory do. Change fields for a block with :func:`engine_settings`, or
    assign them on :data:`engine` for the rest of the process.
    """

    #: A strategy name (see ``convlayers.functional.plan.STRATEGIES``) every convolution pass
    #: must use, or None to let the planner choose. A pass the forced strategy cannot serve
    #: raises ValueError. Non-finite or huge values still move a call off it where its arithmetic
    #: would differ from torch's (Winograd, and the value checks of ``convlayers.functional.plan``).
    force: str | None = None
    #: Convolutions with fewer multiply-adds than this run on one thread: waking the other threads
    #: of the OpenMP pool once they sleep (``OMP_WAIT_POLICY=PASSIVE``, after a short spin) costs
    #: ~20-40 us, more than such a layer gains from them. 2M until the twenty-ninth session; on
    #: the 100 convolutions of 0.25M-2M multiply-adds among four seeds' sweep draws, 500k ran
    #: them at 0.49x torch's time against 0.53x (geo-means; 0.50-0.71x the time on the 8 that
    #: moved most, among them 80 -> 80 3x3 stride 3 on 1x80x14x14: 68 -> 49 us, torch 43),
    #: and 3 of them slower than torch against 5.
    serial_macs: int = 500_000
    #: ``functional.linear`` and ``linear_backward`` (from :attr:`serial_macs` multiply-adds)
    #: run numba's dot products on fewer rows than this, its register tiles from there
    #: (:mod:`convlayers.kernels.linear`), never NumPy's ``@``, whose BLAS threads woke beside
    #: numba's and then spun beside the next kernels (eager MobileNetV2 at batch 1: 35.9 ->
    #: 14.3 ms). The dot products read each weight once per row, the tiles once per tile of
    #: rows: on 1280 -> 1000, forward and backward, 0.12 and 0.32 ms against 0.25 and 0.60 at
    #: 2 rows, even at 4, 0.39 and 1.18 against 0.82 and 2.33 at 8 (the compiled plans'
    #: fully connected steps switch at 4 rows too).
    linear_dot_rows: int = 4
    #: Pooling calls (and their backward) reading fewer input elements than this, counting each
    #: tap of each window, run on one thread. A tap costs a pooling kernel ~1-4 ns against ~0.05
    #: ns for a multiply-add of the tiled GEMM, so :attr:`serial_macs` kept 2-8 ms of pooling on
    #: one core (global average pooling of a 1M-element input ran 3.7x torch's time). At 100k
    #: (the nineteenth session's start), 26 random max/average/adaptive pools of 500-100k
    #: input elements ran on two threads 1.00x the one-thread time below 10k elements and
    #: 0.67-0.88x (geo-means) from 10k.
    serial_pool_taps: int = 10_000
    #: Global pooling (one output per plane) of fewer input elements than this runs the serial
    #: kernels (``global_max_serial``, ``global_avg_serial``), without a parallel region: on 5
    #: inputs of 25k-100k elements they took 0.4-0.8x the two-thread kernels' time.
    global_pool_serial_taps: int = 100_000
    #: An adaptive max pooling whose windows are all alike (each input size a multiple of the
    #: output's), with no indices asked, of at most this many input columns and at least
    #: :attr:`pooled_max_taps` input elements, runs as ``max_pool2d`` with the window as
    #: kernel and stride: there the adaptive window kernels' rows of column tops are shorter
    #: than a vector, and the pooling kernels ran 0.18-0.46x their time (14 -> 7 on
    #: 2x256x14x14, 10 -> 5 on 32x128x10x10, 14 -> 2 on 4x435x14x14: 1.9x torch's time, now
    #: 1.05x), where on 28-56 columns they ran 1.5-1.8x longer.
    pooled_max_width: int = 16
    #: See :attr:`pooled_max_width`: smaller calls keep the window kernels (16x32x8x8 by
    #: 4x4 windows: 31 us by them, 40 through ``max_pool2d``).
    pooled_max_taps: int = 65_536
    #: Arrays of at least this many elements are checked for inf and NaN (before strategies
    #: that multiply them by zero padding) on every thread, in one pass; smaller ones by NumPy's
    #: ``max`` and ``min``, whose two single-core passes took 3 ms on an 11 MiB weight.
    parallel_check_elements: int = 1 << 20
    #: The gradients of ReLU and ReLU6 over arrays of at least this many elements run on every
    #: thread in one pass (:mod:`convlayers.kernels.elementwise`); smaller ones in NumPy.
    parallel_elementwise: int = 1 << 16
    #: Arrays of at least this many elements are padded (along their last two axes) on every
    #: thread by :mod:`convlayers.kernels.pad`; smaller ones through NumPy slices
    #: (:func:`convlayers.functional._common.pad_pairs`).
    parallel_pad_elements: int = 1 << 16
    #: Whether a depthwise convolution whose taps skip input along an axis (a stride of 2 or
    #: more with a dilation its multiple, or one tap) runs as a stride-1 convolution of the one
    #: phase its taps read (:mod:`convlayers.functional._engine_phases`), a copy of that phase
    #: first. On by default until the thirty-fourth session; by then the depthwise kernels read
    #: strides in place faster than the copy and the stride-1 pass together: 12 such layers
    #: (strides 2 and 3, 1-7 taps a row or column, dilations 1-3) took 0.55-0.89x the time
    #: without it, forward, and 0.64-0.91x forward+backward (8x199x22x22 4x1 stride 2
    #: dilation 3: 0.40 -> 0.25 ms, torch 0.26-0.32; the layer that made it, 6x143x39x39 3x1
    #: stride 3 dilation 2: 0.33 -> 0.27 ms, torch 0.30-0.32). Without it the calls are also
    #: remembered whole (:mod:`convlayers.functional._ready`).
    reduce_skipping_strides: bool = False
    #: Whether, while the helper process compiles the common kernels on an empty cache
    #: (:mod:`convlayers.kernels.precompile`), a float32 convolution (forward or gradient)
    #: whose kernel misses the cache runs the NumPy strategy instead of compiling it here
    #: (:mod:`convlayers.functional._cold`): a first MobileNetV2 forward compiled 19-23 s,
    #: the NumPy strategy runs it in about 50 ms.
    defer_cold_compiles: bool = True
    #: Whether a convolution whose kernel has taps that read only the zero padding (wide
    #: padding on small maps) runs with its kernel cropped to the taps that reach the input
    #: (:mod:`convlayers.functional._engine_crop`); their weight gradient is zero. Every
    #: strategy but the NumPy one multiplied such taps by the padding: 6x6 dilation 3 with
    #: padding 7 on 1x497x8x8 (20 of 36 taps in the padding) took 1.85x torch's forward time,
    #: 2.26x forward+backward. Off only to test the strategies on the whole kernel.
    crop_padding_taps: bool = True
    #: See :attr:`crop_padding_taps`: a kernel is cropped where a pass saves at least this many
    #: multiply-adds per element of the weight (the cropped copy reads all of it: 0.64 ms
    #: for a 2.9M-element weight on two threads, 0.22 ns an element, as long as ~20 of the
    #: kernels' multiply-adds).
    crop_copy_macs: int = 20
    #: Winograd serves 3x3 stride-1 convolutions with at least this many input channels per group
    #: (and output channels per group for the backward pass): below it the GEMMs are too thin to
    #: pay for the transforms.
    winograd_min_channels: int = 16
    #: Winograd serves a forward only from this many 2x2 output tiles in the call (batch times
    #: tiles per plane). On AVX-512 the implicit GEMM's tiles are twice as wide, and on 6 layers
    #: with fewer tiles it took 0.4-0.9x Winograd's time (batch 1 at 7x7, 13x13, 14x14 maps and
    #: 2-16 images at 14x14). On AVX2 (a Zen 3, 65 random 3x3 layers of 16-512 channels,
    #: forced in turns) Winograd won by 4-27% on 18, none of them past both this and
    #: :attr:`winograd_harmonic_channels` but one (0.87x), and lost by up to 2.4x on the rest;
    #: the 64 -> 64 layer on 32x56x56 (W2) stays Winograd's (0.71x). None: 768, as before it
    #: meant the machine's default (AVX2's was 0).
    winograd_min_tiles: int | None = None
    #: Winograd serves a forward only when the harmonic mean of its input and output channels
    #: per group, ``2ab / (a + b)``, is at least this (its GEMMs are ``C_out x C_in`` by tiles,
    #: its transforms ``C_in + C_out`` by tiles); on maps with fewer than
    #: ``winograd_small_map`` output rows or columns, at least ``winograd_small_map_channels``.
    #: None: 64 (AVX2's default was 0; see :attr:`winograd_min_tiles`). On 47 random 3x3
    #: layers of 768 tiles or more (AVX-512, 1 and 2 threads, interleaved), Winograd took
    #: 1.06-2.96x the implicit GEMM's time on every layer below a mean of 64 but one (0.98x),
    #: and 0.63-0.97x on all at or above it but four: 64->96, 96->64, 64->128 and 64->64 on
    #: 10x10-16x16 maps (1.1-1.48x). Those have means under 96; the small maps with means of
    #: 96 and more won (0.75-0.97x).
    winograd_harmonic_channels: int | None = None
    #: See :attr:`winograd_harmonic_channels`.
    winograd_small_map: int = 20
    #: See :attr:`winograd_harmonic_channels`.
    winograd_small_map_channels: int = 96
    #: Whether Winograd serves the backward pass. None: the machine's default: no with 64-byte
    #: vectors (the implicit gradients took 0.3-1.0x its time on 11 layers from batch 1 at 7x7
    #: to batch 32 at 28x28, 64-512 channels); with 32-byte vectors where the forward would
    #: take it (on 25 random 3x3 layers of a Zen 3 its gradients took 1.02-5.4x the implicit
    #: ones'; on W2's 64 -> 64, 32x56x56, 0.87x). False also keeps Winograd from the measured
    #: candidates of a stride-1 input gradient alone (a forward of the flipped weights).
    winograd_backward: bool | None = None
    #: Tiles per unit of the fused Winograd forward: the unit's transforms
    #: (``16*(C_in + C_out)*tiles*itemsize``) stay in the core's cache from the input transform
    #: to the output transform.
    winograd_block_tiles: int = 224
    #: The same for the fused Winograd backward (three transforms per unit).
    winograd_block_tiles_bwd: int = 112
    #: Bytes of one unit's columns in the lowered kernels (``C_in/g * kh * kw`` rows by the
    #: unit's output positions): longer images are lowered in slabs of output rows.
    lowered_column_bytes: int = 2 * 2**20
    #: Output positions (images times each one's) a merged pass of the lowered forward must
    #: span (``_engine_lowered._merged_images``): narrower, it keeps the units of one image
    #: and group, as the merged kernel makes two parallel passes per group (columns, then
    #: products). On a Zen 4, maps of one position: 8-16 images merged ran 0.28-0.47x the
    #: units' time (one group), 2-4 images 1.3-1.6x (1.5-2.1x with 4-16 groups).
    merged_min_positions: int = 8
    #: Bytes of one unit's input slab in the implicit kernels (``C_in/g`` channels by the stride
    #: phases some tap reads, by the slab's rows): longer images go in slabs of output rows.
    implicit_slab_bytes: int = 256 * 2**10
    #: The implicit GEMM computes ``(kw-1)*dw // sw`` positions per output row that it drops;
    #: im2col copies ``C_in/g*kh*kw`` values per output position. The planner charges one
    #: copied value this many multiply-adds, and takes the cheaper. Measured on 71 random dense
    #: and grouped forwards (AVX-512) once the GEMM tiles ran 3x faster (copies cost more
    #: multiply-adds than before). Stride 1, batches of three or more: the implicit GEMM won
    #: on 10 of 11 layers whose break-even price was under 20 (0.37-0.85x lowered's time) and
    #: lost on the two priced 71 and 100 (1.14x, 1.69x); none fell between.
    im2col_copy_macs: int = 24
    #: The same price for batches of one or two images, where im2col's columns are the whole
    #: image's and the threads split one product: stride 1, the implicit GEMM won on all 13
    #: layers under 20, on 3 of 5 between 20 and 50 (ResNet's 256 -> 256 3x3 on 14x14 at batch
    #: 1, price 37: 0.53x lowered's time; one tie, one loss of 1.11x) and lost above
    #: (1.05-1.32x), but for 512 channels on 7x7 at batch 2 (0.73x).
    im2col_copy_macs_few_images: int = 48
    #: The prices for strided convolutions (any stride above 1), whose implicit GEMM copies
    #: each stride phase apart and runs shorter rows: of 10 random strided forwards with
    #: break-even prices of 6-28 the implicit GEMM won 3 (0.48-0.86x lowered's time, at 7.5-14),
    #: tied 1 and lost 6 (1.06-1.35x, at 6.9-28), and ResNet's 128 -> 256 3x3 stride 2 at batch
    #: 32 (the W3 workload, price 18) took 40 ms on it against lowered's 23.
    im2col_copy_macs_strided: int = 12
    #: See :attr:`im2col_copy_macs_strided`: one or two images.
    im2col_copy_macs_strided_few_images: int = 24
    #: The implicit GEMM's weight gradient adds each unit's product (at most one image's map)
    #: onto a per-thread copy of the whole ``C_in/g*kh*kw x C_out/g`` gradient, its inner
    #: dimension the unit's positions; it serves only while that gradient has at most this
    #: many elements per output position of one image (``lowered`` splits the input channels
    #: and writes one copy). Measured against lowered on 9 layers (batch 1-4, 3x3 and 5x5):
    #: 0.92x at 47 elements a position, 0.96x at 188, 1.19-1.57x at 94-522, 1.8-3.4x at
    #: 752-3318 (256 -> 256 3x3 on 1x256x14x14, 3009: 3.96 ms against 1.18). Only for as many
    #: output channels as a wide register tile's columns (48 float32 with AVX-512) or more
    #: (fewer took 1.1-1.5x lowered's time on 14 random layers), at stride 1 (a 1x7 stride-3
    #: layer 221 -> 70 on 102x102 took 2.7x on lowered: its im2col copies a strided map).
    #: On the 13 random layers of four sweep seeds the rule moves, forward+backward took
    #: 0.51-0.97x the time on 10 (geo-mean 0.87), 1.00-1.06x on 2, 1.38x on one at the
    #: threshold (148 -> 175 2x2 on 1x148x39x39: 72 elements a position).
    implicit_weight_grad_elements: int = 64
    #: Nor, at any stride, while that per-thread gradient (every group's) is larger than this
    #: (a core's L2 cache here): each unit then streams it from L3 and back for a product of a
    #: few positions, one unit a slab. Random strided layers the rule above admits, implicit's
    #: time against lowered's: 443 -> 90 7x7 s2 on 1x443x7x44 (7.8 MB) 5.9x, 354 -> 150 5x5
    #: s3 (5.3 MB) 4.2x, 255 -> 108 6x6 s3 (4 MB) 1.5x, 450 -> 57 3x7 s2 (2.2 MB) 1.06x; below
    #: 2 MB 0.47-1.49x (geo-mean 0.89 on 18).
    implicit_weight_grad_bytes: int = 2 * 1024 * 1024
    #: Input channels a group from which the implicit weight gradient splits the channels into
    #: blocks (each unit its own rows of the gradient) where the images, groups and whole slabs
    #: give the threads too few units; below, the slabs shorten. On the 10 random batch-1-3
    #: layers of 64 or more channels this moved: 0.79-1.06x the time (geo-mean 0.94); with
    #: fewer channels, larger slabs of fewer channels ran up to 3x slower.
    implicit_weight_grad_split_channels: int = 64
    #: A stride-1 weight gradient with fewer than a register tile's output columns takes the
    #: channels-last kernel from this many input channels a group (64 admits any kernel of 6
    #: taps or more; see ``_engine_implicit.channels_last_pays``) ...
    channels_last_weight_grad_channels: int = 24
    #: ... under a kernel of at least this many taps ...
    channels_last_weight_grad_taps: int = 24
    #: ... and at most this many output channels a group. On 108 layers of the sweeps with
    #: 12-63 input channels the two kernels split about evenly (0.34-2.1x), the big stride-1
    #: kernels mostly gaining; on 30 new random layers in the admitted range, the 19 of stride
    #: 1 ran 0.35-0.91x the other kernel's time but one (1.20x), those of stride 2 0.58-1.39x
    #: (left out). 44->32 7x7 on 6x44x33x11: 3.0 ms -> 1.6 ms.
    channels_last_weight_grad_out_channels: int = 32
    #: Tap elements from which the strided input gradient's copy of the weights' taps per
    #: phase is shared among the threads: 24 x 203 4x4 taps took 0.14 ms on one thread, 0.08
    #: on two; 27 x 8 of them 0.007 ms on one, 0.009 on two.
    parallel_phase_taps: int = 1 << 15
    #: A dense or grouped 2-D convolution whose implicit GEMM (or im2col) costs less with its
    #: two spatial axes swapped runs so, transposing its input and output planes (and weights),
    #: where the multiply-adds saved outweigh the transposes at this many a copied element
    #: (NumPy's strided copies, 0.3-0.55 ns an element on one core: 50-90 multiply-adds of two
    #: threads). The implicit GEMM computes ``(kw-1)*dw // sw`` dropped positions per output
    #: row: a 7x7 dilation-2 kernel on 61x12 maps computes 24 positions for 12 (57 for 69
    #: transposed); 269->16 channels at batch 1 ran 2.4x torch's time (forward), 3.2x
    #: (forward+backward).
    transpose_copy_macs: int = 64
    #: ... and where the swapped axes' cost in the planner's model is under this percentage of
    #: the cost as it stands. At 90, 25 of 32 random swapped layers (from the sweep's space)
    #: ran slower than the faster strategy unswapped, 1.07-2.15x (a 222->162 3x6 on 1x14x14,
    #: modelled at 88%: 1.89x); those that gained (0.76-0.98x) were modelled at 61% or less
    #: (the 269->16 layer above: 0.79x), and all but one of the rest lost.
    swap_axes_percent: int = 62
    #: A dense or grouped forward planned ``implicit`` or ``lowered`` whose two costs in the
    #: planner's model are within this factor of each other measures both once (each run
    #: three times, the fastest kept for that geometry; see
    #: ``convlayers.functional.measured_choices()`` and ``convlayers.functional._measured``),
    #: with ``direct`` where it serves, which a one-group forward of 16 input channels or
    #: more measures whatever the costs; gradients measure implicit against lowered always.
    #: On 100 random strided layers of one or two images the model's choice ran 1.3-2.2x the
    #: other's time on a fifth of them, both ways, at cost ratios of 0.5-2. 1 turns all
    #: measuring off.
    measure_band: int = 2
    #: ... for calls of at least this many multiply-adds (smaller ones keep the model's
    #: choice: a measurement of a few microseconds is mostly noise). On random in-band layers
    #: of 0.3-2M multiply-adds (from the sweep's space) the model's choice ran 1.10x the
    #: faster strategy's time (geo-mean; up to 1.82x, 19 of 44 off by more than 5%), the
    #: measured one 1.007x (up to 1.11x); on 80k-300k 1.054x against 1.009x.
    measure_min_macs: int = 100_000
    #: A measurement stops after the round (one run of each candidate) in which its runs
    #: after the first round passed this many milliseconds (a first run may load or compile
    #: its kernels: it counts for nothing here): a layer of a second a call costs its first
    #: (or second) call a few runs, not three of each candidate.
    measure_budget_ms: int = 1000
    #: Runs of each candidate per measurement, alternating; the shortest of each counts (a
    #: first run may load or compile its kernels, and another process's burst hits one run,
    #: not three).
    measure_rounds: int = 3
    #: Rounds a measurement runs at most: more than :attr:`measure_rounds` while all its rounds
    #: so far took under :attr:`measure_quick_ms`. On a shared machine a burst often hits two
    #: of three runs of a layer of a millisecond: 269->43 3x3 stride 3 on 8x269x18x18, whose
    #: direct forward runs 0.5-0.7 ms and the implicit GEMM 0.6-0.8, kept the implicit GEMM
    #: in 8 of 12 measurements of three rounds (direct's runs hit at 0.9-7 ms); with up to
    #: nine, ``direct`` in 12 of 12.
    measure_max_rounds: int = 9
    #: Milliseconds of measuring within which a measurement adds rounds up to
    #: :attr:`measure_max_rounds`.
    measure_quick_ms: int = 30
    #: From the second round on, a candidate whose shortest run so far took under this many
    #: milliseconds runs once untimed before its timed run: right after another strategy its
    #: first call found its scratch, weights and threads cold (93->196 4x5 stride 3 on
    #: 7x93x10x13: ``direct`` and ``dot`` 0.30-0.80 ms right after another strategy, 0.20-0.23
    #: right after themselves, im2col 0.57-0.66 either way), and a measurement of single runs
    #: kept im2col in some processes, 2.2x torch's time where ``dot`` took 0.8x.
    measure_warm_ms: int = 10
    #: Another strategy replaces the planner's only when it took less than ``100 -
    #: measure_tie_percent`` percent of its time: a near tie keeps the model's choice, the same
    #: in every process.
    measure_tie_percent: int = 5
    #: Input channels from which ``direct`` is a measured candidate of a forward: its products
    #: run one input channel a step (a kernel row's taps where its columns are not dilated),
    #: so few of them leave its tiles idle (3-7 channels: 1.3-7x torch's time on the sweep's
    #: slow layers, where implicit or lowered took 0.9-1.5x). From 8 it wins some: 15 -> 30
    #: 7x7 stride 2 on 4x15x75x75 1.22x torch's time against the implicit GEMM's 1.59x, 8 ->
    #: 30 on 4x8x75x75 1.32x against 1.49x (16 until the fifty-first session).
    direct_min_channels: int = 8
    #: Input channels per group from which ``dot`` is a measured candidate of a forward (its
    #: vectors run along them: fewer leave lanes idle).
    dot_min_in_channels: int = 16
    #: ... with at most this many output channels per group (above, the GEMM tiles' vectors of
    #: output channels or positions fill; at 64, ``dot`` won none of 8 layers of 33-63) ...
    dot_max_out_channels: int = 32
    #: ... or at most this many output positions an image, whatever its output channels: the
    #: GEMM strategies' vectors run along the positions, a map this small fills one vector or
    #: less, and the taps in its padding are often most of the window (364 -> 118 6x6 stride 3
    #: dilation 3 padding 7 groups 2 on 9x364x10x10, 9 positions: 0.74x torch's time by
    #: im2col, 0.28x by ``dot``; 64 -> 302 5x5 dilation 2 groups 2 on 5x64x9x9, one position:
    #: 2.3x, 1.0x). Past 16 it won one layer of five.
    dot_max_positions: int = 16
    #: Strided input gradients with at most this many output channels per group take the
    #: implicit GEMM (one forward per stride phase) where the phases' products are not thin:
    #: maps of 16 output positions or more, and a dilation that is a multiple of the stride
    #: (every tap in one phase; kernels of 9 taps or more), or stride 2 with kernels of 5 or
    #: more and 128 or more input channels. There im2col's col2im adds (``C_in*kh*kw`` per
    #: output position) dwarf a product of so few channels. On random layers drawn after the
    #: rule was set: 15 of 24 ran 0.33-0.9x the lowered gradient's time (the largest calls),
    #: 3 at 0.98-1.08x, 6 small calls (0.05-0.5 ms) slower, 4 of them with kernels of 4-5 taps
    #: (then excluded); a second draw, 13 of 16 at 0.23-0.86x, one at 1.06x, two slower (0.08
    #: ms; a 3x3 map, then excluded). Elsewhere it ran 1.2-9x lowered's time.
    implicit_input_grad_channels: int = 16
    #: A stride-1 input gradient of an output map under ``implicit_input_grad_positions``
    #: positions a plane takes the implicit GEMM (the forward kernel over the output gradient,
    #: ``C_in/g`` rows by ``C_out/g*kh*kw``) only while ``C_out/g`` is at most this many times
    #: ``C_in/g``: with fewer rows its tiles wait on loads, while ``lowered``'s product is
    #: ``C_in/g*kh*kw`` rows by ``C_out/g``, and on small maps its col2im is cheap. Measured on
    #: stride-1 transposed convolutions (the input-gradient pass alone): on 40 random ones
    #: (maps of 25-3600 positions), 15 of the 22 with ratios of 2.3-148 ran 1.17-3.9x
    #: lowered's time under the implicit GEMM, the rest 0.83-1.01x, and all 14 of ratios
    #: 0.06-0.55 ran 0.24-0.69x; on 30 more with ratios above 2 and maps of 64-30625
    #: positions, maps under 1024 ran 0.64-2.5x lowered's time under the implicit GEMM (8 of
    #: 14 slower), 1024-4096 positions 0.72-1.39x (5 of 8 slower; of the first draw
    #: 4 of 7), 4096 and up 0.36-1.08x (7 of 8 faster; 2 layers of the sweep at 0.38-0.40x).
    implicit_input_grad_ratio: int = 2
    #: See :attr:`implicit_input_grad_ratio`: output positions per plane from which the
    #: implicit input gradient serves whatever the ratio of the channels.
    implicit_input_grad_positions: int = 4096
    #: Shortest slab (output positions) the lowered kernels cut an image into to give every
    #: thread work (one image, small maps): narrower products waste the register tiles.
    lowered_min_columns: int = 96
    #: The lowered gradients of two images or more with at most this many output positions
    #: each make one product over all the images (per block of input channels), gathered and
    #: scattered across images: per image, products that narrow wasted the tiles' lanes and
    #: the weight gradient's added onto the whole gradient again and again. On 24 random
    #: layers of 5-16 positions (batches 2-30): forward+backward 0.69 -> 0.65x torch's time,
    #: geo-mean; at most 4 they had taken 0.75 -> 0.72x on 25 others, 2.64 -> 0.33x on
    #: 305->8 5x5 dilation 2 on 29x305x9x9. Only with at most ``merged_gradient_groups``
    #: groups, or depthwise (whose channel multiplier then takes the lowered gradients).
    merged_gradient_positions: int = 16
    #: A dense or grouped forward of one image with at most this many output positions takes
    #: im2col, not the implicit GEMM (whose slab's dropped columns and masked tiles dominate
    #: maps that small): on the five such layers of 30 random ones of 1-16 positions, 0.29-0.86x
    #: the implicit GEMM's time (244->4 7x7 stride 3 on 1x244x8x8: 1.4x torch's time, 0.4x).
    lowered_batch1_positions: int = 16
    #: Most groups of a layer whose lowered gradients merge images (depthwise layers aside):
    #: 16 and 32 groups of 1-15 channels ran 1.06-1.22x the per-image gradients' time.
    merged_gradient_groups: int = 8
    #: The planar depthwise kernels serve planes whose padded polyphase copy takes at most this
    #: many bytes (one such plane per thread: a 224x224 map takes 200 KiB).
    planar_bytes: int = 4 * 2**20
    #: The planar depthwise kernels serve output planes of at most 64 pixels where their flat
    #: loops compute at most this many positions per output pixel (tiny planes: the row
    #: kernels serve; larger planes take the planar kernels whatever they drop, the row
    #: kernels' short rows running scalar: :func:`convlayers.functional.plan._depthwise`). None: the
    #: machine's default, 2 where the kernels run 64-byte vectors (AVX-512), else 8: with
    #: AVX2 the row kernels ran 1.8x the planar ones' time (geo-mean; 0.74-6.3x) on 25 random
    #: small depthwise forwards that wasted more than 2.
    planar_max_waste: int | None = None
    #: Depthwise forwards (no multiplier) with at most this many output pixels per plane run
    #: channels-last: a tap is then a loop over the channels. Since its blocks take 64
    #: consecutive planes of all the images (no lanes lost at the end of an image's channels),
    #: on 80 random layers of 100-3000 pixels, 3-299 channels, batch 1-32 it ran 0.15-3.0x
    #: torch's time and was the fastest depthwise kernel on all but 5 up to 1800 pixels (those
    #: within 15%, kernels of one row or column); past 1900 it won 5 of 8.
    channels_last_pixels: int = 2048
    #: ... when the images have at least this many planes between them (channels times
    #: images: fewer leave most of a vector's lanes computed and dropped).
    channels_last_channels: int = 8
    #: ... and, for the forward, while a block's padded input (64 planes of the whole map)
    #: takes at most this many bytes, or the planar kernels cannot serve: larger blocks (a
    #: stride or dilation over a large map) run planar. On 22 random layers whose blocks took
    #: more than 1 MiB (strided or dilated, 37-187 pixels wide), the planar kernels took
    #: 0.21-0.95x the channels-last time on all but two (1.0x, and 1.17x for a 2.2 MiB
    #: block; geo-mean 0.6x); with 0.5 MiB, 12 of 45 more layers (2x2 kernels among them)
    #: ran slower planar, up to 1.7x.
    channels_last_block_bytes: int = 1 << 20
    #: ... and the eager engine's depthwise passes take channels-last only from this many
    #: planes (channels times images), or a quarter as many on output planes of at most 64
    #: pixels, or any on tall outputs of at most 4 columns whose planar rows compute more
    #: than twice the positions they keep, unless the planar kernels cannot serve. On 123
    #: random forwards that took channels-last with at least 8 planes, planar ran 0.13-0.99x
    #: its time on 58 of the 65 under 384 (geo-mean 0.5), channels-last 0.25-0.97x planar's on
    #: 44 of the 58 from 384; the backward alike (planar 0.03-0.95x on most under 200 planes),
    #: but on small maps channels-last won from about 100 planes (126 planes of 3x3: 0.6x
    #: planar's time). None: the machine's default, 384 where the kernels run 64-byte vectors
    #: (AVX-512, where those were measured), else 512 for the forward (AVX2: channels-last
    #: took 1.08-1.37x planar's time on layers of 417-470 planes, 0.8x at 512) and 384 for the
    #: gradients.
    channels_last_planes: int | None = None
    #: The output-pixel limit (:attr:`channels_last_pixels`) of the depthwise gradients, which
    #: run channels-last on larger maps than the forward: on 7 layers of 32-240 channels at
    #: batch 4-32 the channels-last gradients took 0.57-0.92x the planar kernels' time on
    #: maps of 576-784 output pixels, 1.22-1.58x on 1600-2304.
    channels_last_backward_pixels: int = 1024
    #: The flat depthwise kernels' column masks take ``kw * Ho * W`` bytes; past this many output
    #: pixels per plane the row kernels serve.
    flat_pixels: int = 1 << 18
    #: 1x1 forwards of stride 1 along the width with at most this many multiply-adds per
    #: output pixel and group (``C_in/g * C_out/g``; depthwise ones at any stride) sum rows in
    #: place instead of running the register-tiled products
    #: (:func:`convlayers.kernels.conv.pointwise_few`; the gradients too). On 6 grouped layers
    #: of 2 and 4 the forward took 0.54-0.83x torch's time where the tiles took 1.4-2.1x; on 9
    #: of 12 and 16 it won 4 (0.41-1.28x against 0.59-1.17x); at stride 2 it lost every time
    #: (gathered columns). Forward and backward of 5 such layers: 0.3-0.8x torch's time, where
    #: the tiles took 0.9-3.6x.
    pointwise_few_macs: int = 4
    #: An unpadded 1x1 forward of at most this many multiply-adds, called again with a settled
    #: plan (:mod:`convlayers.functional._ready`), is one small product by NumPy's ``matmul``
    #: over a strided view of the pixels it reads: the compiled kernel's call (its strided
    #: copy, scratch and a dispatch of seven arguments) cost 8-9 us where the product takes
    #: well under one. 4->9 at stride 2 on 1x4x19x19: 7.9 -> 4.0 us a call (torch 6.3),
    #: 59->7 at stride 2 on 1x59x9x9: 9.2 -> 5.1 (torch 8.5), 16->32 on 1x16x14x14 (100k):
    #: 7.0 -> 6.0; at 800k (64->64 on 14x14) the kernel wins, 15 us against 19. Raised from
    #: 64k to OpenBLAS's threading threshold (262k: the product still runs on the calling
    #: thread) after, on another day's machine, 143->13 at stride 2 on 1x143x11x11 (67k) ran
    #: 22.9 us on the kernel against 13.1 (torch 16.1), 32->64 at stride 2 on 1x32x14x14
    #: (100k) 22.5 against 9.0, 48->48 at stride 2 on 2x48x14x14 (226k) 29.9 against 19.7;
    #: at 450k (96->24 at stride 2 on 28x28) 33.9 against 30.7, at 800k the kernel won again.
    #: Depthwise layers never take it, with a channel multiplier or without (their in-place
    #: sums win: 64 -> 64 on 4x64x28x28, 27 us against 312 as one product).
    pointwise_numpy_macs: int = 1 << 18
    #: Bytes of the right-hand operand one unit of the 1x1 kernels reads (a block of pixel
    #: columns of one image, all its input channels): it stays in the core's L2 cache.
    pointwise_block_bytes: int = 256 * 2**10
    #: The 1x1 weight gradient runs on the register-tiled GEMM (its units' output-gradient
    #: columns transposed first) when a unit has fewer pixel columns than this, else as dot
    #: products along the columns. On 10 layers of a batch-32 MobileNetV2 step and others, the
    #: tiled GEMM took 0.13-0.28x the dot products' time on 3x3 and 6x6 maps (units of 9-36
    #: columns), 0.63-0.67x on units of 128-144; with its transposes done in registers (twelfth
    #: session) 0.43-1.01x on 8 layers of 144-3136 pixels, 64->128 on 56x56 included (1.39x
    #: before), so every unit takes it by default; the dot products stay for the tests.
    pointwise_weight_grad_tiled_columns: int = 1 << 30
    #: Check inputs and weights for inf, NaN and values so large that a strategy's transforms
    #: could overflow where a direct sum does not, and fall back for that call (see
    #: ``convlayers.functional.plan``). Off only to measure what the check costs.
    check_values: bool = True

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _ENGINE_FIELDS:
            raise AttributeError(f"EngineSettings has no setting {name!r}; the settings are "
                                 f"{', '.join(sorted(_ENGINE_FIELDS))}")
        if name == "force":
            if value is not None:
                from convlayers.functional.plan import check_strategy_name

                check_strategy_name(value)
        elif name in ("check_values", "reduce_skipping_strides", "crop_padding_taps",
                      "defer_cold_compiles", "winograd_backward"):
            if not isinstance(value, bool) and not (name == "winograd_backward" and value is None):
                raise TypeError(f"{name} must be a bool{' or None' * (name == 'winograd_backward')}"
                                f", got {value!r}")
        elif name in ("winograd_min_tiles", "winograd_harmonic_channels", "planar_max_waste",
                      "channels_last_planes") and value is None:
            pass
        elif name in _AT_LEAST_ONE and as_int(value, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        elif as_int(value, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        object.__setattr__(self, name, value)
        global _engine_version
        values = tuple(getattr(self, field) for field in _ENGINE_FIELDS_ORDER)
        _engine_version = _VERSIONS.setdefault(values, len(_VERSIONS))


_ENGINE_FIELDS_ORDER = tuple(f.name for f in fields(EngineSettings))
_ENGINE_FIELDS = frozenset(_ENGINE_FIELDS_ORDER)
#: Each combination of engine settings seen, numbered in order (the defaults are 0).
_VERSIONS: dict[tuple[Any, ...], int] = {}
#: The settings that must be at least 1 (a measurement of no runs has no times).
_AT_LEAST_ONE = frozenset({"measure_rounds", "measure_max_rounds"})
_engine_version = 0

#: The engine's settings for this process (see :class:`EngineSettings`).
engine = EngineSettings()


def engine_version() -> int:
    """The number of the engine settings' current values (the planner's cache key): it changes
    whenever a setting does, and comes back with the values. A strategy forced in a ``with``
    block (:func:`engine_settings`) finds its layouts remembered by the block before; with a
    counter that only grew, each block built them again (0.5 ms of a 1.6 ms ``direct`` call,
    30 -> 171 7x7 dilation 3 on 1x30x23x23)."""
    return _engine_version


def settings_key() -> tuple[int, int, int, int]:
    """What a call's plan depends on among the settings: the threads, the scratch cap, the
    array cap and :func:`engine_version` (the key of calls remembered whole,
    :mod:`convlayers.functional._ready`)."""
    return (_state["threads"], _state["scratch_bytes"], _state["max_array_bytes"],
            _engine_version)


@contextmanager
def engine_settings(**changes: Any) -> Iterator[EngineSettings]:
    """Change fields of :data:`engine` inside a ``with`` block; restored on exit.

    >>> with engine_settings(serial_macs=0) as e:
    ...     e.serial_macs
    0
    """
    saved = {name: getattr(engine, name) for name in changes if name in _ENGINE_FIELDS}
    try:
        for name, value in changes.items():
            setattr(engine, name, value)
        yield engine
    finally:
        for name, value in saved.items():
            setattr(engine, name, value)
