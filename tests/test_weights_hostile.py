"""Hostile weight files (issue 16, items 1 and 7): each small file that describes a huge
allocation, or a malformed header, is refused with a ValueError naming the file, before the
allocation, inside a process whose address space is capped (``RLIMIT_AS``), and the CLI exits 2
on each. The files are built here; none of the memory they describe is ever allocated."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlayers import config
from convlayers.weights import (
    _budget,
    load_npz,
    load_safetensors,
    load_torch_checkpoint,
    load_weights,
    save_weights,
)
from convlayers.weights._budget import EXPANSION, SMALL_FILE_BYTES, Budget
from hostile_files import (
    MEMORY_LIMIT,
    StorageRef,
    TensorRef,
    load_limited,
    npy_header,
    rlimit_available,
    safetensors_bytes,
    torch_legacy,
    torch_zip,
    write_zip,
    zero_deflate,
)

pytestmark = pytest.mark.skipif(not rlimit_available(), reason="needs RLIMIT_AS (POSIX)")

GB = 10**9


def _shared_list(depth: int) -> list:
    nest: list = []
    for _ in range(depth):
        nest = [nest, nest]
    return nest


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every blow-up file of issue 16 item 1 (and the huge declarations of item 7)."""
    d = tmp_path_factory.mktemp("hostile")
    files: dict[str, Path] = {}

    def path(name: str) -> Path:
        files[name] = d / name
        return files[name]

    # a stride-0 60000x60000 float32 tensor over one element: 14.4 GB if copied
    wide = torch.zeros(1).expand(60000, 60000)
    torch.save({"w": wide}, path("stride0.pt"))
    torch.save({"w": wide}, path("stride0_legacy.pt"), _use_new_zipfile_serialization=False)
    # 200 distinct tensors viewing one 64 MB storage: 12.8 GB if each is copied
    base = torch.zeros(16 * 2**20)
    torch.save({f"t{i}": base.view(-1) for i in range(200)}, path("views.pt"))
    # a 4 GB storage deflated into a ~4 MB zip
    storage = StorageRef("0", GB)
    torch_zip(path("deflate.pt"), {"w": TensorRef(storage, (GB,), (1,))},
              {"0": (zero_deflate(4 * GB), 8, 4 * GB)})
    # data.pkl itself inflating to 4 GB
    write_zip(path("deflate_pickle.pt"),
              [("archive/data.pkl", zero_deflate(4 * GB), 8, 4 * GB)])
    # a 2.5 GB float32 array deflated into a ~2.5 MB npz
    header = npy_header((625_000_000,))
    write_zip(path("bomb.npz"),
              [("w.npy", zero_deflate(2_500_000_000, header), 8, len(header) + 2_500_000_000)])
    # item 7: declarations of 1e11 or 25e9 elements in tiny files
    write_zip(path("declares.npz"), [("w.npy", npy_header((25 * GB,), "<f8") + bytes(64), 0,
                                      len(npy_header((25 * GB,), "<f8")) + 64)])
    one = StorageRef("0", 1)
    torch_zip(path("huge_view.pt"), {"w": TensorRef(one, (100 * GB,), (0,))},
              {"0": (bytes(4), 0, 4)})
    legacy = StorageRef("0", 100 * GB, legacy=True)
    torch_legacy(path("huge_legacy.pt"), {"w": TensorRef(legacy, (100 * GB,), (1,))},
                 {"0": (100 * GB, bytes(64))})
    header_text = ('{"w":{"dtype":"F32","shape":[100000000000],'
                   '"data_offsets":[0,400000000000]}}')
    sparse = path("sparse.safetensors")
    sparse.write_bytes(safetensors_bytes(header_text))
    with open(sparse, "r+b") as f:  # a sparse file that really holds 400 GB of data
        f.truncate(8 + len(header_text) + 400 * GB)
    return files


def test_small_builders_make_files_that_real_readers_accept(tmp_path: Path) -> None:
    """The bomb builders are sound: at a small scale, zipfile/numpy/torch read them as meant."""
    header = npy_header((1000,))
    write_zip(tmp_path / "small.npz", [("w.npy", zero_deflate(4000, header), 8, len(header) + 4000)])
    with np.load(tmp_path / "small.npz") as npz:
        assert npz["w"].shape == (1000,) and not npz["w"].any()
    assert len(zero_deflate(4 * GB)) < 5_000_000
    storage = StorageRef("0", 6)
    torch_zip(tmp_path / "small.pt", {"w": TensorRef(storage, (2, 3), (3, 1))},
              {"0": (np.arange(6, dtype="<f4").tobytes(), 0, 24)})
    want = torch.load(tmp_path / "small.pt", weights_only=True)["w"].numpy()
    np.testing.assert_array_equal(load_weights(tmp_path / "small.pt")["w"], want)
    legacy = StorageRef("0", 6, legacy=True)
    torch_legacy(tmp_path / "small_legacy.pt", {"w": TensorRef(legacy, (3, 2), (1, 3))},
                 {"0": (6, np.arange(6, dtype="<f4").tobytes())})
    want = torch.load(tmp_path / "small_legacy.pt", weights_only=True)["w"].numpy()
    np.testing.assert_array_equal(load_weights(tmp_path / "small_legacy.pt")["w"], want)


def test_the_memory_cap_of_the_subprocess_bites(tmp_path: Path) -> None:
    """Control: a file the cap must stop (its 2 GB really materialised) fails under RLIMIT_AS
    when the library's own limit is lifted, so the next tests measure something."""
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(1).expand(2 * GB // 4)}, path)
    script = f"from convlayers.weights import load_weights; load_weights({str(path)!r}, max_bytes=10**12)"
    proc = subprocess.run(
        [sys.executable, "-c", f"import resource; resource.setrlimit(resource.RLIMIT_AS, "
         f"({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n{script}"],
        capture_output=True, text=True, timeout=120, env={"OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode != 0 and "MemoryError" in proc.stderr


def test_each_hostile_file_is_refused_within_bounded_memory(hostile: dict[str, Path]) -> None:
    outcome = load_limited(list(hostile.values()))
    for name, path in hostile.items():
        got = outcome.get(str(path), "no result (the process died)")
        assert got.startswith("ValueError: ") and str(path) in got, (name, got)
    assert "limit" in outcome[str(hostile["stride0.pt"])]
    assert "limit" in outcome[str(hostile["views.pt"])]
    assert "limit" in outcome[str(hostile["bomb.npz"])]


def test_the_cli_exits_2_with_one_line_on_each(hostile: dict[str, Path], tmp_path: Path) -> None:
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    outcome = load_limited([*hostile.values(), image], mode="cli")
    for name, path in hostile.items():
        got = outcome.get(str(path), "no result (the process died)")
        runs = got.split(" || ")
        assert len(runs) == 2 and " | " not in got, (name, got)  # predict, summary: one line each
        assert all(run.startswith("rc=2 convlayers: error: ") for run in runs), (name, got)
        assert str(path) in runs[0], (name, got)  # the loader's own message, naming the file
        if path.suffix in (".npz", ".safetensors"):  # what `summary` reads as saved weights
            assert str(path) in runs[1], (name, got)


def test_a_shared_nest_loads_in_its_own_size(tmp_path: Path) -> None:
    """One list shared at each of 40 levels (a 2**40-node tree when unshared) loads at once,
    shared as pickle left it; both torch formats."""
    nest = _shared_list(40)
    paths = [tmp_path / "nest0.pt", tmp_path / "nest1.pt"]
    for legacy, path in enumerate(paths):
        torch.save({"nest": nest, "state_dict": {"w": torch.ones(2)}}, path,
                   _use_new_zipfile_serialization=not legacy)
        assert path.stat().st_size < 4096
    outcome = load_limited(paths, timeout=60)  # a regression fails here rather than hangs
    assert all(outcome[str(p)] == "loaded" for p in paths), outcome
    for path in paths:
        start = time.perf_counter()
        got = load_torch_checkpoint(path)
        assert time.perf_counter() - start < 5
        oracle = torch.load(path, weights_only=True)["nest"]
        level, want = got["nest"], oracle
        for _ in range(40):
            assert len(level) == 2 and level[0] is level[1]
            assert len(want) == 2 and want[0] is want[1]
            level, want = level[0], want[0]
        assert level == [] and want == []
        np.testing.assert_array_equal(got["state_dict"]["w"], [1.0, 1.0])


def test_a_deflated_storage_longer_than_declared_is_read_only_as_far_as_needed(
    tmp_path: Path,
) -> None:
    """A storage of 4 elements whose member inflates to 4 GB: only 16 bytes are inflated."""
    storage = StorageRef("0", 4)
    path = tmp_path / "long.pt"
    torch_zip(path, {"w": TensorRef(storage, (4,), (1,))}, {"0": (zero_deflate(4 * GB), 8, 4 * GB)})
    start = time.perf_counter()
    assert load_weights(path)["w"].tolist() == [0.0] * 4
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(("name", "header", "message"), [
    ("deep", '{"w":' + "[" * 200_000 + "]" * 200_000 + "}", "recursion limit"),
    ("list_dtype", '{"w":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}', "dtype"),
    ("huge_shape", '{"w":{"dtype":"F32","shape":[0,9223372036854775808],'
     '"data_offsets":[0,0]}}', "cannot represent"),
    ("digits", '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,' + "4" * 5000 + "]}}",
     "corrupt header"),
])
def test_malformed_safetensors_headers_name_the_file(
    tmp_path: Path, name: str, header: str, message: str
) -> None:
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(4)))
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        load_safetensors(path)
    assert message in str(info.value) and type(info.value) is ValueError


def test_huge_shapes_in_pickles_and_npz_headers_name_the_file(tmp_path: Path) -> None:
    storage = StorageRef("0", 1)
    pt = tmp_path / "shape.pt"
    torch_zip(pt, {"w": TensorRef(storage, (0, 2**63), (0, 0))}, {"0": (bytes(4), 0, 4)})
    npz = tmp_path / "shape.npz"
    head = npy_header((0, 2**63))
    write_zip(npz, [("w.npy", head, 0, len(head))])
    for path in (pt, npz):
        with pytest.raises(ValueError, match=re.escape(str(path)) + ".*cannot represent"):
            load_weights(path)


def test_max_bytes_sets_the_cap(tmp_path: Path) -> None:
    tensors = {"w": np.ones((64, 64), np.float32)}
    for suffix in (".safetensors", ".npz"):
        path = tmp_path / f"w{suffix}"
        save_weights(tensors, path)
        with pytest.raises(ValueError, match=re.escape(str(path)) + ".*max_bytes"):
            load_weights(path, max_bytes=1000)
        np.testing.assert_array_equal(load_weights(path, max_bytes=64 * 64 * 4)["w"], tensors["w"])
    pt = tmp_path / "w.pt"
    torch.save({"w": torch.ones(64, 64)}, pt)
    with pytest.raises(ValueError, match=re.escape(str(pt)) + ".*max_bytes"):
        load_weights(pt, max_bytes=10_000)
    for bad, exc in ((0, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="max_bytes"):
            load_npz(tmp_path / "w.npz", max_bytes=bad)


def test_the_default_cap_follows_the_file_size_and_the_config() -> None:
    """The documented rule: EXPANSION x the file (at least SMALL_FILE_BYTES), at most
    config.max_array_bytes."""
    assert (EXPANSION, SMALL_FILE_BYTES) == (64, 256 * 2**20)
    with config.settings(max_array_bytes=2**40):
        assert Budget("f", 10).cap == 256 * 2**20
        assert Budget("f", 10 * 2**20).cap == 640 * 2**20
        assert Budget("f", 10, max_bytes=2**30).cap == 2**30
    with config.settings(max_array_bytes=1000):
        assert Budget("f", 10 * 2**20).cap == 1000
        assert Budget("f", 10, max_bytes=2**30).cap == 1000


def test_the_config_cap_applies_to_every_reader(tmp_path: Path) -> None:
    for suffix in (".safetensors", ".npz"):
        path = tmp_path / f"w{suffix}"
        save_weights({"w": np.ones(1000, np.float32)}, path)
        with config.settings(max_array_bytes=1000), pytest.raises(
            ValueError, match=re.escape(str(path)) + ".*config.max_array_bytes"
        ):
            load_weights(path)


def _tuple_nest_pickle(tail: bytes, proto: int = 2) -> bytes:
    """A pickle, written opcode by opcode (pickling it would hash it), whose memo slot 40
    holds one tuple shared at each of 40 levels (2**40 nodes to hash), then ``tail``."""
    ops = [bytes([0x80, proto]), b")q\x00"]  # EMPTY_TUPLE, BINPUT 0
    ops += [b"h%ch%c\x86q%c" % (i - 1, i - 1, i) for i in range(1, 41)]  # (t, t) -> memo i
    return b"".join(ops) + b"0" + tail + b"."  # POP the last nest, then the tail


_TUPLE_TAILS = {
    "dict-key": (b"}h(K\x01s", 2),  # {nest: 1} by SETITEM
    "setitems": (b"}(h(K\x01u", 2),  # by SETITEMS
    "frozenset": (b"(h(\x91", 4),  # FROZENSET opcode
    "set-global": (b"cbuiltins\nset\n]h(a\x85R", 2),  # set([nest])
    "ordered-dict": (b"ccollections\nOrderedDict\n]h(K\x01\x86a\x85R", 2),
}


def test_a_shared_tuple_nest_is_not_hashed(tmp_path: Path) -> None:
    """Hashing a 40-level shared tuple nest (a dict key, a set element) visits 2**40 nodes:
    the load refuses it at once instead of spinning for days."""
    paths = {}
    for name, (tail, proto) in _TUPLE_TAILS.items():
        data = _tuple_nest_pickle(tail, proto)
        paths[name] = tmp_path / f"{name}.pt"
        write_zip(paths[name], [("archive/data.pkl", data, 0, len(data))])
    outcome = load_limited(list(paths.values()), timeout=60)  # a regression fails, not hangs
    for name, (tail, proto) in _TUPLE_TAILS.items():
        assert "shared tuples" in outcome[str(paths[name])], name
        start = time.perf_counter()
        with pytest.raises(ValueError, match=re.escape(str(paths[name])) + ".*shared tuples"):
            load_torch_checkpoint(paths[name])
        assert time.perf_counter() - start < 5
        small = tmp_path / "small.pt"  # control: the same opcodes over a 4-level nest load
        data = _tuple_nest_pickle(tail, proto).replace(b"h(", b"h\x04")
        write_zip(small, [("archive/data.pkl", data, 0, len(data))])
        assert load_torch_checkpoint(small) == pickle.loads(data), name  # the stdlib as oracle


def test_tuple_keys_of_ordinary_size_still_load(tmp_path: Path) -> None:
    path = tmp_path / "keys.pt"
    torch.save({(1, 2): torch.ones(2), "s": {(3, 4), 5}}, path)
    got = load_torch_checkpoint(path)
    np.testing.assert_array_equal(got[(1, 2)], [1.0, 1.0])
    assert got["s"] == {(3, 4), 5}


def test_messages_about_a_shared_nest_are_printed_in_bounded_time(tmp_path: Path) -> None:
    """An error message quoting a value read from the file must not print a 2**40-node nest."""
    nest = _shared_list(40)
    storage = StorageRef("0", 4)
    cases = {
        "storage.pt": {"w": TensorRef(nest, (4,), (1,))},  # type: ignore[arg-type]
        "size.pt": {"w": TensorRef(storage, nest, (1,))},  # type: ignore[arg-type]
    }
    for name, obj in cases.items():
        torch_zip(tmp_path / name, obj, {"0": (bytes(16), 0, 16)})
    outcome = load_limited([tmp_path / name for name in cases], timeout=60)
    for name in cases:
        path = tmp_path / name
        assert outcome[str(path)].startswith("ValueError")  # a regression fails, not hangs
        start = time.perf_counter()
        with pytest.raises(ValueError, match=re.escape(str(path)) + r".*\[\[\[\[\.\.\.\]"):
            load_weights(path)
        assert time.perf_counter() - start < 5
    legacy = tmp_path / "header.pt"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(nest, protocol=2))
    with pytest.raises(ValueError, match=re.escape(str(legacy)) + ".*protocol version"):
        load_weights(legacy)


def test_a_deep_nest_is_a_value_error(tmp_path: Path) -> None:
    """200,000 nested lists (a 400 KB pickle): refused by name, not a RecursionError."""
    data = b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b"."
    assert isinstance(pickle.loads(data), list)  # the stdlib reads it: a valid pickle
    path = tmp_path / "deep.pt"
    write_zip(path, [("archive/data.pkl", data, 0, len(data))])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*recursion limit"):
        load_torch_checkpoint(path)


def test_a_legitimate_file_made_mostly_of_pickle_loads_under_the_default_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default cap (64 x the file) leaves room for what a pickle really builds: a pickle
    of distinct strings beside a small tensor, both formats (the 256 MiB floor lowered so
    that the ratio decides)."""
    monkeypatch.setattr(_budget, "SMALL_FILE_BYTES", 1)
    names = [f"layer{i:07d}.weight" for i in range(3000)]
    for legacy in (False, True):
        path = tmp_path / f"names{int(legacy)}.pt"
        torch.save({"names": names, "state_dict": {"w": torch.ones(3)}}, path,
                   _use_new_zipfile_serialization=not legacy)
        got = load_torch_checkpoint(path)
        assert got["names"] == names
        np.testing.assert_array_equal(load_weights(path)["w"], [1.0, 1.0, 1.0])
        with pytest.raises(ValueError, match="limit"):  # and the cap is really that tight
            load_weights(path, max_bytes=8 * path.stat().st_size)


def test_a_zip_needing_a_newer_zip_version_is_a_value_error(tmp_path: Path) -> None:
    """zipfile raises NotImplementedError for 'zip file version 6.4' (found by the fuzz test)."""
    npz, pt = tmp_path / "w.npz", tmp_path / "w.pt"
    save_weights({"w": np.ones(2, np.float32)}, npz)
    torch.save({"w": torch.ones(2)}, pt)
    for path in (npz, pt):
        data = bytearray(path.read_bytes())
        entry = data.index(b"PK\x01\x02")
        data[entry + 6] = 64  # version needed to extract: 6.4
        path.write_bytes(bytes(data))
        with pytest.raises(NotImplementedError):
            zipfile.ZipFile(path)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            load_weights(path)
