"""Neuron selectivity transfer: match the distributions of the channels' spatial activation patterns (MMD)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdistill.contracts import Batch, DataInfo, StepOutput
from kdistill.methods.base import register_method
from kdistill.methods.feature_utils import (
    FeatureDistillConfig,
    FeatureMethod,
    align_spatial,
    match_stages,
    summed_stage_loss,
)


def polynomial_kernel_mean(first: Tensor, second: Tensor) -> Tensor:
    """Mean over (B, C_1, C_2) of k(f_i, g_j) = (f_i . g_j)^2 (degree 2, c = 0) for (B, C_1, N) and (B, C_2, N)."""
    return (first @ second.transpose(1, 2)).pow(2).mean()  # (B, C_1, C_2) -> scalar


def nst_loss(student_map: Tensor, teacher_map: Tensor) -> Tensor:
    """Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (arXiv:1707.01219).

    Each channel's spatial map, flattened and L2-normalised, is one sample f_i (student) / g_j (teacher); with the
    polynomial kernel k(x, y) = (x . y)^2, the squared MMD
    loss = mean_{j,j'} k(g_j, g_j') + mean_{i,i'} k(f_i, f_i') - 2 mean_{i,j} k(f_i, g_j),
    averaged over the batch too; maps are pooled to the smaller spatial size first.
    Checked against HobbitLong/RepDistiller ``distiller_zoo/NST.py`` (its full_loss form).
    """
    student_map, teacher_map = align_spatial(student_map, teacher_map)
    student = F.normalize(student_map.flatten(2), dim=2)  # (B, C_s, H*W)
    teacher = F.normalize(teacher_map.flatten(2), dim=2).detach()  # (B, C_t, H*W)
    return (
        polynomial_kernel_mean(teacher, teacher)
        + polynomial_kernel_mean(student, student)
        - 2 * polynomial_kernel_mean(student, teacher)
    )


@dataclass
class NSTConfig(FeatureDistillConfig):
    """RepDistiller's scripts/run_cifar_distill.sh: ``--distill nst -a 0 -b 50``: CE 1, KD 0, weight 50, summed over
    every stage pair (feat[1:-1]). KD is 0 here, not the SimKD-based 1 of sp/vid: SimKD's run_distill.sh has no NST
    run, and the published number (CRD Table 1) comes from RepDistiller's ``-a 0``."""

    kd_weight: float = 0.0
    weight: float = 50.0


@register_method("nst")
class NST(FeatureMethod[NSTConfig]):
    """Neuron selectivity transfer: per stage pair, the student's channel activation patterns match the teacher's in
    distribution (polynomial-kernel MMD)."""

    def __init__(self, student, teachers, config: NSTConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        student_shapes, teacher_shapes = self.stage_shapes()
        self.pairs = match_stages(len(student_shapes), len(teacher_shapes))

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        losses["nst"] = self.config.weight * summed_stage_loss(nst_loss, student_features, teacher_features, self.pairs)
        return StepOutput(logits=student_features.logits, losses=losses)
