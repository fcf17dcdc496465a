"""convlayers: convolutional layers from first principles on NumPy.

Exact to PyTorch, fast, and easy to see. Importing the package is cheap: compiled kernels,
plotting and optional integrations load on first use.
"""

from convlayers import config

config.prefer_passive_openmp()  # before anything loads OpenMP; see its docstring

from convlayers import autograd, functional, nn, shapes  # noqa: E402
from convlayers.autograd import Tensor, is_grad_enabled, no_grad, tensor  # noqa: E402
from convlayers.inference import Plan, compile  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Plan", "Tensor", "__version__", "autograd", "compile", "functional", "is_grad_enabled", "nn",
    "no_grad", "shapes", "tensor",
]
