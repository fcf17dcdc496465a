"""Pieces shared by the command modules: the error type, argument parsers, progress bars."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")


class CLIError(Exception):
    """A user error: printed as one ``convlayers: error: ...`` line, exit status 2."""


def matrix(spec: str, name: str = "kernel") -> list[list[float]]:
    """Parse ``"1,0,-1;2,0,-2;1,0,-1"`` (rows split by ``;``, values by ``,`` or spaces).

    >>> matrix("1,0,-1; 2 0 -2")
    [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0]]
    """
    rows = [r.strip() for r in str(spec).strip().strip(";").split(";")]
    if not spec.strip() or not all(rows):
        raise CLIError(f"bad {name} spec {spec!r}: expected rows separated by ';', "
                       f"e.g. '1,0,-1;2,0,-2;1,0,-1'")
    out: list[list[float]] = []
    for r, row in enumerate(rows):
        items = row.replace(",", " ").split()
        try:
            out.append([float(v) for v in items])
        except ValueError:
            raise CLIError(f"bad {name} spec {spec!r}: row {r + 1} ({row!r}) holds something "
                           "that is not a number") from None
        if not all(math.isfinite(v) for v in out[-1]):
            raise CLIError(f"bad {name} spec {spec!r}: row {r + 1} ({row!r}) holds a value that "
                           "is not a finite number (nan or inf)")
        if len(out[-1]) != len(out[0]):
            raise CLIError(f"bad {name} spec {spec!r}: row {r + 1} has {len(out[-1])} values, "
                           f"row 1 has {len(out[0])}")
    return out


def canonical_name(text: str, names: tuple[str, ...], what: str) -> str:
    """``text`` as one of ``names`` (spelled with ``_``), accepting ``-`` for ``_`` and any case.

    >>> canonical_name("Small-CNN", ("small_cnn", "mobilenet_v2"), "MODEL")
    'small_cnn'
    """
    key = str(text).strip().lower().replace("-", "_")
    if key not in names:
        raise CLIError(f"{what} must be one of {', '.join(names)} (or with '-'), got {text!r}")
    return key


def pair(text: str) -> tuple[int, ...]:
    """argparse type for a size: ``"32"`` (both axes) or ``"32x24"`` / ``"32,24"`` (rows, cols).

    >>> pair("32"), pair("32x24")
    ((32,), (32, 24))
    """
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or ROWSxCOLS such as 32x24, got {text!r}") from None
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected one or two integers, got {text!r}")
    return values


def scalar_or_pair(values: tuple[int, ...]) -> int | tuple[int, ...]:
    """One number stays an int, two stay a tuple (for the library calls)."""
    return values[0] if len(values) == 1 else values


def progress(items: Iterable[T], enabled: bool, total: int | None = None,
             desc: str = "") -> Iterator[T]:
    """Iterate ``items`` with a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, file=sys.stderr, unit="image")


def progress_enabled(args: argparse.Namespace) -> bool:
    """Bars only on a terminal, and never with ``--no-progress``."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """The shared ``--no-progress`` option."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (they are off anyway when stderr is not a terminal)")


def output_dir(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Create (with parents) and return a writable output folder (:func:`convlayers.io.prepare_output`):
    a file in the way, or a new folder named like a file (``out.txt``), is an error."""
    from convlayers.io import prepare_output

    return prepare_output(path, "folder", what=what)


def output_file(path: str | os.PathLike[str], kind: str, what: str = "output") -> Path:
    """Check an output file before the work (:func:`convlayers.io.prepare_output`): a suffix
    that suits ``kind``, nothing else in the way, a writable folder (created if missing)."""
    from convlayers.io import prepare_output

    return prepare_output(path, kind, what=what)


def read_picture(path: str | os.PathLike[str], mode: str | None = None) -> Any:
    """:func:`convlayers.io.read_image`, with NaN or infinite pixels (a float TIFF) reported in
    one ``convlayers: warning:`` line and counted as 0, so the result is still a picture."""
    import warnings

    import numpy as np

    from convlayers.io import NonFiniteImageWarning, read_image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteImageWarning)
        image = read_image(path, mode)
    for w in caught:
        if issubclass(w.category, NonFiniteImageWarning):
            print(f"convlayers: warning: {str(w.message).split(';')[0]}; they count as 0",
                  file=sys.stderr)
            image = np.nan_to_num(image, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return image


def image_files(paths: Iterable[str]) -> list[Path]:
    """Expand folders into the images they hold (sorted); check that every file exists."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and p.suffix.lower() != ".zarr":  # a zarr store is one (chunked) image
            inside = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES
                            and q.is_file())
            if not inside:
                raise CLIError(f"folder {str(p)!r} holds no image files "
                               f"({', '.join(IMAGE_SUFFIXES)})")
            found += inside
        elif not p.exists():
            raise CLIError(f"image {str(p)!r} does not exist")
        else:
            found.append(p)
    return found



def read_trained_weights(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(state_dict, metadata)`` of weights written by ``convlayers train`` (its ``-o`` file or
    a ``--checkpoint``, whose ``model.`` keys are unwrapped); metadata is empty for ``.npz``."""
    from convlayers.weights import load_safetensors_metadata, load_weights

    target = Path(path)
    if not target.is_file():
        raise CLIError(f"weights {str(target)!r} do not exist")
    state = load_weights(target)
    if any(k.startswith("model.") for k in state):  # a checkpoint from --checkpoint
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        described = load_safetensors_metadata(target)
    except ValueError:  # an .npz file: no metadata
        described = {}
    return state, described
