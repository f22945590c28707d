"""Loaders whose order is a function of (seed, epoch) only, so a resumed run sees the same batches; the one
place samplers are made (rank-aware through kdistill.runtime.distributed)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from kdistill.contracts import Batch
from kdistill.data.splits import seeded_permutation
from kdistill.runtime.distributed import rank_and_world


def collate(items: list) -> Batch:
    inputs, targets, indices = zip(*items)
    return Batch(
        inputs=torch.stack(inputs),
        targets=torch.tensor(targets, dtype=torch.int64),
        indices=torch.tensor(indices, dtype=torch.int64),
    )


class EpochSampler(torch.utils.data.Sampler[int]):
    """A permutation that depends on (seed, epoch) only: resuming at an epoch reproduces its order.

    With ``num_replicas > 1`` each rank takes every ``num_replicas``-th index of the same permutation
    (padded to equal length), as ``DistributedSampler`` does. ``set_epoch(epoch, skip)`` leaves out the first
    ``skip`` indices of this rank's share in the next pass (a resume in the middle of an epoch).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, num_replicas: int = 1) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.num_replicas = rank, num_replicas
        self.epoch = 0
        self.skip = 0
        self.per_replica = -(-size // num_replicas)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        if self.shuffle:
            order = seeded_permutation(self.size, self.seed * 100_003 + self.epoch).tolist()
        else:
            order = list(range(self.size))
        total = self.per_replica * self.num_replicas
        order += order[: total - len(order)]
        skip, self.skip = self.skip, 0
        return iter(order[self.rank : total : self.num_replicas][skip:])

    def __len__(self) -> int:
        return self.per_replica


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0, drop_last: bool = False
) -> DataLoader:
    """The one place loaders are made (samplers are rank-aware through kdistill.runtime.distributed)."""
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
