"""Multi-process training through PyTorch's ``DistributedDataParallel``, launched by ``torchrun``.

DDP wraps the trainable part of a method: :class:`TrainingStep` makes ``method.training_step`` a module forward, so
DDP's bucketed gradient all-reduce overlaps the backward pass of the student and the method's own modules
(regressors, projectors, embeddings). The frozen teachers run inside the forward but are left out of DDP (neither
their parameters nor their buffers are synchronised: every rank holds the same copy). The student's buffers (batch
norm statistics) are broadcast from rank 0 at each forward, as DDP does; a method's own buffers (memory banks) stay
per rank. ``train.sync_batchnorm`` converts the student's and method modules' batch norms to ``SyncBatchNorm``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kdistill.contracts import Batch, StepOutput
from kdistill.methods import Method
from kdistill.runtime.distributed import is_distributed

StepForward = Callable[[Batch], StepOutput]


class TrainingStep(nn.Module):
    """``forward(batch) = method.training_step(batch)``: the module DDP wraps."""

    def __init__(self, method: Method[Any]) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Batch) -> StepOutput:
        return self.method.training_step(batch)


def convert_sync_batchnorm(method: Method[Any]) -> Method[Any]:
    """Batch norms of the student and the method's own modules become ``SyncBatchNorm`` (the teachers' stay)."""
    for name, child in list(method.named_children()):
        if name != "teachers":
            setattr(method, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return method


def not_synchronised(method: Method[Any]) -> list[str]:
    """Names (relative to :class:`TrainingStep`) DDP leaves alone: the teachers' parameters and buffers, and the
    buffers of the method's own modules."""
    names = [f"method.teachers.{name}" for name, _ in method.teachers.named_parameters()]
    for name, _ in method.named_buffers():
        if not name.startswith("student."):
            names.append(f"method.{name}")
    return names


def training_forward(method: Method[Any], device: torch.device) -> StepForward:
    """The function the trainer calls per batch: DDP over the method when running under torchrun with several
    processes, else ``method.training_step`` itself."""
    if not is_distributed():
        return method.training_step
    module = TrainingStep(method)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, not_synchronised(method))
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    find_unused = method.traits.unused_parameters  # methods whose phases leave some parameters without gradient
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused)
