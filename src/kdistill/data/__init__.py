"""Datasets, splits and loaders.

A dataset family registers a builder with ``@register_dataset(name)`` (``registry.py``); the builder returns a
:class:`DatasetSplits` (train with the train transform, the same train samples with the eval transform, an
optional official val split, the test split). :func:`build_data` (``splits.py``) then applies what is the same
for every dataset, and :func:`make_loader` (``loaders.py``) builds loaders whose order is a function of
(seed, epoch) only. Datasets held in memory are read and augmented a batch at a time (``batched.py``).
Importing this package registers every dataset family listed below.
"""

from kdistill.contracts import DatasetNotFoundError
from kdistill.data import cifar, emnist, flowers102, food101, imagefolder, mnist_like, pets  # registrations
from kdistill.data.loaders import EpochSampler, collate, make_loader, start_epoch
from kdistill.data.registry import DATASET_INFO, DATASETS, Data, DatasetSplits, register_dataset
from kdistill.data.splits import Indexed, build_data, data_info, place_data, seeded_permutation

__all__ = [
    "DATASETS",
    "DATASET_INFO",
    "Data",
    "DatasetNotFoundError",
    "DatasetSplits",
    "EpochSampler",
    "Indexed",
    "build_data",
    "collate",
    "data_info",
    "make_loader",
    "place_data",
    "register_dataset",
    "seeded_permutation",
    "start_epoch",
    "cifar",
    "emnist",
    "flowers102",
    "food101",
    "imagefolder",
    "mnist_like",
    "pets",
]
