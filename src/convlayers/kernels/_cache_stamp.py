"""numba's on-disk cache of a kernel goes stale when any of the package's compiled code changes.

numba stamps each function's cache with its own source file only (its content hash, or its
modification time and size): a kernel of ``convlayers/inference/conv_last.py`` that calls the
register tiles of ``convlayers/kernels/simd.py`` has them compiled into its machine code, and
an edit of ``simd.py`` alone left it loading the old code. Measured here: a bug put into the
tiles (a direct convolution's last channels left unwritten) still gave torch's numbers from
the cache beside the package, and NaN from an empty one; a developer's tests, or an editable
install after ``git pull``, ran machine code that no longer matched the source.

:func:`install` adds to the stamp of every function defined under :data:`ROOTS` (this package)
a digest of all the package's files that define compiled code (:func:`compiled_sources`): a
change to any of them makes every such function's cache miss once, and compile again.
Functions of other packages keep numba's own stamp.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from functools import cache
from typing import Any

__all__ = ["ROOTS", "compiled_sources", "install", "sources_digest"]

#: Directories whose functions take the digest in their cache stamp (this package's).
ROOTS: list[str] = [os.path.dirname(os.path.dirname(os.path.realpath(__file__)))]

#: Text that marks a source file as defining compiled code.
_MARKERS = (b"njit", b"@intrinsic", b"register_jitable", b"@overload(")
#: Files (relative to a root) whose constants compiled code reads, though they define none:
#: ``config.CACHE_LINE_BYTES`` spaces the scratch rows of several kernels.
_CONSTANTS = ("config.py",)


def compiled_sources(root: str) -> list[str]:
    """The ``.py`` files under ``root`` (sorted) whose text defines compiled code, and those
    of :data:`_CONSTANTS` there.

    Examples
    --------
    >>> import os, convlayers
    >>> root = os.path.dirname(convlayers.__file__)
    >>> any(path.endswith(os.path.join("kernels", "simd.py")) for path in compiled_sources(root))
    True
    """
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, "rb") as source:
                    text = source.read()
                if os.path.relpath(path, root) in _CONSTANTS or any(
                        marker in text for marker in _MARKERS):
                    found.append(path)
    return found


@cache
def sources_digest(root: str) -> str:
    """SHA-256 of the paths (relative to ``root``) and contents of :func:`compiled_sources`,
    read once per process."""
    digest = hashlib.sha256()
    for path in compiled_sources(root):
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as source:
            digest.update(source.read() + b"\0")
    return digest.hexdigest()


def _root_of(path: str) -> str | None:
    """The entry of :data:`ROOTS` that holds ``path``, if any."""
    path = os.path.realpath(path)
    for root in ROOTS:
        with contextlib.suppress(ValueError):  # another drive
            if os.path.commonpath([path, root]) == root:
                return root
    return None


_numba_stamp: Any = None


def _stamp(self: Any) -> Any:
    """numba's source stamp, with :func:`sources_digest` of the root that holds the function's
    file."""
    stamp = _numba_stamp(self)
    root = _root_of(getattr(self, "_py_file", "") or "")
    return stamp if root is None else (stamp, sources_digest(root))


def install() -> bool:
    """Make the cache stamps of functions under :data:`ROOTS` carry :func:`sources_digest`
    (once per process; before any of them is decorated). False, and numba left as it is, where
    numba's cache locators lack the method this wraps."""
    global _numba_stamp
    from numba.core import caching

    mixin = getattr(caching, "_SourceFileBackedLocatorMixin", None)
    current = getattr(mixin, "get_source_stamp", None)
    if current is None:
        return False
    if current is _stamp:
        return True
    _numba_stamp = current
    mixin.get_source_stamp = _stamp  # type: ignore[union-attr]
    return True
