"""One place that checks memory before it is asked for.

Every reader (weights, ONNX, images) and every op that sizes an array from its arguments calls
:func:`check_bytes` (or :func:`check_elements`) *before* allocating, so that no input, however
small the file or however odd the argument, makes the library ask for memory it cannot have. The
caps are settings in :mod:`convlayers.config` (``max_array_bytes``, ``max_image_pixels``).

Examples
--------
>>> from convlayers import config, limits
>>> limits.check_bytes(1024, "output")
>>> with config.settings(max_array_bytes=1000):
...     limits.check_bytes(4000, "output of conv2d")
Traceback (most recent call last):
...
ValueError: output of conv2d would need 4,000 bytes (3.9 KiB), more than the limit ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from convlayers import config

__all__ = ["check_bytes", "check_elements", "check_pixels", "human_bytes"]


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``'1.5 GiB'``.

    >>> human_bytes(3 * 2**30 // 2)
    '1.5 GiB'
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover


#: What an array is, for the message: a string, or a function that makes it (an op's message
#: names its shapes, and formatting it on every call took 5 us, a tenth of a small layer's).
What = str | Callable[[], str]


def check_bytes(nbytes: int, what: What, limit: int | None = None) -> None:
    """Raise ``ValueError`` naming ``what`` (or ``what()``) when ``nbytes`` exceed ``limit``
    (default :func:`convlayers.config.max_array_bytes`)."""
    cap = config.max_array_bytes() if limit is None else int(limit)
    if nbytes > cap:
        what = what if isinstance(what, str) else what()
        source = "config.max_array_bytes" if limit is None else "the limit given"
        raise ValueError(f"{what} would need {int(nbytes):,} bytes ({human_bytes(nbytes)}), more "
                         f"than the limit of {cap:,} bytes ({human_bytes(cap)}; {source})")


def check_elements(shape: Iterable[int], dtype: np.dtype | type | str, what: What,
                   limit: int | None = None) -> int:
    """Check an array of ``shape`` and ``dtype`` against the cap before it is allocated; return
    its size in bytes. Python ints, so a huge shape cannot overflow.

    >>> check_elements((2, 3), np.float32, "x")
    24
    """
    shape = tuple(shape)  # an iterator is read once: the message below shows it whole
    count = 1
    for extent in shape:
        if int(extent) < 0:
            what = what if isinstance(what, str) else what()
            raise ValueError(f"{what} has a negative extent in its shape {tuple(shape)}")
        count *= int(extent)
    nbytes = count * np.dtype(dtype).itemsize
    check_bytes(nbytes, what, limit)
    return nbytes


def check_pixels(width: int, height: int, what: str) -> None:
    """Refuse an image of ``width`` x ``height`` above :func:`convlayers.config.max_image_pixels`
    (checked from the header, before any pixel is decoded)."""
    cap = config.max_image_pixels()
    if int(width) * int(height) > cap:
        raise ValueError(f"{what} is {width}x{height} = {int(width) * int(height):,} pixels, more "
                         f"than the limit of {cap:,} (config.max_image_pixels)")
