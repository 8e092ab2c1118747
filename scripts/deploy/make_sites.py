"""Prepare example data-site folders from a registry dataset, in the layout a real site uses.

Each site gets ``<out>/<name>/train.npz`` and ``test.npz`` (``images`` N x H x W [x C] uint8, ``labels``
int64): a Dirichlet(alpha) share of the training split, 20% of it held out for federated evaluation.
A real site writes the same two files from its own images (or an ImageFolder tree ``train/<class>/*``)::

    python scripts/deploy/make_sites.py --out /tmp/condex-sites --sites site-a site-b --alpha 0.5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.data import LabeledImages, load_dataset, partition_indices, train_test_split_indices  # noqa: E402
from shared.io import atomic_path  # noqa: E402


def save_split(path: Path, data: LabeledImages) -> Path:
    images = data.images.permute(0, 2, 3, 1).numpy()  # N x H x W x C
    images = images[..., 0] if images.shape[-1] == 1 else images
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez(handle, images=images, labels=data.labels.numpy())
    return path


def make_sites(out: Path, names: Sequence[str], dataset: str, alpha: float, seed: int,
               limit: int = 0) -> dict[str, Path]:
    """One folder per site name; ``limit`` > 0 keeps at most that many training images per site."""
    full = load_dataset(dataset, "train")
    parts = partition_indices(full.labels.numpy(), len(names), scheme="dirichlet", alpha=alpha, seed=seed)
    folders = {}
    for i, (name, part) in enumerate(zip(names, parts, strict=True)):
        train_idx, test_idx = train_test_split_indices(part, 0.2, seed=seed + i)
        if limit:
            train_idx, test_idx = train_idx[:limit], test_idx[: max(1, limit // 4)]
        folder = out / name
        save_split(folder / "train.npz", full.subset(train_idx))
        save_split(folder / "test.npz", full.subset(test_idx))
        folders[name] = folder
        print(f"{name}: {len(train_idx)} train / {len(test_idx)} test images in {folder}")
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sites", nargs="+", required=True, metavar="NAME")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller = more skewed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="cap on training images per site (0 = no cap)")
    args = parser.parse_args(argv)
    make_sites(args.out, args.sites, args.dataset, args.alpha, args.seed, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
