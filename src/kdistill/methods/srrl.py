"""SRRL: regress the teacher's penultimate feature and pass the student's through the teacher's classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.contracts import Batch, DataInfo, StepOutput
from kdistill.methods.base import register_method
from kdistill.methods.feature_utils import FeatureDistillConfig, FeatureMethod, embedding_classifier


def srrl_loss(
    transferred_student: Tensor, teacher_embedding: Tensor, student_through_teacher_head: Tensor, teacher_logits: Tensor
) -> Tensor:
    """Yang et al., "Knowledge Distillation via Softmax Regression Representation Learning" (ICLR 2021).

    loss = MSE(h(f_s), f_t) + MSE(W_t h(f_s), W_t f_t) with h the transfer layer (1x1 conv + BN + ReLU
    on the pooled student feature) and W_t the frozen teacher classifier; both MSEs are means
    (DefangChen/SimKD's ``nn.MSELoss()`` on the feature and on the logits).
    """
    return F.mse_loss(transferred_student, teacher_embedding) + F.mse_loss(student_through_teacher_head, teacher_logits)


@dataclass
class SRRLConfig(FeatureDistillConfig):
    """SimKD's run_distill.sh: -c 1 -d 1 -b 1."""

    weight: float = 1.0


@register_method("srrl")
class SRRL(FeatureMethod[SRRLConfig]):
    """Softmax regression representation learning: the student embedding, mapped to the teacher's, matches it and
    gives the teacher's logits through the teacher's classifier."""

    def __init__(self, student, teachers, config: SRRLConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        student_shapes, teacher_shapes = self.model_shapes()
        student_dim, teacher_dim = student_shapes.embedding_dim, teacher_shapes.embedding_dim
        self.transfer = nn.Sequential(
            nn.Conv2d(student_dim, teacher_dim, 1, bias=False), nn.BatchNorm2d(teacher_dim), nn.ReLU(inplace=True)
        )
        self._teacher_fc = [embedding_classifier(self.teacher)]  # a list: not registered twice as a submodule

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        transferred = self.transfer(student_features.embedding[:, :, None, None]).flatten(1)  # (B, D_t)
        through_teacher = self._teacher_fc[0](transferred)  # (B, K); teacher weights frozen, gradient reaches h
        losses["srrl"] = self.config.weight * srrl_loss(
            transferred.float(),
            teacher_features.embedding.float(),
            through_teacher.float(),
            teacher_features.logits.float(),
        )
        return StepOutput(logits=student_features.logits, losses=losses)
