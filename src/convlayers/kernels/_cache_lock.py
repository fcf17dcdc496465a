"""Processes that compile kernels at once share numba's on-disk cache safely.

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
"""

from __future__ import annotations

from typing import Any

from filelock import FileLock, Timeout

__all__ = ["install", "lock_path"]

#: Seconds a save waits for another process's save of the same function before giving up:
#: the machine code is then not cached (the next process compiles it again; the call that
#: compiled it goes on).
TIMEOUT = 600.0


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


def install() -> bool:
    """Make numba's cache saves take the lock (once per process). False, and numba left as it
    is, when its cache class lacks the methods this relies on (a numba this was not written
    for)."""
    from numba.core import caching

    cls = caching.IndexDataCacheFile
    if getattr(cls.save, "__wrapped_by_convlayers__", False):
        return True
    needed = ("_load_index", "_save_index", "_save_data", "_data_name")
    if not all(hasattr(cls, name) for name in needed):
        return False
    _locked_save.__wrapped_by_convlayers__ = True  # type: ignore[attr-defined]
    cls.save = _locked_save  # type: ignore[method-assign]
    return True
