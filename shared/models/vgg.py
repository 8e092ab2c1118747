"""VGG with batch norm (Simonyan & Zisserman), CIFAR-style: global pooling and a single linear classifier.

Max-pools that would shrink the feature map below 1x1 are left out (28x28 images support four of the
five pools, 8x8 digits three), so every configuration works for any image size >= 8.
"""

from __future__ import annotations

from torch import nn

from shared.models.base import Classifier, check_option, global_pool, models

POOL = 0  # marks a max-pool in the layer lists below
CONFIGS: dict[str, tuple[int, ...]] = {
    "vgg11": (1, POOL, 2, POOL, 4, 4, POOL, 8, 8, POOL, 8, 8, POOL),
    "vgg16": (1, 1, POOL, 2, 2, POOL, 4, 4, 4, POOL, 8, 8, 8, POOL, 8, 8, 8, POOL),
}  # channel multiples of ``width`` (64 by default)


def _vgg(name: str, num_classes: int, in_channels: int, image_size: tuple[int, int], width: int) -> Classifier:
    check_option(width, "width", name)
    layers: list[nn.Module] = []
    channels, (height, wide) = in_channels, image_size
    for item in CONFIGS[name]:
        if item == POOL:
            if min(height, wide) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, wide = height // 2, wide // 2
            continue
        planes = width * item
        layers += [nn.Conv2d(channels, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes), nn.ReLU()]
        channels = planes
    layers.append(global_pool())
    return Classifier(nn.Sequential(*layers), channels, num_classes, in_channels, image_size)


@models.register("vgg11")
def vgg11(num_classes: int, in_channels: int, image_size: tuple[int, int], /, *, width: int = 64) -> Classifier:
    """VGG-11 with BN; ``width`` is the first stage's channels."""
    return _vgg("vgg11", num_classes, in_channels, image_size, width)


@models.register("vgg16")
def vgg16(num_classes: int, in_channels: int, image_size: tuple[int, int], /, *, width: int = 64) -> Classifier:
    """VGG-16 with BN; ``width`` is the first stage's channels."""
    return _vgg("vgg16", num_classes, in_channels, image_size, width)
