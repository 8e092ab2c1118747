"""LeNet-5 (conv5 6, pool, conv5 16, pool, fc 120, fc 84, linear) and a half-width variant.

The first convolution is padded (the MNIST-style LeNet-5 on 28x28 inputs); the second is padded only when
the image is too small for a valid 5x5 convolution (below 12 pixels, e.g. 8x8 digits). The flatten size is computed from
``image_size`` at build time, so the graph has static shapes and exports cleanly.
"""

from __future__ import annotations

from torch import nn

from shared.models.base import Classifier, models


def _lenet(
    num_classes: int, in_channels: int, image_size: tuple[int, int], channels: tuple[int, int], units: tuple[int, int]
) -> Classifier:
    c1, c2 = channels
    # After conv1 (same padding) and a 2x2 pool the map is image_size // 2; the valid 5x5 conv2 then removes
    # 4 pixels and the second pool needs >= 2 left, so small images (< 12) pad conv2 instead.
    pad2 = 0 if min(image_size) // 2 >= 6 else 2
    height, wide = ((s // 2 + 2 * pad2 - 4) // 2 for s in image_size)
    body = nn.Sequential(
        nn.Conv2d(in_channels, c1, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=pad2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(1),
        nn.Linear(c2 * height * wide, units[0]),
        nn.ReLU(),
        nn.Linear(units[0], units[1]),
        nn.ReLU(),
    )
    return Classifier(body, units[1], num_classes, in_channels, image_size)


@models.register("lenet5")
def lenet5(num_classes: int, in_channels: int, image_size: tuple[int, int], /) -> Classifier:
    """LeNet-5: 6 and 16 channels, 120 and 84 hidden units."""
    return _lenet(num_classes, in_channels, image_size, (6, 16), (120, 84))


@models.register("lenet5_half")
def lenet5_half(num_classes: int, in_channels: int, image_size: tuple[int, int], /) -> Classifier:
    """LeNet-5 with half the channels and hidden units (3, 8 channels; 60, 42 units)."""
    return _lenet(num_classes, in_channels, image_size, (3, 8), (60, 42))
