"""Helpers shared by the feature-based methods (FitNet, AT, SP, VID, CRD, SRRL, SemCKD, SimKD).

- :class:`FeatureDistillConfig`: the weights every feature baseline shares. The defaults follow the
  SimKD code's CIFAR-100 script (``scripts/run_distill.sh`` of DefangChen/SimKD, which produced the
  paper's Tables 1-2): ``-c 1 -d 1 -b <method weight>``, i.e. label cross-entropy 1, Hinton KD 1 at
  temperature 4, plus the method's own loss times ``weight``. (RepDistiller's CRD paper runs used
  ``-a 0``: set ``kd_weight: 0`` for that.)
- :func:`align_spatial`: pool the larger of two maps to the smaller one's size (adaptive average
  pooling), the rule of every reference implementation.
- :func:`match_stages`: pair student and teacher stages as the reference code does (by index).
- :func:`summed_stage_loss`: a loss summed over the matched stage pairs (AT, NST).
- :func:`relative_depth_index`: the stage at the same relative depth (SimKD's extra projectors).
- :func:`embedding_classifier`: a model's linear layer from the pooled embedding to logits.
- :class:`InitPhaseConfig` / :class:`InitPhaseMethod`: methods that open with ``init_epochs`` initialisation epochs
  (AB, FT, FSP: RepDistiller's ``--init_epochs 30``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, ConfigError
from kdistill.methods.base import Method, MethodTraits
from kdistill.methods.ce import cross_entropy_loss
from kdistill.methods.kd import kd_loss
from kdistill.models.taps import Features, FeatureShapes, as_tapped, feature_shapes


@dataclass
class FeatureDistillConfig(MethodConfig):
    """Label CE + Hinton KD + the method's own loss (SimKD's run_distill.sh: -c 1 -d 1 -b weight)."""

    ce_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 4.0
    weight: float = 1.0  # the method's own loss (beta)

    def problems(self) -> list[str]:
        found = super().problems()
        if not any((self.ce_weight, self.kd_weight, self.weight)):
            found.append("ce_weight, kd_weight and weight are all 0: the student would learn nothing")
        return found


def require_maps(shapes: list[tuple[int, ...]], method: str, who: str) -> None:
    if any(len(shape) != 3 for shape in shapes):
        raise ConfigError(
            f"method {method!r} needs convolutional feature maps (C, H, W) from the {who}, "
            f"got stage shapes {shapes}; use a model with conv stages (e.g. cnn, resnet8x4)"
        )


def map_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A stage shape as (C, H, W): for shapes :func:`require_maps` has checked (a ValueError otherwise)."""
    channels, height, width = shape
    return channels, height, width


def align_spatial(student_map: Tensor, teacher_map: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the map with the larger height to the other's (H, W).

    (B, C_s, H_s, W_s), (B, C_t, H_t, W_t) -> both with the smaller spatial size. Follows SimKD /
    RepDistiller: the student map is pooled if ``H_s > H_t``, otherwise the teacher map.
    """
    (h_s, w_s), (h_t, w_t) = student_map.shape[2:], teacher_map.shape[2:]
    if h_s > h_t:
        student_map = F.adaptive_avg_pool2d(student_map, (h_t, w_t))
    elif h_s < h_t:
        teacher_map = F.adaptive_avg_pool2d(teacher_map, (h_s, w_s))
    return student_map, teacher_map


def aligned_size(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> tuple[int, int]:
    """The (H, W) both maps have after :func:`align_spatial`."""
    return tuple(student_shape[1:]) if student_shape[1] <= teacher_shape[1] else tuple(teacher_shape[1:])  # type: ignore[return-value]


def relative_depth_index(position: int, count: int, other_count: int) -> int:
    """Stage ``position`` (0-based) of ``count`` stages -> the stage at the same relative depth of ``other_count``."""
    return max(0, min(other_count - 1, round((position + 1) * other_count / count) - 1))


def match_stages(num_student: int, num_teacher: int) -> list[tuple[int, int]]:
    """Pairs (student stage, teacher stage): stage i with stage i, truncated to the shorter list, as the
    reference code's ``zip(feat_s[1:-1], feat_t[1:-1])`` (AT, VID) does."""
    return [(i, i) for i in range(min(num_student, num_teacher))]


def summed_stage_loss(
    loss: Callable[[Tensor, Tensor], Tensor],
    student_features: Features,
    teacher_features: Features,
    pairs: list[tuple[int, int]],
) -> Tensor:
    """sum over (i, j) in ``pairs`` of ``loss(student stage i, teacher stage j)``, both maps in float32 (AT, NST).
    :func:`match_stages` pairs at least one stage (every model has one), so the sum is a Tensor, never the 0 start."""
    terms = [loss(student_features.stages[i].float(), teacher_features.stages[j].float()) for i, j in pairs]
    return cast(Tensor, sum(terms))


def embedding_classifier(model: nn.Module) -> nn.Module:
    """The layer mapping a model's pooled ``embedding`` to its logits (the ``fc`` of its head)."""
    head = as_tapped(model).classifier_head()
    fc = getattr(head, "fc", None)
    if isinstance(fc, nn.Module):
        return fc
    raise ConfigError(f"{type(model).__name__}'s classifier head has no `fc` layer mapping the embedding to logits")


FeatureConfigT = TypeVar("FeatureConfigT", bound=FeatureDistillConfig)


class FeatureMethod(Method[FeatureConfigT]):
    """Base of the feature baselines: student/teacher taps, CE + KD terms, the method's own loss."""

    traits = MethodTraits(kind="feature")

    def model_shapes(self) -> tuple[FeatureShapes, FeatureShapes]:
        """The student's and the teacher's tap shapes (stages, embedding width) for this data."""
        return feature_shapes(self.student, self.info.input_shape), feature_shapes(self.teacher, self.info.input_shape)

    def stage_shapes(self, require_all_maps: bool = True) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """Per-sample stage shapes of the student and the teacher; with ``require_all_maps`` every stage
        must be a (C, H, W) feature map (a clear error otherwise, e.g. for an MLP)."""
        student, teacher = self.model_shapes()
        student_shapes, teacher_shapes = student.stages, teacher.stages
        if require_all_maps:
            require_maps(student_shapes, self.name, "student")
            require_maps(teacher_shapes, self.name, "teacher")
        return student_shapes, teacher_shapes

    def student_and_teacher_features(self, inputs: Tensor) -> tuple[Features, Features]:
        with torch.no_grad():  # the teacher first (see kd)
            teacher_features = as_tapped(self.teacher).forward_features(inputs)
        student_features = as_tapped(self.student).forward_features(inputs)
        return student_features, teacher_features

    def logit_losses(self, student_logits: Tensor, teacher_logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        """``ce_weight * CE + kd_weight * T^2 KL`` (terms with weight 0 are left out)."""
        losses: dict[str, Tensor] = {}
        if self.config.ce_weight:
            losses["ce"] = self.config.ce_weight * cross_entropy_loss(student_logits, batch.targets)
        if self.config.kd_weight:
            losses["kd"] = self.config.kd_weight * kd_loss(
                student_logits, teacher_logits.float(), self.config.temperature
            )
        return losses


@dataclass
class InitPhaseConfig(FeatureDistillConfig):
    """A feature method whose first ``init_epochs`` epochs are an initialisation phase (RepDistiller's
    ``--init_epochs 30``; the configs add them in front of the usual 240)."""

    init_epochs: int = 30

    RANGES = {"init_epochs": (1, None)}


InitPhaseConfigT = TypeVar("InitPhaseConfigT", bound=InitPhaseConfig)


class InitPhaseMethod(FeatureMethod[InitPhaseConfigT]):
    """A feature method with an initialisation phase of ``config.init_epochs`` epochs (AB, FT, FSP)."""

    def in_init_phase(self) -> bool:
        """Whether this epoch (``on_epoch_start``; 0 before the first) is an initialisation epoch."""
        return self.current_epoch < self.config.init_epochs
