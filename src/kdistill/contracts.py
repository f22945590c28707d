"""The ground floor: what every layer shares. Errors, the batch, what a method learns about the data, what a
training step returns. The errors and the version live in the torch-free :mod:`kdistill.errors` and
:mod:`kdistill.choices` (the command line catches and shows them without importing torch) and are handed on from
here; nothing else here imports another kdistill module."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from kdistill.choices import VERSION
from kdistill.errors import (
    CheckpointError,
    ConfigError,
    DatasetNotFoundError,
    DiskFullError,
    TrainingDivergedError,
    TrainingInterrupted,
)

__all__ = [
    "VERSION",
    "Batch",
    "CheckpointError",
    "ConfigError",
    "DataInfo",
    "DatasetNotFoundError",
    "DiskFullError",
    "StepOutput",
    "TrainingDivergedError",
    "TrainingInterrupted",
]

# ----------------------------------------------------------------------------- data and steps


@dataclass
class DataInfo:
    """What a method may need to know about the data before training starts."""

    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W) of one training input
    num_train: int  # size of the training set (CRD's memory bank, sample indices)
    batch_size: int = 0  # training batch per process (SemCKD's attention width); 0 = unknown
    input_mean: tuple[float, ...] | None = None  # the data's per-channel normalisation (None: unknown)
    input_std: tuple[float, ...] | None = None


@dataclass
class Batch:
    """One mini-batch. ``indices`` are positions in the training set (stable across epochs)."""

    inputs: Tensor  # (B, C, H, W)
    targets: Tensor  # (B,) int64 class labels
    indices: Tensor  # (B,) int64
    extras: dict[str, Tensor] = field(default_factory=dict)  # method-specific per-sample data

    def to(self, device: torch.device, channels_last: bool = False) -> Batch:
        inputs = self.inputs.to(device, non_blocking=True)
        if channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return Batch(
            inputs=inputs,
            targets=self.targets.to(device, non_blocking=True),
            indices=self.indices.to(device, non_blocking=True),
            extras={k: v.to(device, non_blocking=True) for k, v in self.extras.items()},
        )

    def replace(self, inputs: Tensor | None = None, extras: dict[str, Tensor] | None = None) -> Batch:
        """The same samples with new inputs and/or extras (batch-level augmentation)."""
        return Batch(
            inputs=self.inputs if inputs is None else inputs,
            targets=self.targets,
            indices=self.indices,
            extras=self.extras if extras is None else extras,
        )

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass
class StepOutput:
    """Student logits (for training accuracy) and the loss terms, each already weighted."""

    logits: Tensor  # (B, K)
    losses: dict[str, Tensor]

    @property
    def loss(self) -> Tensor:
        terms = iter(self.losses.values())
        total = next(terms)
        for value in terms:
            total = total + value
        return total
