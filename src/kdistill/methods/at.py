"""Attention transfer: match the normalised spatial attention maps of paired stages."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

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


def attention_map(feature_map: Tensor, p: float = 2.0) -> Tensor:
    """(B, C, H, W) -> (B, H*W): mean over channels of f^p, L2-normalised per sample (RepDistiller)."""
    return F.normalize(feature_map.pow(p).mean(1).flatten(1), dim=1)


def at_loss(student_map: Tensor, teacher_map: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis, "Paying More Attention to Attention" (arXiv:1612.03928).

    With a(f) = vec(mean_c f^p) / ||vec(mean_c f^p)||_2 (maps pooled to the smaller spatial size first),
    loss = mean over (B, H*W) of (a(f_s) - a(f_t))^2 (RepDistiller's form: the squared difference
    averaged, weight 1000 in the CIFAR-100 scripts).
    """
    student_map, teacher_map = align_spatial(student_map, teacher_map)
    return (attention_map(student_map, p) - attention_map(teacher_map, p)).pow(2).mean()


@dataclass
class ATConfig(FeatureDistillConfig):
    """SimKD's run_distill.sh: -c 1 -d 1 -b 1000; p = 2; every stage pair (RepDistiller feat[1:-1])."""

    weight: float = 1000.0
    p: float = 2.0

    RANGES = {"p": (1e-6, None)}


@register_method("at")
class AT(FeatureMethod[ATConfig]):
    """Attention transfer: the students' spatial attention maps match the teacher's; :func:`at_loss` summed over
    all stage pairs (paired by :func:`match_stages`)."""

    def __init__(self, student, teachers, config: ATConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        student_shapes, teacher_shapes = self.stage_shapes()
        self.pairs = match_stages(len(student_shapes), len(teacher_shapes))

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        pair_loss = partial(at_loss, p=self.config.p)
        losses["at"] = self.config.weight * summed_stage_loss(pair_loss, student_features, teacher_features, self.pairs)
        return StepOutput(logits=student_features.logits, losses=losses)
