"""Decoupled knowledge distillation: target-class (TCKD) and non-target-class (NCKD) KL terms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, StepOutput
from kdistill.methods.base import Method, MethodTraits, register_method
from kdistill.methods.ce import cross_entropy_loss
from kdistill.methods.kd import standardize_logits


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Zhao et al., "Decoupled Knowledge Distillation" (arXiv:2203.08679), mdistiller's ``dkd_loss``.

    With p = softmax(z / T): b = (p_target, sum of the other p) the binary target/non-target split and
    p_hat = softmax over the non-target classes only;
    TCKD = T^2 KL(b_t || b_s), NCKD = T^2 KL(p_hat_t || p_hat_s), each averaged over the batch.
    Per sample, T^2 KL(p_t || p_s) = TCKD + (1 - p_t,target) NCKD (the paper's Eq. 3).
    """
    gt_mask = F.one_hot(targets, student_logits.shape[1]).bool()  # (B, K)
    p_student = F.softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    # Both parts are summed from p (as mdistiller's cat_mask), not 1 - p_target, which rounds to 0
    # (and gives an infinite log) when the target probability rounds to 1.
    binary_student = torch.cat(
        [(p_student * gt_mask).sum(1, keepdim=True), (p_student * ~gt_mask).sum(1, keepdim=True)], dim=1
    )  # (B, 2)
    binary_teacher = torch.cat(
        [(p_teacher * gt_mask).sum(1, keepdim=True), (p_teacher * ~gt_mask).sum(1, keepdim=True)], dim=1
    )
    batch_size = targets.shape[0]
    tckd = F.kl_div(torch.log(binary_student), binary_teacher, reduction="sum") * temperature**2 / batch_size
    # mdistiller removes the target class by subtracting 1000 from its scaled logit
    log_p_student_other = F.log_softmax(student_logits / temperature - 1000.0 * gt_mask, dim=1)
    p_teacher_other = F.softmax(teacher_logits / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_p_student_other, p_teacher_other, reduction="sum") * temperature**2 / batch_size
    return tckd, nckd


def dkd_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float, beta: float, temperature: float
) -> Tensor:
    """alpha * TCKD + beta * NCKD (see :func:`dkd_terms`)."""
    tckd, nckd = dkd_terms(student_logits, teacher_logits, targets, temperature)
    return alpha * tckd + beta * nckd


@dataclass
class DKDConfig(MethodConfig):
    """mdistiller's CIFAR-100 defaults: CE 1, alpha 1, beta 8 (2 for resnet56/110 teachers, 6 for VGG/WRN
    pairs), T 4, the DKD term ramped linearly over the first 20 epochs (factor min(epoch / 20, 1), epochs from 1).

    ``logit_standardization`` z-scores both logits first (:func:`kdistill.methods.kd.standardize_logits`);
    sunshangquan/logit-standardization-KD's ``tools/train.py`` then sets T to the base temperature 2 and multiplies
    alpha and beta by its kd weight (9 for resnet32x4 -> resnet8x4: alpha 9, beta 72)."""

    ce_weight: float = 1.0
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: int = 20
    logit_standardization: bool = False

    RANGES = {"alpha": (0.0, None), "beta": (0.0, None), "warmup_epochs": (0, None)}


@register_method("dkd")
class DKD(Method[DKDConfig]):
    """Decoupled KD: CE + alpha * target-class KD (TCKD) + beta * non-target-class KD (NCKD), ramped in."""

    traits = MethodTraits(kind="response", teacher_logits_only=True)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.warmup_factor = 1.0 / max(self.config.warmup_epochs, 1)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        warmup = self.config.warmup_epochs
        self.warmup_factor = 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)  # mdistiller's epoch is 1-based

    def training_step(self, batch: Batch) -> StepOutput:
        teacher_logits = self.teacher_logits(batch).float()  # (B, K), the teacher first (see kd)
        student_logits = self.student(batch.inputs)  # (B, K)
        distilled = student_logits.float()
        if self.config.logit_standardization:
            distilled, teacher_logits = standardize_logits(distilled), standardize_logits(teacher_logits)
        loss = dkd_loss(
            distilled,
            teacher_logits,
            batch.targets,
            self.config.alpha,
            self.config.beta,
            self.config.temperature,
        )
        losses = {"dkd": self.warmup_factor * loss}
        if self.config.ce_weight:
            losses["ce"] = self.config.ce_weight * cross_entropy_loss(student_logits, batch.targets)
        return StepOutput(logits=student_logits, losses=losses)
