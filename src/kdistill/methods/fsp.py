"""Flow of solution procedure: the student's Gram matrices between consecutive stages match the teacher's, in an
initialisation phase before label training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.methods.base import MethodTraits, register_method
from kdistill.methods.feature_utils import InitPhaseConfig, InitPhaseMethod, align_spatial, match_stages


def fsp_matrix(lower_map: Tensor, upper_map: Tensor) -> Tensor:
    """(B, C_1, H_1, W_1), (B, C_2, H_2, W_2) -> (B, C_1, C_2): G_ij = mean over positions of lower_i * upper_j, the
    larger map pooled (adaptive average) to the smaller one's size first."""
    lower_map, upper_map = align_spatial(lower_map, upper_map)
    lower, upper = lower_map.flatten(2), upper_map.flatten(2)  # (B, C_1, N), (B, C_2, N)
    return lower @ upper.transpose(1, 2) / lower.shape[2]


def fsp_loss(student_stages: list[Tensor], teacher_stages: list[Tensor]) -> Tensor:
    """Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer
    Learning" (CVPR 2017), Eq. 2 with equal pair weights.

    For consecutive stages (k, k+1): G_k = fsp_matrix(f_k, f_{k+1}) (B, C_k, C_{k+1});
    loss = sum_k mean over (B, C_k, C_{k+1}) of (G^s_k - G^t_k)^2 (equal channel counts stage by stage).
    Checked against HobbitLong/RepDistiller ``distiller_zoo/FSP.py`` (its Gram matrices are our transposes). It
    also relates the stem's output to the first stage (feat[0] -> feat[1]); our taps start at the first stage, so
    that pair is left out.
    """
    terms = [
        (fsp_matrix(s_low, s_up) - fsp_matrix(t_low, t_up).detach()).pow(2).mean()
        for s_low, s_up, t_low, t_up in zip(student_stages, student_stages[1:], teacher_stages, teacher_stages[1:])
    ]
    return torch.stack(terms).sum()


@dataclass
class FSPConfig(InitPhaseConfig):
    """RepDistiller's scripts/run_cifar_distill.sh: ``--distill fsp -a 0 -b 50`` with ``--init_epochs 30``: CE 1,
    KD 0. KD is 0 here, not the SimKD-based 1 of sp/vid: SimKD's run_distill.sh has no FSP run, and the published
    number (CRD Table 1) comes from ``-a 0``.

    FSP is an initialisation method: the first ``init_epochs`` epochs return only ``weight`` x the FSP loss (training
    the student's stages); then the student learns from CE (+ KD) only, as RepDistiller's train_distill sets the FSP
    term to 0 there. So RepDistiller's ``-b 50`` never acts, and its init sums the FSP losses unweighted: ``weight``
    1 here reproduces that. The configs add the 30 epochs in front of the usual 240."""

    kd_weight: float = 0.0
    weight: float = 1.0


@register_method("fsp")
class FSP(InitPhaseMethod[FSPConfig]):
    """Flow of solution procedure: for ``init_epochs`` epochs the student's stage-to-stage Gram (FSP) matrices learn
    the teacher's; then label training. Stages paired by :func:`match_stages`; where a student stage has other channel
    counts than the teacher's, a learned 1x1 conv (no bias) maps it to the teacher's first (RepDistiller refuses such
    pairs: wrn_40_2 -> wrn_40_1 is N/A in CRD Table 1); with equal channels the stage is used as it is."""

    traits = MethodTraits(kind="relation", unused_parameters=True)  # phases train different parts

    def __init__(self, student, teachers, config: FSPConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        student_shapes, teacher_shapes = self.stage_shapes()
        self.pairs = match_stages(len(student_shapes), len(teacher_shapes))
        if len(self.pairs) < 2:
            raise ConfigError("method 'fsp' relates consecutive stages: student and teacher need at least two stages")
        self.projections = nn.ModuleList(
            nn.Identity()
            if student_shapes[i][0] == teacher_shapes[j][0]
            else nn.Conv2d(student_shapes[i][0], teacher_shapes[j][0], kernel_size=1, bias=False)
            for i, j in self.pairs
        )

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        if not self.in_init_phase():
            losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
            return StepOutput(logits=student_features.logits, losses=losses)
        student_stages = [
            projection(student_features.stages[i].float()) for projection, (i, _) in zip(self.projections, self.pairs)
        ]  # (B, C_t, H_s, W_s) each
        teacher_stages = [teacher_features.stages[j].float() for _, j in self.pairs]
        loss = self.config.weight * fsp_loss(student_stages, teacher_stages)
        return StepOutput(logits=student_features.logits, losses={"fsp": loss})
