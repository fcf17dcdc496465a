"""Training checkpoints: a model, its optimizer, the epoch and free-form extras in one safe file.

A checkpoint is a safetensors file (nothing in it can execute code), written atomically through
:func:`convlayers.weights.save_weights`: an interrupted save leaves the previous checkpoint as it
was. Inside it:

- ``model.<key>``: the model's ``state_dict()`` (parameters and buffers, PyTorch's key names);
- ``optimizer.<key>``: the optimizer's flat ``state_dict()`` (``lr``, ``<i>.step``,
  ``<i>.exp_avg``, ...), numbers stored as 0-d arrays;
- metadata: ``format``, ``version``, ``epoch``, ``optimizer`` (its class name), ``extra`` (JSON)
  and ``sha256``, a digest of every tensor's name, dtype, shape and bytes.

:func:`load_checkpoint` checks everything (the file's structure, the digest, the keys and shapes
against the model and optimizer) before it changes either of them, and reports any problem as a
ValueError naming the file.

Examples
--------
>>> import os, tempfile
>>> from convlayers import nn
>>> from convlayers.optim import Adam
>>> model = nn.Linear(3, 2, rng=0)
>>> opt = Adam(model.parameters(), lr=0.01)
>>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
>>> save_checkpoint(path, model, opt, epoch=4, extra={"seed": 0})
>>> state = load_checkpoint(path, nn.Linear(3, 2, rng=1), Adam(model.parameters()))
>>> state.epoch, state.extra
(4, {'seed': 0})
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from convlayers.nn.module import Module
from convlayers.optim import Optimizer
from convlayers.weights import load_safetensors, load_safetensors_metadata, save_weights

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "convlayers.checkpoint"
VERSION = "1"

PathLike = str | os.PathLike[str]


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns besides restoring the model and optimizer."""

    epoch: int
    extra: dict[str, Any]


def _digest(tensors: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key])
        little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        h.update(f"{key}|{little.dtype.str}|{little.shape}|".encode())
        h.update(little.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def save_checkpoint(
    path: PathLike, model: Module, optimizer: Optimizer | None = None, epoch: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model``, ``optimizer``, ``epoch`` and ``extra`` to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination (any suffix but torch's ``.pt``/``.pth``/``.bin``/``.ckpt``/``.tar``;
        ``.safetensors`` is customary). The file is complete or absent, never half-written;
        a failed save leaves an existing file unchanged.
    model : Module
        Its ``state_dict()`` is saved.
    optimizer : Optimizer, optional
        Its flat ``state_dict()`` is saved (moments, step counts, learning rate).
    epoch : int
        Epochs completed.
    extra : mapping, optional
        JSON-serializable values (seed, history, settings), stored as text in the metadata.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a convlayers Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a convlayers Optimizer or None, got "
                        f"{type(optimizer).__name__}")
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    try:
        extra_text = json.dumps(dict(extra or {}), sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"extra must be a JSON-serializable mapping: {exc}") from exc
    tensors: dict[str, np.ndarray] = {f"model.{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            arr = np.asarray(v)
            if arr.dtype.kind == "i":
                arr = arr.astype(np.int64)
            tensors[f"optimizer.{k}"] = arr
    metadata = {
        "format": CHECKPOINT_FORMAT, "version": VERSION, "epoch": str(int(epoch)),
        "optimizer": "" if optimizer is None else type(optimizer).__name__,
        "extra": extra_text, "sha256": _digest(tensors),
    }
    save_weights(tensors, path, format="safetensors", metadata=metadata)


def _read(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    where = repr(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {where} does not exist")
    try:
        metadata = load_safetensors_metadata(path)
        tensors = load_safetensors(path)
    except ValueError as exc:
        raise ValueError(f"checkpoint {where} is truncated or corrupt: {exc}") from exc
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {where} is not a convlayers checkpoint (metadata format "
                         f"{metadata.get('format')!r}, expected {CHECKPOINT_FORMAT!r}); plain "
                         "weights load with convlayers.weights.load_weights")
    if metadata.get("version") != VERSION:
        raise ValueError(f"checkpoint {where} has version {metadata.get('version')!r}; this "
                         f"convlayers reads version {VERSION}")
    if metadata.get("sha256") != _digest(tensors):
        raise ValueError(f"checkpoint {where} is corrupt: its tensors do not match the sha256 "
                         "digest written with them")
    return tensors, metadata


def _check_optimizer(flat: dict[str, np.ndarray], optimizer: Optimizer, where: str) -> None:
    if "lr" not in flat:
        raise ValueError(f"checkpoint {where} holds no optimizer state (no 'optimizer.lr')")
    for name, value in flat.items():
        if name == "lr":
            continue
        index, _, key = name.partition(".")
        if not index.isdigit() or not key or int(index) >= len(optimizer.params):
            raise ValueError(f"checkpoint {where}: optimizer entry {name!r} does not match the "
                             f"optimizer's {len(optimizer.params)} parameters")
        shape = optimizer.params[int(index)].data.shape
        if value.ndim and value.shape != shape:
            raise ValueError(f"checkpoint {where}: optimizer entry {name!r} has shape "
                             f"{value.shape}, parameter {index} has shape {shape}")


def load_checkpoint(path: PathLike, model: Module, optimizer: Optimizer | None = None) -> Checkpoint:
    """Restore ``model`` (and ``optimizer``) in place from a :func:`save_checkpoint` file.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint.
    model : Module
        Receives the saved ``state_dict`` (keys and shapes must match exactly).
    optimizer : Optimizer, optional
        Receives the saved state; must be of the class that was saved, over the same parameters.

    Returns
    -------
    Checkpoint
        ``(epoch, extra)``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Naming ``path``: the file is truncated, corrupt (structure or digest), not a checkpoint,
        or does not fit the model or optimizer. Nothing is changed in that case.
    """
    where = repr(os.fspath(path))
    tensors, metadata = _read(path)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    flat = {k[len("optimizer."):]: v for k, v in tensors.items() if k.startswith("optimizer.")}
    try:
        epoch = int(metadata.get("epoch", ""))
        extra = json.loads(metadata.get("extra", "{}"))
    except ValueError as exc:
        raise ValueError(f"checkpoint {where} has corrupt metadata: {exc}") from exc
    if not isinstance(extra, dict):
        raise ValueError(f"checkpoint {where} has corrupt metadata: extra is not a JSON object")
    if optimizer is not None:
        saved = metadata.get("optimizer", "")
        if saved != type(optimizer).__name__:
            raise ValueError(f"checkpoint {where} holds {saved or 'no'} optimizer state, not "
                             f"{type(optimizer).__name__}")
        _check_optimizer(flat, optimizer, where)
    try:  # load_state_dict validates every key and shape before it copies anything
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"checkpoint {where} does not fit the model: {exc}") from exc
    if optimizer is not None:
        optimizer.load_state_dict(dict(flat))
    return Checkpoint(epoch, extra)
