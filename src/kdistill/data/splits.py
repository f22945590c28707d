"""The splits of one run: a seeded validation split carved from train when the dataset has none, seeded
subsets, and index-returning wrappers (the same for every dataset)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from kdistill.config import DataConfig
from kdistill.contracts import ConfigError, DataInfo
from kdistill.data.registry import DATASETS, Data

UNLABELLED = -1  # the target of a training sample without a label (data.labelled)
StreamKey = int | tuple[int, int]  # a sample index, or (sample index, stream epoch) from EpochSampler


def sample_seed(stream_seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random transform in one epoch of a stream (distinct for every (epoch, index))."""
    return ((stream_seed * 1_000_003 + epoch) * 4_294_967_311 + index) % (1 << 63)


class Indexed(Dataset):
    """Wraps a dataset so items are (input, target, index).

    With ``stream_seed`` the random per-sample transform of item (index, epoch) draws from a generator seeded by
    (stream seed, epoch, index) alone (:func:`sample_seed`), whatever the global RNG state, the loader workers or the
    batch, so the input a teacher saw can be produced again. The global RNG is restored after each item.
    """

    def __init__(self, dataset: Dataset, stream_seed: int | None = None) -> None:
        self.dataset = dataset
        self.stream_seed = stream_seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: StreamKey):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if self.stream_seed is None:
            inputs, target = self.dataset[index]
            return inputs, int(target), index
        generator = torch.default_generator  # torchvision's transforms draw from the global generator
        state = generator.get_state()
        try:
            generator.manual_seed(sample_seed(self.stream_seed, epoch, index))
            inputs, target = self.dataset[index]
        finally:
            generator.set_state(state)
        return inputs, int(target), index


def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def build_data(config: DataConfig, seed: int, stream_seed: int | None = None) -> Data:
    """Build the splits for ``config``; ``seed`` fixes the subsets (``data.stream_seed`` instead, when set: then
    trials of different seeds train on the same data), ``stream_seed`` makes the train split's random transforms
    replayable (see :class:`Indexed`)."""
    seed = seed if config.stream_seed is None else config.stream_seed
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
        order = seeded_permutation(n, seed=12345)  # the val split does not move with the run seed
        val = Subset(splits.train_eval, order[:val_size].sort().values.tolist())
        train = Subset(train, order[val_size:].sort().values.tolist())
    if config.train_subset is not None:
        train = _subset(train, config.train_subset, seed)
    if config.labelled is not None:
        train = PartlyLabelled(train, _subset_positions(len(train), config.labelled, seed))  # type: ignore[arg-type]
    test = splits.test
    if config.test_subset is not None:
        test = _subset(test, config.test_subset, seed)
        val = _subset(val, config.test_subset, seed) if val is not None else None
    return Data(
        train=Indexed(train, stream_seed if splits.train_augmented else None),
        val=Indexed(val) if val is not None else None,
        test=Indexed(test),
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        train_augmented=splits.train_augmented,
        class_names=splits.class_names,
        mean=splits.mean,
        std=splits.std,
    )


def data_info(data: Data, batch_size: int) -> DataInfo:
    """What a method learns about ``data`` before training: classes, input shape and normalisation, train size."""
    return DataInfo(
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        num_train=len(data.train),  # type: ignore[arg-type]
        batch_size=batch_size,
        input_mean=data.mean,
        input_std=data.std,
    )


def _subset_positions(n: int, size: int, seed: int) -> list[int]:
    """The seeded ``size`` of ``n`` positions (sorted) that ``data.train_subset`` and ``data.labelled`` take."""
    return seeded_permutation(n, seed).narrow(0, 0, min(size, n)).sort().values.tolist()


def _subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if size >= n:
        return dataset
    return Subset(dataset, _subset_positions(n, size, seed))


class PartlyLabelled(Dataset):
    """The samples at ``labelled`` positions keep their label; every other sample's target is -1 (unlabelled)."""

    def __init__(self, dataset: Dataset, labelled: list[int]) -> None:
        self.dataset = dataset
        self.labelled = set(labelled)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        inputs, target = self.dataset[index]
        return inputs, (int(target) if index in self.labelled else UNLABELLED)
