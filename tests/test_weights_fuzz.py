"""Fuzzing the weight readers (issue 16): random bytes, and mutations of valid torch (zip and
legacy), safetensors and npz files, must only ever load or raise ``ValueError`` (the documented
error; :class:`~convlayers.weights.UnsafeWeightsError` is a subclass), quickly, and within the
memory cap given as ``max_bytes`` (peak traced by ``tracemalloc``, which sees NumPy's buffers).
The worst cases, files that describe gigabytes, run under ``RLIMIT_AS`` in
``test_weights_hostile.py``."""

from __future__ import annotations

import functools
import io
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convlayers.weights import load_weights, save_npz, save_safetensors

CAP = 4 * 2**20  # max_bytes of every fuzzed load
SECONDS = 5.0  # per example, generous for a busy 2-core CI machine
EXAMPLES = max(10, settings.default.max_examples // 3)


def _tensors() -> dict[str, np.ndarray]:
    return {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
            "conv.bias": np.array([0.5, -1.0], np.float16),
            "steps": np.array([3, 4], np.int64)}


def _torch_bytes(legacy: bool) -> bytes:
    buf = io.BytesIO()
    state = {k: torch.from_numpy(v) for k, v in _tensors().items()}
    obj = {"state_dict": state, "epoch": 3, "names": ["a", "b"], "view": state["conv.weight"][0]}
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _written(tmp: Path, name: str, write) -> bytes:
    path = tmp / name
    write(_tensors(), path)
    return path.read_bytes()


@functools.cache
def seeds() -> dict[str, bytes]:
    """One valid file of each format (built once)."""
    tmp = Path(tempfile.mkdtemp())
    return {
        "torch": _torch_bytes(legacy=False),
        "legacy": _torch_bytes(legacy=True),
        "safetensors": _written(tmp, "w.safetensors", lambda t, p: save_safetensors(t, p)),
        "npz": _written(tmp, "w.npz", lambda t, p: save_npz(t, p)),
        "npz_deflated": _written(tmp, "d.npz", lambda t, p: save_npz(t, p, compress=True)),
    }


@st.composite
def _mutation(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "repeat"]))
        i = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and out:
            out[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, ord("9"), ord("["), ord("{")]))
        elif kind == "cut":
            del out[i:]
        elif kind == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "repeat":
            n = draw(st.integers(1, 32))
            out[i:i] = bytes(out[i:i + n]) * draw(st.integers(2, 64))
    return bytes(out)


def _zip_with_member_mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """Mutate one member's content and re-zip it with the right CRC, so the mutation reaches
    the pickle or .npy parser instead of stopping at the zip's checksum."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    target = draw(st.integers(0, len(members) - 1))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for k, (info, blob) in enumerate(members):
            zf.writestr(info, draw(_mutation(blob)) if k == target else blob)
    return out.getvalue()


@st.composite
def _hostile_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", *seeds(), "torch-member", "npz-member"]))
    if kind == "random":
        head = draw(st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x93NUMPY",
                                     b"\x10\x00\x00\x00\x00\x00\x00\x00{"]))
        return head + draw(st.binary(max_size=512))
    if kind == "torch-member":
        return _zip_with_member_mutated(draw, seeds()["torch"])
    if kind == "npz-member":
        return _zip_with_member_mutated(draw, seeds()[draw(st.sampled_from(["npz", "npz_deflated"]))])
    return draw(_mutation(seeds()[kind]))


def _load_checked(path: Path, data: bytes) -> str:
    """Load ``data`` from ``path``: 'ok' or 'ValueError', within the time and memory caps."""
    path.write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        loaded = load_weights(path, max_bytes=CAP)
        outcome = "ok"
        assert all(isinstance(v, np.ndarray) for v in loaded.values())
    except ValueError as exc:
        assert str(path) in str(exc), exc  # every refusal names the file
        outcome = "ValueError"
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < SECONDS, f"{elapsed:.1f} s"
    assert peak < 2 * CAP + 64 * len(data) + 2**20, f"peak {peak:,} bytes"
    return outcome


def test_the_seeds_load(tmp_path: Path) -> None:
    """The unmutated files load, so the mutations start from valid files."""
    for name, data in seeds().items():
        assert _load_checked(tmp_path / name, data) == "ok", name


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                        HealthCheck.too_slow])
@given(blob=_hostile_bytes())
def test_only_value_errors_come_out(tmp_path: Path, blob: bytes) -> None:
    _load_checked(tmp_path / "fuzzed.bin", blob)
