"""Cross-entropy on labels: training a teacher or a baseline student (no distillation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdistill.config import MethodConfig
from kdistill.methods.base import Batch, Method, StepOutput, register_method


def cross_entropy_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean over the batch of -log softmax(logits)[target] (with optional label smoothing)."""
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


@dataclass
class CEConfig(MethodConfig):
    name: str = "ce"
    label_smoothing: float = 0.0


@register_method("ce")
class CrossEntropy(Method):
    """Labels only. ``kdistill train`` is this method; no teacher is loaded."""

    Config = CEConfig
    requires_teacher = False
    max_teachers = 0

    def training_step(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.inputs)  # (B, K)
        loss = cross_entropy_loss(logits, batch.targets, self.config.label_smoothing)
        return StepOutput(logits=logits, losses={"ce": loss})
