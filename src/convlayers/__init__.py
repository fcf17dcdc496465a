"""convlayers: convolutional layers from first principles on NumPy.

Exact to PyTorch, fast, and easy to see. Importing the package is cheap: compiled kernels,
plotting and optional integrations load on first use.
"""

from convlayers import shapes

__version__ = "0.1.0"

__all__ = ["__version__", "shapes"]
