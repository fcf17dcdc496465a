"""convlayers: convolutional layers from first principles on NumPy.

Exact to PyTorch, fast, and easy to see. Importing the package is cheap: compiled kernels,
plotting and optional integrations load on first use.
"""

import importlib
from typing import TYPE_CHECKING, Any

from convlayers import autograd, config, functional, nn, shapes
from convlayers.autograd import Tensor, is_grad_enabled, no_grad, tensor

if TYPE_CHECKING:
    from convlayers.inference import Plan, compile

# Loaded on first use, so that `import convlayers` stays light (tests/test_lean_import.py):
# the inference compiler imports numba.
_LAZY = {"Plan": "convlayers.inference", "compile": "convlayers.inference"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'convlayers' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "Plan", "Tensor", "__version__", "autograd", "compile", "config", "functional", "is_grad_enabled",
    "nn", "no_grad", "shapes", "tensor",
]
