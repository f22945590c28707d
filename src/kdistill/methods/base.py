"""The method interface: how a student learns (from teachers, peers, itself, or labels only).

A method is an ``nn.Module`` holding the student, the frozen teachers and any learnable parts of
its own (regressors, projectors, memories). The trainer calls only what is defined here:

- ``training_step(batch) -> StepOutput``: the losses of one batch, already weighted;
- ``forward(inputs) -> logits``: the deployable student's prediction (used by evaluation);
- ``student_for_export()``: the module that is saved as the final student;
- hooks the method may override: ``on_epoch_start``, ``augment_batch`` (batch-level augmentation
  run on the device, e.g. mixup), ``teacher_outputs_cacheable`` (the trainer may precompute the
  teachers' logits once when the data pipeline is deterministic).

Response-, feature- and relation-based methods differ only in ``training_step``; offline methods
pass frozen teachers, online methods (mutual learning) hold trainable peers as their own
submodules, and self-distillation needs no teacher at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from kdistill.config import MethodConfig
from kdistill.registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")


def register_method(name: str):
    """Class decorator: ``@register_method("kd")`` makes the method available as ``method.name: kd``."""

    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


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
    teacher_logits: Tensor | None = None  # (B, K) precomputed by the trainer when cacheable
    extras: dict[str, Tensor] = field(default_factory=dict)  # method-specific per-sample data

    def to(self, device: torch.device, channels_last: bool = False) -> "Batch":
        inputs = self.inputs.to(device, non_blocking=True)
        if channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return Batch(
            inputs=inputs,
            targets=self.targets.to(device, non_blocking=True),
            indices=self.indices.to(device, non_blocking=True),
            teacher_logits=None if self.teacher_logits is None else self.teacher_logits.to(device, non_blocking=True),
            extras={k: v.to(device, non_blocking=True) for k, v in self.extras.items()},
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
        return sum(self.losses.values())  # type: ignore[return-value]


class Method(nn.Module):
    """Base class. Subclasses set ``Config`` (a ``MethodConfig`` dataclass) and ``training_step``."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    requires_teacher: ClassVar[bool] = True  # False for label-only, online and self-distillation methods
    max_teachers: ClassVar[int | None] = 1  # None = any number (multi-teacher methods)
    teacher_outputs_cacheable: ClassVar[bool] = False  # True if only the teachers' logits are used
    uses_labels: ClassVar[bool] = True  # False: the loss never reads targets (train accuracy is not logged)

    def __init__(self, student: nn.Module, teachers: list[nn.Module], config: MethodConfig, info: DataInfo) -> None:
        super().__init__()
        self.student = student
        self.config = config
        self.info = info
        self.teachers = nn.ModuleList(teachers)
        for teacher in self.teachers:
            teacher.eval()
            teacher.requires_grad_(False)
        self.current_epoch = 0
        self.num_epochs = 1

    # ------------------------------------------------------------------ teachers
    @property
    def teacher(self) -> nn.Module:
        return self.teachers[0]

    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        for teacher in self.teachers:
            teacher.eval()  # frozen teachers keep BN statistics and dropout off
        return self

    def teacher_logits(self, inputs: Tensor, batch: Batch | None = None) -> Tensor:
        """The teachers' logits for ``inputs`` without gradient; cached ones from ``batch`` if given.

        With several teachers this is the log of their mean probabilities (the ensemble).
        """
        if batch is not None and batch.teacher_logits is not None:
            return batch.teacher_logits
        with torch.no_grad():
            outputs = [teacher(inputs).float() for teacher in self.teachers]
        if len(outputs) == 1:
            return outputs[0]
        log_probs = torch.stack([o.log_softmax(dim=1) for o in outputs])  # (N_teachers, B, K)
        return torch.logsumexp(log_probs, dim=0) - math.log(len(outputs))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Batch) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement training_step")

    def augment_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Batch-level augmentation on the device (mixup, crops). Default: none."""
        return batch

    @property
    def augments_batches(self) -> bool:
        return type(self).augment_batch is not Method.augment_batch

    def epoch_metrics(self) -> dict[str, float]:
        """Loss-free numbers of the epoch just trained, logged as ``train_<key>`` (e.g. SimKD's kept fraction)."""
        return {}

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called before each epoch (0-based), e.g. for loss-weight warmups."""
        self.current_epoch = epoch
        self.num_epochs = num_epochs

    # ------------------------------------------------------------------ deployment
    def forward(self, inputs: Tensor) -> Tensor:
        """Logits of the deployable student (what evaluation and export measure)."""
        return self.student(inputs)

    def student_for_export(self) -> nn.Module:
        """The module saved as the final student. SimKD returns encoder + projector + teacher head."""
        return self.student

    def trainable_parameters(self) -> list[nn.Parameter]:
        teacher_ids = {id(p) for p in self.teachers.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in teacher_ids]
