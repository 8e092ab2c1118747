"""Wide ResNets (Zagoruyko & Komodakis) WRN-depth-k: pre-activation blocks, widths 16, 16k, 32k, 64k.

Each of the 3 stages has ``(depth - 4) / 6`` blocks; ``drop_rate`` is the dropout between the two
convolutions of a block (0 by default, as in most KD papers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import ConfigError
from shared.models.base import Classifier, global_pool, models


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3, (dropout), BN-ReLU-conv3x3, plus identity or 1x1 projection of the activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.drop_rate = drop_rate
        self.equal = in_planes == planes and stride == 1
        self.shortcut = nn.Identity() if self.equal else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu(self.bn1(x))
        out = self.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        residual = x if self.equal else self.shortcut(act)
        return out + residual


def _wrn(depth: int, widen: int) -> Callable[..., Classifier]:
    name = f"wrn{depth}_{widen}"
    blocks = (depth - 4) // 6

    def build(
        num_classes: int, in_channels: int, image_size: tuple[int, int], /, *, drop_rate: float = 0.0
    ) -> Classifier:
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, int | float) or not 0 <= drop_rate < 1:
            raise ConfigError(f"model {name!r}: option drop_rate must be in [0, 1), got {drop_rate!r}")
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)]
        in_planes = widths[0]
        for stage in range(3):
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(WideBlock(in_planes, widths[stage + 1], stride, float(drop_rate)))
                in_planes = widths[stage + 1]
        layers += [nn.BatchNorm2d(in_planes), nn.ReLU(), global_pool()]
        return Classifier(nn.Sequential(*layers), in_planes, num_classes, in_channels, image_size)

    build.__name__ = name
    build.__doc__ = f"WRN-{depth}-{widen}: 3 stages x {blocks} pre-activation blocks."
    return build


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    models.register(f"wrn{_depth}_{_widen}")(_wrn(_depth, _widen))
