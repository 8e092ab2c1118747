"""Data layer: dataset registry, normalisation, partitioning."""

from shared.data import sources as _sources  # noqa: F401  (registers the datasets)
from shared.data.partition import few_shot_indices, partition_indices, train_test_split_indices
from shared.data.registry import DatasetInfo, LabeledImages, dataset_names, get_dataset_info, load_dataset
from shared.data.transforms import denormalize, normalize

__all__ = [
    "DatasetInfo", "LabeledImages", "dataset_names", "denormalize", "few_shot_indices", "get_dataset_info",
    "load_dataset", "normalize", "partition_indices", "train_test_split_indices",
]
