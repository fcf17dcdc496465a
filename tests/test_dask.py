"""convlayers.dask: chunked filters, convs, pools, batched inference and storage on a LocalCluster.

One module-scoped cluster of 2 single-threaded worker processes serves every test (while it is
up it is the default scheduler of every ``.compute()`` here). Filters are compared with the
in-memory :mod:`convlayers.filters` *exactly* (same engine path, same arithmetic per pixel);
convolutions and average pools to the stated tolerance, max pools exactly.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("dask.array")
pytest.importorskip("distributed")
pytest.importorskip("zarr")

import itertools

import cloudpickle
import dask
import dask.array as da
from distributed import Client, LocalCluster

from convlayers import config, filters
from convlayers import dask as cd
from convlayers import functional as F
from convlayers.io import read_image, write_image
from oracle import assert_close

EXAMPLES = settings(max_examples=25, deadline=None)
# Per worker. A worker that has imported numpy, scipy, numba and convlayers and compiled the
# kernels these tests use holds about 400 MiB of its own (LLVM), so the 512 MiB would
# leave no room; the big-image test's image (1 GiB) is larger than this limit all the same.
WORKER_MEMORY = 768 * 2**20


@pytest.fixture(scope="module")
def client():
    # fail (a worker killed at 95%) rather than hang (a worker paused at 80%, waiting forever)
    with dask.config.set({"distributed.worker.memory.pause": False}):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            memory_limit=WORKER_MEMORY,
        )
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests
    with Client(cluster) as c:
        yield c
    cluster.close()


# ---------------------------------------------------------------- filters


def _chunking(draw, n: int) -> tuple[int, ...]:
    """Irregular chunks covering n (1-long chunks included)."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=4)))
    edges = [0, *[c for c in cuts if c < n], n]
    return tuple(b - a for a, b in itertools.pairwise(edges) if b > a)


@st.composite
def filter_cases(draw):
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    channels = draw(st.sampled_from([None, None, 2]))
    dtype = draw(st.sampled_from([np.float64, np.float32, np.uint8]))
    kh, kw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels is None else (h, w, channels)
    img = (rng.integers(0, 256, shape) if dtype == np.uint8 else rng.standard_normal(shape)).astype(dtype)
    kernel = rng.standard_normal((kh, kw))
    if draw(st.booleans()):  # rank 1: the separable path
        kernel = np.outer(rng.standard_normal(kh), rng.standard_normal(kw))
    chunks = (_chunking(draw, h), _chunking(draw, w))
    if channels:
        chunks += (draw(st.sampled_from([(1, 1), (2,)])),)
    return dict(
        img=img, kernel=kernel, chunks=chunks,
        mode=draw(st.sampled_from(["full", "same", "valid"])),
        boundary=draw(st.sampled_from(["fill", "wrap", "symm"])),
        fillvalue=draw(st.sampled_from([0.0, 1.5])),
        op=draw(st.sampled_from(["convolve2d", "correlate2d", "apply_filter"])),
    )


def _in_memory(op, img, kernel, mode, boundary, fillvalue):
    if op == "apply_filter":
        return filters.apply_filter(img, kernel, mode=mode, boundary=boundary, fillvalue=fillvalue)
    fn = getattr(filters, op)
    if img.ndim == 2:
        return fn(img, kernel, mode, boundary, fillvalue)
    return np.stack([fn(img[:, :, c], kernel, mode, boundary, fillvalue) for c in range(img.shape[2])], -1)


@EXAMPLES
@given(case=filter_cases())
def test_filters_equal_in_memory(client, case):
    img, kernel, mode, boundary, fv, op = (
        case[k] for k in ("img", "kernel", "mode", "boundary", "fillvalue", "op")
    )
    try:
        expected = _in_memory(op, img, kernel, mode, boundary, fv)
    except ValueError:  # valid mode with neither operand the larger: same error lazily-free
        with pytest.raises(ValueError, match="mode='valid'"):
            _dask_filter(op, da.from_array(img, chunks=case["chunks"]), kernel, mode, boundary, fv)
        return
    x = da.from_array(img, chunks=case["chunks"])
    got = _dask_filter(op, x, kernel, mode, boundary, fv).compute()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def _dask_filter(op, x, kernel, mode, boundary, fv):
    if op == "apply_filter":
        return cd.apply_filter(x, kernel, mode=mode, boundary=boundary, fillvalue=fv)
    return getattr(cd, op)(x, kernel, mode, boundary, fv)


def test_same_mode_keeps_chunks_and_merges_short_ones():
    img = np.random.default_rng(0).standard_normal((50, 47))
    out = cd.convolve2d(da.from_array(img, chunks=(10, 16)), filters.FILTERS["laplacian"], "same", "symm")
    assert out.chunks == ((10,) * 5, (16, 16, 15))
    # chunks of 2 rows are shorter than a 9x9 kernel's halo (4 rows): merged, result unchanged
    k = filters.gaussian(9, 2.0)
    short = cd.correlate2d(da.from_array(img, chunks=2), k, "same", "wrap")
    assert all(min(c[1:-1]) >= 4 for c in short.chunks)
    np.testing.assert_array_equal(
        short.compute(scheduler="sync"), filters.correlate2d(img, k, "same", "wrap")
    )


def test_fft_sized_kernel_agrees_to_rounding():
    rng = np.random.default_rng(1)
    img = rng.standard_normal((90, 80))
    k = rng.standard_normal((20, 19))  # 380 taps: the FFT path in float64
    got = cd.convolve2d(da.from_array(img, chunks=30), k, "same", "symm").compute(scheduler="sync")
    assert_close(got, filters.convolve2d(img, k, "same", "symm"), "fft path")


def test_filter_argument_errors():
    x = da.zeros((8, 8), chunks=4)
    with pytest.raises(ValueError, match="mode"):
        cd.convolve2d(x, np.ones((3, 3)), mode="middle")
    with pytest.raises(ValueError, match="boundary"):
        cd.correlate2d(x, np.ones((3, 3)), boundary="reflect")
    with pytest.raises(ValueError, match="image must have 2 dimensions"):
        cd.convolve2d(da.zeros((2, 2, 2, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="chunks must be >= 1"):
        cd.apply_filter(np.zeros((4, 4)), "blur", chunks=0)
    with pytest.raises(TypeError, match="fillvalue"):
        cd.convolve2d(x, np.ones((3, 3)), fillvalue="zero")
    with pytest.raises(ValueError, match="output"):
        cd.apply_filter(x, "blur", output="png")


# ------------------------------------------------------------ conv, pools


@st.composite
def window_cases(draw):
    op = draw(st.sampled_from(["conv2d", "max_pool2d", "avg_pool2d"]))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(4, 26)), draw(st.integers(4, 26))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    chunks = (draw(st.integers(1, n)), c, _chunking(draw, h), _chunking(draw, w))
    if op == "conv2d":
        groups = draw(st.sampled_from([1, c]))
        weight = rng.standard_normal((2 * groups, c // groups, *k)).astype(dtype)
        kw = dict(weight=weight, bias=rng.standard_normal(2 * groups).astype(dtype), stride=s,
                  padding=draw(st.integers(0, 2)), dilation=d, groups=groups,
                  padding_mode=draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])))
    else:
        kw = dict(kernel_size=k, stride=s, padding=tuple(draw(st.integers(0, kk // 2)) for kk in k),
                  ceil_mode=draw(st.booleans()))
        if op == "max_pool2d":
            kw["dilation"] = d
        else:
            kw["count_include_pad"] = draw(st.booleans())
    unbatched = draw(st.booleans()) and n == 1
    return op, (x[0] if unbatched else x), (chunks[1:] if unbatched else chunks), kw


@EXAMPLES
@given(case=window_cases())
def test_conv_and_pools_equal_in_memory(client, case):
    op, x, chunks, kw = case
    try:
        expected = getattr(F, op)(x, **kw)
    except ValueError as err:  # window larger than the padded input, reflect padding too wide:
        # the Dask op refuses it too, with the same message, before any work
        with pytest.raises(ValueError) as dask_err:
            getattr(cd, op)(da.from_array(x, chunks=chunks), **kw).compute()
        assert str(dask_err.value) == str(err)
        return
    got = getattr(cd, op)(da.from_array(x, chunks=chunks), **kw).compute()
    if op == "max_pool2d":
        np.testing.assert_array_equal(got, expected)
    else:
        assert_close(got, expected, op)


@pytest.mark.parametrize("kw", [
    {"stride": True}, {"padding": 1.0}, {"groups": 3}, {"padding": "same", "stride": 2},
    {"padding": 5, "padding_mode": "reflect"}, {"padding_mode": "mirror"}, {"dilation": 0},
])
def test_conv2d_refuses_what_the_in_memory_op_refuses_with_its_message(kw):
    """One validation (functional.conv.conv_spec) for both: same error type and message."""
    x = np.ones((1, 2, 5, 5))
    w = np.ones((2, 2, 3, 3))
    with pytest.raises((ValueError, TypeError)) as memory:
        F.conv2d(x, w, **kw)
    with pytest.raises(type(memory.value)) as lazy:
        cd.conv2d(da.from_array(x, chunks=(1, 2, 3, 3)), w, **kw)
    assert str(lazy.value) == str(memory.value)


def test_stride_aligned_chunks():
    x = np.random.default_rng(2).standard_normal((1, 2, 30, 30))
    y = cd.max_pool2d(da.from_array(x, chunks=(1, 2, 7, 7)), 3, stride=2, padding=1)
    np.testing.assert_array_equal(y.compute(scheduler="sync"), F.max_pool2d(x, 3, 2, 1))
    with pytest.raises(ValueError, match="return_indices"):
        cd.max_pool2d(da.from_array(x), 2, return_indices=True)
    with pytest.raises(TypeError, match="float32 or float64"):
        cd.conv2d(da.zeros((1, 2, 4, 4), dtype=int), np.ones((1, 2, 3, 3)))


# ------------------------------------------------------------- predict


class TinyModel:
    """A callable with weights: conv 3x3 -> ReLU -> global mean -> linear; counts its pickles."""

    pickled = 0

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.conv = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        self.fc = rng.standard_normal((5, 4)).astype(np.float32)
        self.training = True

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def state_dict(self):
        return {"conv": self.conv, "fc": self.fc}

    def load_state_dict(self, state):
        self.conv, self.fc = state["conv"], state["fc"]

    def __getstate__(self):
        type(self).pickled += 1
        return self.__dict__

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert not self.training, "predict() must run the model in eval mode"
        h = np.maximum(F.conv2d(batch, self.conv, padding=1), 0).mean(axis=(2, 3))
        return h @ self.fc.T


def test_predict_equals_in_process(client):
    model = TinyModel()
    x = np.random.default_rng(3).standard_normal((11, 3, 12, 12)).astype(np.float32)
    expected = model.eval()(x)
    model.train()
    TinyModel.pickled = 0
    got = cd.predict(model, da.from_array(x, chunks=(4, 3, 12, 12)), batch_size=2)  # 6 batches
    assert model.training  # restored
    assert_close(got, expected, "predict")
    # the model (its weights) was serialized at most once per worker, not once per batch task
    assert TinyModel.pickled <= len(client.scheduler_info()["workers"]) < 6
    assert all(n == 1 for n in cd.cap_threads(client).values())  # 2 workers x 1 thread, 2 cores


def test_predict_image_folder(client, tmp_path):
    rng = np.random.default_rng(4)
    paths = []
    for i in range(5):
        p = tmp_path / f"img{i}.png"
        write_image(p, rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
        paths.append(p)
    model = TinyModel(1)
    prep = cd.default_preprocess
    expected = model.eval()(np.stack([prep(read_image(p)) for p in paths]))
    got = cd.predict(model, paths, batch_size=2)
    assert_close(got, expected, "predict on files")
    with pytest.raises(TypeError, match="list of image paths"):
        cd.predict(model, str(paths[0]))
    with pytest.raises(ValueError, match="batch_size"):
        cd.predict(model, paths, batch_size=0)


def test_predict_local_scheduler():
    model = TinyModel(2)
    x = np.random.default_rng(5).standard_normal((5, 3, 8, 8)).astype(np.float32)
    with cd.session("threads", workers=2) as c:
        assert c is None
        got = cd.predict(model, x, batch_size=2)
    assert_close(got, model.eval()(x), "threads")


# ------------------------------------------------------------- storage


def test_save_and_open_roundtrip(tmp_path):
    img = np.random.default_rng(6).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    write_image(tmp_path / "in.png", img)
    x = cd.open_image(tmp_path / "in.png", chunks=8)
    assert x.chunks[:2] == ((8, 8, 4), (8, 8, 8, 6))
    out = cd.apply_filter(x, "blur", output="uint8")
    cd.save(out, tmp_path / "out.png")
    cd.save(out, tmp_path / "out.zarr", chunks=8)
    cd.save(out, tmp_path / "out.npy")
    expected = filters.apply_filter(img, "blur", output="uint8")
    np.testing.assert_array_equal(read_image(tmp_path / "out.png"), expected)
    np.testing.assert_array_equal(cd.open_image(tmp_path / "out.zarr").compute(), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
    with pytest.raises(FileExistsError):
        cd.save(out, tmp_path / "out.zarr", overwrite=False)


def test_failed_write_leaves_no_output(tmp_path):
    def boom(block):
        raise RuntimeError("disk on fire")

    bad = da.zeros((8, 8), chunks=4).map_blocks(boom, dtype=float)
    cd.save(da.ones((8, 8), chunks=4), tmp_path / "keep.zarr")
    for name in ("new.zarr", "keep.zarr", "new.npy"):
        with pytest.raises(RuntimeError, match="disk on fire"):
            cd.save(bad, tmp_path / name, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.zarr"]  # no temp names left
    np.testing.assert_array_equal(cd.open_image(tmp_path / "keep.zarr").compute(), np.ones((8, 8)))


def test_save_never_overwrites_unasked(tmp_path):
    """Issue 16.11: save() replaced any existing path."""
    first, second = da.ones((6, 6), chunks=3), da.zeros((6, 6), chunks=3)
    for name in ("a.zarr", "a.npy"):
        cd.save(first, tmp_path / name)
        with pytest.raises(FileExistsError, match="overwrite=True"):
            cd.save(second, tmp_path / name)
        np.testing.assert_array_equal(np.asarray(cd.open_image(tmp_path / name)), np.ones((6, 6)))
        cd.save(second, tmp_path / name, overwrite=True)
        np.testing.assert_array_equal(np.asarray(cd.open_image(tmp_path / name)), np.zeros((6, 6)))


def test_save_never_deletes_what_is_not_its_zarr_store(tmp_path):
    """Issue 16.11: save() deleted a folder precious.zarr holding thesis.txt and a plain file
    x.zarr. Even with overwrite=True they are refused and left byte for byte."""
    precious = tmp_path / "precious.zarr"
    precious.mkdir()
    (precious / "thesis.txt").write_text("five years")
    (tmp_path / "x.zarr").write_bytes(b"not a store")
    store = tmp_path / "mixed.zarr"  # a real zarr store with a foreign file inside
    cd.save(da.ones((4, 4), chunks=2), store)
    (store / "notes.md").write_text("mine")
    (tmp_path / "folder.npy").mkdir()
    for name, foreign in (("precious.zarr", "thesis.txt"), ("x.zarr", "x.zarr"),
                          ("mixed.zarr", "notes.md"), ("folder.npy", "folder")):
        with pytest.raises(ValueError, match=foreign):
            cd.save(da.zeros((4, 4), chunks=2), tmp_path / name, overwrite=True)
    assert (precious / "thesis.txt").read_text() == "five years"
    assert (tmp_path / "x.zarr").read_bytes() == b"not a store"
    assert (store / "notes.md").read_text() == "mine"
    np.testing.assert_array_equal(np.asarray(cd.open_image(store)), np.ones((4, 4)))


def test_a_killed_zarr_save_leaves_nothing_after_the_next_write(tmp_path):
    """Issue 16.10: a save killed with SIGKILL left .out.zarr.tmp-*; the next write to the same
    path removes it (and only names of save's own pattern whose process is gone)."""
    import signal
    import subprocess

    script = (
        "import sys, time, numpy as np, dask, dask.array as da\n"
        "from convlayers import dask as cd\n"
        "def slow(b):\n"
        "    time.sleep(0.3)\n"
        "    return b\n"
        "x = da.ones((64, 64), chunks=8).map_blocks(slow, dtype=float)\n"
        "with dask.config.set(scheduler='sync'):\n"
        "    cd.save(x, sys.argv[1])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out.zarr")])
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".out.zarr.tmp-") for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, "no temporary store"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".out.zarr.tmp-"), stale
    (tmp_path / ".other.zarr.tmp-0123abcd").mkdir()  # another path's: not touched
    (tmp_path / ".out.zarr.tmp-notours").mkdir()  # not save's pattern: not touched
    alive = tmp_path / f".out.zarr.tmp-{os.getpid()}-0123abcd"  # a live writer's: not touched
    alive.mkdir()
    cd.save(da.ones((4, 4), chunks=2), tmp_path / "out.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".other.zarr.tmp-0123abcd", ".out.zarr.tmp-notours", alive.name, "out.zarr"])


@pytest.mark.parametrize(("limit", "workers"), [("120MB", 2), (100 * 2**20, 1), (0.0001, 1)])
def test_session_refuses_a_worker_memory_limit_it_would_hang_on(limit, workers):
    """Issue 16.14: session("local", workers=2, memory_limit="120MB") hung (workers start at
    81-85% of the limit and pause at 80%). Refused before any worker starts, saying how much a
    worker needs."""
    t0 = time.monotonic()
    with (pytest.raises(ValueError, match=r"memory_limit.*less than the 512 MiB a worker needs"),
          cd.session("local", workers=workers, memory_limit=limit)):
        pass  # pragma: no cover
    assert time.monotonic() - t0 < 5
    with (pytest.raises(ValueError, match="memory_limit must be"),
          cd.session("local", workers=1, memory_limit="lots")):
        pass  # pragma: no cover


def test_image_larger_than_worker_memory(client, tmp_path):
    """A 14k x 14k float32 image (784 MiB) in zarr, filtered by workers limited to 768 MiB
    each, checked strip by strip against the in-memory filter on the same rows."""
    side, chunk = 14336, 2048
    assert side * side * 4 > WORKER_MEMORY  # larger than one worker's memory limit
    t0 = time.perf_counter()
    src = da.random.default_rng(7).random((side, side), dtype=np.float32, chunks=chunk)
    cd.save(src, tmp_path / "big.zarr")
    x = cd.open_image(tmp_path / "big.zarr")
    kernel = filters.FILTERS["sobel_x"]
    cd.save(cd.apply_filter(x, kernel), tmp_path / "edges.zarr")
    t1 = time.perf_counter()
    import zarr

    inp, out = zarr.open_array(str(tmp_path / "big.zarr"), mode="r"), zarr.open_array(
        str(tmp_path / "edges.zarr"), mode="r"
    )
    assert out.shape == (side, side) and out.dtype == np.float32
    halo = 1
    for r0 in range(0, side, 4096):
        r1 = min(side, r0 + 4096)
        a, b = max(0, r0 - halo), min(side, r1 + halo)
        strip = filters.apply_filter(inp[a:b], kernel)
        np.testing.assert_array_equal(out[r0:r1], strip[r0 - a : r0 - a + (r1 - r0)])
    rss = client.run(lambda: __import__("psutil").Process().memory_info().rss >> 20)
    print(f"784 MiB zarr write + filter: {t1 - t0:.1f} s; check {time.perf_counter() - t1:.1f} s; "
          f"worker RSS MiB {sorted(rss.values())}")


def test_session_and_threads(client):
    with cd.session(None) as c:
        assert c is client
    with cd.session("sync") as c:
        assert c is None
        assert dask.config.get("scheduler") == "sync"
    before = config.threads()
    with cd.session("threads", workers=2):
        assert config.threads() == max(1, (os.cpu_count() or 1) // 2)
    assert config.threads() == before
    with pytest.raises(ValueError, match="workers must be >= 1"), cd.session("threads", workers=0):
        pass
