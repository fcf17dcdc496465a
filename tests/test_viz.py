"""convlayers.viz: frame plans checked against torch, figures and GIFs with the right counts."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from PIL import Image

from convlayers.viz import (
    animate,
    filter_gallery,
    plot_conv_step,
    plot_feature_maps,
    plot_kernels,
    save_figure,
    sliding_plan,
    step_terms,
)

CONV_CASES = [  # input, kernel, stride, padding, dilation
    (5, 3, 1, 0, 1), (5, 3, 2, 1, 1), (7, 3, 2, 2, 2), ((6, 4), (3, 2), (2, 1), (1, 0), 1),
]


def grid_values(plan, x: np.ndarray, pad_value: float = 0.0) -> np.ndarray:
    """The drawn grid as numbers: input cells from ``x``, padding and inserted zeros 0."""
    grid = np.full(plan.grid_shape, pad_value)
    for r, row in enumerate(plan.sources):
        for c, src in enumerate(row):
            if src is not None:
                grid[r, c] = x[src]
            elif plan.cells[r][c] == "zero":
                grid[r, c] = 0.0
    return grid


def replay(plan, grid: np.ndarray, weight: np.ndarray | None, reduce: str = "sum") -> np.ndarray:
    """Compute the output from the plan's frames alone (independent of convlayers' ops)."""
    out = np.full(plan.output_shape, np.nan)
    for f in plan.frames:
        vals = np.array([grid[c] for c in f.window])
        if reduce == "max":
            out[f.out_cell] = vals.max()
        elif reduce == "mean":
            out[f.out_cell] = vals.mean()
        else:
            kh, kw = plan.kernel_size
            taps = [(kh - 1 - a, kw - 1 - b) if plan.kernel_flipped else (a, b)
                    for a, b in f.taps]
            out[f.out_cell] = sum(v * weight[t] for v, t in zip(vals, taps, strict=True))
    return out


def _shape(v):
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize(("n", "k", "s", "p", "d"), CONV_CASES)
def test_conv_plan_replays_torch(n, k, s, p, d) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(_shape(n))
    w = rng.standard_normal(_shape(k))
    plan = sliding_plan("conv", n, k, s, p, d)
    want = tF.conv2d(torch.tensor(x)[None, None], torch.tensor(w)[None, None], stride=s,
                     padding=p, dilation=d)[0, 0].numpy()
    assert len(plan.frames) == want.size
    np.testing.assert_allclose(replay(plan, grid_values(plan, x), w), want, atol=1e-12)


@pytest.mark.parametrize(("n", "k", "s", "p", "op", "d"),
                         [(3, 3, 2, 0, 0, 1), (3, 3, 2, 1, 1, 1), (4, 4, 2, 1, 0, 1),
                          (2, 2, 3, 0, 0, 2), (4, 3, 1, 2, 0, 1), (4, 3, 2, 3, 1, 1),
                          ((2, 3), (3, 2), (2, 1), 1, 0, 1)])
def test_conv_transpose_plan_is_the_equivalent_convolution(n, k, s, p, op, d) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(_shape(n))
    w = rng.standard_normal(_shape(k))
    plan = sliding_plan("conv_transpose", n, k, s, p, d, output_padding=op)
    want = tF.conv_transpose2d(torch.tensor(x)[None, None], torch.tensor(w)[None, None],
                               stride=s, padding=p, output_padding=op,
                               dilation=d)[0, 0].numpy()
    assert plan.output_shape == want.shape
    assert len(plan.frames) == want.size
    np.testing.assert_allclose(replay(plan, grid_values(plan, x), w), want, atol=1e-12)


@pytest.mark.parametrize(("n", "k", "s", "p", "ceil"),
                         [(4, 2, None, 0, False), (5, 3, 2, 1, False), (5, 2, 2, 1, True),
                          (6, 3, 2, 0, True)])
def test_pool_plans_replay_torch(n, k, s, p, ceil) -> None:
    x = np.random.default_rng(2).standard_normal((n, n))
    t = torch.tensor(x)[None, None]
    max_plan = sliding_plan("max_pool", n, k, s, p, ceil_mode=ceil)
    want = tF.max_pool2d(t, k, s, p, ceil_mode=ceil)[0, 0].numpy()
    np.testing.assert_array_equal(
        replay(max_plan, grid_values(max_plan, x, -np.inf), None, "max"), want)
    if not ceil:  # avg with ceil_mode divides by a clipped window size; not replayed here
        avg_plan = sliding_plan("avg_pool", n, k, s, p)
        want = tF.avg_pool2d(t, k, s, p)[0, 0].numpy()
        np.testing.assert_allclose(replay(avg_plan, grid_values(avg_plan, x), None, "mean"),
                                   want, atol=1e-12)


def test_plan_cells_and_json() -> None:
    plan = sliding_plan("conv", 3, 3, padding=1)
    assert plan.cells[0] == ("pad",) * 5 and plan.cells[1][1:4] == ("input",) * 3
    d = json.loads(json.dumps(plan.to_dict()))
    assert len(d["frames"]) == 9 and d["frames"][0]["window"][4] == [1, 1]


def test_plan_rejects_impossible_shapes() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        sliding_plan("conv", 2, 5)
    with pytest.raises(ValueError, match="op"):
        sliding_plan("median_pool", 4, 2)
    with pytest.raises(ValueError, match="ceil_mode"):
        sliding_plan("conv", 4, 2, ceil_mode=True)


@pytest.mark.parametrize(("op", "kwargs", "frames"), [
    ("conv", dict(input_size=5, kernel_size=3, stride=2, padding=1), 9),
    ("conv_transpose", dict(input_size=2, kernel_size=3, stride=2), 25),
    ("max_pool", dict(input_size=4, kernel_size=2), 4),
    ("avg_pool", dict(input_size=(3, 5), kernel_size=2, stride=1), 8),
])
def test_animate_writes_one_frame_per_output_cell(tmp_path, op, kwargs, frames) -> None:
    target = tmp_path / f"{op}.gif"
    data = animate(op, path=target, **kwargs)
    assert target.read_bytes() == data
    with Image.open(target) as im:
        assert im.format == "GIF" and im.n_frames == frames
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left over


def test_animate_values_and_errors() -> None:
    gif = animate("conv", 4, 3, values=np.arange(16.0).reshape(4, 4), kernel=[[1, 0, -1]] * 3)
    assert Image.open(io.BytesIO(gif)).n_frames == 4
    with pytest.raises(ValueError, match="values"):
        animate("conv", 4, 3, values=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="max_frames"):
        animate("conv", 64, 3)


def test_filter_gallery_panels_and_png_size(tmp_path) -> None:
    img = np.zeros((30, 40), dtype=np.uint8)
    img[:, 20:] = 200
    fig = filter_gallery(img)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    # edge filters (weights summing to 0) are shown as |response|, and say so
    assert titles == ["Original", "|Vertical|", "|Horizontal|", "|Sobel x|", "|Sobel y|", "Blur",
                      "|Laplacian|"]
    path = save_figure(fig, tmp_path / "g.png")
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == tuple(int(v) for v in fig.get_size_inches() * fig.dpi)
    with pytest.raises(ValueError, match="path must end"):
        save_figure(fig, tmp_path / "g.txt")


def test_feature_maps_and_kernels() -> None:
    fig = plot_feature_maps(np.random.default_rng(0).random((1, 5, 6, 7)))
    assert len([ax for ax in fig.axes if ax.images]) == 5
    fig = plot_kernels(np.random.default_rng(0).standard_normal((4, 3, 3, 3)))
    assert len(fig.axes) == 12
    with pytest.raises(ValueError, match="maps"):
        plot_feature_maps(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="weight"):
        plot_kernels(np.zeros((2, 3, 3)))


def test_conv_step_sum_matches_torch() -> None:
    x = np.random.default_rng(3).integers(-4, 5, size=(5, 6)).astype(np.float64)
    w = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    want = tF.conv2d(torch.tensor(x)[None, None], torch.tensor(w)[None, None], stride=2,
                     padding=1)[0, 0].numpy()
    pairs, value = step_terms(x, w, 1, 2, stride=2, padding=1)
    assert value == want[1, 2] == sum(a * b for a, b in pairs)
    fig = plot_conv_step(x, w, 1, 2, stride=2, padding=1)
    assert fig.texts[0].get_text().endswith(f"= {int(want[1, 2])}")
    with pytest.raises(ValueError, match="output cell"):
        plot_conv_step(x, w, 3, 0, stride=2, padding=1)


def test_import_convlayers_does_not_load_matplotlib() -> None:
    code = "import sys, convlayers, convlayers.viz; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _panel(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def test_color_gallery_panels_differ_by_channel() -> None:
    img = np.zeros((24, 32, 3), dtype=np.uint8)
    img[:, :16, 0] = 220  # red left half
    img[:, 16:, 2] = 220  # blue right half
    fig = filter_gallery(img, ["blur", "sobel_x"], gray=False)
    blur = np.asarray(_panel(fig, "Blur").images[0].get_array())
    assert blur.shape == (24, 32, 3)
    assert blur[:, :12, 0].min() > blur[:, :12, 2].max()  # red stays red
    assert blur[:, 20:, 2].min() > blur[:, 20:, 0].max()  # blue stays blue
    edge = np.asarray(_panel(fig, "|Sobel x|").images[0].get_array())
    assert edge.shape == (24, 32, 3) and edge[:, 15:17].max() > 0.9 and edge[:, :12].max() == 0
    gray = filter_gallery(img, ["blur"])
    assert np.asarray(_panel(gray, "Blur").images[0].get_array()).ndim == 2


def test_gallery_displays_edges_as_magnitude_and_signed_with_colorbar() -> None:
    from scipy.signal import convolve2d

    from convlayers.filters import FILTERS

    img = np.zeros((20, 30))
    img[:, 15:] = 100.0
    want = convolve2d(img, FILTERS["sobel_x"], mode="same", boundary="symm")
    fig = filter_gallery(img, ["sobel_x"])
    panel = _panel(fig, "|Sobel x|").images[0]
    np.testing.assert_allclose(np.asarray(panel.get_array()), np.abs(want))
    assert panel.get_clim() == (0.0, 400.0)  # black = no edge, white = the step's |gradient|
    assert not any(ax.get_label() == "<colorbar>" for ax in fig.axes)  # not signed
    signed = filter_gallery(img, ["sobel_x"], display="signed", ncols=2)
    image = _panel(signed, "Sobel x").images[0]
    lo, hi = image.get_clim()
    assert lo == -hi and hi == 400.0 and image.get_cmap().name == "RdBu_r"
    assert any(ax.get_label() == "<colorbar>" for ax in signed.axes)
    with pytest.raises(ValueError, match="display"):
        filter_gallery(img, ["blur"], display="loud")


def test_filter_scale_auto_shows_edges_not_flat_grey() -> None:
    from convlayers.cli.images import to_uint8

    response = np.array([[-300.0, -1.0, 0.0, 1.0, 300.0]])
    edges = to_uint8(response, "auto", [[1, 0, -1]])
    assert edges[0, 0] == edges[0, 4] == 255 and edges[0, 2] == 0  # |response|
    assert to_uint8(response, "stretch")[0, 2] == 128  # the old min..max: mid-grey


def test_feature_map_figure_names_layer_channels_and_has_a_scale() -> None:
    maps = np.random.default_rng(0).random((96, 10, 12))
    fig = plot_feature_maps(maps, max_maps=32, title="layer 'blocks.1' of cat.jpg")
    title = fig._suptitle.get_text()
    assert "blocks.1" in title and "cat.jpg" in title and "32 of 96 channels" in title
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(panels) == 32
    assert len({ax.images[0].get_clim() for ax in panels}) == 1  # one scale for all
    assert panels[-1].images[0].colorbar is not None  # the shared scale is drawn
    height = fig.get_size_inches()[1]
    top_gap = (1.0 - max(ax.get_position().y1 for ax in panels)) * height
    assert top_gap < 0.7  # no blank band: the title and the first row's labels only
    from convlayers.viz._draw import render_rgb

    odd = plot_feature_maps(maps[:2], title="layer 'x' of a$b$_c.png")  # '$' is not mathtext
    assert render_rgb(odd).shape[2] == 3 and "a\\$b\\$_c.png" in odd._suptitle.get_text()


def test_training_curves_have_whole_epochs_and_one_epoch_is_not_two_dots() -> None:
    from convlayers.train import History
    from convlayers.train.plots import plot_curves

    h = History(epoch=[1, 2, 3], train_loss=[1.0, 0.6, 0.4], test_loss=[1.1, 0.8, 0.7])
    ax = plot_curves(h).axes[0]
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    one = History(epoch=[1], train_accuracy=[0.75], test_accuracy=[0.5])
    ax = plot_curves(one, "accuracy").axes[0]
    assert ax.get_title() == "accuracy after 1 epoch"
    assert [round(p.get_height(), 6) for p in ax.patches] == [0.75, 0.5]
    assert [t.get_text() for t in ax.texts] == ["75.0%", "50.0%"]


def _frame_texts(fig):
    """(x, y, text) of every text on a frame, and the x of its '=' sign."""
    texts = [(*t.get_position(), t.get_text()) for t in fig.axes[0].texts]
    equals = next(x for x, _, s in texts if s == "=")
    return texts, equals


def _output_numbers(fig, shape):
    """The numbers written right of '=', as an array in reading order."""
    texts, equals = _frame_texts(fig)
    cells = sorted(((y, x, s) for x, y, s in texts if x > equals and s), key=lambda t: t[:2])
    return np.array([float(s) for _, _, s in cells]).reshape(shape)


@pytest.mark.parametrize(("op", "n", "k", "s", "p", "d"), [
    ("conv", 5, 3, 2, 1, 1), ("conv", (4, 6), (2, 3), 1, 0, (1, 2)), ("conv_transpose", 2, 3, 2, 1, 1),
    ("max_pool", 5, 3, 2, 1, 1), ("avg_pool", 4, 2, None, 0, 1),
])
def test_animation_frames_match_shapes_and_reference_loops(op, n, k, s, p, d) -> None:
    from convlayers import reference, shapes
    from convlayers.viz import animation_frame

    h, w = _shape(n)
    kh, kw = _shape(k)
    ss = _shape(s) if s is not None else (kh, kw)
    pp, dd = _shape(p), _shape(d)
    rng = np.random.default_rng(5)
    x = rng.integers(-5, 6, size=(h, w)).astype(float)
    weight = rng.integers(-2, 3, size=(kh, kw)).astype(float)
    x4, w4 = x[None, None], weight[None, None]
    if op == "conv":
        out_hw = [shapes.conv_output_size(a, b, c, e, f)
                  for a, b, c, e, f in zip((h, w), (kh, kw), ss, pp, dd, strict=True)]
        want = reference.conv2d(x4, w4, stride=ss, padding=pp, dilation=dd)[0, 0]
    elif op == "conv_transpose":
        out_hw = [shapes.conv_transpose_output_size(a, b, c, e, 0, f)
                  for a, b, c, e, f in zip((h, w), (kh, kw), ss, pp, dd, strict=True)]
        want = reference.conv_transpose2d(x4, w4, stride=ss, padding=pp, dilation=dd)[0, 0]
    elif op == "max_pool":
        out_hw = [shapes.pool_output_size(a, b, c, e, f)
                  for a, b, c, e, f in zip((h, w), (kh, kw), ss, pp, dd, strict=True)]
        want = reference.max_pool2d(x4, (kh, kw), ss, pp, dd)[0][0, 0]
    else:
        out_hw = [shapes.pool_output_size(a, b, c, e, f)
                  for a, b, c, e, f in zip((h, w), (kh, kw), ss, pp, dd, strict=True)]
        want = reference.avg_pool2d(x4, (kh, kw), ss, pp)[0, 0]
    kernel = weight if op.startswith("conv") else None
    gif = animate(op, n, k, s, p, d, values=x, kernel=kernel)
    assert Image.open(io.BytesIO(gif)).n_frames == out_hw[0] * out_hw[1]
    last = out_hw[0] * out_hw[1] - 1
    fig = animation_frame(op, n, k, s, p, d, step=last, values=x, kernel=kernel)
    np.testing.assert_allclose(_output_numbers(fig, tuple(out_hw)), want, rtol=2e-3, atol=1e-9)
    caption = "\n".join(t.get_text() for t in fig.axes[0].texts
                        if t.get_text().startswith(("conv", "trans", "max", "aver")))
    assert f"input {h}x{w}" in caption and f"output {out_hw[0]}x{out_hw[1]}" in caption
    assert f"kernel {kh}x{kw}" in caption
    for name, v in (("stride", ss), ("padding", pp), ("dilation", dd)):
        assert f"{name} {v[0] if v[0] == v[1] else f'{v[0]}x{v[1]}'}" in caption


def test_animation_frame_writes_the_window_sum_like_the_textbook_loop() -> None:
    from convlayers import reference
    from convlayers.viz import animation_frame

    x = np.arange(1.0, 26.0).reshape(5, 5)
    w = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    want = reference.correlate2d_simple(x, w, padding=1, stride=2)
    fig = animation_frame("conv", 5, 3, 2, 1, step=4, values=x, kernel=w)  # out[1, 1]
    line = next(t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("out["))
    assert line.startswith("out[1, 1] = ") and line.endswith(f"= {want[1, 1]:g}")
    terms = line.split(" = ")[1].replace("\n", " ").split(" + ")
    pairs = [tuple(float(v.strip("() ")) for v in term.split("\u00d7")) for term in terms]
    window = np.pad(x, 1)[2:5, 2:5]  # rows/cols 2..4 of the padded input: stride 2, cell (1, 1)
    assert pairs == list(zip(window.ravel(), w.ravel(), strict=True))


def test_animation_legend_mentions_only_what_is_drawn() -> None:
    from convlayers.viz import animation_frame

    def legend(fig):
        return next(t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("blue"))

    assert "padding" not in legend(animation_frame("conv", 4, 3))
    assert "padding" in legend(animation_frame("conv", 4, 3, padding=1))
    assert "inserted zero" in legend(animation_frame("conv_transpose", 2, 3, 2))
    assert "inserted zero" not in legend(animation_frame("conv_transpose", 2, 3, 1))
    with pytest.raises(ValueError, match="step"):
        animation_frame("conv", 4, 3, step=4)


def test_gallery_command_color_panels_are_in_color(tmp_path) -> None:
    from convlayers.cli import main

    photo = np.zeros((40, 60, 3), dtype=np.uint8)
    photo[:, :30] = (200, 40, 40)  # red | blue
    photo[:, 30:] = (40, 40, 200)
    src = tmp_path / "rb.png"
    Image.fromarray(photo).save(src)
    for flag, colored in (("--color", True), (None, False)):
        out = tmp_path / f"g{colored}.png"
        args = ["gallery", str(src), "-o", str(out), "--filters", "blur"]
        assert main(args + ([flag] if flag else [])) == 0
        with Image.open(out) as im:
            pixels = np.asarray(im.convert("RGB")).astype(int)
        panel = pixels[:, pixels.shape[1] // 2 + 20:]  # the blur panel, right of the original
        spread = panel.max(axis=2) - panel.min(axis=2)  # 0 for grey pixels
        assert (spread > 100).mean() > 0.2 if colored else spread.max() < 10
