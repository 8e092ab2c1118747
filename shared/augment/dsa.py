"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021).

Condensation compares real and synthetic batches through a network; augmenting both with the *same*
sampled transform ("siamese") lets the synthetic images learn from augmented real data while the
comparison stays meaningful, and every transform is differentiable w.r.t. the images.

Each call picks one operation of the strategy (``color``, ``crop``, ``cutout``, ``flip``, ``scale``,
``rotate``) and samples its parameters once per *group*; samples carry a group id, so several classes
are augmented in one vectorised call while real and synthetic images of the same class share one
transform. Images are in the normalised space the networks see; magnitudes follow the DSA paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shared.errors import ConfigError

OPERATIONS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAMagnitudes:
    """Transform strengths of the DSA paper (brightness/saturation/contrast ratios, crop and cutout fractions)."""

    scale: float = 1.2
    rotate_deg: float = 15.0
    crop: float = 0.125
    cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


@dataclass
class AugmentParams:
    """One sampled transform: the operation and its parameters, one row per group."""

    op: str
    values: dict[str, torch.Tensor]


def check_strategy(strategy: str, field: str = "dsa_strategy") -> list[str]:
    """Split ``color_crop_...`` into operations; raise ``ConfigError`` naming ``field`` on unknown ones."""
    ops = [op for op in strategy.split("_") if op]
    unknown = [op for op in ops if op not in OPERATIONS]
    if not ops or unknown:
        raise ConfigError(f"{field}={strategy!r}: operations must be '_'-joined names from {', '.join(OPERATIONS)}")
    return ops


class SiameseAugment:
    """Sample a transform per group (``sample``) and apply it to any batch tagged with group ids (``apply``)."""

    def __init__(self, strategy: str = "color_crop_cutout_flip_scale_rotate",
                 magnitudes: DSAMagnitudes | None = None, generator: torch.Generator | None = None) -> None:
        self.ops = check_strategy(strategy)
        self.mag = magnitudes or DSAMagnitudes()
        self.generator = generator

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def sample(self, num_groups: int, image_size: tuple[int, int]) -> AugmentParams:
        op = self.ops[int(torch.randint(len(self.ops), (1,), generator=self.generator))]
        return AugmentParams(op, getattr(self, f"_sample_{op}")(num_groups, image_size))

    def __call__(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Augment with fresh independent parameters per sample (non-siamese use, e.g. training on a set)."""
        ids = torch.arange(x.shape[0]) if groups is None else groups
        params = self.sample(int(ids.max()) + 1 if ids.numel() else 0, (x.shape[-2], x.shape[-1]))
        return self.apply(x, params, ids)

    def apply(self, x: torch.Tensor, params: AugmentParams, groups: torch.Tensor) -> torch.Tensor:
        """Apply ``params`` to ``x``: sample i uses the parameters of group ``groups[i]``."""
        groups = groups.to(x.device)
        per_sample = {k: v.to(x.device)[groups] for k, v in params.values.items()}
        return getattr(self, f"_apply_{params.op}")(x, per_sample)

    # --- colour: brightness, saturation and contrast jitter (all three, as DSA) ---
    def _sample_color(self, n: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {"brightness": self._rand(n), "saturation": self._rand(n), "contrast": self._rand(n)}

    def _apply_color(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        view = (-1, 1, 1, 1)
        x = x + (p["brightness"].view(view) - 0.5) * self.mag.brightness
        channel_mean = x.mean(dim=1, keepdim=True)
        x = (x - channel_mean) * (p["saturation"].view(view) * self.mag.saturation) + channel_mean
        image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - image_mean) * (p["contrast"].view(view) + self.mag.contrast) + image_mean

    # --- geometric transforms share one affine resampling ---
    def _sample_crop(self, n: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        # integer pixel shifts in [-crop * size, crop * size], as DSA's translation
        limits = torch.tensor([int(size[1] * self.mag.crop + 0.5), int(size[0] * self.mag.crop + 0.5)])
        shifts = torch.floor(self._rand(n, 2) * (2 * limits + 1)) - limits
        return {"shift": shifts * 2.0 / torch.tensor([size[1] - 1, size[0] - 1]).clamp(min=1)}

    def _apply_crop(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        theta = _identity(x.shape[0], x)
        theta[:, :, 2] = p["shift"]
        return _affine(x, theta)

    def _sample_scale(self, n: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        low = 1.0 / self.mag.scale
        return {"scale": self._rand(n, 2) * (self.mag.scale - low) + low}

    def _apply_scale(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        theta = _identity(x.shape[0], x)
        theta[:, 0, 0] = p["scale"][:, 0]
        theta[:, 1, 1] = p["scale"][:, 1]
        return _affine(x, theta)

    def _sample_rotate(self, n: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {"angle": (self._rand(n) - 0.5) * 2 * self.mag.rotate_deg * math.pi / 180}

    def _apply_rotate(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        cos, sin = torch.cos(p["angle"]), torch.sin(p["angle"])
        theta = torch.stack([torch.stack([cos, sin, torch.zeros_like(cos)], 1),
                             torch.stack([-sin, cos, torch.zeros_like(cos)], 1)], 1).to(x.dtype)
        return _affine(x, theta)

    # --- flip and cutout are masks, no resampling ---
    def _sample_flip(self, n: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {"flip": self._rand(n) < 0.5}

    def _apply_flip(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(3), x)

    def _sample_cutout(self, n: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        height, width = size
        centre = torch.stack([torch.floor(self._rand(n) * (height + (1 - height % 2))),
                              torch.floor(self._rand(n) * (width + (1 - width % 2)))], 1)
        return {"centre": centre}

    def _apply_cutout(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        height, width = x.shape[-2:]
        size_h, size_w = int(height * self.mag.cutout + 0.5), int(width * self.mag.cutout + 0.5)
        top = (p["centre"][:, 0] - size_h // 2).view(-1, 1, 1)
        left = (p["centre"][:, 1] - size_w // 2).view(-1, 1, 1)
        rows = torch.arange(height, device=x.device).view(1, -1, 1)
        cols = torch.arange(width, device=x.device).view(1, 1, -1)
        inside = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
        return x * (~inside).unsqueeze(1).to(x.dtype)


def _identity(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, 3, dtype=like.dtype, device=like.device).repeat(n, 1, 1)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)
