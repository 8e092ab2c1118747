"""PNG grids of images, one row per class, for condensed payloads and synthetic sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _tiles(images: torch.Tensor) -> np.ndarray:
    """N x C x H x W in [0, 1] -> N x H x W x 3 uint8."""
    pixels = (images.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.repeat(pixels, 3, axis=3) if pixels.shape[3] == 1 else pixels[..., :3]


def comparison_grid(class_names: list[str], synthetic: torch.Tensor, requested: torch.Tensor,
                    teacher_labels: torch.Tensor, condensed: tuple[torch.Tensor, torch.Tensor] | None = None,
                    per_class: int = 8, scale: int = 2) -> Any:
    """One row per class: its name, the condensed images of that class, then synthetic images the generator
    was asked to make for it. A synthetic tile the teacher labels as another class gets a red frame and that
    class's index in its corner, so a grid shows at a glance whether the one-hot term is met."""
    from PIL import Image, ImageDraw

    height, width = synthetic.shape[2:]
    pad, label_w = 2, 8 + 7 * max((len(n) for n in class_names), default=1)
    cond_cols = 0 if condensed is None else min(per_class, max(int((condensed[1] == c).sum())
                                                             for c in range(len(class_names))))
    gap = 3 * pad if cond_cols else 0
    cell_w, cell_h = width + pad, height + pad
    canvas = Image.new("RGB", ((label_w + gap + (cond_cols + per_class) * cell_w + pad),
                               len(class_names) * cell_h + pad + 14), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 1), "condensed" if cond_cols else "", fill="black")
    draw.text((label_w + gap + cond_cols * cell_w, 1), "synthetic (red: teacher disagrees)", fill="black")
    syn_tiles, top0 = _tiles(synthetic), 14
    cond_tiles = None if condensed is None else _tiles(condensed[0])
    for cls, name in enumerate(class_names):
        top = top0 + cls * cell_h
        draw.text((2, top + height // 2 - 5), name, fill="black")
        left = label_w
        if condensed is not None and cond_tiles is not None:
            for col, i in enumerate(torch.nonzero(condensed[1] == cls).flatten()[:cond_cols].tolist()):
                canvas.paste(Image.fromarray(cond_tiles[i]), (left + col * cell_w, top))
        left += cond_cols * cell_w + gap
        for col, i in enumerate(torch.nonzero(requested == cls).flatten()[:per_class].tolist()):
            x = left + col * cell_w
            canvas.paste(Image.fromarray(syn_tiles[i]), (x, top))
            seen = int(teacher_labels[i])
            if seen != cls:
                draw.rectangle((x - 1, top - 1, x + width, top + height), outline="red")
                draw.text((x + 1, top), str(seen), fill="red")
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    return canvas


def save_comparison_grid(path: str | Path, class_names: list[str], synthetic: torch.Tensor,
                         requested: torch.Tensor, teacher_labels: torch.Tensor,
                         condensed: tuple[torch.Tensor, torch.Tensor] | None = None) -> Path:
    """Write ``comparison_grid`` as a PNG; atomic."""
    path = Path(path)
    with atomic_path(path) as tmp:
        comparison_grid(class_names, synthetic, requested, teacher_labels, condensed).save(tmp, format="PNG")
    return path
