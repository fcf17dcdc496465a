"""Two processes compiling one cached function at once keep every entry of numba's cache.

Without the lock of :mod:`convlayers.kernels._cache_lock`, both read the same index, pick the same
data file and rewrite the index: in trials here 1-3 of 40 signatures were lost (compiled again
on the next load) in half the runs, and an index entry may name another signature's code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from convlayers.kernels import _cache_lock

MODULE = """
from numba import njit

@njit(cache=True)
def bump(x, y):
    return x + y + 1
"""

# Compiles bump for every pair (first type, second type) once the start file appears.
WORKER = """
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convlayers.kernels  # installs the lock
import numpy as np
import racy
start = sys.argv[1]
while not os.path.exists(start):
    time.sleep(0.001)
for a in sys.argv[2].split(","):
    for b in sys.argv[3].split(","):
        racy.bump(np.dtype(a).type(1), np.dtype(b).type(1))
"""

# Loads every signature: each must come from the cache (no compile) and add up right.
CHECK = """
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import racy
wrong = [(a, b) for a in sys.argv[1].split(",") for b in sys.argv[2].split(",")
         if racy.bump(np.dtype(a).type(1), np.dtype(b).type(1)) != 3]
print(sum(racy.bump.stats.cache_hits.values()), sum(racy.bump.stats.cache_misses.values()),
      len(wrong))
"""

FIRSTS = ("int8,uint8,int16,uint16,complex64", "uint32,uint64,bool,complex128,int32")
SECONDS = "int64,float64,float32,int32"


def test_two_processes_compiling_at_once_lose_no_cache_entry(tmp_path: Path) -> None:
    for name, text in (("racy.py", MODULE), ("worker.py", WORKER), ("check.py", CHECK)):
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    start = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(start), firsts,
                                 SECONDS], env=env, stderr=subprocess.PIPE, text=True)
               for firsts in FIRSTS]
    start.touch()  # both start compiling together (each waits for this file after its imports)
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-2000:]
    done = subprocess.run([sys.executable, str(tmp_path / "check.py"), ",".join(FIRSTS), SECONDS],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    hits, misses, wrong = map(int, done.stdout.split())
    assert (hits, misses, wrong) == (40, 0, 0)


def test_the_lock_is_installed_once() -> None:
    from numba.core import caching

    assert _cache_lock.install() and _cache_lock.install()
    assert caching.IndexDataCacheFile.save is _cache_lock._locked_save


def test_a_save_that_cannot_get_the_lock_skips_the_cache(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holding the lock past the timeout: the save is dropped (numba's own load
    finds nothing), no error reaches the compiling call; once free, the save lands."""
    from filelock import FileLock
    from numba.core import caching

    _cache_lock.install()
    cache = caching.IndexDataCacheFile(str(tmp_path), "kernel-1.py311", ("stamp", 1))
    monkeypatch.setattr(_cache_lock, "TIMEOUT", 0.05)
    with FileLock(_cache_lock.lock_path(cache._index_path)):
        cache.save(("sig",), {"code": 1})
    assert cache.load(("sig",)) is None
    cache.save(("sig",), {"code": 1})
    assert cache.load(("sig",)) == {"code": 1}


SLOW_SAVER = """
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convlayers.kernels  # installs the locks
from convlayers.kernels import _cache_lock
save = _cache_lock._numba_save

def slow_save(self, sig, data):  # the compile lock is held until the save is done
    open(sys.argv[1], "w").close()
    time.sleep(3.0)
    save(self, sig, data)

_cache_lock._numba_save = slow_save
import racy
print(racy.bump(1, 2))
"""

LATE_COMER = """
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convlayers.kernels
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
import racy
start = time.perf_counter()
print(racy.bump(1, 2), sum(racy.bump.stats.cache_hits.values()),
      sum(racy.bump.stats.cache_misses.values()), round(time.perf_counter() - start, 1))
"""


def test_a_process_waits_for_another_compiling_the_same_function(tmp_path: Path) -> None:
    """One process compiles ``bump`` and takes three seconds to save it; another that needs
    it meanwhile waits and loads the saved code (a cache hit, no compile of its own) instead
    of compiling it a second time."""
    for name, text in (("racy.py", MODULE), ("first.py", SLOW_SAVER), ("late.py", LATE_COMER)):
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    saving = tmp_path / "saving"
    first = subprocess.Popen([sys.executable, str(tmp_path / "first.py"), str(saving)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    late = subprocess.run([sys.executable, str(tmp_path / "late.py"), str(saving)], env=env,
                          capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0 and out.split() == ["4"], err[-2000:]
    assert late.returncode == 0, late.stderr[-2000:]
    value, hits, misses, waited = late.stdout.split()
    assert (value, hits, misses) == ("4", "1", "0")
    assert float(waited) >= 1.0  # it did wait for the other's save


def test_a_failed_compile_gives_its_compile_lock_back(tmp_path: Path) -> None:
    """A compile that raises (a typing error) saves nothing: its compile lock is released, so
    that no other process waits for it."""
    (tmp_path / "broken.py").write_text(textwrap.dedent("""
        from numba import njit

        @njit(cache=True)
        def broken(x):
            return x.no_such_attribute
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        import broken  # type: ignore[import-not-found]
        from numba.core.errors import TypingError

        _cache_lock.install()
        with pytest.raises(TypingError):
            broken.broken(1)
        index = _cache_lock._index_of(broken.broken._cache)
        assert _cache_lock.compiling_path(index) not in _cache_lock._compiling
        from filelock import FileLock

        with FileLock(_cache_lock.compiling_path(index), timeout=0):
            pass  # free
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("broken", None)


def test_a_helper_that_does_not_wait_is_told_busy(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``wait_for_others`` off, a miss whose compile lock another holds raises at
    once and counts it; numba's own load is tried first, so a cached function never is."""
    from filelock import FileLock
    from numba.core import caching

    _cache_lock.install()
    (tmp_path / "idle.py").write_text(textwrap.dedent(MODULE))
    sys.path.insert(0, str(tmp_path))
    try:
        import idle  # type: ignore[import-not-found]

        cache = idle.bump._cache
        assert isinstance(cache, caching.Cache)
        path = _cache_lock.compiling_path(_cache_lock._index_of(cache))
        monkeypatch.setattr(_cache_lock, "wait_for_others", False)
        before = _cache_lock.busy_count
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from filelock import FileLock
            with FileLock({path!r}):
                print("held", flush=True)
                time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with pytest.raises(Exception) as caught:
                idle.bump(1, 2)
            assert _cache_lock.busy_count == before + 1, caught.value
        finally:
            holder.kill()
            holder.wait()
        with FileLock(path, timeout=5):
            pass
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("idle", None)
