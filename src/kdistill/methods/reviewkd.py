"""ReviewKD: the student's stages, fused deep-to-shallow by attention (ABF), each match the teacher's stage at
the same level under a hierarchical context loss (HCL)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.methods.base import register_method
from kdistill.methods.feature_utils import FeatureDistillConfig, FeatureMethod, map_shape, require_maps
from kdistill.models.taps import Features

HCL_LEVELS = (4, 2, 1)  # pooled sizes of the hierarchical context loss


def hcl_loss(student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
    """Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review" (CVPR 2021, arXiv:2104.09044).

    Hierarchical context loss, summed over the levels i of (B, C, H, W) maps F_s^i (fused student) and F_t^i:
    HCL_i = (MSE(F_s, F_t) + sum_l w_l MSE(P_l(F_s), P_l(F_t))) / (1 + sum_l w_l),
    with P_l adaptive average pooling to l x l for l in (4, 2, 1) where l < H, and w_l = 1/2, 1/4, 1/8 in that
    order (halving for each pooled level used); MSE is the mean over all elements. Checked against
    megvii-research/mdistiller ``mdistiller/distillers/ReviewKD.py`` ``hcl_loss`` (= dvlab-research/ReviewKD
    ``CIFAR-100/model/reviewkd.py`` ``hcl``).
    """
    total = student_features[0].new_zeros(())
    for student_map, teacher_map in zip(student_features, teacher_features):
        height = student_map.shape[2]
        loss = F.mse_loss(student_map, teacher_map)
        weight, weights = 1.0, 1.0
        for level in HCL_LEVELS:
            if level >= height:
                continue
            weight /= 2.0
            pooled_student = F.adaptive_avg_pool2d(student_map, (level, level))  # (B, C, l, l)
            pooled_teacher = F.adaptive_avg_pool2d(teacher_map, (level, level))
            loss = loss + weight * F.mse_loss(pooled_student, pooled_teacher)
            weights += weight
        total = total + loss / weights
    return total


class AttentionFusion(nn.Module):
    """ABF (attention-based fusion) as mdistiller's ``ABF``: a 1x1 conv + BN to ``mid_channels``; when a deeper
    (residual) map is given, it is resized (nearest) to this stage's size and the two are mixed by two per-pixel
    sigmoid attention maps from a 1x1 conv on their concatenation; the result is resized (nearest) to the
    teacher's size and a 3x3 conv + BN gives the output with the teacher's channels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        reduce = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        expand = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)
        nn.init.kaiming_uniform_(reduce.weight, a=1)
        nn.init.kaiming_uniform_(expand.weight, a=1)
        self.conv1 = nn.Sequential(reduce, nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(expand, nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(mid_channels * 2, 2, 1), nn.Sigmoid()) if fuse else None

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(B, C_in, h, w) [+ (B, mid, h', w')] -> output (B, C_out, H_t, W_t) and the fused map (B, mid, H_t, W_t)."""
        x = self.conv1(x)  # (B, mid, h, w)
        if self.attention is not None and residual is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[2:]), mode="nearest")
            attention = self.attention(torch.cat([x, residual], dim=1))  # (B, 2, h, w)
            x = x * attention[:, 0:1] + residual * attention[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


@dataclass
class ReviewKDConfig(FeatureDistillConfig):
    """Defaults from mdistiller ``mdistiller/engine/cfg.py`` (REVIEWKD: CE_WEIGHT 1, REVIEWKD_WEIGHT 1,
    WARMUP_EPOCHS 20, MAX_MID_CHANNEL 512); no KD term, as mdistiller's ReviewKD. Its CIFAR config
    ``configs/cifar100/reviewkd.yaml`` and dvlab-research/ReviewKD ``CIFAR-100/script/reviewKD.sh`` use weight 5 for
    resnet32x4 -> resnet8x4 and wrn-40-2 -> wrn-40-1. The review term is ramped by min((epoch + 1) / 20, 1)."""

    kd_weight: float = 0.0
    weight: float = 1.0
    warmup_epochs: int = 20
    max_mid_channels: int = 512

    RANGES = {"warmup_epochs": (0, None), "max_mid_channels": (1, None)}


def review_levels(
    student: list[tuple[int, ...]], teacher: list[tuple[int, ...]], student_dim: int, teacher_dim: int
) -> list[tuple[int, int, tuple[int, int]]]:
    """(student channels, teacher channels, teacher (H, W)) per level, shallow to deep: the deepest
    min(#student, #teacher) stages of each, then the pooled embeddings as 1x1 maps (mdistiller's ``feats[1:]`` +
    ``pooled_feat``)."""
    count = min(len(student), len(teacher))
    levels = []
    for student_shape, teacher_shape in zip(student[-count:], teacher[-count:]):
        (c_s, _, _), (c_t, h_t, w_t) = map_shape(student_shape), map_shape(teacher_shape)
        levels.append((c_s, c_t, (h_t, w_t)))
    return [*levels, (student_dim, teacher_dim, (1, 1))]


@register_method("reviewkd")
class ReviewKD(FeatureMethod[ReviewKDConfig]):
    """CE + the hierarchical context loss between attention-fused student stages and the teacher's stages."""

    def __init__(self, student, teachers, config: ReviewKDConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        student_shapes, teacher_shapes = self.model_shapes()
        count = min(len(student_shapes.stages), len(teacher_shapes.stages))
        require_maps(student_shapes.stages[-count:], self.name, "student")
        require_maps(teacher_shapes.stages[-count:], self.name, "teacher")
        levels = review_levels(
            student_shapes.stages, teacher_shapes.stages, student_shapes.embedding_dim, teacher_shapes.embedding_dim
        )
        mid_channels = min(config.max_mid_channels, levels[-1][0])
        if mid_channels < 1:
            raise ConfigError(f"reviewkd: the student's embedding has no channels ({levels[-1][0]})")
        self.levels = len(levels)
        self.out_sizes = [size for _, _, size in levels]
        # deepest first, as the fusion runs: the embedding's ABF has nothing deeper to fuse
        self.fusions = nn.ModuleList(
            AttentionFusion(c_s, mid_channels, c_t, fuse=index > 0)
            for index, (c_s, c_t, _) in enumerate(reversed(levels))
        )
        self.warmup_factor = 1.0 / max(config.warmup_epochs, 1)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        warmup = self.config.warmup_epochs
        self.warmup_factor = 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)  # mdistiller's epoch is 1-based

    def level_maps(self, features: Features) -> list[Tensor]:
        """The maps of the reviewed levels, shallow to deep: the deepest stages, then the embedding (B, D, 1, 1)."""
        return [*features.stages[-(self.levels - 1) :], features.embedding[:, :, None, None]]

    def fused_student(self, student_maps: list[Tensor]) -> list[Tensor]:
        """Run the ABFs deep to shallow; returns their outputs shallow to deep (teacher shapes)."""
        outputs: list[Tensor] = []
        residual: Tensor | None = None
        for fusion, student_map, out_size in zip(self.fusions, reversed(student_maps), reversed(self.out_sizes)):
            output, residual = fusion(student_map, residual, out_size)
            outputs.insert(0, output)
        return outputs

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        fused = self.fused_student(self.level_maps(student_features))
        targets = [level.float() for level in self.level_maps(teacher_features)]
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        losses["review"] = self.config.weight * self.warmup_factor * hcl_loss([f.float() for f in fused], targets)
        return StepOutput(logits=student_features.logits, losses=losses)
