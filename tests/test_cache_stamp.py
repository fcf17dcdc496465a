"""A cached kernel recompiles when compiled code in another file of its package changes.

numba stamps a function's cache with its own file only; :mod:`convlayers.kernels._cache_stamp`
adds a digest of the package's compiled sources. The oracle is the source itself: after the
callee's file changes, the caller must return what the new source computes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from convlayers.kernels import _cache_stamp

CALLEE = """
from numba import njit

@njit(cache=True)
def offset():
    return {value}
"""

CALLER = """
from numba import njit
from pkg.callee import offset

@njit(cache=True)
def shifted(x):
    return x + offset()
"""

# Prints shifted(1), after installing the stamp for the package's folder (or not).
RUN = """
import sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "stamp":
    from convlayers.kernels import _cache_stamp
    _cache_stamp.ROOTS.append(sys.argv[1] + "/pkg")
    _cache_stamp.install()
from pkg.caller import shifted
print(shifted(1))
"""


def _package(root: Path, value: int) -> None:
    pkg = root / "pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "callee.py").write_text(textwrap.dedent(CALLEE.format(value=value)))
    (pkg / "caller.py").write_text(textwrap.dedent(CALLER))


def _shifted(root: Path, mode: str) -> int:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(root / f"cache-{mode}")}
    done = subprocess.run([sys.executable, str(root / "run.py"), str(root), mode], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.parametrize("mode", ["stamp", "plain"])
def test_a_change_to_a_callee_file_reaches_the_cached_caller(tmp_path: Path, mode: str) -> None:
    (tmp_path / "run.py").write_text(textwrap.dedent(RUN))
    _package(tmp_path, 10)
    assert _shifted(tmp_path, mode) == 11
    _package(tmp_path, 20)  # only callee.py changes; caller.py keeps its bytes and stamp
    if mode == "stamp":
        assert _shifted(tmp_path, mode) == 21
    else:  # numba alone loads the caller's old machine code: the defect the stamp removes
        assert _shifted(tmp_path, mode) == 11


def test_the_digest_follows_compiled_sources_and_constants(tmp_path: Path) -> None:
    (tmp_path / "kernel.py").write_text("from numba import njit\n")
    (tmp_path / "plain.py").write_text("x = 1\n")
    (tmp_path / "config.py").write_text("CACHE_LINE_BYTES = 64\n")
    sources = [os.path.basename(p) for p in _cache_stamp.compiled_sources(str(tmp_path))]
    assert sources == ["config.py", "kernel.py"]
    before = _cache_stamp.sources_digest.__wrapped__(str(tmp_path))
    (tmp_path / "plain.py").write_text("x = 2\n")
    assert _cache_stamp.sources_digest.__wrapped__(str(tmp_path)) == before
    (tmp_path / "config.py").write_text("CACHE_LINE_BYTES = 128\n")
    assert _cache_stamp.sources_digest.__wrapped__(str(tmp_path)) != before


def test_the_package_kernels_carry_the_digest() -> None:
    from numba.core import caching

    from convlayers.kernels import simd

    assert caching._SourceFileBackedLocatorMixin.get_source_stamp is _cache_stamp._stamp
    stamp = simd.conv_band._cache._cache_file._source_stamp
    assert stamp[1] == _cache_stamp.sources_digest(_cache_stamp.ROOTS[0])
    assert _cache_stamp.install()  # a second install keeps the one wrapper
    assert caching._SourceFileBackedLocatorMixin.get_source_stamp is _cache_stamp._stamp
