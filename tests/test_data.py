"""Dataset registry: real Fashion-MNIST from the Debian files, digits, user folders, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data import dataset_names, denormalize, get_dataset_info, load_dataset, normalize
from shared.data.sources import DEBIAN_FASHION_MNIST, place_fashion_mnist_for_torchvision
from shared.errors import DataError, UnknownNameError


def test_registry_lists_all_datasets() -> None:
    assert {"fashion_mnist", "mnist", "cifar10", "cifar100", "digits", "folder"} <= set(dataset_names())


@pytest.mark.parametrize(("name", "shape", "classes"), [
    ("fashion_mnist", (1, 28, 28), 10), ("mnist", (1, 28, 28), 10), ("cifar10", (3, 32, 32), 10),
    ("cifar100", (3, 32, 32), 100), ("digits", (1, 8, 8), 10),
])
def test_dataset_info(name: str, shape: tuple[int, int, int], classes: int) -> None:
    info = get_dataset_info(name)
    assert info.shape == shape and info.num_classes == classes
    assert len(info.mean) == len(info.std) == shape[0]


def test_fashion_mnist_real_files(fmnist_train, fmnist_test) -> None:
    assert DEBIAN_FASHION_MNIST.joinpath("train-images-idx3-ubyte.gz").exists()
    assert fmnist_train.images.shape == (60000, 1, 28, 28) and fmnist_test.images.shape == (10000, 1, 28, 28)
    assert fmnist_train.images.dtype == torch.uint8
    assert fmnist_train.class_counts() == [6000] * 10 and fmnist_test.class_counts() == [1000] * 10
    # The published normalisation matches the real pixels.
    pixels = fmnist_train.images[:20000].float() / 255
    assert abs(pixels.mean().item() - fmnist_train.info.mean[0]) < 0.01
    assert abs(pixels.std().item() - fmnist_train.info.std[0]) < 0.01


def test_fashion_mnist_through_torchvision_without_network(tmp_path: Path, fmnist_test) -> None:
    import torchvision

    place_fashion_mnist_for_torchvision(tmp_path)
    ds = torchvision.datasets.FashionMNIST(str(tmp_path), train=False, download=False)
    assert torch.equal(ds.data.unsqueeze(1), fmnist_test.images)
    assert torch.equal(ds.targets, fmnist_test.labels)


def test_normalize_round_trip(fmnist_test) -> None:
    x = fmnist_test.subset(range(8)).normalized()
    assert abs(x.mean().item()) < 1.0
    back = denormalize(x, fmnist_test.info)
    assert torch.allclose(back, fmnist_test.images[:8].float() / 255, atol=1e-6)
    assert torch.allclose(normalize(back, fmnist_test.info), x, atol=1e-6)


def test_digits_split_is_disjoint_and_fixed() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert torch.equal(load_dataset("digits", "test").images, test.images)


def test_folder_npz_and_imagefolder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", images=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8),
             labels=np.arange(12) % 3)
    data = load_dataset("folder", "train", root=tmp_path)
    assert data.images.shape == (12, 3, 16, 16) and data.info.num_classes == 3
    for label in ("cat", "dog"):
        (tmp_path / "test" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / "test" / label / f"{i}.png")
    test = load_dataset("folder", "test", root=tmp_path)
    assert test.images.shape == (4, 1, 16, 16) and test.info.class_names == ("cat", "dog")


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="fashion_mnist"):
        load_dataset("imagenet_typo")
    with pytest.raises(DataError, match="split"):
        load_dataset("digits", "validation")
    with pytest.raises(DataError, match="data root"):
        load_dataset("folder")
    with pytest.raises(DataError, match="ImageFolder"):
        load_dataset("folder", root=tmp_path)
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 4, 4), dtype=np.float32), labels=np.zeros(2))
    with pytest.raises(DataError, match="uint8"):
        load_dataset("folder", root=tmp_path)
    with pytest.raises(DataError, match="missing"):
        load_dataset("mnist", root=tmp_path, download=False)
