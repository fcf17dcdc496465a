"""Pieces shared by the weight-file readers and writers: the error type, paths, dtypes."""

from __future__ import annotations

import os
import reprlib
from collections.abc import Mapping
from typing import Any

import numpy as np

PathLike = str | os.PathLike[str]


class UnsafeWeightsError(ValueError):
    """A weight file asked for something other than tensors and plain containers.

    Raised before anything the file names is called, so refusing a file never runs its code.
    """


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 80, 80, 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 6


def short_repr(value: Any) -> str:
    """``repr`` cut to a few levels and items, for messages about values read from a file
    (a shared nest of lists would otherwise take 2**depth steps to print).

    >>> nest = []
    >>> for _ in range(40):
    ...     nest = [nest, nest]
    >>> short_repr(nest)
    '[[[[...], [...]], [[...], [...]]], [[[...], [...]], [[...], [...]]]]'
    """
    return _SHORT.repr(value)


def as_path(path: Any, name: str = "path") -> str:
    """Return ``path`` as a ``str`` or raise a TypeError naming ``name``."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {path!r} ({type(path).__name__})")
    return os.fspath(path)


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 values held as uint16 bit patterns to float32, exactly.

    >>> bfloat16_to_float32(np.array([0x3F80, 0xC000], dtype=np.uint16))
    array([ 1., -2.], dtype=float32)
    """
    wide = bits.astype(np.uint32)
    wide <<= 16
    return wide.view(np.float32)


def check_tensors(tensors: Any, name: str = "tensors") -> dict[str, np.ndarray]:
    """Validate a mapping of names to numeric arrays before writing it anywhere."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{name} must be a mapping of str to numpy arrays, got {type(tensors).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{name} keys must be non-empty str, got {key!r}")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufc":
            raise TypeError(
                f"{name}[{key!r}] must be a numeric or bool array, got dtype {arr.dtype}"
            )
        out[key] = arr
    return out
