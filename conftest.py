"""Every code block of README.md and docs/*.md runs as a test (collected by Sybil).

- ```` ```python ```` blocks run top to bottom in one namespace per document, as a reader runs
  them in one session.
- ```` ```console ```` blocks: each line after ``$ `` is a command; ```` ```bash ````, ```` ```sh ````
  and ```` ```shell ```` blocks: every line is (``\\`` continues a line, ``#`` starts a comment).
  A ``convlayers ...`` command runs through :func:`convlayers.cli.main` and must exit 0. Any
  other program (``pip``, ``make``, a server) is an error unless the block is marked.
- ```` ```text ```` blocks are output or file trees, not code.
- ``<!-- skip: next "why" -->`` on the line before a block: deliberately not run; pytest
  reports it as skipped with that reason.

Each document runs in a fresh temporary folder holding ``my_photo.jpg`` and ``photos/`` (two
photos), the inputs the command-line examples name; the working folder is put back after.
"""

from __future__ import annotations

import contextlib
import io
import os

# The compile notice ("compiling kernels for first use") goes to stderr on a cold numba cache,
# as in CI's fresh clone; the tests read stderr, so it is silenced for them (and for the CLI
# subprocesses they start, which inherit the environment). tests/test_plan.py turns it on to
# test it.
os.environ.setdefault("CONVLAYERS_COMPILE_NOTICE", "0")
os.environ.setdefault("CONVLAYERS_BACKGROUND_COMPILE", "0")
# ``make test`` runs two pytest-xdist workers sharing numba's cache (next to the sources, as a
# user's installation): a kernel one compiles, the other loads. Saves from both at once are safe
# under convlayers.kernels._cache_lock (numba's own index is not: tests/test_cache_lock.py).
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

try:
    from sybil import Sybil
    from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser
except ImportError:  # the demo's environment has no test tools; `make test` installs Sybil
    pass
else:
    SHELLS = ("console", "bash", "sh", "shell")

    def _commands(source: str, console: bool) -> list[str]:
        """The commands of a shell block: ``$`` lines of a console block, else every line."""
        lines, current = [], ""
        for raw in source.splitlines():
            line = raw.rstrip()
            if not current and console:
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            command = (current + line).strip()
            current = ""
            if command and not command.startswith("#"):
                lines.append(command)
        return lines

    def _shell_evaluator(language: str) -> Any:
        def evaluate(example: Any) -> None:
            from convlayers.cli import main

            for command in _commands(example.parsed, console=language == "console"):
                argv = shlex.split(command, comments=True)
                if argv[0] != "convlayers":
                    raise AssertionError(
                        f"{command!r} is not a convlayers command, so it cannot run here: put "
                        f'<!-- skip: next "why" --> before the block')
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = main(argv[1:])
                assert code == 0, (f"{command!r} exited {code}:\n{out.getvalue()[-2000:]}"
                                   f"{err.getvalue()[-2000:]}")
        return evaluate

    def _setup(namespace: dict[str, Any]) -> None:
        from convlayers.data import sample_photo
        from convlayers.io import write_image

        folder = Path(tempfile.mkdtemp(prefix="convlayers-docs-"))
        namespace["__docs_folder__"], namespace["__docs_cwd__"] = folder, os.getcwd()
        photo = sample_photo()
        write_image(folder / "my_photo.jpg", photo)
        (folder / "photos").mkdir()
        write_image(folder / "photos" / "cat.jpg", photo)
        write_image(folder / "photos" / "cat_mirrored.png", photo[:, ::-1])
        os.chdir(folder)

    def _teardown(namespace: dict[str, Any]) -> None:
        os.chdir(namespace["__docs_cwd__"])
        shutil.rmtree(namespace["__docs_folder__"], ignore_errors=True)

    pytest_collect_file = Sybil(
        parsers=[SkipParser(), PythonCodeBlockParser(),
                 *(CodeBlockParser(language, _shell_evaluator(language)) for language in SHELLS)],
        patterns=["README.md", "docs/*.md"],
        setup=_setup,
        teardown=_teardown,
    ).pytest()
