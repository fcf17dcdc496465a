"""Classifiers for your own image folders: build, fine-tune, save with what predicting needs.

:func:`build_classifier` wraps one of the library's networks in an :class:`ImageClassifier`:
the network with its head sized to your classes, and the input normalisation it expects (so
the model takes images in [0, 1], as :class:`convlayers.datasets.ImageFolder` yields them, and a
saved model needs nothing else to predict). With ``freeze=True`` only the head learns: the rest
of the network keeps its weights and its BatchNorm statistics (it stays in eval mode), and its
forward pass records nothing and runs as a :func:`convlayers.compile` plan (BatchNorm folded,
activations fused), so an epoch costs little more than an inference pass.

:func:`classifier_metadata` / :func:`classifier_from_weights` write and read the description
(model, classes, image size, normalisation) stored beside the weights.

Examples
--------
>>> model = build_classifier("small_cnn", ("cat", "dog"), image_size=16, rng=0)
>>> model(np.zeros((2, 3, 16, 16), np.float32)).shape
(2, 2)
>>> sorted(classifier_metadata(model))
['channels', 'classes', 'image_size', 'mean', 'model', 'std']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convlayers._validate import as_int
from convlayers.augment import IMAGENET_MEAN, IMAGENET_STD, LITE0_MEAN, LITE0_STD
from convlayers.nn.linear import Linear
from convlayers.nn.module import Module

__all__ = ["MODELS", "ImageClassifier", "build_classifier", "canonical_model_name",
           "classifier_from_weights", "classifier_metadata"]

#: The networks :func:`build_classifier` knows (``-`` and ``_`` are interchangeable).
MODELS = ("small_cnn", "mobilenet_v2", "efficientnet_lite0", "resnet18")


def canonical_model_name(name: str) -> str:
    """``name`` spelled as in :data:`MODELS` (either of ``-``/``_`` accepted).

    >>> canonical_model_name("mobilenet-v2"), canonical_model_name("small_cnn")
    ('mobilenet_v2', 'small_cnn')
    """
    key = str(name).strip().lower().replace("-", "_")
    if key in MODELS:
        return key
    raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")


class ImageClassifier(Module):
    """A network that takes images in [0, 1]: ``net((x - mean) / std)``.

    Parameters
    ----------
    net : Module
        The network; its head is the child named ``head_name``.
    name : str
        The network's name in :data:`MODELS` (kept for saving).
    mean, std : sequence of float
        Per-channel normalisation applied first.
    head_name : str
        ``"classifier"`` or ``"fc"``.
    frozen : bool
        Only the head learns (see the module notes).
    """

    def __init__(self, net: Module, name: str, mean: Sequence[float], std: Sequence[float],
                 head_name: str, frozen: bool = False) -> None:
        super().__init__()
        self.net = net
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "head_name", head_name)
        object.__setattr__(self, "mean", np.asarray(mean, np.float32).reshape(1, -1, 1, 1))
        object.__setattr__(self, "std", np.asarray(std, np.float32).reshape(1, -1, 1, 1))
        object.__setattr__(self, "frozen", False)
        self.freeze(frozen)

    @property
    def head(self) -> Module:
        """The layers that map features to classes."""
        return getattr(self.net, self.head_name)

    def freeze(self, frozen: bool = True) -> ImageClassifier:
        """Train the head only (``True``) or the whole network (``False``); returns ``self``."""
        head = {id(p) for p in self.head.parameters()}
        for p in self.net.parameters():
            p.requires_grad = not frozen or id(p) in head
        object.__setattr__(self, "frozen", bool(frozen))
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> Module:
        super().train(mode)
        if self.frozen and mode:
            for name, child in self.net.named_children():
                if name != self.head_name:
                    child.eval()
        return self

    def forward(self, x: Any) -> Any:
        data = (np.asarray(x, dtype=np.float32) - self.mean) / self.std
        if self.frozen and data.ndim == 4:
            features = self._frozen_features(data)
            if features is not None:
                return self.head(features)
        return self.net(data)

    def _frozen_features(self, data: np.ndarray) -> np.ndarray | None:
        """What the frozen network feeds its head, by a :func:`convlayers.compile` plan of the
        network with its head taken out (the frozen layers stay in eval mode, so the plan
        computes what they do, within float32 rounding); None when the network does not
        compile. The plan is kept per image shape and made again when a frozen weight or
        statistic changes (a sum of each, read every call: about 1 ms for EfficientNet-Lite0,
        against the 1.3x the plan gains on its forward)."""
        from convlayers.inference.plan import compile as compile_plan
        from convlayers.nn.linear import Identity

        head = {id(p) for p in self.head.parameters()}
        arrays = [p.data for p in self.net.parameters() if id(p) not in head]
        arrays += [b for name, b in self.net.named_buffers()
                   if not name.startswith(self.head_name + ".")]
        stamp = (data.shape[1:], tuple(np.float64(a.sum()).tobytes() for a in arrays))
        cached = self.__dict__.get("_trunk")
        if cached is None or cached[0] != stamp:
            original = self.head
            setattr(self.net, self.head_name, Identity())
            try:
                plan = compile_plan(self.net, data)
            except TypeError:  # a layer without an inference lowering: the eager path
                plan = None
            finally:
                setattr(self.net, self.head_name, original)
            cached = (stamp, plan)
            object.__setattr__(self, "_trunk", cached)
        return None if cached[1] is None else cached[1](data)


def _new_head(net: Module, head_name: str, num_classes: int, rng: Any) -> None:
    head = getattr(net, head_name)
    last = head[-1] if head_name == "classifier" else head
    fresh = Linear(last.in_features, num_classes, rng=rng)
    if head_name == "classifier":
        setattr(head, str(len(head) - 1), fresh)  # the last layer of the Sequential
    else:
        setattr(net, head_name, fresh)


def build_classifier(model: str, classes: Sequence[str], *, image_size: int = 64,
                     channels: int = 3, pretrained: bool = False, freeze: bool = False,
                     rng: Any = 0) -> ImageClassifier:
    """A network from :data:`MODELS` for ``classes``, taking ``channels x image_size x
    image_size`` images in [0, 1].

    ``pretrained`` loads EfficientNet-Lite0's ImageNet weights (``convlayers[pretrained]``; the
    other networks have no weights that ship) and gives it a new head for ``classes``.

    Raises
    ------
    ValueError
        An unknown ``model``; fewer than 2, repeated or multi-line class names; ``image_size``
        or ``channels`` below 1; ``pretrained`` for a network without weights; ``channels``
        other than 3 for a network that takes RGB.

    >>> build_classifier("resnet18", ("a", "b", "c"), rng=0).head.out_features
    3
    """
    from convlayers.nn import models

    name = canonical_model_name(model)
    k = len(classes)
    if k < 2:
        raise ValueError(f"classes must name at least 2 classes, got {list(classes)}")
    names = [str(c) for c in classes]
    if len(set(names)) != k or any("\n" in c for c in names):  # saved one per line
        raise ValueError(f"classes must be distinct names without line breaks, got {names}")
    if as_int(image_size, "image_size") < 1 or as_int(channels, "channels") < 1:
        raise ValueError(f"image_size and channels must be >= 1, got {image_size} and {channels}")
    if pretrained and name != "efficientnet_lite0":
        raise ValueError(f"pretrained weights ship only for efficientnet_lite0, not {name}")
    if channels != 3 and name != "small_cnn":
        raise ValueError(f"{name} takes RGB images (channels=3), got channels={channels}")
    mean: Sequence[float] = LITE0_MEAN if name == "efficientnet_lite0" else IMAGENET_MEAN
    std: Sequence[float] = LITE0_STD if name == "efficientnet_lite0" else IMAGENET_STD
    if name == "small_cnn":
        widths = (32, 64, 128) if image_size % 8 == 0 and image_size >= 16 else (32, 64)
        net: Module = models.SmallCNN(channels, k, image_size, widths, rng=rng)
        mean, std = (0.5,) * channels, (0.25,) * channels
        head = "classifier"
    elif name == "mobilenet_v2":
        net, head = models.MobileNetV2(num_classes=k, rng=rng), "classifier"
    elif name == "resnet18":
        net, head = models.resnet18(num_classes=k, rng=rng), "fc"
    else:
        net, head = models.efficientnet_lite0(pretrained=pretrained, rng=rng), "classifier"
        _new_head(net, head, k, rng)
    return ImageClassifier(net, name, mean, std, head, frozen=freeze)


def classifier_metadata(model: ImageClassifier, classes: Sequence[str] | None = None,
                        image_size: int | None = None) -> dict[str, str]:
    """What :func:`classifier_from_weights` needs, as strings (safetensors metadata)."""
    k = getattr(model.head, "out_features", None) or model.head[-1].out_features  # type: ignore[index]
    names = list(classes) if classes is not None else [str(i) for i in range(k)]
    size = image_size if image_size is not None else getattr(model, "image_size", 0)
    return {"model": model.name, "classes": "\n".join(names), "image_size": str(size),
            "channels": str(model.mean.shape[1]),
            "mean": ",".join(f"{v:.9g}" for v in model.mean.ravel()),
            "std": ",".join(f"{v:.9g}" for v in model.std.ravel())}


def classifier_from_weights(state: dict[str, np.ndarray],
                            metadata: dict[str, str]) -> tuple[ImageClassifier, tuple[str, ...], int]:
    """Rebuild a saved :class:`ImageClassifier`: ``(model in eval mode, classes, image size)``.

    >>> model = build_classifier("small_cnn", ("cat", "dog"), image_size=16, rng=0).eval()
    >>> again, classes, size = classifier_from_weights(
    ...     model.state_dict(), classifier_metadata(model, ("cat", "dog"), 16))
    >>> x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    >>> classes, size, np.array_equal(again(x), model(x))
    (('cat', 'dog'), 16, True)
    """
    try:
        classes = tuple(metadata["classes"].split("\n"))
        size, channels = int(metadata["image_size"]), int(metadata["channels"])
        model = build_classifier(metadata["model"], classes, image_size=size, channels=channels)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"the weights do not describe an image-folder classifier ({exc})") from exc
    model.load_state_dict(state)
    model.eval()
    return model, classes, size
