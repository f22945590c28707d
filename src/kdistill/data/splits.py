"""The splits of one run: a seeded validation split carved from train when the dataset has none, seeded
subsets, and index-returning wrappers (the same for every dataset).

A split of an in-memory dataset (:class:`~kdistill.data.transforms.TensorImageDataset`, through any subsets) is read a
whole batch at a time (:meth:`Indexed.__getitems__`, which PyTorch's ``DataLoader`` calls with a batch's keys): one
gather of uint8 pixels and the preset run on the batch as tensor operations (:mod:`kdistill.data.batched`), on the
training device when :func:`place_data` put the images there. Other datasets are read item by item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from kdistill.config import DataConfig
from kdistill.contracts import Batch, ConfigError, DataInfo
from kdistill.data.batched import DrawKeys
from kdistill.data.registry import DATASETS, Data
from kdistill.data.transforms import TensorImageDataset

logger = logging.getLogger(__name__)

UNLABELLED = -1  # the target of a training sample without a label (data.labelled)
StreamKey = int | tuple[int, int]  # a sample index, or (sample index, stream epoch) from EpochSampler


def sample_seed(stream_seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random transform in one epoch of a stream (distinct for every (epoch, index))."""
    return ((stream_seed * 1_000_003 + epoch) * 4_294_967_311 + index) % (1 << 63)


@dataclass
class MemoryView:
    """An in-memory dataset seen through :class:`~torch.utils.data.Subset` and :class:`PartlyLabelled` wrappers:
    item ``i`` is ``base`` sample ``positions[i]``, unlabelled (target -1) where ``labelled[i]`` is False."""

    base: TensorImageDataset
    positions: Tensor  # (N,) int64, on the CPU
    labelled: Tensor | None = None  # (N,) bool, on the CPU; None: every item keeps its label

    def batch(self, keys: list[StreamKey], stream_seed: int | None) -> Batch:
        """The items of ``keys`` (indices, or (index, stream epoch) pairs): one :class:`Batch` on the base's device."""
        pairs = np.array([key if isinstance(key, tuple) else (key, 0) for key in keys], dtype=np.int64).reshape(-1, 2)
        indices = torch.from_numpy(pairs[:, 0].copy())
        device = self.base.device
        positions = self.positions[indices].to(device)
        targets = self.base.labels[positions]
        if self.labelled is not None:
            targets = torch.where(self.labelled[indices].to(device), targets, UNLABELLED)
        inputs = self.base.fetch(positions, DrawKeys(stream_seed, pairs[:, 1], pairs[:, 0]))
        return Batch(inputs=inputs, targets=targets, indices=indices)


def memory_view(dataset: Dataset) -> MemoryView | None:
    """``dataset`` as a :class:`MemoryView` when it is an in-memory dataset that can be read by the batch (through
    any subsets and label masks), else None."""
    if isinstance(dataset, TensorImageDataset):
        return MemoryView(dataset, torch.arange(len(dataset))) if dataset.batched else None
    if isinstance(dataset, (Subset, PartlyLabelled)):
        inner = memory_view(dataset.dataset)
        if inner is None:
            return None
        if isinstance(dataset, PartlyLabelled):
            keep = torch.zeros(len(inner.positions), dtype=torch.bool)
            keep[sorted(dataset.labelled)] = True
            return MemoryView(inner.base, inner.positions, keep if inner.labelled is None else keep & inner.labelled)
        picked = torch.as_tensor(dataset.indices, dtype=torch.int64)
        labelled = None if inner.labelled is None else inner.labelled[picked]
        return MemoryView(inner.base, inner.positions[picked], labelled)
    return None


class Indexed(Dataset):
    """Wraps a dataset so items are (input, target, index).

    With ``stream_seed`` the random transform of item (index, epoch) draws from randomness seeded by (stream seed,
    epoch, index) alone (:func:`sample_seed`), whatever the global RNG state, the loader workers or the batch, so the
    input a teacher saw can be produced again. In-memory datasets are read a batch at a time
    (:meth:`__getitems__`, :mod:`kdistill.data.batched`); others item by item, the per-sample transform drawing from
    torch's global generator seeded with :func:`sample_seed` (its state is restored after each item).
    """

    def __init__(self, dataset: Dataset, stream_seed: int | None = None) -> None:
        self.dataset = dataset
        self.stream_seed = stream_seed
        self.view = memory_view(dataset)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        """Where this split's batches are made (an in-memory dataset placed on the training device, or the CPU)."""
        return self.view.base.device if self.view is not None else torch.device("cpu")

    def __getitems__(self, keys: list[StreamKey]) -> Batch | list:
        """A whole batch at once for an in-memory dataset (PyTorch's ``DataLoader`` calls this with a batch's keys,
        :func:`~kdistill.data.loaders.collate` passes the :class:`Batch` on), else the items one by one."""
        if self.view is None:
            return [self[key] for key in keys]
        return self.view.batch(keys, self.stream_seed)

    def __getitem__(self, key: StreamKey):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if self.view is not None:  # the same pixels as in a batch
            batch = self.view.batch([(index, epoch)], self.stream_seed)
            return batch.inputs[0], int(batch.targets[0]), index
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
    train = Indexed(train, stream_seed if splits.train_augmented else None)
    if config.pipeline == "batched" and splits.train_augmented and train.view is None:
        raise ConfigError(
            f"data.pipeline=batched: dataset {config.name!r} is read from files image by image, so its augmentation "
            "runs per sample in the loader workers (data.num_workers); use data.pipeline=auto"
        )
    return Data(
        train=train,
        val=Indexed(val) if val is not None else None,
        test=Indexed(test),
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        train_augmented=splits.train_augmented,
        class_names=splits.class_names,
        mean=splits.mean,
        std=splits.std,
    )


def place_data(data: Data, device: torch.device, share: float = 0.25) -> bool:
    """Put the images of the in-memory splits on ``device`` (a GPU) when they take at most ``share`` of its free
    memory, so batches are gathered and augmented there; returns whether they moved. On the CPU nothing moves."""
    if device.type != "cuda":
        return False
    views = [split.view for split in (data.train, data.val, data.test) if isinstance(split, Indexed) and split.view]
    bases = list({id(view.base): view.base for view in views}.values())
    tensors = {id(t): t for base in bases for t in (base.images, base.prepared, base.labels) if t is not None}
    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    free, _ = torch.cuda.mem_get_info(device)
    if not bases or needed > share * free:
        if bases:
            logger.info("in-memory images stay on the CPU: %.2f GB > %g of the GPU's free memory", needed / 1e9, share)
        return False
    moved: dict[int, Tensor] = {}
    for base in bases:
        base.to(device, moved)
    return True


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
