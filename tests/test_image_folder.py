"""ImageFolder datasets and the augmentations, against Pillow, torch and hand-made folders."""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlayers import augment
from convlayers.datasets import ImageFolder, prefetch_batches


def _write(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _shapes_folder(root: Path, per_class: int = 4, side: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for name in ("circle", "square"):
        for i in range(per_class):
            img = np.zeros((side, side, 3), np.uint8)
            yy, xx = np.mgrid[:side, :side]
            c = side // 2 + rng.integers(-1, 2)
            mask = ((yy - c) ** 2 + (xx - c) ** 2 <= (side // 3) ** 2) if name == "circle" else \
                (abs(yy - c) <= side // 4) & (abs(xx - c) <= side // 4)
            img[mask] = (200, (60 + 10 * i) % 256, 30)
            _write(root / name / f"{i}.png", img)
    return root


def test_classes_are_sorted_folder_names_and_images_match_pillow(tmp_path: Path) -> None:
    root = _shapes_folder(tmp_path / "data")
    (root / "circle" / "notes.txt").write_text("not an image")  # ignored, as in torchvision
    data = ImageFolder(root, size=(6, 8))
    assert data.classes == ("circle", "square") and len(data) == 8
    x, y = data.load(workers=2)
    assert x.shape == (8, 3, 6, 8) and y.tolist() == [0] * 4 + [1] * 4
    expected = np.asarray(Image.open(root / "square" / "2.png").convert("RGB")
                          .resize((8, 6), Image.Resampling.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(x[6], expected.transpose(2, 0, 1), atol=1e-6)


def test_sixteen_bit_png_and_cmyk_jpeg_are_read_as_rgb(tmp_path: Path) -> None:
    deep = np.full((5, 5), 65535 // 2, np.uint16)
    _write(tmp_path / "a" / "deep.png", deep)
    Image.new("CMYK", (5, 5), (0, 255, 255, 0)).save(_dir(tmp_path / "b") / "cmyk.jpg")
    x, _ = ImageFolder(tmp_path, size=5).load()
    np.testing.assert_allclose(x[0], 128 / 255, atol=1 / 255)  # mid-gray on every channel
    red = x[1].mean(axis=(1, 2))
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1  # CMYK (0, 255, 255, 0) is red


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_empty_class_folder_is_refused_unless_allowed(tmp_path: Path) -> None:
    root = _shapes_folder(tmp_path / "data", per_class=1)
    (root / "triangle").mkdir()
    with pytest.raises(ValueError, match=r"triangle.*holds no images"):
        ImageFolder(root)
    data = ImageFolder(root, allow_empty=True)
    assert data.classes == ("circle", "square", "triangle") and len(data) == 2


def test_unreadable_image_is_skipped_and_reported_or_refused(tmp_path: Path) -> None:
    root = _shapes_folder(tmp_path / "data", per_class=2)
    bad = root / "square" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.warns(UserWarning, match=r"broken\.png"):
        data = ImageFolder(root, size=4)
        x, y = data.load()
    assert len(x) == 4 and y.tolist() == [0, 0, 1, 1]
    assert data.skipped and data.skipped[0][0] == str(bad)
    with pytest.raises(ValueError, match=r"broken\.png"):
        ImageFolder(root, size=4, on_error="raise").load()


def test_reading_on_many_threads_leaves_the_warning_machinery_as_it_was(tmp_path: Path) -> None:
    """``warnings.catch_warnings`` swaps process-wide state; entered on several decoding threads
    at once, it can leave another thread's recorder in place, so later warnings (the skip report
    of this very load) vanish. Many small images on eight threads make that interleaving likely."""
    import warnings

    root = _shapes_folder(tmp_path / "data", per_class=40, side=6)
    for i in range(3):
        (root / "circle" / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for _ in range(5):
        filters_before, show_before = list(warnings.filters), warnings.showwarning
        with pytest.warns(UserWarning) as caught:
            data = ImageFolder(root, size=4)
            x, _ = data.load(workers=8)
        assert len(x) == 80 and len(data.skipped) == 3
        assert sorted(str(w.message).split("'")[1].rsplit("/", 1)[-1] for w in caught) == \
            ["broken0.png", "broken1.png", "broken2.png"]
        assert warnings.filters == filters_before and warnings.showwarning is show_before


def test_a_test_class_missing_from_training_is_a_clear_error(tmp_path: Path) -> None:
    train = ImageFolder(_shapes_folder(tmp_path / "train", per_class=1))
    test_root = _shapes_folder(tmp_path / "test", per_class=1)
    _write(test_root / "star" / "0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"classes \['star'\]"):
        ImageFolder(test_root, classes=train.classes)


def test_bad_arguments_name_themselves(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root"):
        ImageFolder(tmp_path / "missing")
    root = _shapes_folder(tmp_path / "data", per_class=1)
    with pytest.raises(ValueError, match="size"):
        ImageFolder(root, size=0)
    with pytest.raises(ValueError, match="on_error"):
        ImageFolder(root, on_error="ignore")
    with pytest.raises(ValueError, match="size must have 2 values"):
        ImageFolder(root, size=(4, 4, 4))
    data = ImageFolder(root, size=4)
    for bad in ([0, 2], [-1], [0.5], [[0]]):  # out of range, negative, a float, not 1-D
        with pytest.raises(ValueError, match=r"indices must be sample numbers in \[0, 2\)"):
            data.load(bad)
        with pytest.raises(ValueError, match=r"indices must be sample numbers"):
            next(prefetch_batches(data, bad, 1))
    assert data.load([])[0].shape == (0, 3, 4, 4)


def test_split_is_seeded_stratified_and_disjoint(tmp_path: Path) -> None:
    data = ImageFolder(_shapes_folder(tmp_path / "data", per_class=10), size=4)
    train, held = data.split(0.3, seed=1)
    again = data.split(0.3, seed=1)
    assert np.array_equal(train, again[0]) and np.array_equal(held, again[1])
    assert not set(train) & set(held) and len(train) + len(held) == 20
    assert np.bincount(data.labels[held]).tolist() == [3, 3]


def test_prefetch_yields_every_image_once_with_bounded_lookahead(tmp_path: Path) -> None:
    data = ImageFolder(_shapes_folder(tmp_path / "data", per_class=6), size=4)
    started, lock, peak = [0], threading.Lock(), [0]
    consumed = [0]
    load = data.load

    def counting_load(indices, workers=None):  # type: ignore[no-untyped-def]
        with lock:
            started[0] += 1
            peak[0] = max(peak[0], started[0] - consumed[0])
        return load(indices, workers)

    data.load = counting_load  # type: ignore[method-assign]
    labels = []
    for _, y in prefetch_batches(data, range(len(data)), 2, seed=3, prefetch=2, workers=2):
        consumed[0] += 1
        labels += y.tolist()
    assert sorted(labels) == sorted(data.labels.tolist())
    assert peak[0] <= 3  # the batch being used plus at most `prefetch` decoded ahead


# ------------------------------------------------------------------------------ augmentations

def test_resize_matches_torch_interpolate_bilinear() -> None:
    x = np.random.default_rng(0).random((2, 3, 9, 13), dtype=np.float32)
    for size in ((4, 5), (9, 13), (17, 30), (1, 1)):
        ours = augment.resize(x, size=size)
        theirs = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                                                 align_corners=False).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_colour_adjustments_match_torchvision_formulas_in_torch() -> None:
    x = np.random.default_rng(1).random((3, 3, 5, 6), dtype=np.float32)
    t = torch.from_numpy(x)
    factors = np.array([0.5, 1.0, 1.7], np.float32)
    f = torch.from_numpy(factors).view(3, 1, 1, 1)
    gray = (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]).unsqueeze(1)
    np.testing.assert_allclose(augment.adjust_brightness(x, factors),
                               (t * f).clamp(0, 1).numpy(), atol=1e-6)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    np.testing.assert_allclose(augment.adjust_contrast(x, factors),
                               (f * t + (1 - f) * mean).clamp(0, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(augment.adjust_saturation(x, factors),
                               (f * t + (1 - f) * gray).clamp(0, 1).numpy(), atol=1e-6)


def test_crop_flip_normalize_against_direct_indexing() -> None:
    x = np.random.default_rng(2).random((5, 3, 6, 6), dtype=np.float32)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    crop = augment.random_crop(x, np.random.default_rng(0), size=6, padding=2)
    places = []  # each crop is one window of its own padded image (found by search)
    for i in range(5):
        found = [(t, left) for t in range(5) for left in range(5)
                 if np.array_equal(crop[i], padded[i, :, t:t + 6, left:left + 6])]
        assert len(found) == 1, i
        places += found
    assert len(set(places)) > 1  # the windows do move
    flipped = augment.random_flip(x, np.random.default_rng(4), p=1.0)
    np.testing.assert_array_equal(flipped, x[..., ::-1])
    np.testing.assert_array_equal(augment.random_flip(x, 0, p=0.0), x)
    norm = augment.normalize(x, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD)
    theirs = (torch.from_numpy(x) - torch.tensor(augment.IMAGENET_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(augment.IMAGENET_STD).view(1, 3, 1, 1)
    np.testing.assert_allclose(norm, theirs.numpy(), rtol=1e-6, atol=1e-6)


def test_pipelines_are_seeded_and_check_their_arguments() -> None:
    pipeline = augment.compose(partial(augment.random_crop, size=4, padding=1), augment.random_flip,
                               partial(augment.color_jitter, brightness=0.3, contrast=0.3,
                                       saturation=0.3))
    x = np.random.default_rng(3).random((6, 3, 5, 5), dtype=np.float32)
    a, b = pipeline(x, np.random.default_rng(9)), pipeline(x, np.random.default_rng(9))
    assert np.array_equal(a, b) and not np.array_equal(a, pipeline(x, np.random.default_rng(10)))
    with pytest.raises(ValueError, match="batch"):
        augment.random_flip(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="std"):
        augment.normalize(x, mean=(0, 0, 0), std=(1, 0, 1))
    with pytest.raises(ValueError, match="jitter"):
        augment.color_jitter(x, brightness=float("inf"))
    with pytest.raises(ValueError, match=r"factor must be one number or one per image \(6\)"):
        augment.adjust_contrast(x, [1.0, 0.5])
    with pytest.raises(ValueError, match="size must have 2 values"):
        augment.resize(x, size=(2, 3, 4))
