"""SemCKD: every student stage regresses every teacher stage; learned cross-layer attention weights the pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.methods.base import register_method
from kdistill.methods.feature_utils import FeatureDistillConfig, FeatureMethod, align_spatial


def semckd_loss(projected: list[list[Tensor]], targets: list[list[Tensor]], attention: Tensor) -> Tensor:
    """Chen et al., "Cross-Layer Distillation with Semantic Calibration" (arXiv:2012.03236), as
    DefangChen/SimKD's ``SemCKDLoss``.

    ``projected[i][j]`` (B, C_t_j, H, W) is student stage i projected to teacher stage j, ``targets[i][j]``
    the teacher map at the same size, ``attention`` (B, S, T) the softmax weights over teacher stages.
    loss = sum_{b,i,j} alpha_bij * mean_{c,h,w}(P_ij(f_s_i) - f_t_j)^2 / (B * S).
    """
    batch_size, num_student, num_teacher = attention.shape
    per_pair = torch.stack(
        [
            torch.stack(
                [(projected[i][j] - targets[i][j]).pow(2).flatten(1).mean(1) for j in range(num_teacher)], dim=1
            )
            for i in range(num_student)
        ],
        dim=1,
    )  # (B, S, T)
    return (attention * per_pair).sum() / (batch_size * num_student)


class Projector(nn.Module):
    """1x1 conv (C_s -> 2 C_t) -> BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 conv (-> C_t), no biases
    (SemCKD's ``Proj``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = 2 * out_channels
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.regressor(x)


class AttentionEmbed(nn.Module):
    """Linear (B -> 2 d) -> ReLU -> Linear (-> d) -> L2 normalisation, applied to a row of a (B, B) similarity
    matrix."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear2(F.relu(self.linear1(x))), dim=1)


@dataclass
class SemCKDConfig(FeatureDistillConfig):
    """SimKD's run_distill.sh: -c 1 -d 1 -b 400; attention temperature ``soft`` 1, embedding factor 4.

    The query/key networks read rows of the batch's (B, B) similarity matrices, so their width is
    ``batch_size``, by default the run's ``data.batch_size`` (the reference skips smaller last batches;
    here a smaller batch's similarity rows are zero-padded to ``batch_size``)."""

    weight: float = 400.0
    soft: float = 1.0
    factor: int = 4
    batch_size: int | None = None  # None: the training batch size (data.batch_size)

    RANGES = {"soft": (1e-6, None), "factor": (1, None), "batch_size": (1, None)}


@register_method("semckd")
class SemCKD(FeatureMethod[SemCKDConfig]):
    """Cross-layer feature matching: each student stage is projected onto every teacher stage, weighted by
    learned attention between the stages."""

    def __init__(self, student, teachers, config: SemCKDConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        student_shapes, teacher_shapes = self.stage_shapes()
        self.num_student, self.num_teacher = len(student_shapes), len(teacher_shapes)
        width = self.width = config.batch_size or info.batch_size
        if width <= 0:
            raise ConfigError("semckd: the attention width is unknown; set method.batch_size to data.batch_size")
        self.queries = nn.ModuleList(AttentionEmbed(width, width // config.factor) for _ in student_shapes)
        self.keys = nn.ModuleList(AttentionEmbed(width, width // config.factor) for _ in teacher_shapes)
        self.projectors = nn.ModuleList(
            nn.ModuleList(Projector(s[0], t[0]) for t in teacher_shapes) for s in student_shapes
        )

    def _similarity(self, feature_map: Tensor) -> Tensor:
        flat = feature_map.flatten(1)  # (B, C*H*W)
        similarity = flat @ flat.t()  # (B, B)
        batch_size = similarity.shape[0]
        if batch_size > self.width:
            raise ConfigError(
                f"semckd: batch of {batch_size} is larger than the attention width {self.width}; "
                f"set method.batch_size to data.batch_size"
            )
        return F.pad(similarity, (0, self.width - batch_size))  # (B, width)

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        student_maps = student_features.stages
        teacher_maps = [m.float() for m in teacher_features.stages]
        query = torch.stack([q(self._similarity(m)) for q, m in zip(self.queries, student_maps)], dim=1)  # (B, S, d)
        key = torch.stack([k(self._similarity(m)) for k, m in zip(self.keys, teacher_maps)], dim=2)  # (B, d, T)
        attention = F.softmax(torch.bmm(query, key) / self.config.soft, dim=-1)  # (B, S, T)
        projected: list[list[Tensor]] = []
        targets: list[list[Tensor]] = []
        for i, student_map in enumerate(student_maps):
            projected.append([])
            targets.append([])
            for j, teacher_map in enumerate(teacher_maps):
                source, target = align_spatial(student_map, teacher_map)
                row = cast(nn.ModuleList, self.projectors[i])  # __init__ builds a ModuleList of ModuleLists
                projected[i].append(row[j](source).float())
                targets[i].append(target)
        losses["semckd"] = self.config.weight * semckd_loss(projected, targets, attention.float())
        return StepOutput(logits=student_features.logits, losses=losses)
