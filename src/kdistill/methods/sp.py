"""Similarity-preserving KD: match the batch's normalised pairwise-similarity (Gram) matrices."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdistill.contracts import Batch, StepOutput
from kdistill.methods.base import MethodTraits, register_method
from kdistill.methods.feature_utils import FeatureDistillConfig, FeatureMethod


def sp_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Tung & Mori, "Similarity-Preserving Knowledge Distillation" (arXiv:1907.09682).

    G = F F^T with F the (B, D) flattened features, each row L2-normalised;
    loss = ||G_t - G_s||_F^2 / B^2. Channel counts and spatial sizes may differ freely.
    """
    batch_size = student_features.shape[0]
    student_flat, teacher_flat = student_features.flatten(1), teacher_features.flatten(1)  # (B, D_s), (B, D_t)
    gram_student = F.normalize(student_flat @ student_flat.t(), dim=1)  # (B, B)
    gram_teacher = F.normalize(teacher_flat @ teacher_flat.t(), dim=1)  # (B, B)
    return (gram_teacher - gram_student).pow(2).sum() / (batch_size * batch_size)


@dataclass
class SPConfig(FeatureDistillConfig):
    """SimKD's run_distill.sh: -c 1 -d 1 -b 3000; on the last stage (RepDistiller feat[-2])."""

    weight: float = 3000.0


@register_method("sp")
class SP(FeatureMethod[SPConfig]):
    """Similarity-preserving KD: the student's (B, B) sample-similarity matrix of the last stage matches the
    teacher's."""

    traits = MethodTraits(kind="relation")

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        losses["sp"] = self.config.weight * sp_loss(
            student_features.final_map.float(), teacher_features.final_map.float()
        )
        return StepOutput(logits=student_features.logits, losses=losses)
