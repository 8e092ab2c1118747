"""Partitioners (flwr-datasets), few-shot sampling and per-client splits on real FMNIST labels."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data import few_shot_indices, partition_indices, train_test_split_indices
from shared.errors import ConfigError


@pytest.fixture(scope="module")
def labels(fmnist_train) -> np.ndarray:
    return fmnist_train.labels.numpy()


def _covers_once(parts: list[np.ndarray], n: int) -> bool:
    joined = np.concatenate(parts)
    return len(joined) == n and len(np.unique(joined)) == n


def test_iid_sizes_and_balance(labels: np.ndarray) -> None:
    parts = partition_indices(labels, 10, "iid", seed=3)
    assert [len(p) for p in parts] == [6000] * 10 and _covers_once(parts, len(labels))
    for p in parts:  # random slices: every class present in roughly equal share
        counts = np.bincount(labels[p], minlength=10)
        assert counts.min() > 450 and counts.max() < 750


def test_dirichlet_is_skewed_and_deterministic(labels: np.ndarray) -> None:
    a = partition_indices(labels, 10, "dirichlet", alpha=0.1, seed=1)
    b = partition_indices(labels, 10, "dirichlet", alpha=0.1, seed=1)
    c = partition_indices(labels, 10, "dirichlet", alpha=0.1, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert _covers_once(a, len(labels))
    # alpha=0.1 concentrates each client on few classes; IID would give ~0.1 per class.
    top_share = [np.bincount(labels[p], minlength=10).max() / len(p) for p in a]
    assert np.median(top_share) > 0.4


def test_pathological_classes_per_client(labels: np.ndarray) -> None:
    parts = partition_indices(labels, 10, "pathological", classes_per_partition=2, seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    assert all(len(p) > 0 for p in parts)


def test_few_shot_and_split(labels: np.ndarray) -> None:
    idx = few_shot_indices(labels, 5, seed=0)
    assert np.bincount(labels[idx], minlength=10).tolist() == [5] * 10
    assert np.array_equal(idx, few_shot_indices(labels, 5, seed=0))
    train, test = train_test_split_indices(np.arange(100), 0.2, seed=0)
    assert len(train) == 80 and len(test) == 20 and not set(train) & set(test)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"num_partitions": 0}, "num_partitions"),
    ({"scheme": "shards"}, "partition"),
    ({"scheme": "dirichlet", "alpha": 0.0}, "alpha"),
    ({"scheme": "pathological", "classes_per_partition": 11}, "classes_per_partition"),
])
def test_bad_partition_arguments(labels: np.ndarray, kwargs: dict, field: str) -> None:
    args = {"num_partitions": 10, **kwargs}
    with pytest.raises(ConfigError, match=field):
        partition_indices(labels, **args)
