"""CIFAR-style ResNets (He et al.): 3x3 stem without max-pool, BasicBlock stages, global average pooling.

``resnet8`` has 3 stages of one block (widths w, 2w, 4w; default w=16, the usual small KD teacher);
``resnet18``/``resnet34`` have 4 stages (w..8w; default w=64) of 2-2-2-2 / 3-4-6-3 blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.models.base import Classifier, check_option, global_pool, models


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # The shortcut runs after the main path so batchnorm_layers' registration order is the call order.
        return self.relu(out + self.shortcut(x))


def _resnet(
    name: str, num_classes: int, in_channels: int, image_size: tuple[int, int], width: int, blocks: tuple[int, ...]
) -> Classifier:
    check_option(width, "width", name)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    in_planes = width
    for stage, count in enumerate(blocks):
        planes = width * 2**stage
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            layers.append(BasicBlock(in_planes, planes, stride))
            in_planes = planes
    layers.append(global_pool())
    return Classifier(nn.Sequential(*layers), in_planes, num_classes, in_channels, image_size)


@models.register("resnet8")
def resnet8(num_classes: int, in_channels: int, image_size: tuple[int, int], /, *, width: int = 16) -> Classifier:
    """ResNet-8: stem + 3 stages x 1 BasicBlock (w, 2w, 4w channels)."""
    return _resnet("resnet8", num_classes, in_channels, image_size, width, (1, 1, 1))


@models.register("resnet18")
def resnet18(num_classes: int, in_channels: int, image_size: tuple[int, int], /, *, width: int = 64) -> Classifier:
    """ResNet-18 (CIFAR stem): 4 stages x 2 BasicBlocks."""
    return _resnet("resnet18", num_classes, in_channels, image_size, width, (2, 2, 2, 2))


@models.register("resnet34")
def resnet34(num_classes: int, in_channels: int, image_size: tuple[int, int], /, *, width: int = 64) -> Classifier:
    """ResNet-34 (CIFAR stem): 4 stages of 3, 4, 6, 3 BasicBlocks."""
    return _resnet("resnet34", num_classes, in_channels, image_size, width, (3, 4, 6, 3))
