"""Scale-out on Dask: the library's filters, convolutions, pools and models over dask arrays.

Everything here builds lazy ``dask.array`` graphs (``map_overlap`` for the halo that a kernel
needs) and runs on whatever scheduler is active: threads by default, or a
``dask.distributed`` cluster (a ``LocalCluster`` on one machine, dask-jobqueue or Kubernetes on
many), unchanged. See ``docs/dask.md``.

- :func:`convolve2d`, :func:`correlate2d`, :func:`apply_filter`: equal to
  :mod:`convlayers.filters` on the whole image, whatever the chunking.
- :func:`conv2d`, :func:`max_pool2d`, :func:`avg_pool2d`: ``(C, H, W)`` or ``(N, C, H, W)``
  chunked spatially and along N, equal to :mod:`convlayers.functional`.
- :func:`predict`: batched inference of a model over a dask array or a list of image files,
  the weights sent to each worker once.
- :func:`open_image`, :func:`save`: zarr stores and ordinary image files, each output appearing
  under its final name only when complete.
- :func:`session`, :func:`cap_threads`: a scheduler from a name (the CLI's ``--scheduler``).

Requires the ``dask`` extra: ``pip install convlayers[dask]``.
"""

from __future__ import annotations

try:
    import dask.array  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "convlayers.dask needs dask[array], distributed and zarr: "
        "install convlayers[dask] (pip install 'convlayers[dask]')"
    ) from exc

from convlayers.dask.cluster import cap_threads, session
from convlayers.dask.conv import avg_pool2d, conv2d, max_pool2d
from convlayers.dask.filters import apply_filter, convolve2d, correlate2d
from convlayers.dask.inference import default_preprocess, predict
from convlayers.dask.storage import open_image, save

__all__ = [
    "apply_filter",
    "avg_pool2d",
    "cap_threads",
    "conv2d",
    "convolve2d",
    "correlate2d",
    "default_preprocess",
    "max_pool2d",
    "open_image",
    "predict",
    "save",
    "session",
]
