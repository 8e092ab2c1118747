"""Shared fixtures: real Fashion-MNIST (offline, Debian files) loaded once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("CONDEX_QUIET", "1")

from shared.data import LabeledImages, load_dataset


@pytest.fixture(scope="session")
def fmnist_train() -> LabeledImages:
    return load_dataset("fashion_mnist", "train")


@pytest.fixture(scope="session")
def fmnist_test() -> LabeledImages:
    return load_dataset("fashion_mnist", "test")
