"""Hinton knowledge distillation: match the teacher's temperature-softened class probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdistill.config import MethodConfig
from kdistill.methods.base import Batch, Method, StepOutput, register_method
from kdistill.methods.ce import cross_entropy_loss


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531).

    loss = T^2 * KL(p_t || p_s), with p = softmax(logits / T), averaged over the batch.
    The T^2 factor keeps the gradient magnitude independent of T (the paper's section 2).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)  # (B, K)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


@dataclass
class KDConfig(MethodConfig):
    """Defaults are RepDistiller / mdistiller's CIFAR-100 ones (CE 0.1 + KL 0.9, T 4)."""

    name: str = "kd"
    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9


@register_method("kd")
class KD(Method):
    """``ce_weight * CE(student, labels) + kd_weight * T^2 * KL(teacher_T || student_T)``."""

    Config = KDConfig
    max_teachers = None  # several teachers: distil from their averaged probabilities (AVEG)
    teacher_outputs_cacheable = True

    def training_step(self, batch: Batch) -> StepOutput:
        student_logits = self.student(batch.inputs)  # (B, K)
        teacher_logits = self.teacher_logits(batch.inputs, batch)  # (B, K)
        losses = {"kd": self.config.kd_weight * kd_loss(student_logits, teacher_logits, self.config.temperature)}
        if self.config.ce_weight:
            losses["ce"] = self.config.ce_weight * cross_entropy_loss(student_logits, batch.targets)
        return StepOutput(logits=student_logits, losses=losses)
