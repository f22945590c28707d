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


def hard_label_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Cross-entropy with the teacher's predicted class as the label, averaged over the batch: pseudo-labelling
    (Lee, ICML 2013 workshop) and the hard-label distillation of DeiT (Touvron et al., arXiv:2012.12877, eq. 3).
    Ties go to the lowest class index (``argmax``)."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))


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
    ``temperature`` is then the paper's base temperature (its CIFAR-100 runs: T 2, kd_weight 9, ce_weight 0.1).
    ``hard_labels``: distil the teacher's argmax instead of its softened distribution, ``kd_weight * CE(student,
    argmax teacher)`` (:func:`hard_label_loss`: pseudo-labelling; DeiT's hard-label distillation); no temperature."""

    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    logit_standardization: bool = False
    hard_labels: bool = False

    def problems(self) -> list[str]:
        found = super().problems()
        if not any((self.ce_weight, self.kd_weight)):
            found.append("ce_weight and kd_weight are all 0: the student would learn nothing")
        if self.hard_labels and self.logit_standardization:
            found.append("hard_labels and logit_standardization: the argmax ignores standardisation; choose one")
        return found


@register_method("kd")
class KD(Method[KDConfig]):
    """``ce_weight * CE(student, labels) + kd_weight * T^2 * KL(teacher_T || student_T)`` (with ``hard_labels``:
    ``kd_weight * CE(student, argmax teacher)`` in place of the KL)."""

    # several teachers: distil from their probabilities averaged at T (AVEG)
    traits = MethodTraits(kind="response", max_teachers=None, teacher_logits_only=True, partial_labels=True)

    def resolve_traits(self) -> MethodTraits:
        return self.refined_traits(teacher_logits_only=len(self.teachers) == 1)  # the cache holds one set of logits

    def each_teacher_logits(self, batch: Batch) -> list[Tensor]:
        """Each teacher's logits (B, K), standardised when asked; one teacher's through ``teacher_logits`` (live or
        cached)."""
        if len(self.teachers) == 1:
            logits = [self.teacher_logits(batch)]
        else:
            with torch.no_grad():
                logits = [teacher(batch.inputs).float() for teacher in self.teachers]
        return [standardize_logits(z) for z in logits] if self.config.logit_standardization else logits

    def training_step(self, batch: Batch) -> StepOutput:
        # the teachers run first (here and in the other methods): their activations are freed before the student's,
        # which backward keeps, are allocated (4% off a resnet32x4 -> resnet8x4 CPU step, docs/speed.md)
        teacher_logits = self.each_teacher_logits(batch)  # each (B, K)
        student_logits = self.student(batch.inputs)  # (B, K)
        distilled = standardize_logits(student_logits.float()) if self.config.logit_standardization else student_logits
        temperature = self.config.temperature
        if self.config.hard_labels:  # several teachers: the argmax of their mean probabilities
            probabilities = torch.stack([F.softmax(logits, dim=1) for logits in teacher_logits]).mean(0)  # (B, K)
            distillation = hard_label_loss(student_logits, probabilities)
        elif len(teacher_logits) == 1:
            distillation = kd_loss(distilled, teacher_logits[0], temperature)
        else:
            distillation = ensemble_kd_loss(distilled, teacher_logits, temperature)
        losses = {"kd": self.config.kd_weight * distillation}
        if self.config.ce_weight:
            losses["ce"] = self.config.ce_weight * cross_entropy_loss(student_logits, batch.targets)
        return StepOutput(logits=student_logits, losses=losses)
