"""Place every intermediate buffer in one block, by liveness (greedy by size, as XNNPACK).

Each buffer lives from the step that writes it to the last step that reads it. Buffers are
placed largest first, each at the lowest offset (aligned to 64 bytes) where it overlaps no
buffer already placed whose lifetime overlaps its own. Buffers whose lives do not overlap
share memory, so the block is about the peak of the live set, not the sum of all tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Buffer", "plan_offsets"]

ALIGN = 64  # bytes


@dataclass
class Buffer:
    """``size`` bytes, live from step ``first`` to step ``last`` (inclusive)."""

    key: object
    size: int
    first: int
    last: int
    offset: int = -1


def plan_offsets(buffers: list[Buffer]) -> int:
    """Set each buffer's ``offset``; return the block's total size in bytes.

    >>> a, b, c = Buffer("a", 100, 0, 1), Buffer("b", 100, 1, 2), Buffer("c", 100, 2, 3)
    >>> plan_offsets([a, b, c]), (a.offset, b.offset, c.offset)
    (256, (0, 128, 0))
    """
    placed: list[Buffer] = []
    total = 0
    for buf in sorted(buffers, key=lambda b: (-b.size, b.first)):
        size = -(-buf.size // ALIGN) * ALIGN
        busy = sorted((p.offset, p.offset + -(-p.size // ALIGN) * ALIGN) for p in placed
                      if p.first <= buf.last and buf.first <= p.last)
        offset = 0
        for start, end in busy:
            if offset + size <= start:
                break
            offset = max(offset, end)
        buf.offset = offset
        placed.append(buf)
        total = max(total, offset + size)
    return total
