"""Choosing a scheduler by name, and keeping workers x threads within the cores.

:func:`session` turns the CLI's ``--scheduler``/``--workers`` into a running scheduler for the
length of a ``with`` block; :func:`cap_threads` sets, on every worker, how many threads numba's
kernels (through :func:`convlayers.config.set_threads`), the BLAS (``threadpoolctl``) and torch
may use, so that Dask's worker threads times these inner threads never exceed a machine's
cores (distributed #9075: numba oversubscribes otherwise).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import dask

from convlayers import config

__all__ = ["SCHEDULERS", "cap_threads", "inner_threads", "local_caps", "session"]

#: Names :func:`session` accepts; anything else is taken as a scheduler address
#: (``tcp://host:8786``) or, ending in ``.json``, a scheduler file.
SCHEDULERS = ("threads", "processes", "sync", "synchronous", "local")


def inner_threads(dask_threads: int, cores: int | None = None) -> int:
    """Threads each task may use when ``dask_threads`` tasks share ``cores`` cores (>= 1).

    >>> inner_threads(2, cores=8), inner_threads(16, cores=8)
    (4, 1)
    """
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, dask_threads))


def _set_threads(n: int) -> int:
    """Cap this process's compiled kernels, BLAS and torch at ``n`` threads."""
    config.set_threads(n)  # numba kernels and scipy.fft workers follow it on every call
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scipy's usual stacks
        pass
    else:
        threadpool_limits(limits=n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n


@contextmanager
def local_caps(n: int) -> Iterator[None]:
    """Cap this process's kernels and BLAS at ``n`` threads inside a ``with`` block only."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        limits: Any = nullcontext()
    else:
        limits = threadpool_limits(limits=n)
    with config.settings(threads=n), limits:
        yield


def _cap_worker(totals: dict[str, int], threads: int | None, dask_worker: Any = None) -> int:
    """Run on a worker by :func:`cap_threads` (``client.run`` passes ``dask_worker``)."""
    if threads is None:
        host = dask_worker.address.rsplit(":", 1)[0] if dask_worker is not None else ""
        nthreads = dask_worker.state.nthreads if dask_worker is not None else 1
        threads = inner_threads(totals.get(host, nthreads))
    return _set_threads(threads)


def cap_threads(client: Any = None, threads: int | None = None) -> dict[str, int]:
    """Cap numba's, the BLAS's and torch's threads on every worker of ``client``.

    Parameters
    ----------
    client : distributed.Client, optional
        Default: the current client. Without one, the calling process is capped for the
        threaded scheduler (``cores // dask threads``).
    threads : int, optional
        Threads per task; default ``cores // (Dask threads of all workers on that host)``.

    Returns
    -------
    dict
        Worker address to the thread count it now uses (``{"local": n}`` without a client).

    Workers that join later (autoscaling) are not capped; call it again, or start workers with
    ``NUMBA_NUM_THREADS``/``OMP_NUM_THREADS`` set (see ``docs/dask.md``).
    """
    if client is None:
        client = _current_client()
    if client is None:
        n = threads or inner_threads(dask.config.get("num_workers", None) or os.cpu_count() or 1)
        return {"local": _set_threads(n)}
    totals: dict[str, int] = {}
    for addr, info in client.scheduler_info(n_workers=-1)["workers"].items():
        host = addr.rsplit(":", 1)[0]
        totals[host] = totals.get(host, 0) + int(info.get("nthreads", 1))
    return client.run(_cap_worker, totals, threads)


_LOCAL = ("threads", "threading", "processes", "multiprocessing", "sync", "synchronous",
          "single-threaded")


def _current_client() -> Any:
    """The default distributed client, unless Dask is configured for a local scheduler."""
    if dask.config.get("scheduler", None) in _LOCAL:
        return None
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover
        return None
    try:
        return default_client()
    except ValueError:
        return None


#: The least memory :func:`session` gives a "local" worker. Measured on Linux (x86-64, Python
#: 3.11, dask 2026.8): a worker process holds 66 MiB as it starts, 209 MiB once convlayers has
#: compiled one convolution and one filter, and about 400 MiB with the kernels the test suite
#: uses. Dask pauses a worker at 80% of its limit, so one that starts near it never runs a task.
MIN_WORKER_MEMORY = 512 * 2**20


def _worker_memory(memory_limit: str | int | float | None, n_workers: int) -> int | None:
    """Bytes per worker that ``memory_limit`` means (as ``distributed`` reads it), or None for
    no limit; refuse a limit under :data:`MIN_WORKER_MEMORY` instead of a cluster that hangs."""
    from dask.utils import parse_bytes

    if memory_limit is None or (isinstance(memory_limit, (int, float))
                                and not isinstance(memory_limit, bool) and memory_limit == 0):
        return None
    import psutil  # a dependency of distributed

    total = int(psutil.virtual_memory().total)
    if memory_limit == "auto":
        nbytes, how = total // n_workers, f"'auto' ({total >> 20} MiB / {n_workers} workers)"
    elif isinstance(memory_limit, float) and 0 < memory_limit <= 1:
        nbytes, how = int(total * memory_limit), f"{memory_limit} of {total >> 20} MiB"
    elif isinstance(memory_limit, (str, int, float)) and not isinstance(memory_limit, bool):
        try:
            nbytes = int(parse_bytes(memory_limit) if isinstance(memory_limit, str) else memory_limit)
        except (ValueError, TypeError) as err:
            raise ValueError(f"memory_limit must be bytes, a size such as '2GiB', a fraction of "
                             f"memory, 'auto' or None, got {memory_limit!r}") from err
        how = repr(memory_limit)
    else:
        raise TypeError(f"memory_limit must be a str, int, float or None, got {memory_limit!r}")
    if nbytes < MIN_WORKER_MEMORY:
        raise ValueError(
            f"memory_limit={how} gives each worker {nbytes >> 20} MiB, less than the "
            f"{MIN_WORKER_MEMORY >> 20} MiB a worker needs: it holds about 70 MiB as it starts "
            f"and 200-400 MiB once convlayers' kernels are compiled, and Dask pauses it at 80% of "
            f"its limit, so the work would never finish. Give at least "
            f"{MIN_WORKER_MEMORY >> 20} MiB per worker (e.g. memory_limit='1GiB'), fewer "
            f"workers, or memory_limit=None")
    return nbytes


def _check_workers(workers: int | None) -> int | None:
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be a positive int or None, got {workers!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return workers


@contextmanager
def session(
    scheduler: str | None = None, workers: int | None = None, *,
    memory_limit: str | int | float | None = "auto",
) -> Iterator[Any]:
    """Run the ``with`` block on the scheduler named ``scheduler``; yield its Client or None.

    Parameters
    ----------
    scheduler : str, optional
        - None: the current ``distributed`` client if there is one, else Dask's default
          (threads);
        - "threads", "processes", "sync": Dask's local schedulers (``workers`` threads or
          processes);
        - "local": a ``distributed.LocalCluster`` of ``workers`` single-threaded worker
          processes (default: one per core), closed at the end of the block;
        - an address such as "tcp://10.0.0.5:8786", or a scheduler file "/path/sched.json":
          connect to a running cluster (dask-jobqueue, Kubernetes, ``dask scheduler``); the
          cluster is left running.
    workers : int, optional
        Number of workers (threads for "threads"). Ignored for an address.
    memory_limit : str, int, float or None
        Per-worker memory limit for "local": bytes, a size ("2GiB"), a fraction of the
        machine's memory, "auto" (the machine's memory divided among workers) or None (no
        limit). A limit under :data:`MIN_WORKER_MEMORY` (512 MiB) raises ``ValueError``: a
        worker would pause near its start-up size and the work would hang.

    Yields
    ------
    distributed.Client or None
        The client (workers already capped with :func:`cap_threads`), or None for the local
        schedulers (this process capped instead for "threads").

    Examples
    --------
    >>> import dask.array as da
    >>> with session("sync") as client:
    ...     print(client, int(da.ones(4).sum().compute()))
    None 4
    """
    workers = _check_workers(workers)
    if scheduler is not None and not isinstance(scheduler, str):
        raise TypeError(f"scheduler must be a string or None, got {scheduler!r}")
    if scheduler is None:
        client = _current_client()
        if client is not None:
            cap_threads(client)
            yield client
            return
        scheduler = "threads"
    if scheduler in ("threads", "processes", "sync", "synchronous"):
        cfg: dict[str, Any] = {"scheduler": scheduler}
        if workers is not None:
            cfg["num_workers"] = workers
        with dask.config.set(cfg):
            n = inner_threads(workers or os.cpu_count() or 1) if scheduler == "threads" else None
            with local_caps(n) if n else nullcontext():
                yield None
        return
    from distributed import Client, LocalCluster

    if scheduler == "local":
        n_workers = workers or os.cpu_count() or 1
        limit = _worker_memory(memory_limit, n_workers)
        inner = inner_threads(n_workers)
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True,
            dashboard_address=None, memory_limit=limit or 0,
            env={"NUMBA_NUM_THREADS": str(inner), "OMP_NUM_THREADS": str(inner)},
        )
        try:
            with Client(cluster) as client:
                cap_threads(client)
                yield client
        finally:
            cluster.close()
        return
    kwargs = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
    with Client(**kwargs) as client:
        cap_threads(client)
        yield client
