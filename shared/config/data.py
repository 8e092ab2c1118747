"""Which dataset, where it lives, and how a simulation splits it across clients."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config.checks import check_types
from shared.errors import ConfigError


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    data_root: str = ""  # empty: Debian's files for fashion_mnist, else ~/.cache/condex/data
    download: bool = True
    partition: str = "dirichlet"  # iid | dirichlet | pathological
    num_partitions: int = 10
    alpha: float = 0.5
    classes_per_partition: int = 2
    few_shot: int = 0  # > 0: each client keeps only this many real samples per class
    test_fraction: float = 0.2  # each client's held-out split for federated evaluation
    seed: int = 0

    def validate(self) -> None:
        from shared.data import dataset_names
        from shared.data.partition import SCHEMES

        check_types(self, "data")
        if self.dataset not in dataset_names():
            raise ConfigError(f"data.dataset={self.dataset!r} is unknown; choose one of {', '.join(dataset_names())}")
        if self.partition not in SCHEMES:
            raise ConfigError(f"data.partition={self.partition!r} is not one of {', '.join(SCHEMES)}")
        if self.num_partitions < 1:
            raise ConfigError(f"data.num_partitions={self.num_partitions} must be >= 1")
        if self.alpha <= 0:
            raise ConfigError(f"data.alpha={self.alpha} must be > 0")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction={self.test_fraction} must be in [0, 1)")
        if self.classes_per_partition < 1:
            raise ConfigError(f"data.classes_per_partition={self.classes_per_partition} must be >= 1")
        self._check_classes_per_partition()
        if self.few_shot < 0:
            raise ConfigError(f"data.few_shot={self.few_shot} must be >= 0 (0 keeps all local data)")

    def _check_classes_per_partition(self) -> None:
        """A pathological split cannot give a site more classes than the dataset has."""
        from shared.data import get_dataset_info

        if self.dataset == "folder":  # its classes are known only once a site's folder is read
            return
        classes = get_dataset_info(self.dataset).num_classes
        if self.classes_per_partition > classes:
            raise ConfigError(f"data.classes_per_partition={self.classes_per_partition} exceeds the {classes} "
                              f"classes of {self.dataset}; use 1..{classes}")
