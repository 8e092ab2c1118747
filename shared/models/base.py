"""The classifier interface every zoo model shares, the model registry and the helpers around it.

Every model is a ``Classifier``: a ``body`` that maps normalised images ``N x C x H x W`` to penultimate
features ``N x feature_dim`` (already pooled and flattened) followed by one linear ``head``. Keeping that
split in one place gives every family the same ``forward(x, return_features)`` (what feature alignment
and KD need) and keeps the forward simple enough to trace, script and export to ONNX.

A family registers one *builder* per name with ``@models.register(name)``. A builder takes
``(num_classes, in_channels, image_size)`` positionally and its family options as keyword-only
arguments; ``build_model`` checks the shared arguments and the option names before calling it.

No layer works in place: DeepInversion and feature alignment read layer inputs and outputs through forward
hooks, and an in-place activation would silently overwrite what a hook kept.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from shared.errors import ConfigError
from shared.registry import Registry

MIN_IMAGE_SIZE = 8  # the smallest dataset (sklearn digits) is 8x8


# name -> builder(num_classes, in_channels, (height, width), /, *, <family options>) -> Classifier
models: Registry[Callable[..., Classifier]] = Registry("model")


class Classifier(nn.Module):
    """``body`` (images -> N x feature_dim features) followed by a linear ``head`` (features -> logits)."""

    # Bookkeeping for checkpoints and callers, not used by forward; TorchScript need not type them.
    __jit_ignored_attributes__: ClassVar[list[str]] = ["arch", "arch_kwargs"]
    arch: str
    arch_kwargs: dict[str, Any]

    def __init__(
        self, body: nn.Module, feature_dim: int, num_classes: int, in_channels: int, image_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        # Filled by build_model (name and every family option, defaults included) so checkpoints can
        # rebuild the same network with build_model(arch, num_classes, in_channels, image_size, **arch_kwargs).
        self.arch = ""
        self.arch_kwargs = {}
        init_weights(self)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        logits = self.head(features)
        if return_features:
            return logits, features
        return logits


def init_weights(module: nn.Module) -> None:
    """He init for convolutions (all bodies use ReLU-family activations), unit scale for norm layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def build_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | tuple[int, int] | list[int] = 28,
    **options: Any,
) -> Classifier:
    """Build the registered model ``name`` for the given input geometry; ``options`` are family options.

    Raises ``UnknownNameError`` for an unknown name and ``ConfigError`` (naming the argument) for bad values
    or options the family does not accept. ``torchvision:<name>`` / ``timm:<name>`` build those libraries'
    models behind the same interface (``shared.models.external``; option ``adapt``).
    """
    num_classes = _check_int(num_classes, "num_classes", minimum=2)
    in_channels = _check_int(in_channels, "in_channels", minimum=1)
    size = _image_size(image_size)
    from shared.models.external import build_external, is_external

    if is_external(name):
        unknown = sorted(set(options) - {"adapt"})
        if unknown:
            raise ConfigError(f"model {name!r} does not accept option(s) {', '.join(unknown)}; accepted: adapt")
        return build_external(name, num_classes, in_channels, size, **options)  # type: ignore[return-value]  (same forward contract as Classifier)
    builder = models.get(name)
    accepted = _option_names(builder)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model {name!r} does not accept option(s) {', '.join(unknown)}; accepted: {', '.join(accepted) or 'none'}"
        )
    net = builder(num_classes, in_channels, size, **options)
    net.arch = name
    # Record defaults too: a checkpoint must rebuild the same network even if a default changes later.
    net.arch_kwargs = {**model_options(name), **options}
    return net


def model_names() -> list[str]:
    """All registered model names, sorted."""
    return models.names()


def model_options(name: str) -> dict[str, Any]:
    """The family options of ``name`` with their defaults (e.g. ``{"width": 16}`` for resnet8)."""
    params = inspect.signature(models.get(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def batchnorm_layers(net: nn.Module) -> list[nn.BatchNorm2d]:
    """The ``BatchNorm2d`` layers of ``net`` in forward order (zoo models register modules in forward order)."""
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def _option_names(builder: Callable[..., Classifier]) -> list[str]:
    params = inspect.signature(builder).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _image_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(image_size, tuple | list):
        if len(image_size) != 2:
            raise ConfigError(f"image_size must be an int or a (height, width) pair, got {image_size!r}")
        return (
            _check_int(image_size[0], "image_size", MIN_IMAGE_SIZE),
            _check_int(image_size[1], "image_size", MIN_IMAGE_SIZE),
        )
    size = _check_int(image_size, "image_size", minimum=MIN_IMAGE_SIZE)
    return (size, size)


def _check_int(value: object, field: str, minimum: int) -> int:
    """``value`` as a plain int (numpy integers are accepted) if it is an integer >= ``minimum``."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < minimum:
        raise ConfigError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return number


def check_option(value: object, field: str, model: str, minimum: float = 1, kind: type = int) -> None:
    """Raise ``ConfigError`` naming ``model``'s option ``field`` unless it is a ``kind`` >= ``minimum``.

    For ``kind=float`` ints are accepted too and the bound is exclusive (``width_mult`` must be > 0).
    """
    if isinstance(value, bool):
        ok = False
    elif kind is float:
        ok = isinstance(value, int | float) and value > minimum
    else:
        ok = isinstance(value, kind) and value >= minimum  # type: ignore[operator]
    if not ok:
        bound = f"> {minimum}" if kind is float else f">= {minimum}"
        raise ConfigError(f"model {model!r}: option {field} must be a {kind.__name__} {bound}, got {value!r}")


def global_pool() -> nn.Sequential:
    """Global average pooling then flatten: any spatial size -> N x C (exports as GlobalAveragePool)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
