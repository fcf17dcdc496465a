"""Weight files on disk, read and written without torch and without executing anything.

- :func:`load_weights` / :func:`save_weights`: one entry point; the format is detected from the
  file's bytes (torch zip checkpoint, safetensors, ``.npz``); writes are atomic.
- :func:`load_torch_state_dict`: ``torch.save`` files through an unpickler that only rebuilds
  tensors; anything else raises :class:`UnsafeWeightsError` before it runs.
- :func:`save_safetensors` / :func:`load_safetensors`: the safetensors format in pure NumPy.

Every reader counts what it is about to allocate against a cap (``max_bytes=``; by default 64
times the file's size, at least 256 MiB, at most :func:`convlayers.config.max_array_bytes`), so
a small hostile file (a stride-0 tensor, a deflate bomb, a header declaring 1e11 elements) is
refused with a ``ValueError`` naming it before the allocation. ``ValueError`` (with its
subclass :class:`UnsafeWeightsError`) is the only error a malformed file raises.

Examples
--------
>>> import os, tempfile
>>> import numpy as np
>>> p = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> save_weights({"fc.weight": np.ones((2, 3), np.float32)}, p)
>>> load_weights(p)["fc.weight"].shape
(2, 3)
"""

from convlayers.weights._common import UnsafeWeightsError
from convlayers.weights.formats import detect_format, load_weights, save_weights
from convlayers.weights.npz import load_npz, save_npz
from convlayers.weights.safetensors_io import (
    load_safetensors,
    load_safetensors_metadata,
    save_safetensors,
)
from convlayers.weights.state_dicts import select_state_dict
from convlayers.weights.torch_pickle import load_torch_checkpoint, load_torch_state_dict

__all__ = [
    "UnsafeWeightsError",
    "detect_format",
    "load_npz",
    "load_safetensors",
    "load_safetensors_metadata",
    "load_torch_checkpoint",
    "load_torch_state_dict",
    "load_weights",
    "save_npz",
    "save_safetensors",
    "save_weights",
    "select_state_dict",
]
