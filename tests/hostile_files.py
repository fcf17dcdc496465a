"""Builders of hostile weight files (issue 16), shared by the hostile and the fuzz tests.

Nothing here allocates what the files describe: deflate bombs are made of one small
full-flushed segment repeated (a valid raw deflate stream), and zips are written by hand so
that a member can declare gigabytes while the file stays a few megabytes.
"""

from __future__ import annotations

import collections
import io
import pickle
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Address-space cap of the subprocess that loads a hostile file (bytes).
MEMORY_LIMIT = 1536 * 2**20

_SEGMENT = 1 << 20  # one zero segment of a deflate bomb


def zero_deflate(nbytes: int, prefix: bytes = b"") -> bytes:
    """A raw deflate stream of ``prefix`` then ``nbytes`` zeros, about nbytes/1000 long."""
    def segment(data: bytes) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)

    whole, rest = divmod(nbytes, _SEGMENT)
    parts = [segment(prefix) if prefix else b"", segment(bytes(_SEGMENT)) * whole]
    if rest:
        parts.append(segment(bytes(rest)))
    parts.append(zlib.compressobj(9, zlib.DEFLATED, -15).flush())  # the empty final block
    return b"".join(parts)


def write_zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> None:
    """Write a zip by hand: (name, payload, method 0 stored / 8 deflated, declared size).

    The CRC is right up to 64 MiB of content; for larger deflated bombs it is left 0, which a
    reader only notices after inflating everything (the blow-up this reproduces).
    """
    out, central = io.BytesIO(), io.BytesIO()
    for name, payload, method, size in members:
        crc = 0
        if method == 0:
            crc = zlib.crc32(payload)
        elif size <= 2**26:
            crc = zlib.crc32(zlib.decompress(payload, -15))
        offset = out.tell()
        encoded = name.encode()
        fields = (20, 0, method, 0, 0x21, crc, len(payload), size, len(encoded))
        out.write(struct.pack("<4s5HIIIHH", b"PK\x03\x04", *fields, 0) + encoded + payload)
        central.write(struct.pack("<4s6HIIIHHHHHII", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0,
                                  0, offset) + encoded)
    count, start, body = len(members), out.tell(), central.getvalue()
    out.write(body + struct.pack("<4s4HIIH", b"PK\x05\x06", 0, 0, count, count, len(body),
                                 start, 0))
    path.write_bytes(out.getvalue())


class StorageRef:
    """Pickles as torch's persistent storage record (zip or, with ``legacy``, old format)."""

    def __init__(self, key: str, numel: int, stype: Any = None, legacy: bool = False) -> None:
        self.key, self.numel, self.legacy = key, numel, legacy
        self.stype = torch.FloatStorage if stype is None else stype


class TensorRef:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage: StorageRef, size: tuple[int, ...], stride: tuple[int, ...],
                 offset: int = 0) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple[Any, ...]:
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, StorageRef):
            record = ("storage", obj.stype, obj.key, "cpu", obj.numel)
            return (*record, None) if obj.legacy else record
        return None


def torch_pickle(obj: Any) -> bytes:
    """``obj`` pickled as torch.save would, StorageRef/TensorRef standing for storages/tensors."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def torch_zip(path: Path, obj: Any, storages: dict[str, tuple[bytes, int, int]]) -> None:
    """A torch zip checkpoint: data.pkl of ``obj`` plus storages (payload, method, size)."""
    members = [("archive/data.pkl", torch_pickle(obj), 0, len(torch_pickle(obj))),
               ("archive/byteorder", b"little", 0, 6), ("archive/version", b"3\n", 0, 2)]
    members += [(f"archive/data/{k}", p, m, n) for k, (p, m, n) in storages.items()]
    write_zip(path, members)


def torch_legacy(path: Path, obj: Any, data: dict[str, tuple[int, bytes]]) -> None:
    """A legacy torch file: header pickles, ``obj``, the key list, then (count, bytes) per key."""
    header = b"".join(pickle.dumps(v, protocol=2) for v in
                      (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    body = b"".join(struct.pack("<q", count) + raw for count, raw in data.values())
    path.write_bytes(header + torch_pickle(obj) + pickle.dumps(list(data), protocol=2) + body)


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """The .npy header (version 1.0) of an array of ``shape`` and ``descr``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def safetensors_bytes(header: str, data: bytes = b"") -> bytes:
    """A safetensors file from header text (not validated, so it may be hostile)."""
    blob = header.encode()
    return struct.pack("<Q", len(blob)) + blob + data


_CHILD = """
import contextlib, io, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
mode, paths = sys.argv[1], sys.argv[2:]
image = paths.pop() if mode == "cli" else ""
for path in paths:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            if mode == "cli":
                from convlayers.cli import main
                runs = []
                for argv in (["predict", path, image], ["summary", path]):
                    err.seek(0)
                    err.truncate()
                    runs.append("rc=%d %s" % (main(argv), err.getvalue().strip()))
                result = " || ".join(runs)
            else:
                from convlayers.weights import load_weights
                load_weights(path)
                result = "loaded"
    except BaseException as exc:
        result = "%s: %s" % (type(exc).__name__, exc)
    print(path, "->", result.replace(chr(10), " | "), flush=True)
"""


def load_limited(paths: list[Path], mode: str = "load", limit: int = MEMORY_LIMIT,
                 timeout: float = 120) -> dict[str, str]:
    """Load each file in a subprocess under ``RLIMIT_AS = limit``; ``{path: outcome}``.

    ``mode="cli"`` runs ``convlayers predict <file> <image>`` (the last path is the image) and
    ``convlayers summary <file>`` instead; the outcome is ``rc=<status> <stderr> || ...``.
    """
    args = [str(p) for p in paths]
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(limit=limit), mode, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                               "OMP_WAIT_POLICY": "PASSIVE", "PATH": "/usr/bin:/bin"})
    outcome: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        path, _, result = line.partition(" -> ")
        outcome[path] = result
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    return outcome


def rlimit_available() -> bool:
    """Whether this platform can cap a process's address space."""
    return hasattr(resource, "RLIMIT_AS")
