"""Compiled kernels (numba), imported lazily by the modules that use them."""
