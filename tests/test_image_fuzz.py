"""Fuzzing the image reader (issue 16): random bytes, and mutations of valid PNG, JPEG, BMP,
GIF and TIFF files, must only ever decode or raise ``ValueError`` naming the file (a
:class:`~convlayers.io.NonFiniteImageWarning` at most besides), quickly and within memory: a
decoded picture is checked against ``config.max_image_pixels`` and ``max_array_bytes`` from its
header, before decoding, so a mutated header claiming a huge size is refused, not allocated."""

from __future__ import annotations

import functools
import io
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from convlayers import config
from convlayers.io import CorruptImageWarning, NonFiniteImageWarning, read_image

PIXELS = 1 << 20  # the pixel cap while fuzzing
BYTES = 16 * 2**20  # the array cap while fuzzing
SECONDS = 5.0  # per example, generous for a busy 2-core CI machine
EXAMPLES = max(10, settings.default.max_examples // 3)


@functools.cache
def seeds() -> dict[str, bytes]:
    """One small valid file of each format (built once)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    files = {}
    for fmt, image in (("PNG", Image.fromarray(rgb)), ("JPEG", Image.fromarray(rgb)),
                       ("BMP", Image.fromarray(rgb)), ("GIF", Image.fromarray(rgb).convert("P")),
                       ("TIFF", Image.fromarray(rng.random((6, 5)).astype(np.float32), "F"))):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        files[fmt] = buffer.getvalue()
    return files


def _read_within_caps(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.img"
        path.write_bytes(data)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            with config.settings(max_image_pixels=PIXELS, max_array_bytes=BYTES), \
                    warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                try:
                    array = read_image(path)
                    assert array.size <= PIXELS * 4
                except ValueError as exc:
                    assert "fuzzed.img" in str(exc), exc
            for w in said:  # ours only, naming the file
                assert issubclass(w.category, (CorruptImageWarning, NonFiniteImageWarning)), w
                assert "fuzzed.img" in str(w.message), w
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert time.perf_counter() - start < SECONDS
        assert peak < 4 * BYTES, f"peak {peak} bytes"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
def test_random_bytes_load_or_raise_value_error(data: bytes) -> None:
    _read_within_caps(data)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF"]), data=st.data())
def test_mutated_images_load_or_raise_value_error(fmt: str, data: st.DataObject) -> None:
    original = bytearray(seeds()[fmt])
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)),
                               min_size=1, max_size=8))
    for position, value in edits:
        original[position] = value
    cut = data.draw(st.integers(1, len(original)))
    _read_within_caps(bytes(original[:cut]))


def test_a_header_claiming_a_huge_picture_is_refused_before_decoding() -> None:
    png = bytearray(seeds()["PNG"])
    png[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")  # IHDR width, height
    _read_within_caps(bytes(png))
