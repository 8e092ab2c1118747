"""Nearest-neighbour memorisation of a payload: are its images closer to the site's training images than
fresh images of the same distribution are?

For a space (pixels in [0, 1], or the teacher's penultimate features), with ``d(a, B)`` the L2 distance of
``a`` to its nearest neighbour in ``B``:

* ``ratio`` = median over payload images ``p`` of ``d(p, train)`` / median over held-out images ``t`` of
  ``d(t, train)``. A payload of copies has ratio 0; images as far from the training set as unseen images
  of the same distribution have ratio ~1.
* ``share_below_q05`` = share of payload images with ``d(p, train)`` below the 5% quantile of the
  held-out distances: what fraction is closer to some training image than 95% of unseen images are.

Members are the site's training images, non-members its held-out images (class-matched to the members by
``mia.balanced_candidates``, so a skewed partition does not inflate the held-out distances)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from shared.data import LabeledImages

Embed = Callable[[torch.Tensor], torch.Tensor]  # pixels N x C x H x W in [0, 1] -> N x D
CHUNK = 1024  # rows per distance block: N x 60000 float32 blocks stay under ~250 MB


def pixels(data: LabeledImages) -> torch.Tensor:
    """A dataset's images as float32 pixels in [0, 1] (the payload's space)."""
    return data.images.float().div_(255.0)


def flat_pixels(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(images.shape[0], -1).float()


def teacher_embedding(teacher: torch.nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                      batch: int = 512) -> Embed:
    """Penultimate features of ``teacher`` (its ``forward(x, return_features=True)``), on images normalised
    with the teacher's own statistics (what it was trained on, not the site's)."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    @torch.no_grad()
    def embed(images: torch.Tensor) -> torch.Tensor:
        teacher.eval()
        device = next(teacher.parameters()).device if any(True for _ in teacher.parameters()) else "cpu"
        out = []
        for start in range(0, images.shape[0], batch):
            x = (images[start:start + batch].float() - mean_t) / std_t
            _, features = teacher(x.to(device), return_features=True)
            out.append(features.flatten(1).float().cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    return embed


def nn_distances(queries: torch.Tensor, reference: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """Distance of each query row to its nearest reference row, in blocks (memory stays bounded).
    ``exclude_self``: queries are the reference itself; skip the zero distance to itself."""
    out = torch.empty(queries.shape[0])
    for start in range(0, queries.shape[0], CHUNK):
        block = torch.cdist(queries[start:start + CHUNK], reference)
        if exclude_self:
            rows = torch.arange(block.shape[0])
            block[rows, rows + start] = float("inf")
        out[start:start + CHUNK] = block.min(dim=1).values
    return out


@dataclass(frozen=True)
class Memorization:
    """Memorisation figures of one payload in one space (see the module docstring)."""

    space: str
    ratio: float
    share_below_q05: float
    median_payload_to_train: float
    median_test_to_train: float
    q05_test_to_train: float
    payload_images: int
    test_images: int

    def to_dict(self) -> dict[str, float | int | str]:
        return dict(self.__dict__)


def memorization(space: str, payload: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> Memorization:
    """``payload``, ``train``, ``test``: N x D rows in one space (``flat_pixels`` or an embedding)."""
    to_train = nn_distances(payload, train)
    test_to_train = nn_distances(test, train)
    median_test = float(test_to_train.median())
    q05 = float(torch.quantile(test_to_train, 0.05))
    # a held-out set with exact duplicates of training images has median 0: the ratio is then undefined
    ratio = float(to_train.median()) / median_test if median_test > 0 else float("inf")
    return Memorization(space, ratio, float((to_train < q05).float().mean()), float(to_train.median()),
                        median_test, q05, int(payload.shape[0]), int(test.shape[0]))
