"""Activation boundaries: the student's stage outputs (through connectors) learn on which side of zero the
teacher's neurons are, in an initialisation phase before label training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdistill.contracts import Batch, DataInfo, StepOutput
from kdistill.methods.base import MethodTraits, register_method
from kdistill.methods.feature_utils import InitPhaseConfig, InitPhaseMethod, align_spatial, match_stages


def boundary_loss(student_map: Tensor, teacher_map: Tensor, margin: float = 1.0) -> Tensor:
    """Sum over all elements of the alternative (squared hinge) boundary loss of one stage:
    (s + m)^2 where s > -m and t <= 0, plus (s - m)^2 where s <= m and t > 0."""
    teacher_active = teacher_map > 0
    inactive_term = (student_map + margin).pow(2) * ((student_map > -margin) & ~teacher_active)
    active_term = (student_map - margin).pow(2) * ((student_map <= margin) & teacher_active)
    return (inactive_term + active_term).sum()


def ab_loss(student_maps: list[Tensor], teacher_maps: list[Tensor], margin: float = 1.0) -> Tensor:
    """Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons"
    (arXiv:1811.03233), Eq. 5 (the alternative loss with margin m).

    For stage i of n (shallow to deep), with r_i the connector's output for the student (B, C, H, W) and t_i the
    teacher's map, loss = (3 / 1000) (1 / B) sum_i 2^(i - n + 1) sum_elements [(r + m)^2 1(r > -m, t <= 0)
    + (r - m)^2 1(r <= m, t > 0)] (i from 0: the deepest stage weighs 1, each shallower one half of the next).
    Checked against HobbitLong/RepDistiller ``distiller_zoo/AB.py`` (its weights and its 3/1000 scale).
    """
    count, batch_size = len(student_maps), student_maps[0].shape[0]
    terms = [
        2.0 ** (i - count + 1) * boundary_loss(student, teacher, margin)
        for i, (student, teacher) in enumerate(zip(student_maps, teacher_maps))
    ]
    return torch.stack(terms).sum() / batch_size * 3 / 1000


class Connector(nn.Module):
    """1x1 conv (C_s -> C_t) + BN, applied after pooling the larger map to the smaller size (RepDistiller's ConvReg
    without ReLU, which is a 1x1 conv for equal sizes).

    Departure: RepDistiller taps pre-activation stage outputs (``preact=True``) and uses no connector where the
    shapes match (resnet32x4 -> resnet8x4). Our taps are the stage outputs as the models give them: after the ReLU
    for post-activation ResNets (the teacher's sign pattern t > 0 is the same as before it; an identity connector on
    the student's would never go below zero, so a connector is always used) and before the next BN for the
    pre-activation WRNs (whose boundaries RepDistiller takes after that BN)."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(teacher_channels)

    def forward(self, student_map: Tensor, teacher_map: Tensor) -> tuple[Tensor, Tensor]:
        student_map, teacher_map = align_spatial(student_map, teacher_map)
        return self.bn(self.conv(student_map)), teacher_map  # (B, C_t, H, W) each


@dataclass
class ABConfig(InitPhaseConfig):
    """RepDistiller's scripts/run_cifar_distill.sh: ``--distill abound -a 0 -b 1`` with ``--init_epochs 30``: CE 1,
    KD 0, margin 1, every stage pair (feat[1:-1]). KD is 0 here, not the SimKD-based 1 of sp/vid: SimKD's
    run_distill.sh has no AB run, and the published number (CRD Table 1) comes from ``-a 0``.

    AB is an initialisation method: the first ``init_epochs`` epochs return only ``weight`` x the AB loss (training
    the student's stages and the connectors; RepDistiller sums it unweighted: weight 1); after them the student learns
    from CE (+ KD) only, the connectors dropped, as RepDistiller's train_distill sets the AB term to 0. The configs add
    the 30 epochs in front of the usual 240."""

    kd_weight: float = 0.0
    weight: float = 1.0
    margin: float = 1.0

    RANGES = {**InitPhaseConfig.RANGES, "margin": (0.0, None)}


@register_method("ab")
class AB(InitPhaseMethod[ABConfig]):
    """Activation-boundary transfer: for ``init_epochs`` epochs the student's stage outputs, through 1x1 connectors,
    learn the teacher's neuron activation patterns (which side of zero, with a margin); then label training."""

    # the connectors train during the initialisation phase, the student's classifier only after it
    traits = MethodTraits(kind="feature", unused_parameters=True)

    def __init__(self, student, teachers, config: ABConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        student_shapes, teacher_shapes = self.stage_shapes()
        self.pairs = match_stages(len(student_shapes), len(teacher_shapes))
        self.connectors = nn.ModuleList(Connector(student_shapes[i][0], teacher_shapes[j][0]) for i, j in self.pairs)

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        if not self.in_init_phase():
            losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
            return StepOutput(logits=student_features.logits, losses=losses)
        connected = [
            connector(student_features.stages[i].float(), teacher_features.stages[j].float())
            for connector, (i, j) in zip(self.connectors, self.pairs)
        ]
        student_maps, teacher_maps = [pair[0] for pair in connected], [pair[1] for pair in connected]
        loss = self.config.weight * ab_loss(student_maps, teacher_maps, self.config.margin)
        return StepOutput(logits=student_features.logits, losses={"ab": loss})
