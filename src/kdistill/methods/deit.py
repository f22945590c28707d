"""DeiT: distillation through attention, with a distillation token the teacher teaches.

Touvron et al., "Training data-efficient image transformers & distillation through attention" (ICML 2021,
arXiv:2012.12877), section 4 ("Distillation through attention"). The student is a transformer with two tokens and two
heads: the class head learns the labels, the distillation head learns the teacher; the deployed prediction is the mean
of the two heads' logits.

Checked against facebookresearch/deit at commit 7e160fe (2024-03-15): ``losses.py`` ``DistillationLoss.forward``
(lines 50-69: the soft and hard terms, ``loss = base_loss * (1 - alpha) + distillation_loss * alpha``), ``main.py``
(lines 145-147: ``--distillation-type`` none | soft | hard, ``--distillation-alpha`` 0.5, ``--distillation-tau``
1.0; line 101: ``--smoothing`` 0.1 on the base criterion) and ``models.py`` (lines 51-59: both heads in training,
their mean at inference). Variants by config (``distillation_type``):

- ``hard`` (the paper's eq. 3 and its best results; README_deit.md trains with ``--distillation-type hard``):
  ``(1 - lambda) * CE(class head, y) + lambda * CE(distillation head, argmax teacher)``, lambda = 1/2 by default;
- ``soft`` (eq. 2): ``(1 - lambda) * CE(class head, y) + lambda * T^2 * KL(softmax(teacher / T) ||
  softmax(distillation head / T))`` (the paper writes KL(psi(Z_s / T), psi(Z_t / T)); losses.py computes
  KL(teacher || student), ``F.kl_div(log student, log teacher, log_target=True)``, as we do).

The KL's reduction (``kl_reduction``): ``batchmean`` (default) is the paper's eq. 2 (the KL of each sample's
distributions, averaged over the batch) and :func:`kdistill.methods.kd.kd_loss`, so lambda and T mean what they mean
for ``kd``. The reference code divides the summed KL by ``outputs_kd.numel()`` = batch * classes (losses.py line 62,
"to have the legacy PyTorch behavior", its issue 61), which is the batch mean divided by the number of classes K:
``kl_reduction: numel`` reproduces it, for runs that should match the reference's numbers (its soft term is then K
times weaker, 1000 times on ImageNet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

from torch import Tensor, nn

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.methods.base import Method, MethodTraits, register_method
from kdistill.methods.ce import cross_entropy_loss
from kdistill.methods.kd import hard_label_loss, kd_loss
from kdistill.models.input_adapter import InputAdapter

DISTILLATION_TYPES = ("hard", "soft")
KL_REDUCTIONS = ("batchmean", "numel")


def deit_loss(
    class_logits: Tensor,
    distillation_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor,
    distillation_type: str = "hard",
    distillation_weight: float = 0.5,
    temperature: float = 1.0,
    kl_reduction: str = "batchmean",
    label_smoothing: float = 0.0,
) -> dict[str, Tensor]:
    """Touvron et al., "Training data-efficient image transformers & distillation through attention"
    (arXiv:2012.12877), eqs. 2-3, weighted as facebookresearch/deit ``losses.py`` (lambda = ``distillation_weight``):

    - hard: ``{"ce": (1 - lambda) * CE(z_cls, y), "kd": lambda * CE(z_dist, argmax z_t)}``;
    - soft: ``{"ce": (1 - lambda) * CE(z_cls, y), "kd": lambda * T^2 * KL(softmax(z_t / T) || softmax(z_dist / T))}``,
      the KL averaged over the batch (``batchmean``) or, as the reference code, summed and divided by B * K
      (``numel``).

    ``z_cls``, ``z_dist``: the class and distillation heads' logits (B, K); ``z_t``: the teacher's (B, K). CE on the
    labels is :func:`cross_entropy_loss` (unlabelled samples, target -1, add 0; optional label smoothing, the
    reference's ``--smoothing``); the distillation term reads every sample (the teacher labels them all).
    """
    if distillation_type == "hard":
        distillation = hard_label_loss(distillation_logits, teacher_logits)
    elif distillation_type == "soft":
        distillation = kd_loss(distillation_logits, teacher_logits, temperature)
        if kl_reduction == "numel":
            distillation = distillation / distillation_logits.shape[1]  # batchmean / K = sum / (B * K)
        elif kl_reduction != "batchmean":
            raise ValueError(f"kl_reduction={kl_reduction!r}; valid: {', '.join(KL_REDUCTIONS)}")
    else:
        raise ValueError(f"distillation_type={distillation_type!r}; valid: {', '.join(DISTILLATION_TYPES)}")
    return {
        "ce": (1 - distillation_weight) * cross_entropy_loss(class_logits, targets, label_smoothing),
        "kd": distillation_weight * distillation,
    }


class TwoHeadedModel(Protocol):
    """A model with a distillation token: ``forward_heads(x) -> (class logits, distillation logits)``."""

    def forward_heads(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


def has_distillation_token(student: nn.Module) -> bool:
    """Whether ``student`` (or the model an InputAdapter wraps) has a distillation token and ``forward_heads``."""
    if isinstance(student, InputAdapter):
        return has_distillation_token(student.wrapped)
    return bool(getattr(student, "has_distillation_token", False)) and callable(getattr(student, "forward_heads", None))


def student_heads(student: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """(class head logits, distillation head logits), each (B, K), of a student :func:`has_distillation_token`
    accepts (through its InputAdapter's renormalisation, when it has one)."""
    if isinstance(student, InputAdapter):
        return student_heads(student.wrapped, student.adapt(inputs))
    return cast(TwoHeadedModel, student).forward_heads(inputs)


@dataclass
class DeiTConfig(MethodConfig):
    """The reference's defaults (main.py): lambda 0.5 (``--distillation-alpha``), T 1.0 (``--distillation-tau``);
    ``hard`` as its README's DeiT runs. ``label_smoothing`` on the class head's CE is 0 here (the paper's equations);
    the reference's default is 0.1 (``--smoothing``, with mixup / cutmix folded into soft targets)."""

    distillation_type: str = "hard"  # hard | soft
    distillation_weight: float = 0.5  # lambda; the class head's CE gets 1 - lambda
    temperature: float = 1.0  # soft only
    kl_reduction: str = "batchmean"  # soft only: batchmean (the paper's eq. 2) | numel (the reference code)
    label_smoothing: float = 0.0

    CHOICES = {"distillation_type": DISTILLATION_TYPES, "kl_reduction": KL_REDUCTIONS}
    RANGES = {"distillation_weight": (0.0, 1.0), "label_smoothing": (0.0, 1.0)}


@register_method("deit")
class DeiT(Method[DeiTConfig]):
    """The class head learns the labels, the distillation head the teacher (:func:`deit_loss`). The deployed student
    is the student itself: its ``forward`` already averages the two heads (the ``vit`` zoo model with
    ``distillation_token``, or a distilled timm DeiT)."""

    traits = MethodTraits(kind="response", teacher_logits_only=True, partial_labels=True)

    def __init__(self, student: nn.Module, teachers: list[nn.Module], config: DeiTConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        if not has_distillation_token(student):
            raise ConfigError(
                f"deit: the student ({type(student).__name__}) has no distillation token, which the teacher teaches: "
                "use student.name=vit with student.kwargs.distillation_token=true (--set "
                "student.kwargs.distillation_token=true), or a distilled timm DeiT "
                "(timm:deit_tiny_distilled_patch16_224)"
            )

    def training_step(self, batch: Batch) -> StepOutput:
        teacher_logits = self.teacher_logits(batch)  # (B, K), live or cached; the teacher first (see kd)
        class_logits, distillation_logits = student_heads(self.student, batch.inputs)  # each (B, K)
        config = self.config
        losses = deit_loss(
            class_logits,
            distillation_logits,
            batch.targets,
            teacher_logits,
            config.distillation_type,
            config.distillation_weight,
            config.temperature,
            config.kl_reduction,
            config.label_smoothing,
        )
        return StepOutput(logits=(class_logits + distillation_logits) / 2, losses=losses)
