"""Cross-entropy on labels: training a teacher or a baseline student (no distillation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, ConfigError, StepOutput
from kdistill.data.augment import mixup
from kdistill.methods.base import Method, MethodTraits, register_method


def cross_entropy_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean over the batch of -log softmax(logits)[target] (with optional label smoothing).

    An unlabelled sample (target -1, ``data.labelled``) contributes 0 to the mean, so a labelled sample weighs what it
    weighs in a fully labelled batch (averaging over the labelled ones alone would scale the few labels' gradient
    up by B / labelled and destabilise training); a batch without any label gives 0.
    """
    labelled = targets >= 0  # (B,)
    if bool(labelled.all()):
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    per_sample = F.cross_entropy(logits, targets.clamp_min(0), label_smoothing=label_smoothing, reduction="none")
    return (per_sample * labelled).sum() / targets.numel()


def mixed_cross_entropy_loss(
    logits: Tensor, targets: Tensor, partner_targets: Tensor, ratio: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """Mixup's loss (Zhang et al., "mixup: Beyond Empirical Risk Minimization", arXiv:1710.09412) for inputs
    ``ratio * x + (1 - ratio) * x_partner``: mean over the batch of
    ``ratio * CE(logits, y) + (1 - ratio) * CE(logits, y_partner)`` (``ratio`` scalar or (B,))."""
    own = F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction="none")  # (B,)
    other = F.cross_entropy(logits, partner_targets, label_smoothing=label_smoothing, reduction="none")  # (B,)
    return (ratio * own + (1 - ratio) * other).mean()


@dataclass
class CEConfig(MethodConfig):
    label_smoothing: float = 0.0
    # mixup with Beta(alpha, alpha), partner = batch rolled by one; 0 = off (BiT-HyperRule: 0.1 from 20k images)
    mixup_alpha: float = 0.0

    RANGES = {"label_smoothing": (0.0, 1.0), "mixup_alpha": (0.0, 2.0)}


@register_method("ce")
class CrossEntropy(Method[CEConfig]):
    """Labels only. ``kdistill train`` is this method; no teacher is loaded."""

    traits = MethodTraits(kind="labels", needs_teacher=False, max_teachers=0)

    def __init__(self, student, teachers, config: CEConfig, info) -> None:
        super().__init__(student, teachers, config, info)
        if not 0 <= config.mixup_alpha <= 2:
            raise ConfigError(f"method.mixup_alpha must be in [0, 2] (0 = no mixup), got {config.mixup_alpha}")

    def resolve_traits(self) -> MethodTraits:
        return self.refined_traits(augments_batches=self.config.mixup_alpha > 0)

    def augment_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """With ``mixup_alpha > 0``: mix the inputs with the rolled batch (one Beta ratio per batch, as BiT) and
        keep the ratio and partner in ``extras`` for the mixed loss; otherwise the batch is returned untouched."""
        if self.config.mixup_alpha <= 0:
            return batch
        inputs, ratio, partner = mixup(batch.inputs, generator, ("beta", self.config.mixup_alpha))
        extras = {
            **batch.extras,
            "mixup_ratio": ratio.expand(len(batch)).float(),  # (B,)
            "mixup_partner": partner,  # (B,)
        }
        return batch.replace(inputs=inputs, extras=extras)

    def training_step(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.inputs)  # (B, K)
        if "mixup_ratio" in batch.extras:
            partner_targets = batch.targets[batch.extras["mixup_partner"]]  # (B,)
            loss = mixed_cross_entropy_loss(
                logits, batch.targets, partner_targets, batch.extras["mixup_ratio"], self.config.label_smoothing
            )
        else:
            loss = cross_entropy_loss(logits, batch.targets, self.config.label_smoothing)
        return StepOutput(logits=logits, losses={"ce": loss})
