"""The rules the docs' collector (the repository's conftest.py, Sybil) relies on.

Every fenced block in README.md and docs/*.md names its language: ``python`` and the shell
languages run as tests, ``text`` is output. A block that does not run says why.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python", "console", "bash", "sh", "shell"}
FENCE = re.compile(r"^```(\S*)\s*$")
SKIP = re.compile(r"<!--\s*skip:\s*(\w+)(.*?)-->")


def _blocks(text: str) -> list[tuple[int, str, str]]:
    """(line, language, the line before) of each fenced block."""
    lines, blocks, inside = text.splitlines(), [], False
    for i, line in enumerate(lines):
        match = FENCE.match(line)
        if match and not inside:
            blocks.append((i + 1, match.group(1), lines[i - 1] if i else ""))
        if match:
            inside = not inside
    return blocks


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_block_names_its_language(path: Path) -> None:
    for line, language, _ in _blocks(path.read_text(encoding="utf-8")):
        assert language in RUN | {"text"}, (
            f"{path.name}:{line}: a fenced block needs a language (python, console, bash, sh, "
            f"shell run as tests; text is output), got {language!r}")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_skipped_block_says_why(path: Path) -> None:
    for line, _, before in _blocks(path.read_text(encoding="utf-8")):
        if (match := SKIP.search(before)) is not None:
            assert match.group(1) == "next" and re.fullmatch(r'\s*"[^"]{10,}"\s*', match.group(2)), (
                f'{path.name}:{line}: write <!-- skip: next "the reason" --> before the block')


def test_the_collector_runs_the_docs() -> None:
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'testpaths = \[.*"README.md".*"docs".*\]', config)
    assert "pytest_collect_file = Sybil(" in (ROOT / "conftest.py").read_text(encoding="utf-8")
