"""Datasets, splits and loaders.

A dataset family registers a builder with ``@register_dataset(name)``; the builder returns a
:class:`DatasetSplits` (train with the train transform, the same train samples with the eval
transform, an optional official val split, the test split). :func:`build_data` then applies what
is the same for every dataset: a seeded validation split carved from train when there is no
official one, seeded subsets, and index-returning wrappers, and :func:`make_loader` builds loaders
whose order is a function of (seed, epoch) only, so a resumed run sees the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from kdistill.config import ConfigError, DataConfig
from kdistill.methods.base import Batch
from kdistill.registry import Registry, import_submodules


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked; the message says how to get them."""


@dataclass
class DatasetSplits:
    """What a dataset builder returns. ``train`` and ``train_eval`` index the same samples."""

    train: Dataset  # with the train (augmenting) transform
    train_eval: Dataset  # same samples, eval transform (used for a carved validation split)
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W) after transforms
    val: Dataset | None = None  # an official validation split, if the dataset has one
    class_names: list[str] | None = None
    train_augmented: bool = False  # whether the train transform is random
    default_val_size: int = 5000  # carved from train when there is no official val split
    mean: tuple[float, ...] | None = None  # per-channel normalisation the transforms applied
    std: tuple[float, ...] | None = None


@dataclass
class Data:
    """The resolved splits of one run."""

    train: Dataset  # yields (input, target, index)
    val: Dataset | None
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    train_augmented: bool
    class_names: list[str] | None = None
    mean: tuple[float, ...] | None = None  # per-channel input normalisation: x = (pixel/255 - mean) / std
    std: tuple[float, ...] | None = None


DatasetBuilder = Callable[[DataConfig], DatasetSplits]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")
DATASET_INFO: dict[str, dict[str, str]] = {}


def register_dataset(name: str, description: str = "", how_to_get: str = "") -> Callable[[DatasetBuilder], DatasetBuilder]:
    def decorator(builder: DatasetBuilder) -> DatasetBuilder:
        DATASET_INFO[name] = {"description": description, "how_to_get": how_to_get}
        return DATASETS.register(name)(builder)

    return decorator


class Indexed(Dataset):
    """Wraps a dataset so items are (input, target, index)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        inputs, target = self.dataset[index]
        return inputs, int(target), index


def collate(items: list) -> Batch:
    inputs, targets, indices = zip(*items)
    return Batch(
        inputs=torch.stack(inputs),
        targets=torch.tensor(targets, dtype=torch.int64),
        indices=torch.tensor(indices, dtype=torch.int64),
    )


def _seeded_permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def build_data(config: DataConfig, seed: int) -> Data:
    """Build the splits for ``config``; ``seed`` fixes the carved validation split and subsets."""
    try:
        builder = DATASETS.get(config.name)
    except KeyError as error:
        raise ConfigError(f"data.name: {error.args[0]}") from None
    splits = builder(config)
    train, val = splits.train, splits.val
    val_size = splits.default_val_size if config.val_size is None else config.val_size
    if val is None and val_size > 0:
        n = len(train)  # type: ignore[arg-type]
        if val_size >= n:
            raise ConfigError(f"data.val_size={val_size} leaves no training data ({n} samples)")
        order = _seeded_permutation(n, seed=12345)  # the val split does not move with the run seed
        val = Subset(splits.train_eval, order[:val_size].sort().values.tolist())
        train = Subset(train, order[val_size:].sort().values.tolist())
    if config.train_subset is not None:
        train = _subset(train, config.train_subset, seed)
    test = splits.test
    if config.test_subset is not None:
        test = _subset(test, config.test_subset, seed)
        val = _subset(val, config.test_subset, seed) if val is not None else None
    return Data(
        train=Indexed(train),
        val=Indexed(val) if val is not None else None,
        test=Indexed(test),
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        train_augmented=splits.train_augmented,
        class_names=splits.class_names,
        mean=splits.mean,
        std=splits.std,
    )


def _subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if size >= n:
        return dataset
    return Subset(dataset, _seeded_permutation(n, seed).narrow(0, 0, size).sort().values.tolist())


class EpochSampler(torch.utils.data.Sampler[int]):
    """A permutation that depends on (seed, epoch) only: resuming at an epoch reproduces its order.

    With ``num_replicas > 1`` each rank takes every ``num_replicas``-th index of the same permutation
    (padded to equal length), as ``DistributedSampler`` does.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, num_replicas: int = 1) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.num_replicas = rank, num_replicas
        self.epoch = 0
        self.per_replica = -(-size // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            order = _seeded_permutation(self.size, self.seed * 100_003 + self.epoch).tolist()
        else:
            order = list(range(self.size))
        total = self.per_replica * self.num_replicas
        order += order[: total - len(order)]
        return iter(order[self.rank : total : self.num_replicas])

    def __len__(self) -> int:
        return self.per_replica


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0, drop_last: bool = False
) -> DataLoader:
    """The one place loaders are made (samplers are rank-aware through kdistill.engine.distributed)."""
    from kdistill.engine.distributed import rank_and_world

    rank, world = rank_and_world() if shuffle else (0, 1)
    sampler = EpochSampler(len(dataset), seed, shuffle=shuffle, rank=rank, num_replicas=world)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),  # reseeded per epoch by the trainer (worker seeds)
    )


import_submodules(__name__, __path__)
