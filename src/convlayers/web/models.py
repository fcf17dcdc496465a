"""The networks panel's adapters: models on offer, loaded once, and what the page asks of them.

Top classes come from :func:`convlayers.classify.classify`, feature maps from
``convlayers.nn.feature_maps``, the table from :func:`convlayers.summary.summary`, pictures from
:mod:`convlayers.viz`. Each of those is imported when first needed; a missing one is a 501
:class:`~convlayers.web.services.ServiceError` that names it, so the rest of the explorer works
without it.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from convlayers.web.services import ServiceError, figure_png

__all__ = ["ModelEntry", "ModelRegistry", "digits_input"]



class _Access:
    """Who may use one model at a time.

    Forwards share it: grad mode is per thread (``autograd.no_grad`` is a ContextVar), so
    requests run side by side. The summary and feature maps go through
    ``nn.inspect.record_calls``, which wraps the model's modules' ``forward`` for the length of
    the call; they have the model to themselves, so that no other request is recorded into
    their table nor finds a wrapper left behind.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sharing = 0
        self._sole = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._sole)
            self._sharing += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharing -= 1
                self._cond.notify_all()

    @contextmanager
    def sole(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._sole and self._sharing == 0)
            self._sole = True
        try:
            yield
        finally:
            with self._cond:
                self._sole = False
                self._cond.notify_all()


def _contract(module: str, name: str) -> Any:
    """``from module import name``, or a 501 that says which piece of the library is missing."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ServiceError(501, f"{module}.{name} is not available in this installation "
                                f"({type(exc).__name__}: {exc})") from None


def _plain(value: Any) -> Any:
    """A value JSON can hold: NumPy scalars and tuples become Python numbers and lists."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.dtype):
        return str(value)
    return value


def _array(x: Any) -> np.ndarray:
    return np.asarray(getattr(x, "data", x))


@dataclass
class ModelEntry:
    """One model the explorer offers; the module itself is built once, on first use."""

    id: str
    title: str
    build: Callable[[], Any]
    input_shape: tuple[int, int, int, int]
    labels: Callable[[int], str] | None = None
    module: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    access: _Access = field(default_factory=_Access)

    def get(self) -> Any:
        with self.lock:
            if self.module is None:
                self.module = self.build()
            return self.module


def _efficientnet() -> Any:
    factory = _contract("convlayers.nn.models", "efficientnet_lite0")
    try:
        return factory(pretrained=True).eval()
    except ImportError as exc:
        raise ServiceError(501, f"EfficientNet-Lite0 weights are missing: {exc}") from None


class ModelRegistry:
    """The models on offer (EfficientNet-Lite0 when importable; the digits SmallCNN when a
    weights file was given), each loaded once and cached."""

    def __init__(self, weights: str | None = None) -> None:
        self.entries: dict[str, ModelEntry] = {}
        self.unavailable: dict[str, str] = {}
        try:
            importlib.import_module("convlayers.nn.models").efficientnet_lite0  # noqa: B018
        except (ImportError, AttributeError) as exc:
            self.unavailable["efficientnet_lite0"] = (
                f"convlayers.nn.models.efficientnet_lite0 is not available ({exc})")
        else:
            self.entries["efficientnet_lite0"] = ModelEntry(
                "efficientnet_lite0", "EfficientNet-Lite0 (ImageNet)", _efficientnet,
                (1, 3, 224, 224))
        if weights is not None and str(weights).lower().endswith(".onnx"):
            self.add_onnx(weights)
            self.unavailable["digits"] = "start the explorer with --weights FILE to offer it"
        elif weights is not None:
            from convlayers.train import small_cnn_from_state_dict
            from convlayers.weights import load_weights

            model = small_cnn_from_state_dict(load_weights(weights)).eval()
            conv = next(m for _, m in model.named_modules() if type(m).__name__ == "Conv2d")
            size = _input_side(model)
            self.entries["digits"] = ModelEntry(
                "digits", "SmallCNN (digits)", lambda: model,
                (1, conv.weight.data.shape[1], size, size), labels=str, module=model)
        else:
            self.unavailable["digits"] = "start the explorer with --weights FILE to offer it"

    def add_onnx(self, source: Any, name: str | None = None) -> str:
        """Offer an ONNX model (a path or uploaded bytes, at most ``MAX_UPLOAD_BYTES`` when
        uploaded); its id. Three-channel models get ImageNet normalisation
        (:class:`convlayers.onnx.imagenet.ImageNetInput`)."""
        from pathlib import Path

        from convlayers import onnx
        from convlayers.onnx.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetInput
        from convlayers.web.services import MAX_UPLOAD_BYTES

        if isinstance(source, (bytes, bytearray)) and len(source) > MAX_UPLOAD_BYTES:
            raise ServiceError(413, f"the upload is {len(source)} bytes; the limit is {MAX_UPLOAD_BYTES}")
        label = name or (Path(source).name if isinstance(source, (str, Path)) else "model.onnx")
        try:
            net = onnx.load(source)
        except ImportError as exc:
            raise ServiceError(501, str(exc)) from None
        except ValueError as exc:
            raise ServiceError(400, f"{label}: {exc}") from None
        declared = net.graph_inputs[0].shape or ()
        if len(declared) != 4 or any(d is None for d in declared[1:]):
            raise ServiceError(400, f"{label}: the explorer needs a model with one (N, C, H, W) "
                                    f"input of fixed C, H and W, got {declared}")
        shape = (1, *(int(d) for d in declared[1:]))  # type: ignore[arg-type]
        model = ImageNetInput(net, IMAGENET_MEAN, IMAGENET_STD) if shape[1] == 3 else net
        model_id = "onnx_" + "".join(c if c.isalnum() else "_" for c in Path(label).stem)[:40]
        self.entries[model_id] = ModelEntry(model_id, f"{label} (ONNX)", lambda: model,
                                            shape, module=model)  # type: ignore[arg-type]
        return model_id

    def listing(self) -> list[dict[str, Any]]:
        """Every model, available or not (with the reason)."""
        items = [{"id": e.id, "title": e.title, "available": True,
                  "input_shape": list(e.input_shape)} for e in self.entries.values()]
        items += [{"id": k, "title": k, "available": False, "reason": why}
                  for k, why in self.unavailable.items()]
        return items

    def entry(self, model_id: str) -> ModelEntry:
        if model_id in self.entries:
            return self.entries[model_id]
        if model_id in self.unavailable:
            raise ServiceError(501, f"model {model_id!r} is not available: "
                                    f"{self.unavailable[model_id]}")
        raise ServiceError(404, f"unknown model {model_id!r}; known: "
                                f"{', '.join([*self.entries, *self.unavailable])}")

    # -- what the page asks for
    def layers(self, model_id: str) -> list[dict[str, Any]]:
        """Named modules: name, type, and the weight shape of convolutions."""
        model = self.entry(model_id).get()
        out = []
        for name, module in model.named_modules():
            if not name:
                continue
            weight = getattr(module, "weight", None)
            shape = list(_array(weight).shape) if weight is not None else None
            out.append({"name": name, "type": type(module).__name__,
                        "conv": shape is not None and len(shape) == 4, "weight_shape": shape})
        return out

    def _module(self, model_id: str, layer: str) -> Any:
        model = self.entry(model_id).get()
        found = dict(model.named_modules()).get(layer) if layer else None
        if found is None:
            raise ServiceError(404, f"model {model_id!r} has no layer {layer!r}")
        return found

    def kernels_png(self, model_id: str, layer: str) -> bytes:
        """:func:`convlayers.viz.plot_kernels` of a convolution's weight."""
        from convlayers.viz import plot_kernels

        weight = getattr(self._module(model_id, layer), "weight", None)
        if weight is None or _array(weight).ndim != 4:
            raise ServiceError(400, f"layer {layer!r} is not a convolution (no 4-D weight)")
        return figure_png(plot_kernels(_array(weight), max_out=16, max_in=8))

    def summary(self, model_id: str) -> dict[str, Any]:
        """``convlayers.summary.summary``: the rows and the Markdown table."""
        entry = self.entry(model_id)
        summarize = _contract("convlayers.summary", "summary")
        with entry.access.sole():
            table = summarize(entry.get(), entry.input_shape)
        return {"rows": [{k: _plain(v) for k, v in r.items()} for r in table.rows],
                "markdown": table.to_markdown()}

    def _input(self, entry: ModelEntry, image: np.ndarray) -> np.ndarray:
        """The model's input batch for an RGB uint8 image."""
        if entry.id == "digits":
            _, c, h, w = entry.input_shape
            if (c, h, w) == (1, 8, 8):  # what 'convlayers train digits' makes
                from convlayers.train import digit_input

                return digit_input(image)
            return digits_input(image, c, (h, w))
        preprocess = _contract("convlayers.classify", "preprocess")
        x = np.asarray(preprocess(image, entry.input_shape[-1]), dtype=np.float32)
        return x[None] if x.ndim == 3 else x

    def classify(self, model_id: str, image: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
        """Top classes: ``convlayers.classify.classify``, or for the digits model a softmax
        of its logits."""
        entry = self.entry(model_id)
        top = max(1, min(int(top), 20))
        if entry.id == "digits":
            from convlayers.autograd import no_grad
            from convlayers.functional import softmax

            x = self._input(entry, image)
            with entry.access.shared(), no_grad():
                probs = softmax(_array(entry.get()(x)), dim=1)[0]
            order = np.argsort(-probs, kind="stable")[:top]
            return [{"index": int(i), "name": str(i), "probability": float(probs[i])}
                    for i in order]
        run = _contract("convlayers.classify", "classify")
        model = entry.get()
        with entry.access.shared():
            results = run(model, image, top=top, size=entry.input_shape[-1])
        return [{"index": int(r.index), "name": str(r.name), "probability": float(r.probability)}
                for r in results]

    def features_png(self, model_id: str, layer: str, image: np.ndarray,
                     image_name: str = "") -> bytes:
        """:func:`convlayers.viz.plot_feature_maps` of one layer's output
        (``convlayers.nn.feature_maps``)."""
        from convlayers.viz import plot_feature_maps

        entry = self.entry(model_id)
        self._module(model_id, layer)
        try:
            grab = _contract("convlayers.nn", "feature_maps")
        except ServiceError:  # the same function where it is defined, if not re-exported yet
            grab = _contract("convlayers.nn.inspect", "feature_maps")
        x = self._input(entry, image)
        with entry.access.sole():
            maps = _array(grab(entry.get(), x, [layer])[layer])
        if maps.ndim != 4:
            raise ServiceError(400, f"layer {layer!r} gives shape {maps.shape}, not (N, C, H, W) "
                                    "feature maps; pick a convolution or block")
        return figure_png(plot_feature_maps(maps[0], max_maps=32,
                                            title=f"{model_id} layer {layer!r}"
                                            + (f" on {image_name[:60]}" if image_name else "")))


def _input_side(model: Any) -> int:
    """Side of the square input a SmallCNN was built for."""
    widths = [m.weight.data.shape[0] for _, m in model.named_modules()
              if type(m).__name__ == "Conv2d"]
    per_channel = model.classifier[1].weight.data.shape[1] // widths[-1]
    return math.isqrt(per_channel) * 2 ** len(widths)


def digits_input(image: np.ndarray, channels: int, size: tuple[int, int]) -> np.ndarray:
    """A photo of a digit for a SmallCNN of another input size: gray, resized, ink bright.

    (8x8 models use :func:`convlayers.train.digit_input`, which also crops to the ink.) The
    training digits are light strokes on a dark ground, so a mostly light picture (dark
    ink on paper) is inverted.
    """
    gray = Image.fromarray(image).convert("L").resize((size[1], size[0]), Image.Resampling.BOX)
    x = np.asarray(gray, dtype=np.float32) / 255.0
    if x.mean() > 0.5:
        x = 1.0 - x
    return np.repeat(x[None, None], channels, axis=1)
