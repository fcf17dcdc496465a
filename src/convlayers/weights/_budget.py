"""How much memory loading one weight file may take, counted before each allocation.

A small file can describe a huge amount of memory: a stride-0 tensor, many tensors viewing one
storage, a deflated member that inflates a thousandfold, a header declaring 1e11 elements. Each
reader therefore charges every allocation it is about to make (storages, tensors, arrays,
decompressed members, pickles) to one :class:`Budget` per file, and refuses the file with a
``ValueError`` naming it before the allocation that would pass the cap.

The cap is ``max_bytes`` when the caller gives it, else ``EXPANSION`` times the file's size
(at least ``SMALL_FILE_BYTES``), and never more than :func:`convlayers.config.max_array_bytes`.

Examples
--------
>>> b = Budget("'w.pt'", file_size=1000, max_bytes=100)
>>> b.charge(60, "storage 0")
>>> b.charge(60, "storage 1")
Traceback (most recent call last):
...
ValueError: 'w.pt': storage 1 would bring the memory needed to load the file to 120 bytes ...
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers import config
from convlayers.limits import human_bytes

__all__ = ["EXPANSION", "PICKLE_EXPANSION", "SMALL_FILE_BYTES", "Budget", "check_shape"]

#: Without ``max_bytes``, a file may need at most this many times its own size ...
EXPANSION = 64
#: ... or this many bytes, whichever is larger (small files with compressed or shared data).
SMALL_FILE_BYTES = 256 * 2**20
#: Objects a pickle builds take at most about this many bytes per byte of pickle.
PICKLE_EXPANSION = 64

_INTP_MAX = int(np.iinfo(np.intp).max)


def check_shape(shape: tuple[int, ...], what: str, itemsize: int = 1) -> None:
    """Refuse a shape NumPy cannot hold (more than 32 axes, or extents whose product overflows),
    with a ValueError naming ``what``, before anything is allocated.

    >>> check_shape((0, 2**63), "tensor 'w'")
    Traceback (most recent call last):
    ...
    ValueError: tensor 'w' has shape (0, 9223372036854775808), which NumPy cannot represent ...
    """
    count = max(int(itemsize), 1)
    for n in shape:
        count *= max(int(n), 1)
    if len(shape) > 32 or count > _INTP_MAX:
        raise ValueError(f"{what} has shape {tuple(shape)}, which NumPy cannot represent (at most "
                         f"32 axes whose nonzero extents multiply to < 2**63 bytes)")


def _check_max_bytes(max_bytes: Any) -> int | None:
    if max_bytes is None:
        return None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
        raise TypeError(f"max_bytes must be an int or None, got {max_bytes!r}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    return int(max_bytes)


class Budget:
    """The bytes one load may still allocate; :meth:`charge` before each allocation.

    Parameters
    ----------
    where : str
        The file, as it appears in messages (``repr`` of its path).
    file_size : int
        Its size in bytes.
    max_bytes : int, optional
        An explicit cap; by default ``EXPANSION * file_size`` (at least ``SMALL_FILE_BYTES``).
        Either way at most :func:`convlayers.config.max_array_bytes`.
    """

    def __init__(self, where: str, file_size: int, max_bytes: int | None = None) -> None:
        explicit = _check_max_bytes(max_bytes)
        self.where, self.used = where, 0
        ceiling = config.max_array_bytes()
        if explicit is not None:
            self.cap, self.reason = explicit, "max_bytes"
        else:
            self.cap = max(EXPANSION * int(file_size), SMALL_FILE_BYTES)
            self.reason = (f"{EXPANSION} x the file's {int(file_size):,} bytes, at least "
                           f"{human_bytes(SMALL_FILE_BYTES)}; pass max_bytes=... to allow more")
        if ceiling < self.cap:
            self.cap, self.reason = ceiling, "config.max_array_bytes"

    @property
    def remaining(self) -> int:
        """Bytes that may still be charged."""
        return self.cap - self.used

    def charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` about to be allocated for ``what``; refuse past the cap."""
        total = self.used + int(nbytes)
        if total > self.cap:
            raise ValueError(
                f"{self.where}: {what} would bring the memory needed to load the file to "
                f"{total:,} bytes ({human_bytes(total)}), more than the limit of {self.cap:,} "
                f"bytes ({human_bytes(self.cap)}; {self.reason})"
            )
        self.used = total
