"""Correlation congruence: learned linear embeddings of student and teacher, whose differences on consecutive
samples of the batch are penalised together (the authors' code as shipped in RepDistiller)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.methods.base import MethodTraits, register_method
from kdistill.methods.feature_utils import FeatureDistillConfig, FeatureMethod


def cc_loss(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """Peng et al., "Correlation Congruence for Knowledge Distillation" (ICCV 2019, arXiv:1904.01802), in the form
    of the authors' code as given to and shipped by HobbitLong/RepDistiller ``distiller_zoo/CC.py``.

    With delta_i = |e^s_i - e^t_i| (B, D) for the batch's embeddings in sample order,
    loss = (1 / (B - 1)) sum_{i=1}^{B-1} sum_d delta_{i,d} delta_{i+1,d}.
    (The paper writes ||C_t - C_s||^2 / B^2 over kernel correlation matrices; the code behind its published numbers,
    which we follow, is the product of neighbouring samples' absolute differences above.)
    """
    delta = (student_embedding - teacher_embedding).abs()  # (B, D)
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


@dataclass
class CCConfig(FeatureDistillConfig):
    """RepDistiller's scripts/run_cifar_distill.sh: ``--distill correlation -a 0 -b 0.02`` with ``--feat_dim 128``:
    CE 1, KD 0, weight 0.02, linear embeddings of the pooled features (feat[-1]) to 128 dimensions, both learned.
    KD is 0 here, not the SimKD-based 1 of sp/vid: SimKD's run_distill.sh has no CC run, and the published number
    (CRD Table 1) comes from RepDistiller's ``-a 0``."""

    kd_weight: float = 0.0
    weight: float = 0.02
    embedding_dim: int = 128

    RANGES = {"embedding_dim": (1, None)}


@register_method("cc")
class CC(FeatureMethod[CCConfig]):
    """Correlation congruence: learned linear embeddings of the student's and the teacher's pooled features, whose
    differences on neighbouring samples of the batch are driven to zero together."""

    traits = MethodTraits(kind="relation")

    def __init__(self, student, teachers, config: CCConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        student_shapes, teacher_shapes = self.model_shapes()
        if 0 < info.batch_size < 2:  # 0: unknown
            raise ConfigError("method 'cc' compares neighbouring samples of a batch: data.batch_size must be >= 2")
        self.student_embed = nn.Linear(student_shapes.embedding_dim, config.embedding_dim)
        self.teacher_embed = nn.Linear(teacher_shapes.embedding_dim, config.embedding_dim)

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        student = self.student_embed(student_features.embedding.float())  # (B, embedding_dim)
        teacher = self.teacher_embed(teacher_features.embedding.float())  # (B, embedding_dim): learned, teacher frozen
        losses["cc"] = self.config.weight * cc_loss(student, teacher)
        return StepOutput(logits=student_features.logits, losses=losses)
