"""convlayers.checkpoint: round trips, corruption and truncation, interrupted saves."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from convlayers import checkpoint, nn
from convlayers.checkpoint import load_checkpoint, remove_stale_temps, save_checkpoint
from convlayers.functional import cross_entropy
from convlayers.optim import SGD, Adam
from convlayers.weights import safetensors_io, save_weights


def trained(seed: int = 0) -> tuple[nn.Module, Adam]:
    """A small model and an Adam with real state after two steps."""
    model = nn.SmallCNN(widths=(4, 8), rng=seed)
    opt = Adam(model.parameters(), lr=0.01)
    x = np.random.default_rng(seed).random((6, 1, 8, 8), dtype=np.float32)
    for _ in range(2):
        opt.zero_grad()
        cross_entropy(model(x), np.arange(6) % 10).backward()
        opt.step()
    return model, opt


def fresh() -> tuple[nn.Module, Adam]:
    model = nn.SmallCNN(widths=(4, 8), rng=99)
    return model, Adam(model.parameters(), lr=0.5)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model, opt = trained()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, epoch=7, extra={"seed": 0, "note": "x"})
    return path


def test_round_trip_restores_model_optimizer_epoch_and_extra(saved: Path):
    model, opt = trained()
    other, other_opt = fresh()
    state = load_checkpoint(saved, other, other_opt)
    assert state.epoch == 7 and state.extra == {"seed": 0, "note": "x"}
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    assert other_opt.lr == 0.01
    for mine, theirs in zip(opt.state, other_opt.state, strict=True):
        assert mine["step"] == theirs["step"] == 2
        np.testing.assert_array_equal(mine["exp_avg_sq"], theirs["exp_avg_sq"])


def test_the_file_is_plain_safetensors(saved: Path):
    tensors = safetensors.numpy.load_file(str(saved))  # the reference reader
    assert "model.features.0.0.weight" in tensors and "optimizer.0.exp_avg" in tensors


def test_model_only_checkpoint(tmp_path: Path):
    model, _ = trained()
    save_checkpoint(tmp_path / "m.safetensors", model)
    assert load_checkpoint(tmp_path / "m.safetensors", fresh()[0]).epoch == 0


@pytest.mark.parametrize("keep", [0, 5, 8, 20, 0.5, -1])
def test_truncated_checkpoints_raise_a_value_error_naming_the_path(saved: Path, keep: float):
    data = saved.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    saved.write_bytes(data[:size])
    model, opt = fresh()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"ckpt\.safetensors") as info:
        load_checkpoint(saved, model, opt)
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("where", ["header", "data", "end"])
def test_corrupted_bytes_raise_a_value_error_naming_the_path(saved: Path, where: str):
    data = bytearray(saved.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    index = {"header": 9, "data": 8 + header_len + 3, "end": len(data) - 1}[where]
    data[index] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"ckpt\.safetensors.*(corrupt|truncated)"):
        load_checkpoint(saved, *fresh())


def test_garbage_and_plain_weights_are_refused(tmp_path: Path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3 + b"not a checkpoint" * 10)
    with pytest.raises(ValueError, match=r"junk\.safetensors"):
        load_checkpoint(junk, *fresh())
    plain = tmp_path / "plain.safetensors"
    save_weights(fresh()[0].state_dict(), plain)
    with pytest.raises(ValueError, match=r"plain\.safetensors.*not a convlayers checkpoint"):
        load_checkpoint(plain, *fresh())
    with pytest.raises(FileNotFoundError, match="missing"):
        load_checkpoint(tmp_path / "missing.safetensors", *fresh())


def test_a_checkpoint_that_does_not_fit_changes_nothing(saved: Path):
    wide = nn.SmallCNN(widths=(8, 8), rng=0)
    before = {k: v.copy() for k, v in wide.state_dict().items()}
    with pytest.raises(ValueError, match=r"ckpt\.safetensors.*does not fit the model"):
        load_checkpoint(saved, wide)
    assert all(np.array_equal(before[k], v) for k, v in wide.state_dict().items())
    model = fresh()[0]
    with pytest.raises(ValueError, match="holds Adam optimizer state, not SGD"):
        load_checkpoint(saved, model, SGD(model.parameters(), lr=0.1))


def test_an_interrupted_save_leaves_the_previous_checkpoint(saved: Path, monkeypatch):
    real = safetensors_io.atomic_write

    class Broken:
        """A file that accepts the header, then fails halfway through the tensors."""

        def __init__(self, f):
            self.f, self.calls = f, 0

        def write(self, data):
            self.calls += 1
            if self.calls == 3:
                self.f.write(bytes(data)[: len(data) // 2])
                raise OSError("disk full")
            return self.f.write(data)

    @contextlib.contextmanager
    def failing(path, *args, **kwargs):
        with real(path, *args, **kwargs) as f:
            yield Broken(f)

    monkeypatch.setattr(safetensors_io, "atomic_write", failing)
    model, opt = trained(seed=1)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(saved, model, opt, epoch=8)
    monkeypatch.undo()
    assert load_checkpoint(saved, *fresh()).epoch == 7
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt.safetensors"]


def test_bad_arguments(tmp_path: Path):
    model, opt = trained()
    with pytest.raises(ValueError, match="epoch"):
        save_checkpoint(tmp_path / "c.safetensors", model, opt, epoch=-1)
    with pytest.raises(TypeError, match="extra"):
        save_checkpoint(tmp_path / "c.safetensors", model, opt, extra={"x": object()})
    with pytest.raises(TypeError, match="model"):
        save_checkpoint(tmp_path / "c.safetensors", {"w": np.zeros(1)}, opt)  # type: ignore[arg-type]


def _recrafted(saved: Path, edit) -> Path:
    """The checkpoint's tensors read by the reference reader, edited, and written back with a
    recomputed digest, as someone crafting a file would (issue 16 item 8)."""
    tensors = safetensors.numpy.load_file(str(saved))
    with safetensors.safe_open(str(saved), "np") as f:
        metadata = dict(f.metadata())
    edit(tensors)
    metadata["sha256"] = checkpoint._digest(tensors)
    out = saved.with_name("crafted.safetensors")
    save_weights(tensors, out, metadata=metadata)
    return out


def _drop(key: str):
    return lambda t: t.pop(key)


def _set(key: str, value):
    return lambda t: t.__setitem__(key, np.asarray(value))


@pytest.mark.parametrize(("edit", "entry"), [
    (_drop("optimizer.0.step"), "0.step"),
    (_drop("optimizer.3.exp_avg_sq"), "3.exp_avg_sq"),
    (_set("optimizer.2.step", 0), "2.step"),
    (_set("optimizer.2.step", 2.5), "2.step"),
    (_set("optimizer.1.exp_avg", np.zeros(3, np.float32)), "1.exp_avg"),
    (_set("optimizer.0.foo", 1), "0.foo"),
    (_set("optimizer.99.step", 1), "99.step"),
    (_set("optimizer.lr", np.nan), "lr"),
    (_set("optimizer.lr", np.inf), "lr"),
    (_set("optimizer.lr", -0.1), "lr"),
])
def test_a_crafted_optimizer_state_is_refused_naming_file_and_entry(saved: Path, edit, entry):
    crafted = _recrafted(saved, edit)
    model, opt = fresh()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=re.escape(str(crafted))) as info:
        load_checkpoint(crafted, model, opt)
    assert f"'{entry}'" in str(info.value) or f"{entry!r}" in str(info.value)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.lr == 0.5 and all(not s for s in opt.state)


def test_a_recrafted_but_intact_checkpoint_still_loads_and_steps(saved: Path):
    """Control for the test above: re-writing with a recomputed digest is not itself refused."""
    crafted = _recrafted(saved, lambda t: None)
    model, opt = fresh()
    load_checkpoint(crafted, model, opt)
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    cross_entropy(model(x), np.array([1, 2])).backward()
    opt.step()
    assert opt.state[0]["step"] == 3


def test_other_widths_say_the_model_differs_not_an_optimizer_entry(saved: Path):
    model = nn.SmallCNN(widths=(4, 8, 16), rng=0)
    opt = Adam(model.parameters())
    with pytest.raises(ValueError, match=r"ckpt\.safetensors' does not fit the model.*parameters "
                       r"differ.*names and shapes") as info:
        load_checkpoint(saved, model, opt)
    assert "5.step" not in str(info.value) and "features.4.0.weight" in str(info.value)
    wider = nn.SmallCNN(widths=(8, 8), rng=0)
    with pytest.raises(ValueError, match=r"other shapes: features\.0\.0\.weight \(checkpoint "
                       r"\(4, 1, 3, 3\), model \(8, 1, 3, 3\)\)"):
        load_checkpoint(saved, wider, Adam(wider.parameters()))


def _old(path: Path) -> Path:
    path.write_bytes(b"half a checkpoint")
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    return path


def test_stale_temp_files_of_killed_saves_are_removed_on_save_and_resume(saved: Path):
    folder = saved.parent
    stale = [_old(folder / ".ckpt.safetensors.abcd_123.tmp"), _old(folder / ".ckpt.safetensors.zz99zz99.tmp")]
    keep = [
        folder / ".ckpt.safetensors.fresh123.tmp",  # a save in progress: written just now
        _old(folder / ".other.safetensors.abcd1234.tmp"),  # another target's
        _old(folder / ".ckpt.safetensors.abc.tmp"),  # not mkstemp's naming
        _old(folder / "ckpt.safetensors.abcd1234.tmp"),
        _old(folder / "notes.tmp"),
    ]
    keep[0].write_bytes(b"in progress")
    (folder / ".ckpt.safetensors.dir12345.tmp").mkdir()
    model, opt = trained()
    save_checkpoint(saved, model, opt, epoch=8)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert (folder / ".ckpt.safetensors.dir12345.tmp").is_dir()
    again = _old(folder / ".ckpt.safetensors.again123.tmp")
    assert load_checkpoint(saved, *fresh()).epoch == 8  # resume cleans up too
    assert not again.exists() and all(p.exists() for p in keep)


def test_a_save_killed_before_its_rename_leaves_a_temp_that_the_next_save_removes(saved: Path):
    """kill -9 between writing and renaming (issue 16 item 10): the old checkpoint survives,
    and the temp file it leaves is removed by the next save once it is stale."""
    child = (
        "import os, sys\n"
        "from convlayers import nn\n"
        "from convlayers.checkpoint import save_checkpoint\n"
        "os.replace = lambda *a, **k: os.kill(os.getpid(), 9)\n"
        "save_checkpoint(sys.argv[1], nn.SmallCNN(widths=(4, 8), rng=5), epoch=99)\n"
    )
    proc = subprocess.run([sys.executable, "-c", child, str(saved)], capture_output=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr[-500:]
    left = [p for p in saved.parent.iterdir() if p.name != saved.name]
    assert len(left) == 1 and left[0].name.startswith(".ckpt.safetensors.")
    assert load_checkpoint(saved, *fresh()).epoch == 7  # too fresh to remove: maybe in progress
    assert left[0].exists()
    os.utime(left[0], (time.time() - 60, time.time() - 60))
    assert remove_stale_temps(saved) == [left[0].name]
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt.safetensors"]
