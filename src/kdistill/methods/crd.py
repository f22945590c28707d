"""Contrastive representation distillation with a memory bank of embeddings indexed by sample."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.methods.base import register_method
from kdistill.methods.feature_utils import FeatureDistillConfig, FeatureMethod

EPS = 1e-7


def nce_loss(scores: Tensor, num_data: int) -> Tensor:
    """Tian, Krishnan, Isola, "Contrastive Representation Distillation" (arXiv:1910.10699), Eq. 18 as in
    RepDistiller's ``ContrastLoss``.

    ``scores`` (B, 1 + K): column 0 the positive pair, the rest K negatives, each an unnormalised
    probability exp(v.w / tau) / Z. With the noise probability P_n = 1 / N (N = ``num_data``):
    loss = -(1/B) sum_b [log(s_pos / (s_pos + K P_n + eps)) + sum_k log(K P_n / (s_k + K P_n + eps))].
    """
    batch_size, num_negatives = scores.shape[0], scores.shape[1] - 1
    noise = num_negatives / float(num_data)
    positive = scores[:, 0]
    log_d1 = torch.log(positive / (positive + noise + EPS))
    log_d0 = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / batch_size


class Embed(nn.Module):
    """Linear -> L2 normalisation (CRD's embedding head)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


class ContrastMemory(nn.Module):
    """Two memory banks (N, D) of student and teacher embeddings, updated with momentum at the batch's
    sample indices; the NCE normalisers Z are set from the first batch (as RepDistiller) and stored as
    buffers, so the whole state is checkpointed."""

    # buffers (register_buffer in __init__)
    memory_student: Tensor  # (N, D)
    memory_teacher: Tensor  # (N, D)
    labels: Tensor  # (N,) int64, -1 = not seen yet
    z_student: Tensor  # () the NCE normaliser, -1 until the first batch
    z_teacher: Tensor

    def __init__(self, dim: int, num_data: int, num_negatives: int, temperature: float, momentum: float) -> None:
        super().__init__()
        self.num_data, self.num_negatives = num_data, num_negatives
        self.temperature, self.momentum = temperature, momentum
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_student", torch.rand(num_data, dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("memory_teacher", torch.rand(num_data, dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("labels", torch.full((num_data,), -1, dtype=torch.int64))  # -1 = not seen yet
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))

    def sample_indices(self, indices: Tensor, targets: Tensor, other_class: bool, rounds: int = 4) -> Tensor:
        """(B, 1 + K): column 0 the samples themselves, then K uniformly drawn negatives. With
        ``other_class`` negatives that are known to share the anchor's label are redrawn (up to ``rounds``
        times): an on-line version of RepDistiller's 'exact' mode, which draws them from other classes."""
        batch_size = indices.shape[0]
        negatives = torch.randint(0, self.num_data, (batch_size, self.num_negatives), device=indices.device)
        if other_class:
            for _ in range(rounds):
                same = self.labels[negatives] == targets[:, None]  # (B, K)
                negatives = torch.where(same, torch.randint_like(negatives, 0, self.num_data), negatives)
        return torch.cat([indices[:, None], negatives], dim=1)

    def forward(
        self, student_embed: Tensor, teacher_embed: Tensor, indices: Tensor, targets: Tensor, other_class: bool
    ) -> tuple[Tensor, Tensor]:
        """Scores of the student anchor against teacher memories and vice versa, each (B, 1 + K)."""
        batch_size, dim = student_embed.shape
        with torch.no_grad():
            self.labels[indices] = targets
        sample = self.sample_indices(indices, targets, other_class)  # (B, 1 + K)
        teacher_weights = self.memory_teacher[sample.flatten()].view(batch_size, -1, dim).detach()
        student_weights = self.memory_student[sample.flatten()].view(batch_size, -1, dim).detach()
        scores_student = torch.exp(torch.bmm(teacher_weights, student_embed[:, :, None]).squeeze(2) / self.temperature)
        scores_teacher = torch.exp(torch.bmm(student_weights, teacher_embed[:, :, None]).squeeze(2) / self.temperature)
        with torch.no_grad():
            if self.z_student < 0:
                self.z_student.fill_(scores_student.mean().item() * self.num_data)
            if self.z_teacher < 0:
                self.z_teacher.fill_(scores_teacher.mean().item() * self.num_data)
        scores_student = scores_student / self.z_student
        scores_teacher = scores_teacher / self.z_teacher
        with torch.no_grad():
            for memory, embed in ((self.memory_student, student_embed), (self.memory_teacher, teacher_embed)):
                updated = memory[indices] * self.momentum + embed.detach() * (1 - self.momentum)
                memory[indices] = F.normalize(updated, dim=1)
        return scores_student, scores_teacher


@dataclass
class CRDConfig(FeatureDistillConfig):
    """SimKD's run_distill.sh: -c 1 -d 1 -b 0.8 (RepDistiller's CRD runs: kd_weight 0); embed dim 128,
    16384 negatives, NCE temperature 0.07, memory momentum 0.5, on the pooled embeddings."""

    weight: float = 0.8
    embed_dim: int = 128
    num_negatives: int = 16384
    nce_temperature: float = 0.07
    momentum: float = 0.5
    negatives_from_other_classes: bool = True

    RANGES = {"embed_dim": (1, None), "num_negatives": (1, None), "momentum": (0.0, 1.0)}


@register_method("crd")
class CRD(FeatureMethod[CRDConfig]):
    """Contrastive representation distillation: student and teacher embeddings of the same sample are pulled
    together against negatives from a memory bank (needs ``batch.indices``, stable across epochs)."""

    def __init__(self, student, teachers, config: CRDConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        if info.num_train < 2:
            raise ConfigError("crd needs the training-set size (info.num_train) for its memory bank")
        student_shapes, teacher_shapes = self.model_shapes()
        self.embed_student = Embed(student_shapes.embedding_dim, config.embed_dim)
        self.embed_teacher = Embed(teacher_shapes.embedding_dim, config.embed_dim)
        self.memory = ContrastMemory(
            config.embed_dim, info.num_train, config.num_negatives, config.nce_temperature, config.momentum
        )

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        student_embed = self.embed_student(student_features.embedding.float())  # (B, D)
        teacher_embed = self.embed_teacher(teacher_features.embedding.float())  # (B, D)
        scores_student, scores_teacher = self.memory(
            student_embed, teacher_embed, batch.indices, batch.targets, self.config.negatives_from_other_classes
        )
        contrast = nce_loss(scores_student, self.info.num_train) + nce_loss(scores_teacher, self.info.num_train)
        losses["crd"] = self.config.weight * contrast
        return StepOutput(logits=student_features.logits, losses=losses)
