"""The ``convlayers`` command line: pictures, explanations and arithmetic of convolutions.

Each command group lives in its own module of this package and exposes
``register(subparsers)``, which adds its parsers and sets ``run=function(args) -> int`` on
each. The modules in :data:`COMMAND_MODULES` come first in ``--help``; any other public module
of the package that defines ``register`` is picked up after them, so a new command (summary,
train, predict, classify, explore, bench, ...) is one new file. Every module is imported to build
the parser, so import heavy dependencies (torch, dask, a model) inside the ``run`` function.

User errors (a missing file, a file that is not an image, a bad kernel spec, sizes that do not
fit) print one line, ``convlayers: error: ...``, and exit with status 2; never a traceback.

Examples
--------
>>> main(["shape", "--input", "32", "--kernel", "3", "--padding", "1"])  # doctest: +ELLIPSIS
convolution: ...
output size: 32
0
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from convlayers.cli._common import CLIError

__all__ = ["COMMAND_MODULES", "CLIError", "build_parser", "main"]

COMMAND_MODULES = ("demo", "images", "arithmetic", "walkthrough", "animation")

PROG = "convlayers"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become one-line :class:`CLIError`."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


def _modules() -> list[Any]:
    names = list(COMMAND_MODULES)
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name not in names:
            names.append(info.name)
    modules = [importlib.import_module(f"{__name__}.{n}") for n in names]
    return [m for m in modules if hasattr(m, "register")]


def build_parser() -> argparse.ArgumentParser:
    """The full parser, every command module registered."""
    from convlayers import __version__

    parser = _Parser(
        prog=PROG,
        description="Convolutional layers from first principles: filters on photos, pictures "
        "and animations of the arithmetic, explanations, and layer costs.",
        epilog="Run 'convlayers COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND",
                                required=True)
    for module in _modules():
        module.register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    0 on success, 2 on a user error (one line on stderr), 130 when interrupted.
    """
    try:
        args = build_parser().parse_args(None if argv is None else list(argv))
        return int(args.run(args) or 0)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, OSError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("CONVLAYERS_DEBUG"):
            raise
        print(f"{PROG}: error: internal error ({type(exc).__name__}: {_one_line(exc)}); "
              "set CONVLAYERS_DEBUG=1 to see the traceback", file=sys.stderr)
        return 1
