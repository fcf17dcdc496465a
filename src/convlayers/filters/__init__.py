"""Classic image filters: a named filter bank and SciPy-exact ``convolve2d``/``correlate2d``.

- :data:`FILTERS` maps a name to a read-only float64 kernel: the seed's six (``vertical``,
  ``horizontal``, ``sobel_x``, ``sobel_y``, ``blur``, ``laplacian``), ``prewitt_x/_y``,
  ``scharr_x/_y``, ``sharpen``, ``emboss``, and ``gaussian``, ``box``, ``unsharp`` at the
  defaults of their builders :func:`gaussian`, :func:`box`, :func:`unsharp`.
- :func:`convolve2d` flips the kernel (``scipy.signal.convolve2d``); :func:`correlate2d` does
  not (``scipy.signal.correlate2d``, the seed's loop, PyTorch's ``conv2d``).
- :func:`apply_filter` handles grayscale/color and uint8/float photos;
  :func:`sobel_gradient` returns gradient magnitude and direction.

Some kernels, drawn (row 0 at the top)::

    sobel_x = [1, 2, 1]^T x [-1, 0, 1]     laplacian        sharpen          emboss
        -1  0  1                          -1 -1 -1          0 -1  0        -2 -1  0
        -2  0  2                          -1  8 -1         -1  5 -1        -1  1  1
        -1  0  1                          -1 -1 -1          0 -1  0         0  1  2

Examples
--------
>>> from convlayers.filters import FILTERS, apply_filter
>>> sorted(FILTERS)[:4]
['blur', 'box', 'emboss', 'gaussian']
>>> apply_filter([[0, 0, 9, 9]] * 3, "blur").round(1)
array([[0., 3., 6., 9.],
       [0., 3., 6., 9.],
       [0., 3., 6., 9.]])
"""

from __future__ import annotations

from convlayers.filters.apply import apply_filter, sobel_gradient
from convlayers.filters.bank import FILTERS, box, gaussian, get_filter, unsharp
from convlayers.filters.convolve import convolve2d, correlate2d
from convlayers.filters.engine import result_dtype

__all__ = [
    "FILTERS",
    "apply_filter",
    "box",
    "convolve2d",
    "correlate2d",
    "gaussian",
    "get_filter",
    "result_dtype",
    "sobel_gradient",
    "unsharp",
]
