"""Relational KD: the student's pairwise distances and triplet angles of the batch's embeddings match the teacher's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.contracts import Batch, StepOutput
from kdistill.methods.base import MethodTraits, register_method
from kdistill.methods.feature_utils import FeatureDistillConfig, FeatureMethod


def pairwise_distances(points: Tensor, eps: float = 1e-12) -> Tensor:
    """(B, D) -> (B, B) Euclidean distances, the squared distance clamped at ``eps`` before the square root (a
    finite gradient for coincident points) and the diagonal set to 0."""
    squared_norms = points.pow(2).sum(dim=1)  # (B,)
    squared = (squared_norms[:, None] + squared_norms[None, :] - 2 * points @ points.t()).clamp(min=eps)
    off_diagonal = 1.0 - torch.eye(points.shape[0], device=points.device, dtype=points.dtype)
    return squared.sqrt() * off_diagonal


def normalised_distances(points: Tensor) -> Tensor:
    """Pairwise distances divided by their mean over the positive entries (mu in the paper)."""
    distances = pairwise_distances(points)  # (B, B)
    return distances / distances[distances > 0].mean()


def triplet_cosines(points: Tensor) -> Tensor:
    """(B, D) -> (B, B, B): entry (i, j, k) = cos of the angle at x_i between x_j and x_k, i.e. the inner product
    of the unit vectors (x_j - x_i)/||.|| and (x_k - x_i)/||.|| (0 where j = i or k = i)."""
    directions = F.normalize(points[None, :, :] - points[:, None, :], p=2, dim=2)  # (B, B, D): [i, j] = x_j - x_i
    return directions @ directions.transpose(1, 2)  # (B, B, B)


def rkd_distance_loss(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """Park et al., "Relational Knowledge Distillation" (arXiv:1904.05068), Eq. 6-7 (distance-wise term).

    psi_D(t_i, t_j) = ||t_i - t_j||_2 / mu, mu = the mean distance over the batch's pairs;
    loss = mean over (i, j) in B x B of Huber(psi_D(s_i, s_j) - psi_D(t_i, t_j)) (smooth L1, delta 1).
    Checked against HobbitLong/RepDistiller ``distiller_zoo/RKD.py`` (teacher side without gradient).
    """
    student = student_embedding.flatten(1)  # (B, D_s)
    with torch.no_grad():
        teacher = normalised_distances(teacher_embedding.flatten(1))  # (B, B)
    return F.smooth_l1_loss(normalised_distances(student), teacher)


def rkd_angle_loss(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """Park et al., "Relational Knowledge Distillation" (arXiv:1904.05068), Eq. 8-9 (angle-wise term).

    psi_A(t_i, t_j, t_k) = <e_ij, e_ik>, e_ij = (t_j - t_i) / ||t_j - t_i||_2;
    loss = mean over all (i, j, k) in B x B x B of Huber(psi_A(s) - psi_A(t)) (smooth L1, delta 1).
    Checked against HobbitLong/RepDistiller ``distiller_zoo/RKD.py``.
    """
    student = student_embedding.flatten(1)  # (B, D_s)
    with torch.no_grad():
        teacher = triplet_cosines(teacher_embedding.flatten(1))  # (B, B, B)
    return F.smooth_l1_loss(triplet_cosines(student), teacher)


@dataclass
class RKDConfig(FeatureDistillConfig):
    """RepDistiller's scripts/run_cifar_distill.sh: ``--distill rkd -a 0 -b 1`` with RKDLoss(w_d=25, w_a=50): CE 1,
    KD 0, on the pooled embedding (feat[-1]). KD is 0 here, not the SimKD-based 1 of sp/vid: SimKD's run_distill.sh
    has no RKD run, and the published number (CRD Table 1) comes from RepDistiller's ``-a 0``."""

    kd_weight: float = 0.0
    weight: float = 1.0  # RepDistiller -b: multiplies both terms
    distance_weight: float = 25.0
    angle_weight: float = 50.0

    RANGES = {"distance_weight": (0.0, None), "angle_weight": (0.0, None)}


@register_method("rkd")
class RKD(FeatureMethod[RKDConfig]):
    """Relational KD: the student's normalised pairwise distances and triplet angles between the batch's pooled
    embeddings match the teacher's (distance and angle terms logged apart)."""

    traits = MethodTraits(kind="relation")

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        student, teacher = student_features.embedding.float(), teacher_features.embedding.float()
        scale = self.config.weight
        if self.config.distance_weight:
            losses["rkd_distance"] = scale * self.config.distance_weight * rkd_distance_loss(student, teacher)
        if self.config.angle_weight:
            losses["rkd_angle"] = scale * self.config.angle_weight * rkd_angle_loss(student, teacher)
        return StepOutput(logits=student_features.logits, losses=losses)
