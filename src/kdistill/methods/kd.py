"""Hinton knowledge distillation: match the teacher's temperature-softened class probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, StepOutput
from kdistill.methods.base import Method, MethodTraits, register_method
from kdistill.methods.ce import cross_entropy_loss


def standardize_logits(logits: Tensor, epsilon: float = 1e-7) -> Tensor:
    """Sun et al., "Logit Standardization in Knowledge Distillation" (CVPR 2024, arXiv:2403.01427).

    Z(z) = (z - mean(z)) / (std(z) + epsilon) over each sample's K logits, with the unbiased standard deviation
    (divisor K - 1) and epsilon = 1e-7 added to it, as ``normalize`` in sunshangquan/logit-standardization-KD
    ``mdistiller/distillers/KD.py``. The base temperature then divides the z-scores: softmax(Z(z) / T). Applied to
    teacher and student alike, it makes a loss invariant to shifting or (positively) scaling a sample's logits.
    """
    mean = logits.mean(dim=-1, keepdim=True)  # (B, 1)
    std = logits.std(dim=-1, keepdim=True)  # (B, 1), unbiased
    return (logits - mean) / (epsilon + std)  # (B, K)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531).

    loss = T^2 * KL(p_t || p_s), with p = softmax(logits / T), averaged over the batch.
    The T^2 factor keeps the gradient magnitude independent of T (the paper's section 2).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)  # (B, K)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def ensemble_kd_loss(student_logits: Tensor, teacher_logits: list[Tensor], temperature: float) -> Tensor:
    """Multi-teacher KD with averaged teacher predictions (AVEG, as in the SimKD paper's Table 6):

    loss = T^2 * KL(mean_i softmax(z_i / T) || softmax(s / T)), averaged over the batch; the teachers'
    probabilities are averaged at the distillation temperature. One teacher gives :func:`kd_loss`.
    """
    p_teacher = torch.stack([F.softmax(logits / temperature, dim=1) for logits in teacher_logits]).mean(0)  # (B, K)
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)  # (B, K)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


@dataclass
class KDConfig(MethodConfig):
    """Defaults are RepDistiller / mdistiller's CIFAR-100 ones (CE 0.1 + KL 0.9, T 4).

    ``logit_standardization``: z-score each sample's logits before the softmax (:func:`standardize_logits`);
    ``temperature`` is then the paper's base temperature (its CIFAR-100 runs: T 2, kd_weight 9, ce_weight 0.1)."""

    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    logit_standardization: bool = False

    def problems(self) -> list[str]:
        found = super().problems()
        if not any((self.ce_weight, self.kd_weight)):
            found.append("ce_weight and kd_weight are all 0: the student would learn nothing")
        return found


@register_method("kd")
class KD(Method[KDConfig]):
    """``ce_weight * CE(student, labels) + kd_weight * T^2 * KL(teacher_T || student_T)``."""

    # several teachers: distil from their probabilities averaged at T (AVEG)
    traits = MethodTraits(kind="response", max_teachers=None, teacher_logits_only=True, partial_labels=True)

    def resolve_traits(self) -> MethodTraits:
        return self.refined_traits(teacher_logits_only=len(self.teachers) == 1)  # the cache holds one set of logits

    def training_step(self, batch: Batch) -> StepOutput:
        student_logits = self.student(batch.inputs)  # (B, K)
        temperature, standardize = self.config.temperature, self.config.logit_standardization
        distilled = standardize_logits(student_logits.float()) if standardize else student_logits
        if len(self.teachers) == 1:
            teacher_logits = self.teacher_logits(batch)
            teacher_logits = standardize_logits(teacher_logits) if standardize else teacher_logits
            distillation = kd_loss(distilled, teacher_logits, temperature)
        else:
            with torch.no_grad():
                all_logits = [teacher(batch.inputs).float() for teacher in self.teachers]  # each (B, K)
            all_logits = [standardize_logits(z) for z in all_logits] if standardize else all_logits
            distillation = ensemble_kd_loss(distilled, all_logits, temperature)
        losses = {"kd": self.config.kd_weight * distillation}
        if self.config.ce_weight:
            losses["ce"] = self.config.ce_weight * cross_entropy_loss(student_logits, batch.targets)
        return StepOutput(logits=student_logits, losses=losses)
