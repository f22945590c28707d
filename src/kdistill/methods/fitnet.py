"""FitNet: a student stage regresses the teacher's stage output through a conv regressor."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.methods.base import register_method
from kdistill.methods.feature_utils import FeatureDistillConfig, FeatureMethod, map_shape, require_maps


def hint_loss(regressed_student: Tensor, teacher_map: Tensor) -> Tensor:
    """Romero et al., "FitNets: Hints for Thin Deep Nets" (arXiv:1412.6550).

    loss = mean over (B, C, H, W) of (r(f_s) - f_t)^2, with r the regressor (RepDistiller's HintLoss
    is ``nn.MSELoss()``, the mean squared error).
    """
    return F.mse_loss(regressed_student, teacher_map)


class ConvRegressor(nn.Module):
    """Maps (B, C_s, H_s, W_s) to (B, C_t, H_t', W_t') then BN + ReLU (RepDistiller/SimKD ``ConvReg``):

    - H_s == 2 H_t: 3x3 conv, stride 2;      - 2 H_s == H_t: 4x4 transposed conv, stride 2;
    - H_s >= H_t: conv with kernel (1 + H_s - H_t, 1 + W_s - W_t);
    - otherwise: 3x3 conv (padding 1) and the teacher map is pooled down to the student's size.
    """

    def __init__(self, student_shape: tuple[int, int, int], teacher_shape: tuple[int, int, int]) -> None:
        super().__init__()
        (c_s, h_s, w_s), (c_t, h_t, w_t) = student_shape, teacher_shape
        self.pool_teacher_to: tuple[int, int] | None = None
        if h_s == 2 * h_t:
            self.conv: nn.Module = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
        elif 2 * h_s == h_t:
            self.conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
        elif h_s >= h_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
        else:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=3, padding=1)
            self.pool_teacher_to = (h_s, w_s)
        self.bn = nn.BatchNorm2d(c_t)

    def forward(self, student_map: Tensor, teacher_map: Tensor) -> tuple[Tensor, Tensor]:
        regressed = F.relu(self.bn(self.conv(student_map)))  # (B, C_t, H, W)
        if self.pool_teacher_to is not None:
            teacher_map = F.adaptive_avg_pool2d(teacher_map, self.pool_teacher_to)
        return regressed, teacher_map


@dataclass
class FitNetConfig(FeatureDistillConfig):
    """SimKD's run_distill.sh: -c 1 -d 1 -b 100 with train_student.py's default ``--hint_layer 1``.
    ``hint_layer`` numbers stages as the reference's feature list does after the stem (feat[0]):
    hint_layer 1 = the first stage's output (RepDistiller's own default is 2)."""

    weight: float = 100.0
    hint_layer: int = 1
    guided_layer: int | None = None  # teacher stage (1-based); None = the same as hint_layer

    RANGES = {"hint_layer": (1, None), "guided_layer": (1, None)}


@register_method("fitnet")
class FitNet(FeatureMethod[FitNetConfig]):
    """Single-stage FitNet as in RepDistiller/SimKD's train_student.py (no separate hint pre-training)."""

    def __init__(self, student, teachers, config: FitNetConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        student_shapes, teacher_shapes = self.stage_shapes(require_all_maps=False)
        guided = config.guided_layer if config.guided_layer is not None else config.hint_layer
        if not 1 <= config.hint_layer <= len(student_shapes) or not 1 <= guided <= len(teacher_shapes):
            raise ConfigError(
                f"fitnet: hint_layer={config.hint_layer} / guided_layer={guided} must be in 1..{len(student_shapes)} "
                f"(student stages) / 1..{len(teacher_shapes)} (teacher stages)"
            )
        self.student_stage, self.teacher_stage = config.hint_layer - 1, guided - 1
        require_maps([student_shapes[self.student_stage]], "fitnet", "student")
        require_maps([teacher_shapes[self.teacher_stage]], "fitnet", "teacher")
        self.regressor = ConvRegressor(
            map_shape(student_shapes[self.student_stage]), map_shape(teacher_shapes[self.teacher_stage])
        )

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        regressed, target = self.regressor(
            student_features.stages[self.student_stage], teacher_features.stages[self.teacher_stage]
        )
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        losses["hint"] = self.config.weight * hint_loss(regressed, target.float())
        return StepOutput(logits=student_features.logits, losses=losses)
