"""Shared fixtures: real Fashion-MNIST (offline, Debian files) loaded once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("CONDEX_QUIET", "1")

import torch
from torch import nn

from server.distillation import CondensedSet
from shared.checkpoint import ModelCard, card_for_dataset
from shared.data import LabeledImages, load_dataset
from shared.device import torch_threads
from shared.models import build_model
from shared.train import train_classifier


@pytest.fixture(scope="session")
def fmnist_train() -> LabeledImages:
    return load_dataset("fashion_mnist", "train")


@pytest.fixture(scope="session")
def fmnist_test() -> LabeledImages:
    return load_dataset("fashion_mnist", "test")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test module: on a CPU shared with other jobs (and Ray workers in the
    Flower tests), two threads are several times slower for these tiny models."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_teacher(fmnist_train: LabeledImages) -> tuple[nn.Module, ModelCard]:
    """A frozen ResNet-8 (width 4, BatchNorm) trained for one epoch on 1000 real images: a real teacher
    whose BN statistics and features the engine tests can invert, in a few seconds."""
    torch.manual_seed(0)
    net = build_model("resnet8", 10, 1, 28, width=4)
    with torch_threads(1):
        train_classifier(net, fmnist_train.subset(range(1000)), None, epochs=1, batch_size=50, lr=0.05,
                         progress=False)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), card_for_dataset(fmnist_train.info, "resnet8", {"width": 4}, role="teacher")


@pytest.fixture(scope="session")
def engine_data(fmnist_train: LabeledImages, fmnist_test: LabeledImages) -> tuple[LabeledImages, LabeledImages]:
    """What the engine tests distil from and evaluate on: the real training set and 300 real test images."""
    return fmnist_train, fmnist_test.subset(range(300))


@pytest.fixture(scope="session")
def tiny_condensed(fmnist_train: LabeledImages) -> CondensedSet:
    """A condensed set of 3 real training images per class (selection is the ``real`` baseline's)."""
    return CondensedSet.from_real(fmnist_train, 3, seed=0)
