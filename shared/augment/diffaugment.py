"""Differentiable augmentation (DiffAugment, Zhao et al. 2020): colour, translation and cutout.

Every operation is a differentiable function of the input batch with fresh random parameters per
sample, so gradients flow back to whatever produced the images (a generator, condensed pixels). The
operations work in any space; on normalised images "zero" (padding, cutout) is the dataset mean.
Random draws use ``generator`` when given, else torch's global RNG (saved in run checkpoints)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from shared.errors import ConfigError

Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def _rand(n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, generator=generator, device=generator.device if generator else None).to(x)


def brightness(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return x + (_rand(x.shape[0], x, generator) - 0.5)


def saturation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x.shape[0], x, generator) * 2.0) + mean


def contrast(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x.shape[0], x, generator) + 0.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator | None = None, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size, filling with zeros."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dev = generator.device if generator else None
    tx = torch.randint(-sh, sh + 1, (n, 1, 1), generator=generator, device=dev).to(x.device)
    ty = torch.randint(-sw, sw + 1, (n, 1, 1), generator=generator, device=dev).to(x.device)
    gi, gj = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    gi = (gi.unsqueeze(0) + tx + 1).clamp(0, h + 1)
    gj = (gj.unsqueeze(0) + ty + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # N x H+2 x W+2 x C
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded[batch, gi, gj].permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of ``ratio`` times the image size at a random place in each image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dev = generator.device if generator else None
    ox = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=generator, device=dev).to(x.device)
    oy = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=generator, device=dev).to(x.device)
    gi, gj = torch.meshgrid(torch.arange(ch, device=x.device), torch.arange(cw, device=x.device), indexing="ij")
    gi = (gi.unsqueeze(0) + ox - ch // 2).clamp(0, h - 1)
    gj = (gj.unsqueeze(0) + oy - cw // 2).clamp(0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[torch.arange(n, device=x.device).view(n, 1, 1), gi, gj] = 0
    return x * mask.unsqueeze(1)


POLICIES: dict[str, tuple[Augment, ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str) -> list[str]:
    """``"color,translation,cutout"`` -> names; raises ConfigError naming unknown parts."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ConfigError(f"diffaugment policy {policy!r} has unknown parts {unknown}; use {', '.join(POLICIES)}")
    return names


def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply each policy's operations in turn (empty policy: identity)."""
    for name in parse_policy(policy):
        for op in POLICIES[name]:
            x = op(x, generator)
    return x
