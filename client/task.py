"""A node's local data: what a data site condenses (train part) and evaluates students on (held-out part).

Two sources, chosen by the SuperNode's node config:

* **simulation** (``partition-id`` / ``num-partitions``, set by Flower's simulation runtime): the run
  config's dataset is split with ``shared.data.partition_indices`` (iid / dirichlet / pathological) and
  this node keeps partition ``partition-id``;
* **deployment** (``data-dir`` [+ ``dataset``], given with ``flower-supernode --node-config``): the site's
  own files, read with ``shared.data.load_dataset(dataset, root=data-dir)``; ``dataset`` defaults to
  ``folder`` (``train.npz`` / ``train/<class>/*`` and optionally ``test.*``).

Either way the node holds out ``data.test_fraction`` of its data (or its own test split) for federated
evaluation. Anything missing raises ``DataError`` naming the node-config key and the fix.

Normalisation at a deployed site: the ``folder`` loader computes mean/std from the site's pixels, and the
payload's ``mean``/``std`` would send them to the server. So a deployed site normalises with the statistics
the server sends in its query (the teacher's), or, when the query has none (``condex condense`` without
``--mean/--std``, an older server), with the data-independent ``NEUTRAL_MEAN`` / ``NEUTRAL_STD`` for a
``folder`` dataset (registered datasets keep their published constants). Simulated partitions keep the
dataset's constants."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import DataConfig
from shared.data import LabeledImages, few_shot_indices, load_dataset, partition_indices, train_test_split_indices
from shared.data.sources import load_folder
from shared.errors import CondexError, DataError

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
DATA_DIR = "data-dir"
DATASET = "dataset"
NEUTRAL_MEAN, NEUTRAL_STD = 0.5, 0.5  # per channel: pixels in [0, 1] map to [-1, 1]; depends on no data
Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass
class LocalData:
    """The node's training part (condensed) and held-out part (federated evaluation)."""

    train: LabeledImages
    test: LabeledImages
    source: str  # human-readable origin, e.g. "fashion_mnist partition 3/10 (dirichlet)" or a folder path

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "train": len(self.train), "test": len(self.test),
                "class_counts": self.train.class_counts()}


def is_deployed(node_config: Mapping[str, Any]) -> bool:
    """A site with its own data (``data-dir``), or anything that is not a simulated partition."""
    return DATA_DIR in node_config or not (PARTITION_ID in node_config and NUM_PARTITIONS in node_config)


def load_local_data(node_config: Mapping[str, Any], data_cfg: DataConfig, num_classes: int | None = None,
                    stats: Stats | None = None, class_names: Sequence[str] = ()) -> LocalData:
    """Dispatch on the node config: a deployment data folder wins over simulation partition ids.
    ``num_classes``: the server's class count; a site folder that lacks the top classes is widened to it.
    ``stats``: the server's (mean, std), which a deployed site normalises with (module docstring).
    ``class_names``: the teacher's, which a ``folder`` site's ImageFolder names are mapped to."""
    if DATA_DIR in node_config:
        return load_site_data(Path(str(node_config[DATA_DIR])).expanduser(), str(node_config.get(DATASET, "folder")),
                              data_cfg, num_classes, stats, class_names)
    if PARTITION_ID in node_config and NUM_PARTITIONS in node_config:
        return load_partition(_as_int(node_config, PARTITION_ID), _as_int(node_config, NUM_PARTITIONS), data_cfg)
    raise DataError(
        f"node config has neither {DATA_DIR!r} (deployment) nor {PARTITION_ID!r}/{NUM_PARTITIONS!r} (simulation): "
        f"start the SuperNode with --node-config '{DATA_DIR}=\"/path/to/site/data\"'"
    )


def _as_int(node_config: Mapping[str, Any], key: str) -> int:
    try:
        return int(node_config[key])
    except (TypeError, ValueError):
        raise DataError(f"node config {key}={node_config[key]!r} must be an integer") from None


def load_partition(partition_id: int, num_partitions: int, data_cfg: DataConfig) -> LocalData:
    """This simulated node's share of the run's dataset, split into local train / held-out parts."""
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"node config {PARTITION_ID}={partition_id} must be in [0, {NUM_PARTITIONS}={num_partitions})")
    full = _cached_dataset(data_cfg.dataset, data_cfg.data_root, data_cfg.download)
    parts = _cached_partitions(data_cfg.dataset, data_cfg.data_root, data_cfg.download, num_partitions,
                               data_cfg.partition, data_cfg.alpha, data_cfg.classes_per_partition, data_cfg.seed)
    train_idx, test_idx = train_test_split_indices(parts[partition_id], data_cfg.test_fraction,
                                                   seed=data_cfg.seed + partition_id)
    train_idx = _few_shot(full, train_idx, data_cfg, partition_id)
    source = f"{data_cfg.dataset} partition {partition_id}/{num_partitions} ({data_cfg.partition})"
    return LocalData(full.subset(train_idx), full.subset(test_idx), source)


def _few_shot(full: LabeledImages, train_idx: np.ndarray, data_cfg: DataConfig, partition_id: int) -> np.ndarray:
    """With ``data.few_shot = n`` the node keeps only n real samples per class (the few-shot settings)."""
    if data_cfg.few_shot <= 0:
        return train_idx
    labels = full.labels.numpy()[train_idx]
    return train_idx[few_shot_indices(labels, data_cfg.few_shot, seed=data_cfg.seed + partition_id)]


def load_site_data(data_dir: Path, dataset: str, data_cfg: DataConfig, num_classes: int | None = None,
                   stats: Stats | None = None, class_names: Sequence[str] = ()) -> LocalData:
    """A data site's own files; its ``test`` split if present, else a held-out share of ``train``. Normalised
    with ``stats`` (the server's), never with statistics of the files (module docstring); ImageFolder names
    labelled by ``class_names`` (the teacher's) when the server sent them."""
    if not data_dir.is_dir():
        raise DataError(f"node config {DATA_DIR}={str(data_dir)!r} is not a directory; point it at the site's data "
                        "folder (train.npz or train/<class>/<image>)")
    train = _widen(_load_split(dataset, "train", data_dir, class_names), num_classes)
    train = with_public_stats(train, stats)
    if len(train) == 0:
        raise DataError(f"{DATA_DIR}={str(data_dir)!r} holds no training images")
    try:
        test = _load_split(dataset, "test", data_dir, class_names)
        # Own test split; the folder loader computes normalisation per split, keep the train one.
        test = LabeledImages(test.images, test.labels, train.info)
    except CondexError:
        train_idx, test_idx = train_test_split_indices(np.arange(len(train)), data_cfg.test_fraction, data_cfg.seed)
        train, test = train.subset(train_idx), train.subset(test_idx)
    return LocalData(train, test, f"{dataset} at {data_dir}")


def _load_split(dataset: str, split: str, data_dir: Path, class_names: Sequence[str]) -> LabeledImages:
    """A ``folder`` split labelled by the teacher's class names when known; other datasets as registered."""
    if dataset == "folder":
        return load_folder(data_dir, split, class_names)
    return load_dataset(dataset, split, root=data_dir, download=False)


def with_public_stats(data: LabeledImages, stats: Stats | None) -> LabeledImages:
    """``data`` normalised with ``stats`` (the server's), else for ``folder`` data with the neutral 0.5 / 0.5; the
    folder loader's own statistics of the private pixels are dropped either way."""
    channels = data.info.channels
    if stats is None:
        if data.info.name != "folder":
            return data  # a registered dataset's published constants
        stats = ((NEUTRAL_MEAN,) * channels, (NEUTRAL_STD,) * channels)
    mean, std = (tuple(float(v) for v in part) for part in stats)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"the server's normalisation has {len(mean)} mean / {len(std)} std values but the site's "
                        f"images have {channels} channel(s); the site's data does not match the teacher")
    return LabeledImages(data.images, data.labels, dataclasses.replace(data.info, mean=mean, std=std))


def _widen(data: LabeledImages, num_classes: int | None) -> LabeledImages:
    """A folder's class count is inferred from its labels; a site missing the last classes still uses the
    federation's class ids, so take the server's count when it is larger."""
    if num_classes is None or num_classes <= data.info.num_classes:
        return data
    return LabeledImages(data.images, data.labels, dataclasses.replace(data.info, num_classes=num_classes))


@lru_cache(maxsize=2)
def _cached_dataset(name: str, root: str, download: bool) -> LabeledImages:
    # Simulation workers (Ray actors) serve many nodes: read the dataset once per process.
    return load_dataset(name, "train", root=root or None, download=download)


@lru_cache(maxsize=4)
def _cached_partitions(name: str, root: str, download: bool, num_partitions: int, scheme: str, alpha: float,
                       classes_per_partition: int, seed: int) -> list[np.ndarray]:
    labels = _cached_dataset(name, root, download).labels.numpy()
    return partition_indices(labels, num_partitions, scheme=scheme, alpha=alpha,
                             classes_per_partition=classes_per_partition, seed=seed)
