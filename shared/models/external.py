"""Teachers from torchvision (and timm, when installed) behind the zoo's ``forward(x, return_features)``.

``build_model("torchvision:resnet18", num_classes=10, in_channels=1, image_size=28)`` builds the model with
``torchvision.models.get_model(name, weights=None, num_classes=...)`` and wraps it in ``ExternalClassifier``:
a plain ``nn.Module`` (so the inversion's BatchNorm hooks fire, unlike TorchScript) whose penultimate
features are the *input of its final linear layer*, captured by a forward pre-hook; no logits ever stand in
for features. ``timm:<name>`` does the same with ``timm.create_model`` (the ``timm`` extra).

Input adaptation (option ``adapt``), applied before the weights are loaded, so the state dict must come from
the same adapted model (train it with ``build_model(...)``'s ``.net`` or replicate the change):

* ``none``: the architecture as published (ImageNet stem); needs 3-channel input.
* ``small`` (the CIFAR-style stem used for 28x28 and 32x32 inputs): ResNets get ``conv1 = Conv2d(C, 64,
  3, stride=1, padding=1, bias=False)`` and ``maxpool = Identity()``; MobileNetV2 gets ``features[0][0] =
  Conv2d(C, 32, 3, stride=1, padding=1, bias=False)``; ``C`` is the dataset's channel count.
* ``auto`` (default): ``small`` for images under 64 pixels or not 3-channel, else ``none``.

In-place activations are switched off (``inplace=False``): hooks read layer inputs and outputs, which an
in-place ReLU would overwrite."""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch
from torch import nn

from shared.errors import ConfigError

SOURCES = ("torchvision", "timm")
ADAPT = ("auto", "none", "small")


def is_external(name: str) -> bool:
    return name.partition(":")[0] in SOURCES and ":" in name


class ExternalClassifier(nn.Module):
    """A torchvision/timm classifier answering like a zoo ``Classifier``: ``forward(x)`` gives logits,
    ``forward(x, return_features=True)`` gives ``(logits, features)`` with the final linear layer's input."""

    supports_bn_hooks = True
    __jit_ignored_attributes__: ClassVar[list[str]] = ["arch", "arch_kwargs"]

    def __init__(self, net: nn.Module, head: nn.Linear, num_classes: int, in_channels: int,
                 image_size: tuple[int, int]) -> None:
        super().__init__()
        self.net = net
        self.feature_dim = int(head.in_features)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.arch, self.arch_kwargs = "", {}
        self._features: list[torch.Tensor] = []
        head.register_forward_pre_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._features.append(inputs[0])

    def forward(self, x: torch.Tensor, return_features: bool = False) -> Any:
        self._features.clear()
        logits = self.net(x)
        if not return_features:
            self._features.clear()
            return logits
        if len(self._features) != 1:  # the head ran 0 or several times: no single penultimate output
            raise ConfigError(f"{self.arch}: its final linear layer ran {len(self._features)} times in one forward; "
                              "its penultimate features cannot be taken from that layer's input")
        features = self._features.pop().flatten(1)
        return logits, features


def build_external(name: str, num_classes: int, in_channels: int, image_size: tuple[int, int],
                   adapt: str = "auto") -> ExternalClassifier:
    """``torchvision:<name>`` or ``timm:<name>``, untrained, adapted to the input (module docstring)."""
    source, _, model_name = name.partition(":")
    if adapt not in ADAPT:
        raise ConfigError(f"model {name!r}: option adapt={adapt!r} must be one of {', '.join(ADAPT)}")
    if adapt == "auto":
        adapt = "small" if min(image_size) < 64 or in_channels != 3 else "none"
    if adapt == "none" and in_channels != 3:
        raise ConfigError(f"model {name!r} with adapt=none needs 3-channel images, the data has {in_channels}; "
                          "use adapt=small (or auto)")
    net = _torchvision(model_name, num_classes) if source == "torchvision" else _timm(model_name, num_classes)
    if adapt == "small":
        _small_stem(net, name, in_channels)
    for module in net.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    model = ExternalClassifier(net, _final_linear(net, name, num_classes), num_classes, in_channels, image_size)
    model.arch, model.arch_kwargs = name, {"adapt": adapt}  # resolved: the card rebuilds exactly this stem
    return model


def _torchvision(name: str, num_classes: int) -> nn.Module:
    from torchvision import models

    if name not in models.list_models(module=models):
        known = ", ".join(n for n in models.list_models(module=models) if n.startswith(("resnet", "mobilenet")))
        raise ConfigError(f"torchvision has no classification model {name!r}; e.g. {known}")
    return models.get_model(name, weights=None, num_classes=num_classes)


def _timm(name: str, num_classes: int) -> nn.Module:
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        raise ConfigError(f"timm:{name} needs the timm package: pip install 'condex[timm]'") from None
    if not timm.is_model(name):
        raise ConfigError(f"timm has no model {name!r}; list them with timm.list_models()")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _small_stem(net: nn.Module, name: str, in_channels: int) -> None:
    """The CIFAR-style stem for small images: a stride-1 3x3 first convolution, no max-pool."""
    if isinstance(getattr(net, "conv1", None), nn.Conv2d) and hasattr(net, "maxpool"):  # ResNet family
        net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        return
    features = getattr(net, "features", None)
    first = features[0][0] if isinstance(features, nn.Sequential) and isinstance(features[0], nn.Sequential) \
        else None
    if isinstance(first, nn.Conv2d):  # MobileNet family (torchvision)
        features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=1, padding=1, bias=False)
        return
    raise ConfigError(f"model {name!r}: adapt=small knows ResNet (conv1 + maxpool) and MobileNet (features[0][0]) "
                      "stems only; use adapt=none with 3-channel images of at least 64 pixels")


def _final_linear(net: nn.Module, name: str, num_classes: int) -> nn.Linear:
    """The classifier's last linear layer (``get_classifier()`` for timm), whose input are the features."""
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None or head.out_features != num_classes:
        raise ConfigError(f"model {name!r} has no final nn.Linear with {num_classes} outputs to take penultimate "
                          "features from; import it as TorchScript with forward(x, return_features) instead")
    return head
