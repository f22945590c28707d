"""Loaders whose order is a function of (seed, epoch) only, so a resumed run sees the same batches; the one
place samplers are made (rank-aware through kdistill.runtime.distributed)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from kdistill.contracts import Batch
from kdistill.data.splits import Indexed, seeded_permutation
from kdistill.runtime.distributed import rank_and_world


def collate(items: list | Batch) -> Batch:
    """Items (input, target, index) into a :class:`Batch`; a batch an in-memory split made whole
    (:meth:`~kdistill.data.splits.Indexed.__getitems__`) passes as it is."""
    if isinstance(items, Batch):
        return items
    inputs, targets, indices = zip(*items)
    return Batch(
        inputs=torch.stack(inputs),
        targets=torch.tensor(targets, dtype=torch.int64),
        indices=torch.tensor(indices, dtype=torch.int64),
    )


class EpochSampler(torch.utils.data.Sampler[int]):
    """A permutation that depends on (seed, epoch) only: resuming at an epoch reproduces its order.

    With ``keyed`` it yields ``(index, epoch)`` keys (:class:`~kdistill.data.splits.Indexed` seeds a sample's
    random transform with them), else plain indices. With ``num_replicas > 1`` each rank takes every
    ``num_replicas``-th index of the same permutation, as ``DistributedSampler`` does: padded to equal length, or
    with ``drop_last`` cut to it (training: then no sample is seen twice in an epoch, so each (epoch, index) is one
    input). ``set_epoch(epoch, skip)`` leaves out
    the first ``skip`` indices of this rank's share in the next pass (a resume in the middle of an epoch).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        num_replicas: int = 1,
        drop_last: bool = False,
        keyed: bool = False,
    ) -> None:
        self.size, self.seed, self.shuffle, self.keyed = size, seed, shuffle, keyed
        self.rank, self.num_replicas = rank, num_replicas
        self.epoch = 0
        self.skip = 0
        self.per_replica = size // num_replicas if drop_last and size >= num_replicas else -(-size // num_replicas)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        if self.shuffle:
            order = seeded_permutation(self.size, self.seed * 100_003 + self.epoch).tolist()
        else:
            order = list(range(self.size))
        total = self.per_replica * self.num_replicas
        order += order[: max(total - len(order), 0)]
        skip, self.skip = self.skip, 0
        share = order[self.rank : total : self.num_replicas][skip:]
        return iter([(index, self.epoch) for index in share] if self.keyed else share)

    def __len__(self) -> int:
        return self.per_replica


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0, drop_last: bool = False
) -> DataLoader:
    """The one place loaders are made (samplers are rank-aware through kdistill.runtime.distributed).

    A split whose images were placed on a GPU (:func:`~kdistill.data.splits.place_data`) makes its batches there, in
    this process: no loader workers and no pinned memory."""
    rank, world = rank_and_world() if shuffle else (0, 1)
    keyed = isinstance(dataset, Indexed)  # replayable: items are keyed by (index, stream epoch)
    sampler = EpochSampler(len(dataset), seed, shuffle, rank, world, drop_last, keyed)  # type: ignore[arg-type]
    on_device = keyed and dataset.device.type != "cpu"  # type: ignore[attr-defined]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=0 if on_device else num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() and not on_device,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),  # reseeded per epoch by start_epoch (worker seeds)
    )


def start_epoch(loader: DataLoader, stream_seed: int, epoch: int, skip: int = 0) -> None:
    """Put a :func:`make_loader` loader at ``epoch`` of its stream: its order, its samples' transform seeds and its
    worker seeds; ``skip`` leaves out this rank's first samples (a resume in the middle of the epoch)."""
    loader.sampler.set_epoch(epoch, skip)  # type: ignore[attr-defined]  # an EpochSampler
    assert loader.generator is not None
    loader.generator.manual_seed(stream_seed * 1_000_003 + epoch)
