"""Processes that compile kernels at once share numba's on-disk cache safely, and compile each
function once.

numba keeps one index per cached function (``name-line.pyXY.nbi``: signature -> data file)
and numbers the data files by the entries it finds in the index. Two processes that add
different signatures of one function at the same time both read the old index, both pick the
same data file and both rewrite the index: one entry is lost, and the other may name the
other's machine code (numba's issues #4807 and #10128: a crash on the next load). That is
every first run of several workers on one installation (a Dask cluster on one machine, the
test suite's workers).

:func:`install` wraps numba's save in an exclusive lock on a file beside the index
(``.nbi.lock``, with :mod:`filelock`): inside it the index is read again, so each process sees
the other's entries, and the data file is written before the index that names it. Loading
needs no lock: both files are replaced atomically, and an entry appears only after its data.

Two processes that miss the cache for one function at once both compiled it (seconds each, for
a parallel kernel): the first run of several workers, or a process and the helper that
compiles the common kernels beside it (:mod:`convlayers.kernels.precompile`). Here a process
that misses the cache takes a second lock beside the index (``.nbi.compiling``) before it
compiles, and holds it until the machine code is saved (or the compile has failed); one that
finds that lock held waits for it (up to :data:`COMPILE_WAIT`) and then loads what the other
saved. A compile takes the locks of the functions it calls while it holds its own, callers
before callees, and calls do not go round in circles: no two processes wait on each other.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from filelock import FileLock, Timeout

__all__ = ["CompileDeferredError", "CompilingElsewhereError", "compiling_path", "deferred_here",
           "deferring_misses", "install", "lock_path"]

#: Seconds a save waits for another process's save of the same function before giving up:
#: the machine code is then not cached (the next process compiles it again; the call that
#: compiled it goes on).
TIMEOUT = 600.0


#: Seconds a process that misses the cache waits for another that compiles the same function
#: before it compiles the function itself.
COMPILE_WAIT = 120.0

#: The compile locks this process holds: the lock file's path -> its lock.
_compiling: dict[str, FileLock] = {}

#: False: a miss whose function another process compiles raises
#: :class:`CompilingElsewhereError` at once instead of waiting (the helper of
#: :mod:`convlayers.kernels.precompile` then compiles something else first).
wait_for_others = True

#: How many times this process has raised :class:`CompilingElsewhereError`.
busy_count = 0


class CompilingElsewhereError(RuntimeError):
    """Another process compiles this function, and this one does not wait
    (:data:`wait_for_others`)."""


class CompileDeferredError(RuntimeError):
    """A cache miss inside :func:`deferring_misses` while the helper process compiles the
    common kernels: the caller serves the call without this kernel (the engine's NumPy
    strategy) and the helper compiles it."""


#: How many times this process has raised :class:`CompileDeferredError`.
deferred_count = 0

_deferring = threading.local()


@contextlib.contextmanager
def deferring_misses() -> Iterator[None]:
    """Within it, in this thread, a cache miss of a kernel raises :class:`CompileDeferredError`
    instead of compiling, while this process's helper runs
    (:func:`convlayers.kernels.precompile.helping`; started by the miss if it has not been).
    numba may wrap the error in its own: callers compare :func:`deferred_here`."""
    before = getattr(_deferring, "on", False)
    _deferring.on = True
    try:
        yield
    finally:
        _deferring.on = before


def _defer(path: str) -> None:
    """Raise :class:`CompileDeferredError` for the miss at ``path`` where
    :func:`deferring_misses` asks for it and the helper runs."""
    global deferred_count
    if not getattr(_deferring, "on", False):
        return
    from convlayers.kernels import precompile

    if precompile.helping():
        deferred_count += 1
        _deferring.count = deferred_here() + 1
        raise CompileDeferredError(path)


def deferred_here() -> int:
    """How many times this thread has raised :class:`CompileDeferredError` (callers compare
    it before and after a call: another thread's deferral does not count)."""
    return int(getattr(_deferring, "count", 0))


def compiling_path(index_path: str) -> str:
    """The lock file that a process compiling the function of the cache index at
    ``index_path`` holds."""
    return index_path + ".compiling"


def lock_path(index_path: str) -> str:
    """The lock file of the cache index at ``index_path``."""
    return index_path + ".lock"


def _locked_save(self: Any, key: Any, data: Any) -> None:
    """numba's ``IndexDataCacheFile.save`` under the index's lock, data file first (not saved
    when the lock does not come within :data:`TIMEOUT`)."""
    try:
        with FileLock(lock_path(self._index_path), timeout=TIMEOUT):
            _save_locked(self, key, data)
    except Timeout:
        return


def _save_locked(self: Any, key: Any, data: Any) -> None:
    """The save itself, the lock held: the index read again, so another process's entries
    stay and its data files keep their numbers."""
    overloads = self._load_index()
    data_name = overloads.get(key)
    if data_name is None:
        taken = set(overloads.values())
        number = 1
        while self._data_name(number) in taken:
            number += 1
        data_name = self._data_name(number)
    self._save_data(data_name, data)
    if overloads.get(key) != data_name:
        overloads[key] = data_name
        self._save_index(overloads)


def _index_of(cache: Any) -> str:
    """The index path of numba's per-function ``Cache``."""
    return str(cache._cache_file._index_path)


def _load_or_wait(self: Any, sig: Any, target_context: Any) -> Any:
    """numba's ``Cache.load_overload``; on a miss, the function's compile lock taken (another
    process compiling it: waited for, then its code loaded) and kept for the compile that
    follows (released by :func:`_save_and_release` or :func:`release_failed`)."""
    data = _numba_load(self, sig, target_context)
    if data is not None or not getattr(self, "_enabled", True) or not hasattr(self, "_cache_file"):
        return data
    path = compiling_path(_index_of(self))
    if path in _compiling:  # this process compiles the function already (another signature)
        return None
    _defer(path)
    try:  # the directory, as numba makes it before its first save
        self._impl.locator.ensure_cache_path()
    except (AttributeError, OSError):
        return None
    lock = FileLock(path, timeout=COMPILE_WAIT if wait_for_others else 0)
    try:
        lock.acquire()
    except Timeout:
        if wait_for_others:
            return None
        _count_busy()
        raise CompilingElsewhereError(path) from None
    except OSError:  # a cache directory this process cannot lock in: compile, as numba would
        return None
    data = _numba_load(self, sig, target_context)
    if data is not None:
        lock.release()
        return data
    _compiling[path] = lock
    return None


def _count_busy() -> None:
    global busy_count
    busy_count += 1


def _save_and_release(self: Any, sig: Any, data: Any) -> None:
    """numba's ``Cache.save_overload``, then the function's compile lock released."""
    try:
        _numba_save(self, sig, data)
    finally:
        _release(compiling_path(_index_of(self)))


def _release(path: str) -> None:
    lock = _compiling.pop(path, None)
    if lock is not None:
        lock.release()


def release_failed(event: Any) -> None:
    """A numba ``numba:compile`` end event: if the compile failed, its compile lock released
    (nothing will be saved)."""
    # numba 0.68's ``Event.is_failed`` is true when there is *no* exception: read the details
    if getattr(event, "_exc_details", None) is None:
        return
    cache = getattr(event.data.get("dispatcher"), "_cache", None)
    if cache is not None and hasattr(cache, "_cache_file"):
        _release(compiling_path(_index_of(cache)))


_numba_load: Any = None
_numba_save: Any = None


def install() -> bool:
    """Make numba's cache saves take the lock and its compiles take the compile lock (once
    per process). False, and numba left as it is, when its cache classes lack the methods
    this relies on (a numba this was not written for)."""
    global _numba_load, _numba_save
    from numba.core import caching, event

    cls, per_function = caching.IndexDataCacheFile, caching.Cache
    if getattr(cls.save, "__wrapped_by_convlayers__", False):
        return True
    needed = ("_load_index", "_save_index", "_save_data", "_data_name")
    if not all(hasattr(cls, name) for name in needed) or not all(
            hasattr(per_function, name) for name in ("load_overload", "save_overload")):
        return False
    _locked_save.__wrapped_by_convlayers__ = True  # type: ignore[attr-defined]
    cls.save = _locked_save  # type: ignore[method-assign]
    _numba_load, _numba_save = per_function.load_overload, per_function.save_overload
    per_function.load_overload = _load_or_wait  # type: ignore[method-assign]
    per_function.save_overload = _save_and_release  # type: ignore[method-assign]

    class _Failed(event.Listener):
        def on_start(self, ev: Any) -> None:
            pass

        def on_end(self, ev: Any) -> None:
            release_failed(ev)

    event.register("numba:compile", _Failed())
    return True
