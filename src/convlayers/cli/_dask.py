"""The ``--scheduler/--workers/--chunks`` flags of ``filter`` and ``predict``, run on Dask."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from convlayers.cli._common import CLIError


def add_dask_flags(parser: argparse.ArgumentParser, chunks: bool = True) -> None:
    """Add the flags that move a command onto Dask (the ``convlayers[dask]`` extra)."""
    group = parser.add_argument_group("running on Dask (pip install 'convlayers[dask]')")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="a dask.distributed scheduler (tcp://host:8786 or a scheduler file), "
                            "or threads | processes | local")
    group.add_argument("--workers", type=int, metavar="N",
                       help="start a local cluster of N worker processes (with --scheduler "
                            "threads/processes: N threads/processes)")
    if chunks:
        group.add_argument("--chunks", type=int, metavar="N",
                           help="process images in N x N pixel chunks (default: Dask's choice)")


def wants_dask(args: argparse.Namespace) -> bool:
    """Whether any Dask flag was given."""
    return any(getattr(args, name, None) is not None for name in ("scheduler", "workers", "chunks"))


@contextmanager
def dask_session(args: argparse.Namespace) -> Iterator[Any]:
    """The scheduler the flags name (``--workers`` alone means a local cluster)."""
    try:
        from convlayers import dask as cd
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    if getattr(args, "chunks", None) is not None and args.chunks < 1:
        raise CLIError(f"--chunks must be >= 1, got {args.chunks}")
    scheduler = args.scheduler
    if scheduler is None and args.workers is not None:
        scheduler = "local"
    try:
        with cd.session(scheduler, args.workers) as client:
            yield client
    except (OSError, TimeoutError) as exc:
        raise CLIError(f"cannot reach the Dask scheduler {args.scheduler!r}: {exc}") from None


def compute(collection: Any, client: Any, show_progress: bool) -> Any:
    """Compute a Dask collection, with a progress bar on stderr when asked."""
    if client is not None:
        future = client.compute(collection)
        if show_progress:
            from distributed import progress

            progress(future)
        return future.result()
    if show_progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar(out=sys.stderr):
            return collection.compute()
    return collection.compute()
