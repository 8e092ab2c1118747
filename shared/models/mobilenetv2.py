"""MobileNetV2 (Sandler et al.) adapted to small images as on CIFAR: stride-1 stem and a stride-1 second stage.

The total downsampling is 8 instead of 32, so a 28x28 input ends at 4x4 and an 8x8 input at 1x1.
``width_mult`` scales every layer (rounded to multiples of 8); the last 1x1 convolution keeps 1280
channels unless ``width_mult > 1`` or ``last_channel`` is given (a smaller head suits CPU students).
"""

from __future__ import annotations

import torch
from torch import nn

from shared.models.base import Classifier, check_option, global_pool, models

# (expansion t, output channels c, repeats n, first stride s); strides of the stem and of the
# 24-channel stage are 1 instead of 2, the CIFAR adaption.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without losing more than 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(in_planes: int, planes: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (same padding) -> BN -> ReLU6."""
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(planes),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; residual when shapes match."""

    def __init__(self, in_planes: int, planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        layers: list[nn.Module] = [conv_bn(in_planes, hidden, 1)] if expansion != 1 else []
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_planes == planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return x + self.block(x)
        return self.block(x)


@models.register("mobilenetv2")
def mobilenetv2(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    /,
    *,
    width_mult: float = 1.0,
    last_channel: int | None = None,
) -> Classifier:
    """MobileNetV2 for small images; ``width_mult`` > 0 scales the widths, ``last_channel`` the head width."""
    check_option(width_mult, "width_mult", "mobilenetv2", minimum=0, kind=float)
    if last_channel is None:
        last_channel = make_divisible(1280 * max(1.0, width_mult))
    check_option(last_channel, "last_channel", "mobilenetv2")
    in_planes = make_divisible(32 * width_mult)
    layers: list[nn.Module] = [conv_bn(in_channels, in_planes, 3)]
    for expansion, channels, repeats, stride in SETTINGS:
        planes = make_divisible(channels * width_mult)
        for index in range(repeats):
            layers.append(InvertedResidual(in_planes, planes, stride if index == 0 else 1, expansion))
            in_planes = planes
    layers += [conv_bn(in_planes, last_channel, 1), global_pool()]
    return Classifier(nn.Sequential(*layers), last_channel, num_classes, in_channels, image_size)
