"""convlayers.checkpoint: round trips, corruption and truncation, interrupted saves."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from convlayers import nn
from convlayers.checkpoint import load_checkpoint, save_checkpoint
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
    st_numpy = pytest.importorskip("safetensors.numpy")  # the reference reader, if installed
    tensors = st_numpy.load_file(str(saved))
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
