"""PNG grids of images, one row per class, for condensed payloads and synthetic sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.io import atomic_path


def class_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, max_per_class: int = 10,
               pad: int = 2) -> np.ndarray:
    """Arrange pixel-space images ([0, 1], N x C x H x W) as a uint8 H x W x 3 array, row ``c`` = class ``c``."""
    channels, height, width = images.shape[1:]
    cols = max(1, min(max_per_class, max((int((labels == c).sum()) for c in range(num_classes)), default=1)))
    canvas = np.full((num_classes * (height + pad) + pad, cols * (width + pad) + pad, 3), 255, dtype=np.uint8)
    pixels = (images.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).flatten()[:cols]
        for col, index in enumerate(members.tolist()):
            tile = pixels[index].permute(1, 2, 0).numpy()
            tile = np.repeat(tile, 3, axis=2) if channels == 1 else tile[:, :, :3]
            top, left = pad + cls * (height + pad), pad + col * (width + pad)
            canvas[top:top + height, left:left + width] = tile
    return canvas


def save_class_grid(path: str | Path, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    max_per_class: int = 10, scale: int = 2) -> Path:
    """Write ``class_grid`` as a PNG (nearest-neighbour upscaled by ``scale``); atomic."""
    from PIL import Image

    grid = class_grid(images, labels, num_classes, max_per_class)
    picture = Image.fromarray(grid)
    if scale > 1:
        picture = picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
