"""Batched inference over a dask array or a folder of images, the model sent once per worker.

On a ``distributed`` cluster the model (its weights with it) is scattered with
``broadcast=True``: it is pickled once, copied to every worker once, and each batch task refers
to it by key (dask-examples #35, dask #5585), instead of travelling inside every task. On the
local schedulers it is one node of the graph, shared by every task.

Examples
--------
>>> import numpy as np, dask.array as da
>>> double = lambda batch: 2 * batch.mean(axis=(2, 3))
>>> x = da.ones((5, 3, 4, 4), chunks=(2, 3, 4, 4))
>>> predict(double, x, batch_size=2)[:, 0]
array([2., 2., 2., 2., 2.])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from convlayers.dask.cluster import _current_client, cap_threads, inner_threads, local_caps

__all__ = ["default_preprocess", "predict"]

PathLike = str | os.PathLike[str]


def default_preprocess(image: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)`` or ``(H, W, C)`` to float32 ``(C, H, W)`` in [0, 1]; floats kept as is.

    >>> default_preprocess(np.full((2, 3), 255, np.uint8)).shape
    (1, 2, 3)
    """
    arr = np.asarray(image)
    arr = arr.astype(np.float32) / np.float32(255) if arr.dtype == np.uint8 else arr
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def _load_batch(paths: Sequence[PathLike], preprocess: Callable[[np.ndarray], Any]) -> np.ndarray:
    from convlayers.io import read_image

    return np.stack([np.asarray(preprocess(read_image(p))) for p in paths])


def _run(model: Any, batch: np.ndarray) -> np.ndarray:
    return np.asarray(model(batch))


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


def _batches(
    images: Any, batch_size: int, preprocess: Callable[[np.ndarray], Any] | None
) -> list[Any]:
    """One delayed batch per ``batch_size`` images, in input order."""
    if isinstance(images, (str, os.PathLike)):
        raise TypeError(
            "images must be a dask array or a list of image paths, got one path; wrap it in a list"
        )
    if isinstance(images, (da.Array, np.ndarray)):
        if preprocess is not None:
            raise ValueError("preprocess applies to image paths only; transform the array instead")
        x = images if isinstance(images, da.Array) else da.from_array(images)
        if x.ndim != 4:
            raise ValueError(f"images must have 4 dimensions (N, C, H, W), got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError("images must not be empty")
        x = x.rechunk({0: batch_size, 1: -1, 2: -1, 3: -1})
        return list(x.to_delayed().ravel())
    if not isinstance(images, Sequence) or not all(isinstance(p, (str, os.PathLike)) for p in images):
        raise TypeError(
            f"images must be a dask array (N, C, H, W) or a list of image paths, got {type(images).__name__}"
        )
    if not images:
        raise ValueError("images must not be empty")
    prep = preprocess or default_preprocess
    load = dask.delayed(_load_batch, pure=True)
    return [
        load([os.fspath(p) for p in images[i : i + batch_size]], prep)
        for i in range(0, len(images), batch_size)
    ]


def predict(
    model: Callable[[np.ndarray], Any],
    images: Any,
    *,
    batch_size: int = 32,
    preprocess: Callable[[np.ndarray], Any] | None = None,
    client: Any = None,
) -> np.ndarray:
    """Run ``model`` over ``images`` in batches of ``batch_size``, on the active scheduler.

    Parameters
    ----------
    model : callable
        ``model(batch) -> array`` on a float ``(B, C, H, W)`` batch: a ``convlayers.nn.Module``,
        a torch-like module or any picklable function. A model with ``eval()`` is switched to
        evaluation mode for the run (and back to training mode afterwards if it was in it).
        Its weights travel inside it, once per worker (pickle the state with
        ``state_dict()``/``load_state_dict()`` as usual; nothing else is required).
    images : dask.array.Array or ndarray of shape (N, C, H, W), or list of paths
        Paths are read with :func:`convlayers.io.read_image` on the workers and turned into
        ``(C, H, W)`` arrays by ``preprocess``; all must give the same shape.
    batch_size : int, default 32
        Images per model call (and per task).
    preprocess : callable, optional
        For paths: image array ``(H, W[, C])`` to ``(C, H, W)``; default
        :func:`default_preprocess` (uint8 to float32 in [0, 1], channels first).
    client : distributed.Client, optional
        Default: the current client if any, else Dask's local scheduler (see
        :func:`convlayers.dask.session`).

    Returns
    -------
    ndarray
        The outputs of all batches concatenated along axis 0, in input order: equal to
        ``model(all_images)`` up to the batch-size dependence of the model's own arithmetic.

    Examples
    --------
    >>> import numpy as np
    >>> predict(lambda b: b.sum(axis=(1, 2, 3)), np.ones((3, 1, 2, 2)), batch_size=2)
    array([4., 4., 4.])
    """
    if not callable(model):
        raise TypeError(f"model must be callable (model(batch) -> array), got {type(model).__name__}")
    batch_size = _check_batch_size(batch_size)
    if preprocess is not None and not callable(preprocess):
        raise TypeError(f"preprocess must be callable or None, got {preprocess!r}")
    batches = _batches(images, batch_size, preprocess)
    was_training = bool(getattr(model, "training", False))
    if callable(getattr(model, "eval", None)):
        model.eval()  # type: ignore[attr-defined]
    try:
        client = client if client is not None else _current_client()
        run = dask.delayed(_run, pure=True)
        if client is not None:
            cap_threads(client)
            [remote] = client.scatter([model], broadcast=True, hash=False)
            tasks = [run(remote, b) for b in batches]
            results = client.gather(client.compute(tasks))
        else:
            shared = dask.delayed(model, pure=False, traverse=False)
            tasks = [run(shared, b) for b in batches]
            nthreads = dask.config.get("num_workers", None) or os.cpu_count() or 1
            with local_caps(inner_threads(nthreads)):
                results = dask.compute(*tasks)
    finally:
        if was_training and callable(getattr(model, "train", None)):
            model.train(True)  # type: ignore[attr-defined]
    return np.concatenate([np.asarray(r) for r in results], axis=0)
