"""Convert models between PyTorch and convlayers: same layers, hyper-parameters and weights.

:func:`from_torch` turns a ``torch.nn.Module`` tree into the equivalent convlayers Module,
:func:`to_torch` goes the other way, and :func:`state_dict_from_torch` turns a torch
``state_dict`` into NumPy arrays. Layer names (and so ``state_dict`` keys) and each module's
training flag are kept. Supported: ``Conv1d/2d/3d``, ``ConvTranspose1d/2d``,
``BatchNorm1d/2d/3d``, ``ReLU``, ``ReLU6``, ``Sigmoid``, ``Tanh``, ``Softmax``,
``MaxPool1d/2d``, ``AvgPool1d/2d``, ``AdaptiveAvgPool1d/2d``, ``Linear``, ``Flatten``,
``Dropout``, ``Identity``, ``ZeroPad2d``, ``Sequential`` and ``ModuleList``, plus
MobileNetV2-shaped trees: a module with ``conv`` and ``use_res_connect`` (torchvision's
``InvertedResidual``) and one whose class is named ``MobileNetV2`` with ``features`` and
``classifier`` (torchvision's layout), and torchvision's ``ResNet``, ``BasicBlock`` and
``Bottleneck`` (recognised by class name and child names). A torch layer that subclasses a supported one but
overrides ``forward`` is not supported: its computation is unknown here.

torch is imported inside these functions only; ``import convlayers`` never loads it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from convlayers import nn
from convlayers.nn.module import Module

__all__ = ["from_torch", "state_dict_from_torch", "to_torch"]

# (convlayers class, torch class name, constructor arguments read from the torch layer)
_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_MAXPOOL = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
_AVGPOOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
_LAYERS: tuple[tuple[type[Module], str, tuple[str, ...]], ...] = (
    (nn.Conv1d, "Conv1d", (*_CONV, "padding_mode")),
    (nn.Conv2d, "Conv2d", (*_CONV, "padding_mode")),
    (nn.Conv3d, "Conv3d", (*_CONV, "padding_mode")),
    (nn.ConvTranspose1d, "ConvTranspose1d", (*_CONV, "output_padding")),
    (nn.ConvTranspose2d, "ConvTranspose2d", (*_CONV, "output_padding")),
    (nn.BatchNorm1d, "BatchNorm1d", _BN), (nn.BatchNorm2d, "BatchNorm2d", _BN),
    (nn.BatchNorm3d, "BatchNorm3d", _BN),
    (nn.ReLU, "ReLU", ("inplace",)), (nn.ReLU6, "ReLU6", ("inplace",)), (nn.Sigmoid, "Sigmoid", ()),
    (nn.Tanh, "Tanh", ()), (nn.Softmax, "Softmax", ("dim",)),
    (nn.MaxPool1d, "MaxPool1d", _MAXPOOL), (nn.MaxPool2d, "MaxPool2d", _MAXPOOL),
    (nn.AvgPool1d, "AvgPool1d", _AVGPOOL), (nn.AvgPool2d, "AvgPool2d", (*_AVGPOOL, "divisor_override")),
    (nn.AdaptiveAvgPool1d, "AdaptiveAvgPool1d", ("output_size",)),
    (nn.AdaptiveAvgPool2d, "AdaptiveAvgPool2d", ("output_size",)),
    (nn.Linear, "Linear", ("in_features", "out_features")),
    (nn.Flatten, "Flatten", ("start_dim", "end_dim")), (nn.Dropout, "Dropout", ("p", "inplace")),
    (nn.Identity, "Identity", ()), (nn.ZeroPad2d, "ZeroPad2d", ("padding",)),
)
_WEIGHTED = ("Conv", "ConvTranspose", "Linear", "BatchNorm")


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ImportError("convlayers.interop.torch needs PyTorch: pip install 'convlayers[torch]'") from None
    return torch


def state_dict_from_torch(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A torch ``state_dict`` as NumPy arrays (copies, on the CPU), the keys unchanged.

    Values that are already arrays (or numbers) are copied as they are; torch is not needed.

    >>> state_dict_from_torch({"0.weight": np.ones(2, np.float32)})
    {'0.weight': array([1., 1.], dtype=float32)}
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        out[str(key)] = np.array(value, copy=True)
    return out


def _label(path: str) -> str:
    return repr(path) if path else "the root module"


def _unsupported(path: str, module: Any, direction: str) -> TypeError:
    kind = f"{type(module).__module__}.{type(module).__qualname__}"
    names = ", ".join(name for _, name, _ in _LAYERS)
    return TypeError(f"cannot convert {_label(path)} ({kind}) {direction}: not a supported layer "
                     f"(supported: {names}, Sequential, ModuleList, MobileNetV2, InvertedResidual)")


def _plain(module: Any, base: Any) -> bool:
    """``module`` is a ``base`` whose computation is ``base``'s own (``forward`` not overridden)."""
    return isinstance(module, base) and getattr(type(module), "forward", None) is base.forward


def _shell(cls: type[Module]) -> Any:
    """An instance of ``cls`` without running its ``__init__`` (its children are set after)."""
    obj = cls.__new__(cls)
    Module.__init__(obj)
    return obj


# torch -> convlayers


def _dtype_of(module: Any) -> Any:
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    floats = [t for t in tensors if t.is_floating_point()]
    return floats[0].detach().cpu().numpy().dtype if floats else np.float32


def _layer_from_torch(t: Any, path: str) -> Module | None:
    torch = _torch()
    for ours, name, args in _LAYERS:
        base = getattr(torch.nn, name)
        if type(t) is base or _plain(t, base):
            kwargs = {a: getattr(t, a) for a in args}
            if "padding" in kwargs and isinstance(kwargs["padding"], list):
                kwargs["padding"] = tuple(kwargs["padding"])
            if name.startswith(_WEIGHTED):
                kwargs["dtype"] = _dtype_of(t)
            if name.startswith(("Conv", "Linear")):
                kwargs["bias"] = t.bias is not None
            return ours(**kwargs)
    return None


def _from_torch(t: Any, path: str) -> Module:
    torch = _torch()
    dot = f"{path}." if path else ""
    children = list(t.named_children())
    ours: Any = _layer_from_torch(t, path)
    if ours is not None:
        if children:
            raise _unsupported(path, t, "to convlayers")
    elif _plain(t, torch.nn.Sequential) or _plain(t, torch.nn.ModuleList):
        ours = nn.Sequential() if isinstance(t, torch.nn.Sequential) else nn.ModuleList()
        for name, child in children:
            ours._modules[name] = _from_torch(child, dot + name)
    elif hasattr(t, "use_res_connect") and [n for n, _ in children] == ["conv"]:
        ours = _shell(nn.InvertedResidual)
        ours.conv = _from_torch(t.conv, dot + "conv")
        convs = [m for m in ours.conv.modules() if isinstance(m, nn.Conv2d)]
        ours.in_channels, ours.out_channels = convs[0].in_channels, convs[-1].out_channels
        ours.stride = max(max(m.stride) for m in convs)
        ours.use_residual = bool(t.use_res_connect)
    elif (resnet := _resnet_class(t, [n for n, _ in children])) is not None:
        ours = _shell(resnet)
        for name, child in children:
            setattr(ours, name, _from_torch(child, dot + name))
        if resnet is not nn.ResNet:
            ours.stride = max(max(m.stride) for m in ours.modules() if isinstance(m, nn.Conv2d))
        else:
            ours.inplanes = ours.fc.in_features
    elif type(t).__name__.endswith("MobileNetV2") and [n for n, _ in children] == ["features",
                                                                                  "classifier"]:
        ours = _shell(nn.MobileNetV2)
        ours.features = _from_torch(t.features, dot + "features")
        ours.classifier = _from_torch(t.classifier, dot + "classifier")
        ours.last_channel = ours.classifier[-1].in_features
    else:
        raise _unsupported(path, t, "to convlayers")
    object.__setattr__(ours, "training", bool(t.training))
    return ours


_RESNET_CHILDREN: dict[str, tuple[str, ...]] = {
    "BasicBlock": ("conv1", "bn1", "relu", "conv2", "bn2"),
    "Bottleneck": ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu"),
    "ResNet": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
               "avgpool", "fc"),
}


def _resnet_class(t: Any, names: list[str]) -> type[Module] | None:
    """torchvision's ResNet, BasicBlock or Bottleneck (by class name and child names)."""
    from convlayers.nn.models import resnet

    for cls_name, expected in _RESNET_CHILDREN.items():
        if type(t).__name__.endswith(cls_name) and sorted(names) in (
                sorted(expected), sorted((*expected, "downsample"))):
            if cls_name == "ResNet" and "downsample" in names:
                return None
            return getattr(resnet, cls_name)
    return None


def from_torch(module: Any) -> Module:
    """The convlayers equivalent of a torch module tree, with its weights, buffers and modes.

    Parameters
    ----------
    module : torch.nn.Module
        Built from the layers listed in this module's docstring.

    Returns
    -------
    Module
        Same structure and child names (so the same ``state_dict`` keys and values, copied),
        same hyper-parameters, dtype and training flags.

    Raises
    ------
    TypeError
        If ``module`` is not a torch Module, or for the first unsupported layer, naming its
        path (``'features.3.act'``) and type.

    Examples
    --------
    >>> import torch
    >>> t = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    >>> from_torch(t)
    Sequential(
      (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
      (1): ReLU()
    )
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    ours = _from_torch(module, "")
    ours.load_state_dict(state_dict_from_torch(module.state_dict()))
    return ours


# convlayers -> torch


@functools.cache
def _torch_blocks() -> tuple[type, type]:
    """torchvision-layout torch twins of InvertedResidual and MobileNetV2 (defined on first use)."""
    torch = _torch()

    class InvertedResidual(torch.nn.Module):  # type: ignore[name-defined]
        """torchvision's block: ``conv`` (a Sequential) plus the input when ``use_res_connect``."""

        def __init__(self, conv: Any, use_res_connect: bool, stride: int) -> None:
            super().__init__()
            self.conv, self.use_res_connect, self.stride = conv, use_res_connect, stride

        def forward(self, x: Any) -> Any:
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(torch.nn.Module):  # type: ignore[name-defined]
        """torchvision's forward: features, global average pooling, flatten, classifier."""

        def __init__(self, features: Any, classifier: Any) -> None:
            super().__init__()
            self.features, self.classifier = features, classifier

        def forward(self, x: Any) -> Any:
            x = torch.nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    return InvertedResidual, MobileNetV2


@functools.cache
def _torch_resnet() -> dict[str, type]:
    """torchvision-layout torch twins of ResNet, BasicBlock and Bottleneck (children added after)."""
    torch = _torch()

    class BasicBlock(torch.nn.Module):  # type: ignore[name-defined]
        """torchvision's forward: two conv-BN pairs, the shortcut added, ReLU."""

        def forward(self, x: Any) -> Any:
            identity = self.downsample(x) if hasattr(self, "downsample") else x
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class Bottleneck(torch.nn.Module):  # type: ignore[name-defined]
        """torchvision's forward: 1x1, 3x3, 1x1 conv-BN, the shortcut added, ReLU."""

        def forward(self, x: Any) -> Any:
            identity = self.downsample(x) if hasattr(self, "downsample") else x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class ResNet(torch.nn.Module):  # type: ignore[name-defined]
        """torchvision's forward: stem, four stages, global average pooling, ``fc``."""

        def forward(self, x: Any) -> Any:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck, "ResNet": ResNet}


def _torch_dtype(module: Module) -> Any:
    torch = _torch()
    arrays = [p.data for p in module.parameters(recurse=False)] + list(module.buffers(recurse=False))
    floats = [a for a in arrays if a.dtype.kind == "f"]
    return torch.from_numpy(np.empty(0, floats[0].dtype if floats else np.float32)).dtype


def _to_torch(m: Module, path: str) -> Any:
    torch = _torch()
    dot = f"{path}." if path else ""
    blocks = _torch_blocks()
    theirs: Any = None
    for ours, name, args in _LAYERS:
        if type(m) is ours:
            kwargs = {a: getattr(m, a) for a in args}
            if name.startswith(_WEIGHTED):
                kwargs["dtype"] = _torch_dtype(m)
            if name.startswith(("Conv", "Linear")):
                kwargs["bias"] = m.bias is not None
            theirs = getattr(torch.nn, name)(**kwargs)
    if theirs is not None:
        pass  # a plain layer
    elif isinstance(m, nn.ModuleList) and (type(m).forward is nn.Sequential.forward
                                           or type(m) is nn.ModuleList):
        theirs = torch.nn.Sequential() if isinstance(m, nn.Sequential) else torch.nn.ModuleList()
        for name, child in m.named_children():
            theirs.add_module(name, _to_torch(child, dot + name))
    elif type(m) is nn.InvertedResidual:
        theirs = blocks[0](_to_torch(m.conv, dot + "conv"), m.use_residual, m.stride)
    elif type(m) is nn.MobileNetV2:
        theirs = blocks[1](_to_torch(m.features, dot + "features"),
                           _to_torch(m.classifier, dot + "classifier"))
    elif type(m).__name__ in _RESNET_CHILDREN and type(m).__module__.endswith("models.resnet"):
        theirs = _torch_resnet()[type(m).__name__]()
        for name, child in m.named_children():
            theirs.add_module(name, _to_torch(child, dot + name))
    elif type(m) is nn.SmallCNN:  # its forward is classifier(features(x)): a two-step chain
        theirs = torch.nn.Sequential()
        for name, child in m.named_children():
            theirs.add_module(name, _to_torch(child, dot + name))
    else:
        raise _unsupported(path, m, "to torch")
    theirs.training = m.training  # this module only: each child already carries its own flag
    return theirs


def to_torch(module: Module) -> Any:
    """The torch equivalent of a convlayers Module, with copies of its weights and buffers.

    The reverse of :func:`from_torch`: same layers, names, hyper-parameters, dtypes and
    training flags. ``InvertedResidual`` and ``MobileNetV2`` become small torch classes with
    torchvision's layout and forward; ``ConvNormAct`` and ``DepthwiseSeparable`` become
    ``torch.nn.Sequential``; ``SmallCNN`` a Sequential of its ``features`` and ``classifier``.
    Dropout masks come from torch's generator, not the layer's ``rng``.

    Raises
    ------
    TypeError
        For a layer torch has no equivalent of, naming its path and type.

    Examples
    --------
    >>> t = to_torch(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, rng=0), nn.ReLU()))
    >>> t
    Sequential(
      (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
      (1): ReLU()
    )
    """
    torch = _torch()
    if not isinstance(module, Module):
        raise TypeError(f"module must be a convlayers Module, got {type(module).__name__}")
    theirs = _to_torch(module, "")
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in module.state_dict().items()})
    return theirs

