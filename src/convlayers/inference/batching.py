"""Which runs of a plan's steps go through the batch a few images at a time.

A network's first layers carry the largest maps: MobileNetV2's expansion to 96 channels at
112x112 is 4.8 MB an image, 77 MB at batch 16. Run layer by layer over the whole batch, each
such layer writes its output to memory and the next reads it back; a layer that does a few
multiply-adds per byte (a depthwise or a projection to 16 channels) then waits on memory, not
on arithmetic. Run a few images through a whole run of layers before the next few, and each
layer's output is still in the cache when the next layer reads it: the intermediates of the
run are allocated for one chunk of images and reused by every chunk.

The policy: a step's *working set* is the bytes it reads and writes for one image (inputs,
residual, output, scratch). A step wants chunks of ``CHUNK_BYTES // working set`` images (at
least 1, at most the batch). Consecutive steps whose wishes are within a factor
:data:`SPREAD` of each other form one segment, run in chunks of the smallest wish (evened
out over the batch: 16 images in chunks of 6 are chunks of 6, 5 and 5), or at once when that
is the whole batch. A value produced in one segment and read in another is kept for the
whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHUNK_BYTES", "SPREAD", "WEIGHT_RATIO", "Segment", "segments"]

#: Bytes a step's chunk may read and write: well inside the last-level cache (32 MiB here,
#: shared), so the next step of the chunk finds its input there. MobileNetV2 at batch 16
#: (median of 31 interleaved runs of its first 20 steps): 72 ms over the whole batch, 49 ms
#: an image at a time.
CHUNK_BYTES = 8 * 2**20
#: Largest ratio of two steps' wished chunk sizes inside one segment.
SPREAD = 4
#: Activation bytes a chunk of a step must move per byte of its weights: below it, reading
#: the weights once per chunk costs more than the cache saves (ResNet-50's 14x14 and 7x7
#: layers: megabytes of weights against a few hundred kilobytes of maps an image).
WEIGHT_RATIO = 4


@dataclass(frozen=True)
class Segment:
    """Steps ``start .. stop - 1``, run ``images`` images at a time (the whole batch when
    ``images`` is the batch size)."""

    start: int
    stop: int
    images: int


def segments(step_bytes: list[int], n: int, budget: int | None = None,
             weight_bytes: list[int] | None = None) -> list[Segment]:
    """Split steps of per-image working sets ``step_bytes`` into segments for batch ``n``
    (``budget`` bytes a chunk's step may touch; :data:`CHUNK_BYTES` by default). A step
    whose chunk would move fewer than :data:`WEIGHT_RATIO` times its ``weight_bytes`` wants
    the whole batch: each chunk reads the weights again.

    Examples
    --------
    >>> [(s.start, s.stop, s.images) for s in segments([6 << 20, 5 << 20, 1 << 20, 1 << 16], 16)]
    [(0, 2, 1), (2, 3, 8), (3, 4, 16)]
    >>> [(s.start, s.stop, s.images) for s in segments([1 << 19, 1 << 16], 16)]
    [(0, 2, 16)]
    >>> segments([6 << 20], 1)
    [Segment(start=0, stop=1, images=1)]
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    budget = CHUNK_BYTES if budget is None else budget
    wish = [max(1, min(n, budget // max(1, b))) for b in step_bytes]
    for i, w in enumerate(weight_bytes or []):
        if wish[i] * step_bytes[i] < WEIGHT_RATIO * w:
            wish[i] = n
    out: list[Segment] = []
    start = 0
    # from the first step that wants the whole batch on, all run at once: a network's maps
    # shrink and its weights grow, and each boundary keeps a whole-batch value
    at_once = next((i for i, w in enumerate(wish) if w == n), len(wish))
    while start < at_once:
        low = high = wish[start]
        stop = start + 1
        while stop < at_once and max(high, wish[stop]) < SPREAD * min(low, wish[stop]):
            low, high = min(low, wish[stop]), max(high, wish[stop])
            stop += 1
        chunks = -(-n // low)
        out.append(Segment(start, stop, -(-n // chunks)))
        start = stop
    if at_once < len(wish):
        out.append(Segment(at_once, len(wish), n))
    return out
