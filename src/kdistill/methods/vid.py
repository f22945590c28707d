"""Variational information distillation: a Gaussian with learned mean (regressor) and variance per teacher channel."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.contracts import Batch, DataInfo, StepOutput
from kdistill.methods.base import register_method
from kdistill.methods.feature_utils import FeatureDistillConfig, FeatureMethod, align_spatial, match_stages


def vid_loss(predicted_mean: Tensor, teacher_map: Tensor, variance: Tensor) -> Tensor:
    """Ahn et al., "Variational Information Distillation for Knowledge Transfer" (arXiv:1904.05835).

    Negative log-likelihood of the teacher map under N(mu(f_s), sigma^2) (constant dropped):
    loss = mean over (B, C, H, W) of 0.5 * ((mu - f_t)^2 / sigma_c^2 + log sigma_c^2),
    with ``variance`` (C,) = sigma_c^2 = softplus(alpha_c) + eps.
    """
    variance = variance.view(1, -1, 1, 1)
    return (0.5 * ((predicted_mean - teacher_map).pow(2) / variance + torch.log(variance))).mean()


class VIDRegressor(nn.Module):
    """1x1 conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv (no bias), and a per-channel log-scale
    initialised so that the variance starts at ``init_variance`` (RepDistiller's VIDLoss: 5.0)."""

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, init_variance: float = 5.0, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False),
        )
        self.log_scale = nn.Parameter(torch.full((out_channels,), math.log(math.expm1(init_variance - eps))))
        self.eps = eps

    def variance(self) -> Tensor:
        return F.softplus(self.log_scale) + self.eps  # (C_t,)

    def forward(self, student_map: Tensor, teacher_map: Tensor) -> Tensor:
        student_map, teacher_map = align_spatial(student_map, teacher_map)
        return vid_loss(self.regressor(student_map), teacher_map, self.variance())


@dataclass
class VIDConfig(FeatureDistillConfig):
    """SimKD's run_distill.sh: -c 1 -d 1 -b 1; every stage pair; middle channels = teacher channels."""

    weight: float = 1.0
    init_variance: float = 5.0

    RANGES = {"init_variance": (1e-6, None)}


@register_method("vid")
class VID(FeatureMethod[VIDConfig]):
    """Variational information distillation: per stage pair, the teacher map's Gaussian log-likelihood under a
    regressor from the student map, with a learned per-channel variance."""

    def __init__(self, student, teachers, config: VIDConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        student_shapes, teacher_shapes = self.stage_shapes()
        self.pairs = match_stages(len(student_shapes), len(teacher_shapes))
        self.regressors = nn.ModuleList(
            VIDRegressor(student_shapes[i][0], teacher_shapes[j][0], teacher_shapes[j][0], config.init_variance)
            for i, j in self.pairs
        )

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        terms = [
            regressor(student_features.stages[i], teacher_features.stages[j].float())
            for regressor, (i, j) in zip(self.regressors, self.pairs)
        ]
        losses["vid"] = self.config.weight * sum(terms)
        return StepOutput(logits=student_features.logits, losses=losses)
