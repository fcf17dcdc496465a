"""Find the ``{name: array}`` state dict inside a loaded checkpoint of any common shape."""

from __future__ import annotations

from typing import Any

import numpy as np

from convlayers.weights._common import short_repr

# checkpoint keys that conventionally hold the model's state dict, most likely first
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "ema", "params")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()
    )


def select_state_dict(obj: Any, key: str | None = None, where: str = "checkpoint") -> dict[str, np.ndarray]:
    """Find the ``{name: array}`` mapping inside a loaded checkpoint.

    With ``key`` given, ``obj[key]`` must be it. Otherwise ``obj`` itself if it maps names to
    arrays, else its single entry that does (or, among several, the first of ``state_dict``,
    ``model_state_dict``, ``model``, ``net``, ``module``, ``ema``, ``params``).

    >>> w = np.zeros(2)
    >>> select_state_dict({"epoch": 3, "state_dict": {"w": w}, "opt": {"lr": 0.1}})
    {'w': array([0., 0.])}
    """
    if key is not None:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str or None, got {key!r}")
        if not isinstance(obj, dict) or key not in obj:
            held = short_repr(sorted(map(short_repr, obj))) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"key={key!r} is not in {where}; it holds {held}")
        if not _is_state_dict(obj[key]):
            raise ValueError(f"key={key!r}: {where}[{key!r}] is not a mapping of str to tensors")
        return dict(obj[key])
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        found = [k for k, v in obj.items() if isinstance(k, str) and _is_state_dict(v) and v]
        preferred = [k for k in _STATE_DICT_KEYS if k in found]
        if len(found) == 1 or preferred:
            return dict(obj[found[0] if len(found) == 1 else preferred[0]])
        if found:
            raise ValueError(
                f"{where} holds several state dicts {short_repr(found)}; choose one with key=..."
            )
    raise ValueError(
        f"{where} holds no state dict (a mapping of str to tensors), got {type(obj).__name__}; "
        "pass key=... to name the entry that holds it"
    )
