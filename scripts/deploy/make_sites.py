"""Prepare example data-site folders from a registry dataset, in the layout a real site uses.

Each site gets a Dirichlet(alpha) share of the training split, 20% of it held out for federated evaluation,
as ``--layout npz`` (default): ``<out>/<name>/train.npz`` and ``test.npz`` (``images`` N x H x W [x C] uint8,
``labels`` int64 in the dataset's class ids), or as ``--layout imagefolder``: ``<out>/<name>/{train,test}/
<class name>/<i>.png``, one folder per class the site holds, named by the dataset's class name (``/`` becomes
``_``: ``T-shirt_top``). A site's folders are mapped to the teacher's classes by name (the server's query
carries them), so a site that holds only ``Dress/`` and ``Sneaker/`` still sends classes 3 and 7::

    python scripts/deploy/make_sites.py --out /tmp/condex-sites --sites site-a site-b --alpha 0.5
    python scripts/deploy/make_sites.py --out /tmp/condex-sites --sites site-a --layout imagefolder --limit 500
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


def save_image_folder(root: Path, data: LabeledImages) -> Path:
    """``root/<class name>/<i>.png`` for each class present (class ids when the dataset has no names)."""
    from PIL import Image

    names = data.info.class_names or tuple(str(i) for i in range(data.info.num_classes))
    for i, (image, label) in enumerate(zip(data.images, data.labels.tolist(), strict=True)):
        folder = root / names[label].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = image.permute(1, 2, 0).numpy()
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(folder / f"{i}.png")
    return root


def make_sites(out: Path, names: Sequence[str], dataset: str, alpha: float, seed: int,
               limit: int = 0, layout: str = "npz") -> dict[str, Path]:
    """One folder per site name; ``limit`` > 0 keeps at most that many training images per site."""
    full = load_dataset(dataset, "train")
    parts = partition_indices(full.labels.numpy(), len(names), scheme="dirichlet", alpha=alpha, seed=seed)
    folders = {}
    for i, (name, part) in enumerate(zip(names, parts, strict=True)):
        train_idx, test_idx = train_test_split_indices(part, 0.2, seed=seed + i)
        if limit:
            train_idx, test_idx = train_idx[:limit], test_idx[: max(1, limit // 4)]
        folder = out / name
        if layout == "imagefolder":
            save_image_folder(folder / "train", full.subset(train_idx))
            save_image_folder(folder / "test", full.subset(test_idx))
        else:
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
    parser.add_argument("--layout", choices=("npz", "imagefolder"), default="npz",
                        help="npz: train.npz/test.npz; imagefolder: train/<class name>/*.png (default: npz)")
    args = parser.parse_args(argv)
    make_sites(args.out, args.sites, args.dataset, args.alpha, args.seed, args.limit, args.layout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
