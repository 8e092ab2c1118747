"""The registered datasets: Fashion-MNIST (default, offline from Debian's files), MNIST, CIFAR-10/100,
scikit-learn digits and a user's own folder (ImageFolder or .npz)."""

from __future__ import annotations

import gzip
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.data.registry import DatasetInfo, LabeledImages, register_dataset
from shared.errors import DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_ROOT = Path(os.environ.get("CONDEX_DATA", Path.home() / ".cache" / "condex" / "data"))

FASHION_MNIST = DatasetInfo(
    "fashion_mnist", 1, (28, 28), 10, (0.2860,), (0.3530,),
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)
MNIST = DatasetInfo("mnist", 1, (28, 28), 10, (0.1307,), (0.3081,), tuple(str(i) for i in range(10)))
CIFAR10 = DatasetInfo(
    "cifar10", 3, (32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
)
CIFAR100 = DatasetInfo("cifar100", 3, (32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
DIGITS = DatasetInfo("digits", 1, (8, 8), 10, (0.3050,), (0.3783,), tuple(str(i) for i in range(10)))
FOLDER = DatasetInfo("folder", 3, (32, 32), 0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST family's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    for suffix in (".gz", ""):
        images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
        labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
        if images.exists() and labels.exists():
            return images, labels
    return None


def _from_idx(images: Path, labels: Path, info: DatasetInfo) -> LabeledImages:
    x = torch.from_numpy(_read_idx(images).copy()).unsqueeze(1)
    y = torch.from_numpy(_read_idx(labels).astype(np.int64))
    return LabeledImages(x, y, info)


def _torchvision_dataset(cls_name: str, root: Path, split: str, download: bool):
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    try:
        return cls(str(root), train=split == "train", download=download)
    except RuntimeError as exc:  # torchvision raises RuntimeError when files are missing
        raise DataError(
            f"dataset files for {cls_name} are missing under {root} and download={download}: {exc}. "
            "Pass --data-root to a folder that holds them, or allow download."
        ) from exc
    except OSError as exc:  # offline or blocked download (URLError, socket errors, HTTP errors are OSErrors)
        raise DataError(
            f"could not download {cls_name} into {root} ({type(exc).__name__}: {exc}); this machine seems offline. "
            f"Copy the dataset's files there from a machine with network (torchvision.datasets.{cls_name}"
            f"(root, download=True)) and pass --data-root, or set CONDEX_DATA to their folder"
        ) from None


def _mnist_like(cls_name: str, info: DatasetInfo, split: str, root: Path | None, download: bool) -> LabeledImages:
    root = root or DEFAULT_ROOT
    raw = root / cls_name / "raw"
    found = _idx_files(raw, split)
    if found is None:
        ds = _torchvision_dataset(cls_name, root, split, download)
        return LabeledImages(ds.data.unsqueeze(1).clone(), ds.targets.clone().long(), info)
    return _from_idx(*found, info)


@register_dataset(FASHION_MNIST)
def _fashion_mnist(split: str, root: Path | None, download: bool) -> LabeledImages:
    for folder in ([root, root / "FashionMNIST" / "raw"] if root else []) + [DEBIAN_FASHION_MNIST]:
        found = _idx_files(folder, split)
        if found is not None:
            return _from_idx(*found, FASHION_MNIST)
    return _mnist_like("FashionMNIST", FASHION_MNIST, split, root, download)


@register_dataset(MNIST)
def _mnist(split: str, root: Path | None, download: bool) -> LabeledImages:
    return _mnist_like("MNIST", MNIST, split, root, download)


def _cifar(cls_name: str, info: DatasetInfo, split: str, root: Path | None, download: bool) -> LabeledImages:
    ds = _torchvision_dataset(cls_name, root or DEFAULT_ROOT, split, download)
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return LabeledImages(images, torch.tensor(ds.targets, dtype=torch.int64), info)


@register_dataset(CIFAR10)
def _cifar10(split: str, root: Path | None, download: bool) -> LabeledImages:
    return _cifar("CIFAR10", CIFAR10, split, root, download)


@register_dataset(CIFAR100)
def _cifar100(split: str, root: Path | None, download: bool) -> LabeledImages:
    return _cifar("CIFAR100", CIFAR100, split, root, download)


@register_dataset(DIGITS)
def _digits(split: str, root: Path | None, download: bool) -> LabeledImages:
    """scikit-learn's bundled 8x8 digits (values 0..16); a fixed 80/20 split with seed 0."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(images))
    idx = order[:cut] if split == "train" else order[cut:]
    labels = torch.from_numpy(bunch.target[idx].astype(np.int64))
    return LabeledImages(torch.from_numpy(images[idx].copy()), labels, DIGITS)


@register_dataset(FOLDER)
def _folder(split: str, root: Path | None, download: bool) -> LabeledImages:
    """A data site's own images, labelled without a teacher's class names (see ``load_folder``)."""
    return load_folder(root, split)


def load_folder(root: Path | None, split: str = "train", class_names: Sequence[str] = ()) -> LabeledImages:
    """A data site's own images: ``root/{split}.npz`` (``images`` N x H x W [x C] uint8, ``labels`` in the
    teacher's class ids) or an ImageFolder tree ``root/{split}/<class>/<image>``.

    ImageFolder labels come from the folder *names*, never from their position in one site's listing (a site
    that holds only ``3/`` and ``7/`` must still send classes 3 and 7): with ``class_names`` (the teacher's,
    sent in the server's query) each folder maps to its class id by ``folder_class_ids``; without them,
    all-numeric folder names are class ids by value and other names are numbered in natural order.
    Normalisation is computed from the data; sites replace it with the teacher's (``client.task``)."""
    if root is None:
        raise DataError("dataset 'folder' needs a data root: pass --data-root (or node config data-dir)")
    npz = root / f"{split}.npz"
    if npz.exists():
        images, labels = _read_npz(npz)
        names = tuple(class_names)
    elif (root / split).is_dir():
        images, labels, names = _read_image_folder(root / split, class_names)
    else:
        raise DataError(f"no {npz.name} and no {split}/ ImageFolder under {root}; see README 'Deploy at data sites'")
    images = _to_nchw_uint8(images, npz)
    labels = _checked_labels(labels, len(images), npz)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    if names and num_classes > len(names):
        raise DataError(f"{npz}: labels reach {num_classes - 1} but the teacher has {len(names)} classes "
                        f"(0..{len(names) - 1}); labels must be the teacher's class ids")
    pixels = images.astype(np.float32) / 255.0
    info = DatasetInfo(
        "folder", images.shape[1], (images.shape[2], images.shape[3]), max(num_classes, len(names)),
        tuple(float(m) for m in pixels.mean(axis=(0, 2, 3))),
        tuple(max(float(s), 1e-3) for s in pixels.std(axis=(0, 2, 3))),
        names,
    )
    return LabeledImages(torch.from_numpy(images), torch.from_numpy(labels), info)


def _name_key(name: str) -> str:
    """Case and punctuation folded: a folder cannot be called ``T-shirt/top``, ``T-shirt_top`` can."""
    return re.sub(r"[^0-9a-z]+", "", name.casefold())


def folder_class_ids(folders: Sequence[str], class_names: Sequence[str]) -> dict[str, int]:
    """Each folder name's class id among ``class_names``: the exact name, else the one name equal ignoring case,
    else ignoring case and punctuation, else a number naming the id itself (``3/`` is class 3). Unknown or
    ambiguous names raise ``DataError`` listing them and the teacher's names."""
    exact = {name: i for i, name in enumerate(class_names)}
    ids: dict[str, int] = {}
    unknown: list[str] = []
    for folder in folders:
        found = exact.get(folder)
        for fold in (str.casefold, _name_key):
            if found is None:
                hits = [i for i, name in enumerate(class_names) if fold(name) == fold(folder)]
                found = hits[0] if len(hits) == 1 else None
        if found is None and folder.isdigit() and int(folder) < len(class_names):
            found = int(folder)
        if found is None:
            unknown.append(folder)
        else:
            ids[folder] = found
    if unknown:
        raise DataError(f"folder name(s) {', '.join(repr(u) for u in unknown)} match none of the teacher's classes "
                        f"({', '.join(repr(n) for n in class_names)}); rename each folder to a class name or id")
    clashes = sorted({i for i in ids.values() if list(ids.values()).count(i) > 1})
    if clashes:
        same = [f for f, i in ids.items() if i in clashes]
        raise DataError(f"folders {', '.join(repr(f) for f in same)} name the same teacher class; merge them")
    return ids


def _natural_key(path: Path) -> list[str | int]:
    """``2.png`` before ``10.png``: digit runs compare by value (split keeps str/int positions aligned)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def default_class_ids(folders: Sequence[str]) -> tuple[dict[str, int], tuple[str, ...]]:
    """Without the teacher's names: numeric folders are ids by value (``10`` after ``2``); other names are
    numbered in natural order (numbers by value, then names ignoring case)."""
    if folders and all(f.isdigit() for f in folders):
        ids = {f: int(f) for f in folders}
        if len(set(ids.values())) != len(ids):
            raise DataError(f"folders {sorted(folders)} name the same class id twice (e.g. '3' and '03')")
        return ids, tuple(str(i) for i in range(max(ids.values()) + 1))
    ordered = sorted(folders, key=lambda f: (0, int(f), f) if f.isdigit() else (1, 0, f.casefold()))
    return {f: i for i, f in enumerate(ordered)}, tuple(ordered)


MAX_FOLDER_CLASSES = 100_000  # labels beyond this are damage, not classes (bincount would allocate per label)


def _read_npz(npz: Path) -> tuple[np.ndarray, np.ndarray]:
    """``images`` and ``labels`` of a site's npz; a damaged or foreign file is a ``DataError`` naming it."""
    import zipfile
    import zlib

    try:
        with np.load(npz, allow_pickle=False) as arrays:
            if "images" not in arrays or "labels" not in arrays:
                raise DataError(f"{npz} must hold arrays 'images' and 'labels', found {sorted(arrays)}")
            return arrays["images"], arrays["labels"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{npz} cannot be read ({type(exc).__name__}: {exc}); it is truncated or not an npz: "
                        "write it again with numpy.savez(path, images=..., labels=...)") from None


def _checked_labels(labels: np.ndarray, count: int, source: Path) -> np.ndarray:
    """One integer label per image, each in 0..MAX_FOLDER_CLASSES - 1."""
    if labels.ndim != 1 or len(labels) != count or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: 'labels' must be {count} integers (one per image), got {labels.dtype} "
                        f"{labels.shape}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= MAX_FOLDER_CLASSES):
        raise DataError(f"{source}: 'labels' span {int(labels.min())}..{int(labels.max())}; labels must be class "
                        f"ids 0..{MAX_FOLDER_CLASSES - 1} (the teacher's)")
    return labels.astype(np.int64)


def _to_nchw_uint8(images: np.ndarray, source: Path) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{source}: 'images' must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        return np.ascontiguousarray(images[:, None])
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return np.ascontiguousarray(images)
    raise DataError(f"{source}: 'images' must be N x H x W, N x H x W x C or N x C x H x W, got {images.shape}")


def _read_image_folder(folder: Path, class_names: Sequence[str] = ()
                       ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from PIL import Image

    folders = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if class_names:
        ids, names = folder_class_ids(folders, class_names), tuple(class_names)
    else:
        ids, names = default_class_ids(folders)
    images, labels = [], []
    for name in sorted(folders, key=ids.__getitem__):
        for file in sorted((folder / name).iterdir(), key=_natural_key):
            if file.name.startswith("."):  # .DS_Store, editor and sync files: not images, never labelled
                continue
            images.append(_read_image(file, Image))
            labels.append(ids[name])
    if not images:
        raise DataError(f"ImageFolder {folder} holds no images")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"ImageFolder {folder} mixes image sizes {sorted(shapes)}; resize them to one size first")
    return np.stack(images), np.asarray(labels), names


def _read_image(file: Path, image_module: Any) -> np.ndarray:
    """One image of a class folder; anything else there (a README, a subfolder, a damaged or truncated image,
    a symlink loop) is a ``DataError`` naming the file."""
    if file.is_dir():
        raise DataError(f"{file}: class folders hold images only, not subfolders; move it out of {file.parent}")
    try:
        with image_module.open(file) as img:
            return np.asarray(img.convert("RGB" if img.mode not in ("L",) else "L"))
    except (OSError, ValueError, SyntaxError, image_module.DecompressionBombError) as exc:
        raise DataError(f"{file}: not a readable image ({type(exc).__name__}: {exc}); remove or replace it") from None


def place_fashion_mnist_for_torchvision(root: Path) -> Path:
    """Copy Debian's Fashion-MNIST files where torchvision's FashionMNIST looks, so it needs no network."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for file in DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"):
        target = raw / file.name
        if not target.exists():
            shutil.copyfile(file, target)
        unpacked = raw / file.name[:-3]
        if not unpacked.exists():
            with gzip.open(file, "rb") as src, open(unpacked, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return raw
