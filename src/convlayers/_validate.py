"""Argument checks shared by every public function.

Each helper raises ``ValueError`` or ``TypeError`` whose message names the argument, the value
received and what was expected, so that a user never has to decode a NumPy broadcast error.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

IntOrTuple = int | Sequence[int]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_int(value: Any, name: str) -> int:
    """Return ``value`` as a Python int, or raise a TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def as_tuple(value: IntOrTuple, n: int, name: str) -> tuple[int, ...]:
    """Normalise an int or a sequence of ``n`` ints to a tuple of ``n`` ints.

    >>> as_tuple(3, 2, "kernel_size")
    (3, 3)
    >>> as_tuple((1, 2), 2, "stride")
    (1, 2)
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (int(value),) * n
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    items = tuple(value)
    if len(items) == 1:
        items = items * n
    if len(items) != n:
        raise ValueError(f"{name} must have {n} values (one per spatial axis), got {value!r}")
    return tuple(as_int(v, name) for v in items)


def at_least(values: tuple[int, ...], minimum: int, name: str) -> tuple[int, ...]:
    """Check that every entry of ``values`` is at least ``minimum``."""
    if any(v < minimum for v in values):
        shown = values[0] if len(set(values)) == 1 else values
        raise ValueError(f"{name} must be >= {minimum}, got {shown}")
    return values


def positive_tuple(value: IntOrTuple, n: int, name: str) -> tuple[int, ...]:
    """An int or ``n`` ints, each at least 1 (kernel sizes, strides, dilations)."""
    return at_least(as_tuple(value, n, name), 1, name)


def nonnegative_tuple(value: IntOrTuple, n: int, name: str) -> tuple[int, ...]:
    """An int or ``n`` ints, each at least 0 (paddings)."""
    return at_least(as_tuple(value, n, name), 0, name)


def float_array(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a float32 or float64 ndarray without copying when it already is one.

    Integer, boolean, complex and object inputs are rejected rather than silently converted,
    the way PyTorch rejects a ``Long`` tensor in a convolution.
    """
    arr = np.asarray(x)
    if arr.dtype not in FLOAT_DTYPES and arr.dtype.newbyteorder("=") in FLOAT_DTYPES:
        raise TypeError(
            f"{name} is a {'big' if arr.dtype.byteorder == '>' else 'little'}-endian "
            f"{arr.dtype.newbyteorder('=')} array (dtype {arr.dtype.str!r}), which is not supported "
            f"(PyTorch refuses it too); convert it first with "
            f"{name}.astype(np.{arr.dtype.newbyteorder('=')})"
        )
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a float32 or float64 array, got dtype {arr.dtype}; "
            f"convert it first, e.g. {name}.astype(np.float32)"
        )
    return arr


def same_dtype(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Reject mixed precision (PyTorch does too) instead of silently upcasting."""
    if a.dtype != b.dtype:
        raise TypeError(
            f"{name_a} and {name_b} must have the same dtype, got {name_a}.dtype={a.dtype} "
            f"and {name_b}.dtype={b.dtype}"
        )


def check_ndim(x: np.ndarray, allowed: tuple[int, ...], name: str, layout: str) -> None:
    """Check the number of dimensions, with the expected layout in the message."""
    if x.ndim not in allowed:
        want = " or ".join(str(a) for a in allowed)
        raise ValueError(
            f"{name} must have {want} dimensions ({layout}), got shape {x.shape} "
            f"with {x.ndim} dimensions"
        )


def one_of(value: Any, choices: Sequence[str], name: str) -> str:
    """Check that ``value`` is one of the strings in ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
