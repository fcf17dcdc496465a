"""One entry point for weight files: the format is read from the bytes, not trusted from the name."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import Literal

import numpy as np

from convlayers.weights._common import PathLike, as_path
from convlayers.weights.npz import load_npz, save_npz
from convlayers.weights.safetensors_io import load_safetensors, save_safetensors
from convlayers.weights.torch_pickle import load_torch_state_dict

Format = Literal["torch", "safetensors", "npz"]

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


def detect_format(path: PathLike) -> Format:
    """Name the format of a weight file from its first bytes (and, for zips, their entries).

    Raises
    ------
    ValueError
        If the file matches none of torch (zip or legacy), npz or safetensors.

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "weights.bin")
    >>> save_weights({"w": np.zeros(1)}, p, format="safetensors")
    >>> detect_format(p)
    'safetensors'
    """
    where = repr(as_path(path))
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, NotImplementedError, EOFError, ValueError) as exc:
            raise ValueError(f"{where} is a truncated or corrupt zip file: {exc}") from exc
        if any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
            return "torch"
        if all(n.endswith(".npy") for n in names):
            return "npz"
        raise ValueError(f"{where} is a zip file but neither a torch checkpoint nor an .npz")
    if head[:1] == b"\x80":
        return "torch"  # legacy torch stream of pickles (torch < 1.6)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    raise ValueError(
        f"{where} is not a recognised weight file (expected a torch zip checkpoint, "
        "safetensors or .npz)"
    )


def load_weights(
    path: PathLike, *, key: str | None = None, max_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """Load ``{name: array}`` from a torch checkpoint, safetensors or ``.npz`` file, safely.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its format is detected from its content (see :func:`detect_format`).
    key : str, optional
        For torch checkpoints, the entry holding the state dict
        (see :func:`load_torch_state_dict`); not allowed for other formats.
    max_bytes : int, optional
        Most bytes the load may allocate. By default 64 times the file's size (at least
        256 MiB), never more than :func:`convlayers.config.max_array_bytes`. A file that would
        need more (a stride-0 or shared-storage tensor, a deflated member, a header declaring
        huge shapes) is refused with a ValueError naming it, before anything large is
        allocated.

    Raises
    ------
    ValueError
        Naming the file, if it is not a weight file, is truncated or corrupt, or exceeds the
        cap (:class:`~convlayers.weights.UnsafeWeightsError`, a subclass, if a pickle asks to
        run code).

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_weights({"w": np.ones(2, np.float32)}, p)
    >>> load_weights(p)
    {'w': array([1., 1.], dtype=float32)}
    """
    fmt = detect_format(path)
    if fmt == "torch":
        return load_torch_state_dict(path, key=key, max_bytes=max_bytes)
    if key is not None:
        raise ValueError(f"key={key!r} applies to torch checkpoints only; {path!r} is {fmt}")
    if fmt == "npz":
        return load_npz(path, max_bytes=max_bytes)
    return load_safetensors(path, max_bytes=max_bytes)


def save_weights(
    tensors: Mapping[str, np.ndarray],
    path: PathLike,
    *,
    format: Literal["safetensors", "npz"] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` atomically as safetensors (the default) or ``.npz``.

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray
        Names and arrays.
    path : str or os.PathLike
        Destination. Without ``format``, a ``.npz`` suffix selects npz and anything else
        safetensors, except torch's suffixes (``.pt``, ``.pth``, ``.bin``, ``.ckpt``, ``.tar``),
        which are refused so that a safetensors file is not mistaken for a pickle.
    format : {"safetensors", "npz"}, optional
        Overrides the suffix.
    metadata : mapping of str to str, optional
        Stored in the safetensors header; not allowed with npz.

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> save_weights({"w": np.zeros(2)}, p)
    >>> detect_format(p)
    'npz'
    """
    target = as_path(path)
    suffix = os.path.splitext(target)[1].lower()
    if format is None:
        if suffix in _TORCH_SUFFIXES:
            raise ValueError(
                f"path {target!r} has torch's suffix {suffix!r}, but convlayers writes "
                "safetensors or npz; use a .safetensors or .npz path, or pass format=..."
            )
        format = "npz" if suffix == ".npz" else "safetensors"
    if format == "npz":
        if metadata is not None:
            raise ValueError("metadata is only stored by format='safetensors'")
        save_npz(tensors, target)
    elif format == "safetensors":
        save_safetensors(tensors, target, metadata)
    else:
        raise ValueError(f"format must be 'safetensors', 'npz' or None, got {format!r}")
