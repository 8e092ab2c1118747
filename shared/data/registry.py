"""Dataset registry: each dataset reports its channels, size, classes and normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shared.errors import DataError
from shared.registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: shape, classes and normalisation."""

    name: str
    channels: int
    image_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.image_size)


@dataclass
class LabeledImages:
    """Raw images (uint8, N x C x H x W) with int64 labels and their dataset's info."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> LabeledImages:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return LabeledImages(self.images[idx], self.labels[idx], self.info)

    def normalized(self, device: torch.device | str = "cpu") -> torch.Tensor:
        from shared.data.transforms import normalize

        return normalize(self.images.to(device).float().div_(255.0), self.info)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.info.num_classes).tolist()


Loader = Callable[[str, Path | None, bool], LabeledImages]
_loaders: Registry[Loader] = Registry("dataset")
_infos: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> Callable[[Loader], Loader]:
    """Register ``loader(split, root, download) -> LabeledImages`` under ``info.name``."""

    def decorator(loader: Loader) -> Loader:
        _loaders.register(info.name)(loader)
        _infos[info.name] = info
        return loader

    return decorator


def get_dataset_info(name: str) -> DatasetInfo:
    _loaders.get(name)  # raises a clear error for unknown names
    return _infos[name]


def dataset_names() -> list[str]:
    return _loaders.names()


def load_dataset(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = True
) -> LabeledImages:
    """Load a registered dataset split (``train`` or ``test``) as uint8 images and labels."""
    if split not in ("train", "test"):
        raise DataError(f"split={split!r} is not valid; use 'train' or 'test'")
    loader = _loaders.get(name)
    return loader(split, Path(root).expanduser() if root else None, download)
