"""Be Your Own Teacher: self-distillation from a network's deepest classifier into classifiers on its shallow stages."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.methods.base import Method, MethodTraits, register_method
from kdistill.methods.ce import cross_entropy_loss
from kdistill.models.taps import as_tapped, feature_shapes


def self_distillation_loss(shallow_logits: Tensor, deepest_logits: Tensor, temperature: float) -> Tensor:
    """Zhang et al., "Be Your Own Teacher: Improve the Performance of Convolutional Neural Networks via Self
    Distillation" (ICCV 2019, arXiv:1905.08094), loss source 2.

    loss = T^2 * KL(q_C || q_i), q = softmax(logits / T), q_C the deepest classifier's (a target: detached),
    q_i a shallow classifier's; summed over classes, averaged over the batch. Checked against
    luanyunteng/pytorch-be-your-own-teacher ``train.py`` (``kd_loss_function`` x T^2, T = 3, deepest output
    detached). Departure: that code takes the cross-entropy -sum q_C log q_i, which is this KL plus q_C's entropy
    (a constant for the shallow classifier: the same gradient); the KL is the paper's and is 0 at agreement.
    """
    log_q_shallow = F.log_softmax(shallow_logits / temperature, dim=1)  # (B, K)
    log_q_deepest = F.log_softmax(deepest_logits.detach() / temperature, dim=1)  # (B, K)
    return temperature**2 * F.kl_div(log_q_shallow, log_q_deepest, log_target=True, reduction="batchmean")


def feature_hint_loss(shallow_features: Tensor, deepest_features: Tensor) -> Tensor:
    """BYOT's loss source 3: ||F_i - F_C||_2^2 between a shallow branch's feature F_i (after its bottleneck and
    pooling) and the deepest feature F_C (the pooled embedding, detached), summed over features and averaged over
    the batch, both (B, D).

    The reference code above (``feature_loss_function``) sums over the batch too and masks positions where both
    features are <= 0; both features come out of a ReLU there and here, so the mask changes nothing. Its weight
    1e-6 on that batch sum of 128 samples is 1.28e-4 on this batch mean (:class:`BYOTConfig`).
    """
    return (shallow_features - deepest_features.detach()).pow(2).sum(dim=1).mean()


def _branch(stage_shape: tuple[int, ...], final_shape: tuple[int, ...], embedding_dim: int) -> nn.Module:
    """A shallow stage's bottleneck to the deepest feature's size, pooled (B, D). For maps as the reference's
    ``branchBottleNeck``: 1x1 conv to D/4, a k x k conv with stride k (k = the stage's size over the final map's),
    1x1 conv to D, each with BN + ReLU, then global average pooling; for vectors (MLPs): linear + ReLU."""
    if len(stage_shape) == 1:
        return nn.Sequential(nn.Linear(stage_shape[0], embedding_dim), nn.ReLU())
    middle = max(embedding_dim // 4, 1)
    stride = max(stage_shape[1] // final_shape[1], 1) if len(final_shape) == 3 else 1
    return nn.Sequential(
        nn.Conv2d(stage_shape[0], middle, kernel_size=1),
        nn.BatchNorm2d(middle),
        nn.ReLU(),
        nn.Conv2d(middle, middle, kernel_size=stride, stride=stride),
        nn.BatchNorm2d(middle),
        nn.ReLU(),
        nn.Conv2d(middle, embedding_dim, kernel_size=1),
        nn.BatchNorm2d(embedding_dim),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


@dataclass
class BYOTConfig(MethodConfig):
    """Defaults from luanyunteng/pytorch-be-your-own-teacher ``train.py``: T 3, alpha 0.1 (the KD share; CE gets
    1 - alpha), feature weight 1e-6 on a sum over its batch of 128 = 1.28e-4 on the batch mean used here."""

    temperature: float = 3.0
    alpha: float = 0.1
    feature_weight: float = 1.28e-4

    RANGES = {"alpha": (0.0, 1.0)}

    def problems(self) -> list[str]:
        found = super().problems()
        if self.alpha == 1.0:
            found.append("alpha=1 leaves no label loss: the deepest classifier would learn nothing (use alpha < 1)")
        return found


@register_method("byot")
class BeYourOwnTeacher(Method[BYOTConfig]):
    """Classifiers on the student's shallow stages learn from labels, the deepest classifier and its feature;
    only the student (the deepest classifier) is deployed."""

    traits = MethodTraits(kind="feature", training="self", needs_teacher=False, max_teachers=0)

    def __init__(self, student: nn.Module, teachers: list[nn.Module], config: BYOTConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        shapes = feature_shapes(student, info.input_shape)
        if len(shapes.stages) < 2:
            raise ConfigError(
                f"method byot needs a student with at least two stages to attach shallow classifiers to; this one "
                f"has {len(shapes.stages)} (an MLP needs two hidden layers, e.g. student.kwargs={{hidden: [64, 32]}})"
            )
        final_shape, dim = shapes.stages[-1], shapes.embedding_dim
        self.branches = nn.ModuleList(_branch(shape, final_shape, dim) for shape in shapes.stages[:-1])
        self.shallow_classifiers = nn.ModuleList(nn.Linear(dim, info.num_classes) for _ in shapes.stages[:-1])

    def training_step(self, batch: Batch) -> StepOutput:
        features = as_tapped(self.student).forward_features(batch.inputs)
        deepest_logits = features.logits  # (B, K)
        alpha, temperature = self.config.alpha, self.config.temperature
        ce = cross_entropy_loss(deepest_logits, batch.targets)
        kd = deepest_logits.new_zeros(())
        hint = deepest_logits.new_zeros(())
        for stage, branch, classifier in zip(features.stages, self.branches, self.shallow_classifiers):
            shallow_features = branch(stage)  # (B, D)
            shallow_logits = classifier(shallow_features)  # (B, K)
            ce = ce + cross_entropy_loss(shallow_logits, batch.targets)
            kd = kd + self_distillation_loss(shallow_logits, deepest_logits, temperature)
            hint = hint + feature_hint_loss(shallow_features, features.embedding)
        losses = {"ce": (1.0 - alpha) * ce}
        if alpha:
            losses["kd"] = alpha * kd
        if self.config.feature_weight:
            losses["feature"] = self.config.feature_weight * hint
        return StepOutput(logits=deepest_logits, losses=losses)
