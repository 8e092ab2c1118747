"""The Gaussian mechanism as condensation uses it: Poisson sampling, per-record clipping, noisy class sums.

Every record belongs to exactly one class, so the vector of all class sums changes by at most ``clip`` (L2)
when one record is added or removed: releasing all noisy class sums of one step is *one* Gaussian
mechanism with sensitivity ``clip`` and noise std ``noise_multiplier * clip`` per coordinate.

Without an explicit ``generator`` the sampling and the noise come from a fresh ``secret_generator`` (OS
entropy), never from torch's global generator, which ``condense.seed`` seeds.
"""

from __future__ import annotations

import torch

from shared.privacy.secure_rng import secret_generator


def poisson_mask(n: int, sample_rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Include each of ``n`` records independently with probability ``sample_rate`` (bool mask)."""
    return torch.rand(n, generator=secret_generator() if generator is None else generator) < sample_rate


def clip_rows(values: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale each row (one record's contribution, flattened) to L2 norm at most ``clip``."""
    flat = values.reshape(values.shape[0], -1)
    norms = flat.norm(dim=1, keepdim=True)
    factor = (clip / (norms + 1e-12)).clamp(max=1.0)
    return (flat * factor).reshape(values.shape)


def noisy_class_sums(values: torch.Tensor, groups: torch.Tensor, num_groups: int, clip: float,
                     noise_multiplier: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Clip each row of ``values`` (N x D), sum the rows of each group, add N(0, (noise_multiplier*clip)^2).

    Noise is added to every group's sum, including groups that sampled no record, so the output shape
    and noise never depend on the data."""
    clipped = clip_rows(values, clip).reshape(values.shape[0], -1)
    sums = torch.zeros(num_groups, clipped.shape[1], dtype=clipped.dtype, device=clipped.device)
    sums.index_add_(0, groups.to(clipped.device), clipped)
    generator = secret_generator() if generator is None else generator
    noise = torch.randn(sums.shape, generator=generator, dtype=sums.dtype) * (noise_multiplier * clip)
    return sums + noise.to(sums.device)
