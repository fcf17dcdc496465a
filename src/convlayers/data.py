"""Sample data shipped inside the package: no network, no extra dependency.

The photo is "Chelsea the cat" by Stefan van der Walt, from scikit-image's sample data,
dedicated to the public domain (CC0); see ``assets/LICENSE-chelsea.txt``.

Examples
--------
>>> from convlayers.data import sample_photo
>>> sample_photo().shape, sample_photo(gray=True).shape
((300, 451, 3), (300, 451))
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from convlayers.io import read_image

__all__ = ["sample_photo"]

_PHOTO = "chelsea.png"


def sample_photo(gray: bool = False) -> np.ndarray:
    """The bundled sample photo: Chelsea the cat (451 x 300 pixels, CC0).

    Parameters
    ----------
    gray : bool, default False
        Return luminance only, Pillow's ITU-R 601-2 conversion
        ``L = R * 299/1000 + G * 587/1000 + B * 114/1000``, rounded.

    Returns
    -------
    ndarray of uint8
        Shape ``(300, 451, 3)`` (RGB) or ``(300, 451)`` (gray); a new array on every call.

    Examples
    --------
    >>> img = sample_photo()
    >>> img.shape, img.dtype
    ((300, 451, 3), dtype('uint8'))
    >>> sample_photo(gray=True).shape
    (300, 451)
    """
    if not isinstance(gray, (bool, np.bool_)):
        raise TypeError(f"gray must be True or False, got {gray!r}")
    ref = resources.files("convlayers") / "assets" / _PHOTO
    with resources.as_file(ref) as path:
        return read_image(path, "L" if gray else "RGB")
