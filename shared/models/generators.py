"""The allow-list of small conditional generators a site may send as its payload (``generators`` registry).

A generator payload names one of these architectures and its keyword arguments; the server builds it from
this code only (never from anything in the payload), loads the weights and draws prototypes. Every builder
takes ``(num_classes, channels, image_size)`` and bounded keyword options (``GENERATOR_OPTIONS``), so a
payload cannot make the server allocate an arbitrarily large network.

``cgan-dcgan``: noise ``z`` (``latent_dim``) concatenated with the one-hot label (the conditional GAN input
of the GenDD paper), a linear layer to ``2 width x (S/4) x (S/4)`` with BatchNorm, a nearest-upsampling 3x3
conv block to ``width`` channels with BatchNorm, and a nearest-upsampling sigmoid 3x3 conv: pixel-space
images in [0, 1] for 28x28 (FMNIST, MNIST) and 32x32 (CIFAR), the shape of the classic MNIST conditional
DCGAN, sized for a 2-core site.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from shared.errors import ConfigError
from shared.registry import Registry

# name -> builder(num_classes, channels, image_size, **options) -> ConditionalGenerator
generators: Registry[Callable[..., ConditionalGenerator]] = Registry("generator architecture")

# option -> (lowest, highest): what a payload's kwargs may ask for (the server refuses anything else)
GENERATOR_OPTIONS: dict[str, tuple[int, int]] = {"latent_dim": (2, 256), "width": (4, 128)}
MAX_CLASSES = 1000
IMAGE_SIZES = (28, 32)
CHANNELS = (1, 3)


class ConditionalGenerator(nn.Module):
    """``G(z, y)``: ``N x latent_dim`` noise and ``N`` int64 labels to ``N x C x S x S`` pixels in [0, 1]."""

    def __init__(self, num_classes: int, channels: int, image_size: int, latent_dim: int = 32,
                 width: int = 32) -> None:
        super().__init__()
        self.num_classes, self.channels, self.image_size = num_classes, channels, image_size
        self.latent_dim, self.width = latent_dim, width
        self.base = image_size // 4
        self.fc = nn.Linear(latent_dim + num_classes, 2 * width * self.base * self.base)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * width, width, 3, padding=1),
            nn.BatchNorm2d(width), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, channels, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(labels, self.num_classes).to(z.dtype)
        h = self.fc(torch.cat([z, onehot], dim=1)).view(-1, 2 * self.width, self.base, self.base)
        return self.body(h)

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels for ``labels`` from standard normal noise drawn with ``generator``."""
        z = torch.randn(len(labels), self.latent_dim, generator=generator).to(labels.device)
        return self(z, labels)


@generators.register("cgan-dcgan")
def cgan_dcgan(num_classes: int, channels: int, image_size: int, /, **options: Any) -> ConditionalGenerator:
    return ConditionalGenerator(num_classes, channels, image_size, **options)


def check_generator_args(arch: str, num_classes: int, channels: int, image_size: int,
                         options: dict[str, Any]) -> None:
    """``ConfigError`` naming the argument unless it is in the allow-listed ranges (nothing is built)."""
    if arch not in generators:
        raise ConfigError(f"generator architecture {arch!r} is not allowed; allowed: {', '.join(generators.names())}")
    checks = {"num_classes": (num_classes, range(2, MAX_CLASSES + 1)), "channels": (channels, CHANNELS),
              "image_size": (image_size, IMAGE_SIZES)}
    for name, (value, allowed) in checks.items():
        if not _is_int(value) or value not in allowed:
            raise ConfigError(f"generator {name}={value!r} is not allowed (allowed: {_describe(allowed)})")
    for name, value in options.items():
        if name not in GENERATOR_OPTIONS:
            raise ConfigError(f"generator option {name!r} is unknown; allowed: {', '.join(GENERATOR_OPTIONS)}")
        low, high = GENERATOR_OPTIONS[name]
        if not _is_int(value) or not low <= value <= high:
            raise ConfigError(f"generator option {name}={value!r} must be an integer in {low}..{high}")


def build_generator(arch: str, num_classes: int, channels: int, image_size: int,
                    **options: Any) -> ConditionalGenerator:
    """An allow-listed generator with checked arguments (``ConfigError`` otherwise)."""
    check_generator_args(arch, num_classes, channels, image_size, options)
    return generators.get(arch)(num_classes, channels, image_size, **options)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(allowed: Any) -> str:
    if isinstance(allowed, range):
        return f"{allowed.start}..{allowed.stop - 1}"
    return ", ".join(map(str, allowed))
