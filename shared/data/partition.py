"""Partitioning for simulations (flwr-datasets partitioners), few-shot sampling and per-client splits.

Everything is deterministic for a seed and returns index arrays into the dataset."""

from __future__ import annotations

import numpy as np

from shared.errors import ConfigError

SCHEMES = ("iid", "dirichlet", "pathological")


def _partitioner(scheme: str, num_partitions: int, alpha: float, classes_per_partition: int, seed: int,
                 min_partition_size: int):
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if scheme == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if scheme == "dirichlet":
        if alpha <= 0:
            raise ConfigError(f"data.alpha={alpha} must be > 0 for the dirichlet partition")
        return DirichletPartitioner(num_partitions=num_partitions, partition_by="label", alpha=alpha,
                                    min_partition_size=min_partition_size, self_balancing=False, seed=seed)
    if scheme == "pathological":
        return PathologicalPartitioner(num_partitions=num_partitions, partition_by="label",
                                       num_classes_per_partition=classes_per_partition,
                                       class_assignment_mode="deterministic", seed=seed)
    raise ConfigError(f"data.partition={scheme!r} is not one of {', '.join(SCHEMES)}")


def partition_indices(labels: np.ndarray, num_partitions: int, scheme: str = "iid", alpha: float = 0.5,
                      classes_per_partition: int = 2, seed: int = 0, min_partition_size: int = 10) -> list[np.ndarray]:
    """Split ``labels`` into ``num_partitions`` index arrays with a flwr-datasets partitioner."""
    from datasets import Dataset

    labels = np.asarray(labels, dtype=np.int64)
    if num_partitions < 1 or num_partitions > len(labels):
        raise ConfigError(f"data.num_partitions={num_partitions} must be between 1 and the dataset size {len(labels)}")
    num_classes = int(labels.max()) + 1
    if scheme == "pathological" and not 1 <= classes_per_partition <= num_classes:
        raise ConfigError(f"data.classes_per_partition={classes_per_partition} must be in 1..{num_classes}")
    if scheme == "dirichlet":
        min_partition_size = min(min_partition_size, len(labels) // num_partitions)
    partitioner = _partitioner(scheme, num_partitions, alpha, classes_per_partition, seed, min_partition_size)
    rng_state = np.random.get_state()  # flwr-datasets' IID shuffle uses numpy's global RNG
    np.random.seed(seed)
    try:
        partitioner.dataset = Dataset.from_dict({"label": labels, "index": np.arange(len(labels))})
        parts = [np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64) for i in range(num_partitions)]
    finally:
        np.random.set_state(rng_state)
    if scheme == "iid":  # the IID partitioner slices in order; shuffle first so slices are random
        order = np.random.default_rng(seed).permutation(len(labels))
        parts = [order[p] for p in parts]
    return parts


def few_shot_indices(labels: np.ndarray, n_per_class: int, seed: int = 0) -> np.ndarray:
    """``n_per_class`` random indices of each class (all of a class if it has fewer)."""
    if n_per_class < 1:
        raise ConfigError(f"n_per_class={n_per_class} must be >= 1")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:n_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def train_test_split_indices(indices: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into a local train part and a held-out part for federated evaluation."""
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction={test_fraction} must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(np.asarray(indices))
    cut = round(len(order) * test_fraction)
    return np.sort(order[cut:]), np.sort(order[:cut])
