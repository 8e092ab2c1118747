"""DCGAN-style image generator used by every generative model-inversion method.

latent z (``latent_dim``) -> linear -> ``width*2`` feature maps at a quarter of the image size -> two
nearest-upsampling conv blocks (BN + LeakyReLU) -> conv to ``channels`` -> sigmoid (pixel space [0, 1])
-> the dataset normalisation, so the output is already in the teacher's input space.

With ``num_classes`` the generator is class-conditional: the code is z + embed(y), so the class -> image
mapping is learnt once by the shared generator instead of being re-found by every batch's latents.
Additive, not GDFQ's z * embed(y): with zero-mean z a product carries the class only in the per-dimension
scale of the code, and on the default FMNIST teacher a generator trained on the one-hot loss alone reached
30% teacher agreement after 100 Adam steps that way, against 100% after 25 steps with the sum
(docs/engine.md, "Class conditioning", has the command)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from shared.errors import ConfigError


class Upsample2x(nn.Module):
    """Nearest-neighbour x2 upsampling by broadcasting: the same values as ``nn.Upsample(scale_factor=2)``,
    about 3x faster forward + backward on CPU (no index computation or gather)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


class NoisyLayers(nn.Module):
    """NAYER's noisy layer (Tran et al. 2024), on the latent code: ``groups`` random linear maps, freshly drawn
    for every synthesised batch and trained only within it; sample i of a batch of n goes through map
    ``i * groups // n``. A class-conditional generator left alone maps every code of a class to one image
    (the class offset dominates the noise); a new random map per group and batch makes each group's images
    of a class differ from every other group's and batch's, without a diversity loss. ``on="code"`` maps
    z + e_y (NAYER maps the label embedding); ``on="latent"`` maps z only and adds e_y after, so the class
    offset reaches the generator unscrambled."""

    def __init__(self, groups: int, dim: int, device: torch.device | str | None = None, on: str = "code") -> None:
        super().__init__()
        if on not in ("code", "latent"):
            raise ConfigError(f"noisy layers on={on!r} must be code (z + e_y, NAYER) or latent (z only)")
        self.on = on
        self.weight = nn.Parameter(torch.randn(groups, dim, dim, device=device) / math.sqrt(dim))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        groups, n = self.weight.shape[0], code.shape[0]
        index = torch.arange(n, device=code.device) * groups // n
        return torch.bmm(code.unsqueeze(1), self.weight[index]).squeeze(1)


class Generator(nn.Module):
    """Maps latent codes to normalised images ``N x channels x image_size x image_size``."""

    def __init__(
        self,
        latent_dim: int = 256,
        channels: int = 1,
        image_size: int | Sequence[int] = 28,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        width: int = 64,
        num_classes: int = 0,
        conditioning: str = "add",
    ) -> None:
        super().__init__()
        if conditioning not in ("add", "mul"):
            raise ConfigError(f"generator conditioning={conditioning!r} must be add or mul")
        self.conditioning = conditioning
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 4:
            raise ConfigError(f"generator image_size={image_size!r} must be an int or (H, W) pair >= 4")
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"generator mean/std need {channels} values (one per channel), got {mean}, {std}")
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        # Class-conditional code z + e_y (0 classes: unconditional, the label is ignored).
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes > 0 else None
        self.channels = channels
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        # Start at a quarter of the output size (rounded up); two x2 upsamplings reach it (then crop).
        self.init_size = (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
        self.project = nn.Sequential(nn.Linear(latent_dim, width * 2 * self.init_size[0] * self.init_size[1]))
        self.width = width
        self.body = nn.Sequential(
            nn.BatchNorm2d(width * 2),
            Upsample2x(),
            nn.Conv2d(width * 2, width * 2, 3, padding=1, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.LeakyReLU(0.2, inplace=True),
            Upsample2x(),
            nn.Conv2d(width * 2, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, channels, 3, padding=1),
        )
        if self.embed is not None and conditioning == "add":
            nn.init.normal_(self.embed.weight)  # class offsets as large as the noise: distinct from the start
        elif self.embed is not None:
            nn.init.normal_(self.embed.weight, mean=1.0, std=0.5)  # GDFQ-style scale, near the unconditional code
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, channels, 1, 1))

    def pixels(self, z: torch.Tensor, labels: torch.Tensor | None = None, noise: NoisyLayers | None = None
               ) -> torch.Tensor:
        """Images in pixel space [0, 1] (``labels`` are required by a class-conditional generator; ``noise``
        maps the code before the projection)."""
        if noise is not None and noise.on == "latent":
            z = noise(z)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            z = z + self.embed(labels) if self.conditioning == "add" else z * self.embed(labels)
        if noise is not None and noise.on == "code":
            z = noise(z)
        h = self.project(z).view(z.shape[0], self.width * 2, *self.init_size)
        out = torch.sigmoid(self.body(h))
        if out.shape[-2:] != self.image_size:  # sizes not divisible by 4: centre-crop the 4x map
            top = (out.shape[-2] - self.image_size[0]) // 2
            left = (out.shape[-1] - self.image_size[1]) // 2
            out = out[..., top : top + self.image_size[0], left : left + self.image_size[1]]
        return out

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, noise: NoisyLayers | None = None
                ) -> torch.Tensor:
        """Normalised images, ready for the teacher."""
        return (self.pixels(z, labels, noise) - self.mean) / self.std

    def sample_latent(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, device=device or self.mean.device)


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised images back to [0, 1] (clamped), e.g. for PNG grids."""
    shape = (1, len(mean), 1, 1)
    m = torch.tensor(list(mean), dtype=images.dtype, device=images.device).view(shape)
    s = torch.tensor(list(std), dtype=images.dtype, device=images.device).view(shape)
    return (images * s + m).clamp(0.0, 1.0)

