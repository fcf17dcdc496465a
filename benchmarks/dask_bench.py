"""Throughput of convlayers.dask on a LocalCluster with 1 and 2 workers, next to dask-image.

Filter job: a SIZE x SIZE float32 image (generated on the workers, so nothing is shipped),
chunked CHUNK square, convolved with a 5x5 kernel (not separable: the direct path) in "same"
mode with mirrored edges, by

- ``convlayers.dask.convolve2d(x, k, "same", "symm")``,
- ``dask_image.ndfilters.convolve(x, k, mode="reflect")`` (``scipy.ndimage``; "reflect" is
  the same mirror, edge repeated),

each reduced to a sum so that only a scalar comes back. Both run in the same cluster, one after
the other; throughput is megapixels per second, and the ratio is convlayers / dask-image.

Model job (``--model``): ``convlayers.nn.MobileNetV2`` (random weights) over N 224x224 images
in batches, via ``convlayers.dask.predict``.

Usage::

    python benchmarks/dask_bench.py                 # 8192^2, chunks 2048
    python benchmarks/dask_bench.py --size 16384 --model
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _timed(fn, repeat: int) -> float:
    fn()  # warm-up: compiles numba kernels on the workers
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", action="store_true", help="also time MobileNetV2 inference")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    import dask.array as da
    from dask_image import ndfilters
    from distributed import Client, LocalCluster

    from convlayers import dask as cd

    cores = os.cpu_count() or 1
    kernel = np.random.default_rng(0).standard_normal((5, 5))
    mpx = args.size * args.size / 1e6
    print(f"filter: {args.size}x{args.size} float32, chunks {args.chunk}, 5x5 kernel, "
          f"{cores} cores; best of {args.repeat}")
    print(f"{'workers':>7} {'convlayers Mpx/s':>17} {'dask-image Mpx/s':>17} {'ratio':>6}")
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            cd.cap_threads(client)
            x = da.random.default_rng(1).random(
                (args.size, args.size), dtype=np.float32, chunks=args.chunk
            ).persist()
            k32 = kernel.astype(np.float32)
            ours = _timed(lambda x=x: cd.convolve2d(x, kernel, "same", "symm").sum().compute(),
                          args.repeat)
            theirs = _timed(
                lambda x=x, k=k32: ndfilters.convolve(x, k, mode="reflect").sum().compute(),
                args.repeat)
            print(f"{workers:>7} {mpx / ours:>17.1f} {mpx / theirs:>17.1f} {theirs / ours:>6.2f}")
            if args.model:
                from convlayers.nn import MobileNetV2

                model = MobileNetV2(rng=0)
                imgs = da.random.default_rng(2).random(
                    (args.images, 3, 224, 224), dtype=np.float32, chunks=(args.batch, 3, 224, 224)
                )
                t = _timed(lambda m=model, i=imgs: cd.predict(m, i, batch_size=args.batch), 1)
                print(f"{'':>7} MobileNetV2: {args.images / t:.1f} images/s "
                      f"({args.images} images, batch {args.batch})")


if __name__ == "__main__":
    main()
