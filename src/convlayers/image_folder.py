"""Your own pictures as a dataset: ``root/<class>/*.png|jpg|...``, as torchvision lays it out.

:class:`ImageFolder` finds the classes (the sub-folder names, sorted) and the images in them,
reads each through :func:`convlayers.io.read_image` (so the library's pixel limit and its clear
errors apply), resizes it to a stated size and scales it to float32 in [0, 1], ``(C, H, W)``.
Decoding runs on a pool of threads (Pillow releases the GIL while it decodes), either all at once
into one array (:meth:`ImageFolder.load`, checked against ``config.max_array_bytes`` before it is
allocated) or batch by batch with a bounded number of batches decoded ahead
(:func:`prefetch_batches`), so the training step does not wait on JPEG decoding.

Examples
--------
>>> import tempfile, pathlib
>>> from convlayers.io import write_image
>>> with tempfile.TemporaryDirectory() as d:
...     for name, value in (("cats", 40), ("dogs", 200)):
...         (pathlib.Path(d) / name).mkdir()
...         for i in range(3):
...             write_image(pathlib.Path(d) / name / f"{i}.png", np.full((9, 7, 3), value, np.uint8))
...     data = ImageFolder(d, size=8)
...     x, y = data.load()
>>> data.classes, x.shape, x.dtype, y.tolist()
(('cats', 'dogs'), (6, 3, 8, 8), dtype('float32'), [0, 0, 0, 1, 1, 1])
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convlayers._validate import as_int, one_of, positive_tuple
from convlayers.limits import check_elements

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "image_to_input", "load_image", "prefetch_batches"]

#: File suffixes taken as images (other files in a class folder are ignored, as in torchvision).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = positive_tuple(size, 2, "size")
    return h, w


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class ImageFolder:
    """Images sorted into one folder per class.

    Parameters
    ----------
    root : str or os.PathLike
        A folder holding one sub-folder per class (hidden folders are ignored).
    size : int or (int, int), default 64
        Every image is resized to this ``(height, width)`` (bilinear, as Pillow does it).
    channels : {3, 1}, default 3
        RGB (gray and CMYK images are converted) or grayscale.
    classes : sequence of str, optional
        The class names and their order, e.g. a training set's for its test set: a folder
        whose name is not among them is an error. Default: the sub-folders, sorted.
    on_error : {"skip", "raise"}, default "skip"
        What an unreadable image does: skipped and reported (``skipped``, and a warning), or a
        ``ValueError`` naming the file.
    allow_empty : bool, default False
        Whether a class folder without images is allowed (otherwise a ``ValueError``).

    Attributes
    ----------
    classes : tuple of str
    samples : list of (Path, int)
        Every image file and its class index.
    skipped : list of (str, str)
        The files that could not be read, with the reason (filled as images are decoded).
    """

    root: str | os.PathLike[str]
    size: int | Sequence[int] = 64
    channels: int = 3
    classes: Sequence[str] | None = None
    on_error: str = "skip"
    allow_empty: bool = False
    samples: list[tuple[Path, int]] = field(init=False, default_factory=list)
    skipped: list[tuple[str, str]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        root = Path(self.root)
        if not root.is_dir():
            raise ValueError(f"root {str(root)!r} is not a folder (expected root/<class>/<image>)")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        one_of(self.on_error, ("skip", "raise"), "on_error")
        self.image_size = _size(self.size)
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if self.classes is None:
            names = tuple(found)
        else:
            names = tuple(str(c) for c in self.classes)
            extra = sorted(set(found) - set(names))
            if extra:
                raise ValueError(f"{str(root)!r} holds classes {extra} that the given classes "
                                 f"{list(names)} (e.g. the training set's) do not have")
        if not names:
            raise ValueError(f"root {str(root)!r} holds no class folders")
        self.classes = names
        for label, name in enumerate(names):
            folder = root / name
            files = sorted(p for p in folder.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) \
                if folder.is_dir() else []
            if not files and not self.allow_empty:
                raise ValueError(f"class folder {str(folder)!r} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}); pass allow_empty=True to keep it")
            self.samples += [(p, label) for p in files]
        if not self.samples:
            raise ValueError(f"root {str(root)!r} holds no images")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        """The class index of every sample, int64."""
        return np.array([label for _, label in self.samples], dtype=np.int64)

    def check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``indices`` as int64 sample numbers, or a ``ValueError`` naming them (checked before
        any image is decoded: no ``IndexError`` from a worker thread, no float silently cut).

        >>> import tempfile, pathlib
        >>> from convlayers.io import write_image
        >>> with tempfile.TemporaryDirectory() as d:
        ...     (pathlib.Path(d) / "a").mkdir()
        ...     write_image(pathlib.Path(d) / "a" / "0.png", np.zeros((4, 4), np.uint8))
        ...     ImageFolder(d, size=4).check_indices([1])
        Traceback (most recent call last):
        ...
        ValueError: indices must be sample numbers in [0, 1) (a 1-D sequence of ints), got [1]
        """
        arr = np.asarray(indices)
        if arr.size == 0 and arr.ndim == 1:
            return np.zeros(0, dtype=np.int64)
        if arr.ndim != 1 or arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= len(self):
            shown = repr(indices) if arr.size <= 8 else f"{arr.size} values, dtype {arr.dtype}"
            raise ValueError(f"indices must be sample numbers in [0, {len(self)}) (a 1-D sequence "
                             f"of ints), got {shown}")
        return arr.astype(np.int64, copy=False)

    def read(self, index: int) -> np.ndarray:
        """Sample ``index`` as float32 ``(channels, height, width)`` in [0, 1] (raises
        ``ValueError`` naming the file when it cannot be read)."""
        return load_image(self.samples[index][0], self.image_size, self.channels)

    def _read_or_skip(self, index: int) -> np.ndarray | None:
        try:
            return self.read(index)
        except ValueError as exc:
            if self.on_error == "raise":
                raise
            path = str(self.samples[index][0])
            self.skipped.append((path, str(exc)))
            warnings.warn(f"skipped {path!r}: {exc}", stacklevel=3)
            return None

    def load(self, indices: Sequence[int] | np.ndarray | None = None,
             workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decode ``indices`` (default: all) on ``workers`` threads into ``(x, y)``: float32
        ``(N, C, H, W)`` and int64 labels, without the images that were skipped."""
        picked = np.arange(len(self)) if indices is None else self.check_indices(indices)
        h, w = self.image_size
        shape = (len(picked), self.channels, h, w)
        check_elements(shape, np.float32, f"the images of {str(self.root)!r} at {h}x{w}")
        x = np.empty(shape, dtype=np.float32)
        keep = np.zeros(len(picked), dtype=bool)
        with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool:
            for row, image in enumerate(pool.map(self._read_or_skip, picked.tolist())):
                if image is not None:
                    x[row], keep[row] = image, True
        labels = self.labels[picked]
        return (x, labels) if keep.all() else (x[keep], labels[keep])

    def split(self, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Seeded, per-class (stratified) split of the sample indices into ``(train,
        validation)``: about ``fraction`` of each class is held out (at least one image of a
        class with two or more)."""
        if not 0 < float(fraction) < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        rng = np.random.default_rng(as_int(seed, "seed"))
        labels = self.labels
        train: list[int] = []
        held: list[int] = []
        for label in range(len(self.classes or ())):
            members = rng.permutation(np.flatnonzero(labels == label))
            n_held = min(len(members) - 1, max(1, round(len(members) * float(fraction)))) \
                if len(members) > 1 else 0
            held += members[:n_held].tolist()
            train += members[n_held:].tolist()
        return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def load_image(path: str | os.PathLike[str], size: int | Sequence[int], channels: int = 3) -> np.ndarray:
    """One picture file as a network input: read by :func:`convlayers.io.read_image` (its pixel
    limit and errors; a float file holding NaN or infinity is refused naming it), then
    :func:`image_to_input`."""
    from convlayers.io import read_image

    array = read_image(path)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"image {os.fspath(path)!r} holds NaN or infinite values")
    return image_to_input(array, size, channels)


def image_to_input(array: np.ndarray, size: int | Sequence[int], channels: int = 3) -> np.ndarray:
    """A decoded picture ``(H, W)`` or ``(H, W, C)`` as a network input: 16-bit and float
    pictures scaled to 8 bits by their range, alpha dropped, converted to RGB (``channels=3``)
    or gray, resized bilinearly (Pillow) to ``size``, float32 ``(channels, H, W)`` in [0, 1].

    >>> image_to_input(np.full((4, 6, 3), 255, np.uint8), 2).shape
    (3, 2, 2)
    """
    from PIL import Image

    h, w = _size(size)
    if array.dtype != np.uint8:  # 16-bit or float pictures: scale to 8 bits by their range
        peak = float(np.nanmax(array)) if array.size else 0.0
        top = (1.0 if peak <= 1.0 else 255.0) if array.dtype.kind == "f" else \
            (65535.0 if peak > 255 else 255.0)
        array = np.clip(np.rint(array.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] in (2, 4):  # drop alpha
        array = array[..., : array.shape[2] - 1]
    image = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    image = image.convert("RGB" if channels == 3 else "L")
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.BILINEAR)
    out = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    return out[None] if out.ndim == 2 else np.ascontiguousarray(out.transpose(2, 0, 1))


def prefetch_batches(
    data: ImageFolder, indices: Sequence[int] | np.ndarray, batch_size: int, *,
    shuffle: bool = True, seed: int | np.random.Generator | None = 0,
    transform: Transform | None = None, workers: int | None = None, prefetch: int = 2,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, labels)`` batches of ``indices``, decoded by ``workers`` threads while
    the caller works on the previous batch; at most ``prefetch`` batches are decoded ahead
    (bounded memory). ``transform(batch, rng)`` (e.g. :func:`convlayers.augment.compose`) runs
    on each batch before it is yielded.

    >>> import tempfile, pathlib
    >>> from convlayers.io import write_image
    >>> with tempfile.TemporaryDirectory() as d:
    ...     (pathlib.Path(d) / "a").mkdir()
    ...     for i in range(5):
    ...         write_image(pathlib.Path(d) / "a" / f"{i}.png", np.zeros((4, 4), np.uint8))
    ...     data = ImageFolder(d, size=4, channels=1)
    ...     [len(y) for _, y in prefetch_batches(data, range(5), 2)]
    [2, 2, 1]
    """
    size = as_int(batch_size, "batch_size")
    ahead = as_int(prefetch, "prefetch")
    if size < 1 or ahead < 1:
        raise ValueError(f"batch_size and prefetch must be >= 1, got {size} and {ahead}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    order = data.check_indices(indices)
    if shuffle:
        order = rng.permutation(order)
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool:
        pending: deque[Future[tuple[np.ndarray, np.ndarray]]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(data.load, chunk, 1))
            if len(pending) > ahead:
                yield _finish(pending.popleft().result(), transform, rng)
        while pending:
            yield _finish(pending.popleft().result(), transform, rng)


def _finish(batch: tuple[np.ndarray, np.ndarray], transform: Transform | None,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x, y = batch
    return (x if transform is None else transform(x, rng)), y
