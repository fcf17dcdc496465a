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
import re
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from convlayers.nn.module import Module
from convlayers.optim import SGD, Adam, Optimizer
from convlayers.weights import load_safetensors, load_safetensors_metadata, save_weights

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "load_checkpoint", "remove_stale_temps",
           "save_checkpoint"]

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


#: A temporary file of a save this much older than now is from a save that died (kill -9).
STALE_TEMP_SECONDS = 10.0


def remove_stale_temps(path: PathLike) -> list[str]:
    """Delete the temporary files that killed saves of ``path`` left behind; return their names.

    :func:`save_checkpoint` writes through :func:`convlayers.io.atomic_write`, whose temporary
    file ``.<name>.<8 random chars>.tmp`` sits beside the target until the final rename; a
    process killed in between (kill -9, power loss) leaves it. Only files of exactly that
    naming, for this target, last modified more than :data:`STALE_TEMP_SECONDS` ago (so not a
    save in progress) are removed; nothing else in the folder is touched. Both
    :func:`save_checkpoint` and :func:`load_checkpoint` (a resume) call this.

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> stale = os.path.join(folder, ".ck.safetensors.abcd1234.tmp")
    >>> open(stale, "wb").close(); os.utime(stale, (0, 0))
    >>> remove_stale_temps(os.path.join(folder, "ck.safetensors"))
    ['.ck.safetensors.abcd1234.tmp']
    """
    folder, name = os.path.split(os.path.realpath(os.fspath(path)))
    pattern = re.compile(r"\." + re.escape(name[:64]) + r"\.[a-z0-9_]{8}\.tmp")
    cutoff = time.time() - STALE_TEMP_SECONDS
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if (pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < cutoff):
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    return sorted(removed)


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
    remove_stale_temps(path)
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


def _few(items: list[str]) -> str:
    return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def _check_model(state: dict[str, np.ndarray], model: Module, where: str) -> None:
    """Refuse, before anything is copied, a checkpoint saved from a differently shaped model."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} (checkpoint {state[k].shape}, model {own[k].shape})" for k in own
                if k in state and state[k].shape != own[k].shape]
    retyped = [f"{k} (checkpoint {state[k].dtype}, model {own[k].dtype})" for k in own
               if k in state and not np.can_cast(state[k].dtype, own[k].dtype, "same_kind")]
    problems = [f"{what}: {_few(keys)}" for what, keys in (
        ("other shapes", reshaped), ("other dtypes", retyped),
        ("missing from the checkpoint", missing), ("not in the model", unexpected)) if keys]
    if problems:
        raise ValueError(
            f"checkpoint {where} does not fit the model: it was saved from a model whose "
            f"parameters differ from this one's (names and shapes; was it built with other "
            f"settings, e.g. other widths?): {'; '.join(problems)}"
        )


def _expected_state(optimizer: Optimizer) -> tuple[frozenset[str], bool] | None:
    """Per-parameter state keys the optimizer's step needs, and whether all must be present
    together (None for optimizer classes this module does not know)."""
    if isinstance(optimizer, Adam):
        keys = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if optimizer.amsgrad else set())
        return frozenset(keys), True
    if isinstance(optimizer, SGD):
        return frozenset({"momentum_buffer"}), False
    return None


def _check_optimizer(flat: dict[str, np.ndarray], optimizer: Optimizer, where: str) -> None:
    """Validate the saved optimizer state's structure, so that a crafted or partial state is
    refused here, naming the entry, instead of failing later inside ``step()``."""
    if "lr" not in flat:
        raise ValueError(f"checkpoint {where} holds no optimizer state (no 'optimizer.lr')")
    lr = flat["lr"]
    if lr.ndim or lr.dtype.kind not in "fiu" or not np.isfinite(lr) or lr < 0:
        raise ValueError(f"checkpoint {where}: optimizer entry 'lr' must be a finite number >= 0, "
                         f"got {lr!r}")
    count = len(optimizer.params)
    per_param: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
    for name, value in flat.items():
        if name == "lr":
            continue
        number, _, key = name.partition(".")
        if not number.isdigit() or not key or int(number) >= count:
            raise ValueError(
                f"checkpoint {where}: optimizer entry {name!r} does not match the optimizer's "
                f"{count} parameters (the model's parameters differ from the checkpoint's)")
        per_param[int(number)][key] = value
    expected = _expected_state(optimizer)
    for index, state in enumerate(per_param):
        shape = optimizer.params[index].data.shape
        if expected is not None:
            keys, together = expected
            unknown, absent = sorted(set(state) - keys), sorted(keys - set(state))
            if unknown or (together and state and absent):
                raise ValueError(
                    f"checkpoint {where}: the {type(optimizer).__name__} state of parameter "
                    f"{index} has entries {sorted(state)}; it needs "
                    f"{'all or none' if together else 'some or none'} of {sorted(keys)}"
                    + (f" (missing {[f'{index}.{k}' for k in absent]})" if absent and state else "")
                    + (f" (unknown {[f'{index}.{k}' for k in unknown]})" if unknown else ""))
        for key, value in state.items():
            entry = f"optimizer entry '{index}.{key}'"
            if key == "step":
                if value.ndim or value.dtype.kind not in "iu" or value < 1:
                    raise ValueError(f"checkpoint {where}: {entry} must be an int >= 1, "
                                     f"got {value!r}")
            elif value.shape != shape or (expected is not None and value.dtype.kind != "f"):
                raise ValueError(f"checkpoint {where}: {entry} has shape {value.shape} and dtype "
                                 f"{value.dtype}, parameter {index} has shape {shape}")


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
    remove_stale_temps(path)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    flat = {k[len("optimizer."):]: v for k, v in tensors.items() if k.startswith("optimizer.")}
    try:
        epoch = int(metadata.get("epoch", ""))
        extra = json.loads(metadata.get("extra", "{}"))
    except ValueError as exc:
        raise ValueError(f"checkpoint {where} has corrupt metadata: {exc}") from exc
    if not isinstance(extra, dict):
        raise ValueError(f"checkpoint {where} has corrupt metadata: extra is not a JSON object")
    _check_model(state, model, where)
    if optimizer is not None:
        saved = metadata.get("optimizer", "")
        if saved != type(optimizer).__name__:
            raise ValueError(f"checkpoint {where} holds {saved or 'no'} optimizer state, not "
                             f"{type(optimizer).__name__}")
        _check_optimizer(flat, optimizer, where)
    try:  # checked above; load_state_dict validates again before it copies anything
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"checkpoint {where} does not fit the model: {exc}") from exc
    if optimizer is not None:
        optimizer.load_state_dict(dict(flat))
    return Checkpoint(epoch, extra)
