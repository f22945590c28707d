"""DIST: match the teacher's inter-class (per sample) and intra-class (per class) relations by correlation."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, StepOutput
from kdistill.methods.base import Method, MethodTraits, register_method
from kdistill.methods.ce import cross_entropy_loss
from kdistill.methods.kd import standardize_logits


def pearson_correlation(first: Tensor, second: Tensor, epsilon: float = 1e-8) -> Tensor:
    """Row-wise Pearson correlation of two (N, M) tensors -> (N,): the cosine similarity of the rows after
    subtracting each row's mean, with ``epsilon`` added to the product of the norms (as the reference)."""
    first = first - first.mean(dim=1, keepdim=True)  # (N, M)
    second = second - second.mean(dim=1, keepdim=True)
    return (first * second).sum(1) / (first.norm(dim=1) * second.norm(dim=1) + epsilon)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022, arXiv:2205.10536).

    With Y = softmax(Z / T) row-wise for the (B, K) logits of student (s) and teacher (t) and
    rho the Pearson correlation (:func:`pearson_correlation`):
    inter = T^2 (1 - mean_i rho(Y_s[i, :], Y_t[i, :]))   (each sample's class distribution),
    intra = T^2 (1 - mean_j rho(Y_s[:, j], Y_t[:, j]))   (each class's distribution over the batch).
    Checked against hunto/image_classification_sota ``lib/models/losses/dist_kd.py`` (the loss DIST_KD's
    README points to): its ``DIST(beta, gamma, tau)`` gives beta * inter + gamma * intra, each scaled by tau^2.
    """
    p_student = F.softmax(student_logits / temperature, dim=1)  # (B, K)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)  # (B, K)
    inter = 1 - pearson_correlation(p_student, p_teacher).mean()
    intra = 1 - pearson_correlation(p_student.t(), p_teacher.t()).mean()  # rows are now classes: (K, B)
    return inter * temperature**2, intra * temperature**2


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, beta: float, gamma: float) -> Tensor:
    """beta * inter + gamma * intra (see :func:`dist_terms`)."""
    inter, intra = dist_terms(student_logits, teacher_logits, temperature)
    return beta * inter + gamma * intra


@dataclass
class DISTConfig(MethodConfig):
    """Defaults from DIST_KD's CIFAR-100 recipe (hunto/image_classification_sota
    ``configs/strategies/distill/dist_cifar.yaml``: ``kd: dist_t4``, ``ori_loss_weight: 1``, ``kd_loss_weight: 2``,
    and ``DIST(beta=1, gamma=1, tau=4)`` in ``lib/models/losses/kd_loss.py``). On ImageNet the reference uses T 1.

    ``logit_standardization`` z-scores both logits before the softmax (:func:`kdistill.methods.kd.standardize_logits`);
    this combination is not in either reference code (Sun et al. apply it to KD, DKD, CTKD and MLKD)."""

    temperature: float = 4.0
    ce_weight: float = 1.0
    dist_weight: float = 2.0
    beta: float = 1.0  # inter-class relation
    gamma: float = 1.0  # intra-class relation
    logit_standardization: bool = False

    RANGES = {"beta": (0.0, None), "gamma": (0.0, None)}

    def problems(self) -> list[str]:
        found = super().problems()
        if not any((self.ce_weight, self.dist_weight * self.beta, self.dist_weight * self.gamma)):
            found.append("ce_weight and dist_weight (or beta and gamma) are all 0: the student would learn nothing")
        return found


@register_method("dist")
class DIST(Method[DISTConfig]):
    """CE + dist_weight * (beta * inter-class + gamma * intra-class relation: 1 - Pearson correlation at T)."""

    traits = MethodTraits(kind="response", teacher_logits_only=True)

    def training_step(self, batch: Batch) -> StepOutput:
        config = self.config
        teacher_logits = self.teacher_logits(batch).float()  # (B, K), the teacher first (see kd)
        student_logits = self.student(batch.inputs)  # (B, K)
        distilled = student_logits.float()
        if config.logit_standardization:
            distilled, teacher_logits = standardize_logits(distilled), standardize_logits(teacher_logits)
        inter, intra = dist_terms(distilled, teacher_logits, config.temperature)
        losses = {
            "dist_inter": config.dist_weight * config.beta * inter,
            "dist_intra": config.dist_weight * config.gamma * intra,
        }
        if config.ce_weight:
            losses["ce"] = config.ce_weight * cross_entropy_loss(student_logits, batch.targets)
        return StepOutput(logits=student_logits, losses=losses)
