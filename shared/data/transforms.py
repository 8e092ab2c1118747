"""Pixel-space <-> normalised-space conversion for a dataset's mean and std."""

from __future__ import annotations

import torch

from shared.data.registry import DatasetInfo

Stats = DatasetInfo | tuple[tuple[float, ...], tuple[float, ...]]


def _stats(info: Stats, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = (info.mean, info.std) if isinstance(info, DatasetInfo) else info
    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean, dtype=like.dtype, device=like.device).view(shape),
            torch.tensor(std, dtype=like.dtype, device=like.device).view(shape))


def normalize(pixels: torch.Tensor, info: Stats) -> torch.Tensor:
    """Map images in [0, 1] to the model's input space."""
    mean, std = _stats(info, pixels)
    return (pixels - mean) / std


def denormalize(x: torch.Tensor, info: Stats) -> torch.Tensor:
    """Map model inputs back to pixel space (not clamped)."""
    mean, std = _stats(info, x)
    return x * std + mean
