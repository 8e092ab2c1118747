"""The ConvNet of Dataset Condensation (Zhao et al.): ``depth`` x [conv3x3, norm, ReLU, avg-pool 2], then linear.

Features are the flattened last feature map (no global pooling), as in the condensation literature, so
``feature_dim = width * (H / 2^depth) * (W / 2^depth)`` with floor division at each pooling.
"""

from __future__ import annotations

from torch import nn

from shared.errors import ConfigError
from shared.models.base import Classifier, check_option, models

NORMS = ("instancenorm", "batchnorm", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instancenorm":
        # GroupNorm with one group per channel = instance norm with a per-channel affine; unlike
        # InstanceNorm2d it keeps no running statistics, so train and eval behave the same.
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


@models.register("convnet3")
def convnet(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    /,
    *,
    width: int = 128,
    depth: int = 3,
    norm: str = "instancenorm",
) -> Classifier:
    """DC ConvNet; ``norm`` is ``instancenorm`` (default), ``batchnorm`` or ``none``."""
    check_option(width, "width", "convnet3")
    check_option(depth, "depth", "convnet3")
    if norm not in NORMS:
        raise ConfigError(f"model 'convnet3': option norm must be one of {', '.join(NORMS)}, got {norm!r}")
    height, wide = image_size
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(depth):
        layers += [nn.Conv2d(channels, width, 3, padding=1), _norm(norm, width), nn.ReLU()]
        layers.append(nn.AvgPool2d(2))
        channels = width
        height, wide = height // 2, wide // 2
    if height < 1 or wide < 1:
        raise ConfigError(
            f"model 'convnet3': option depth={depth} pools a {image_size[0]}x{image_size[1]} image to nothing; "
            "use a smaller depth"
        )
    layers.append(nn.Flatten(1))
    return Classifier(nn.Sequential(*layers), width * height * wide, num_classes, in_channels, image_size)
