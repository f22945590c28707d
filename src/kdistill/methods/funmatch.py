"""Function matching: the "patient and consistent teacher" recipe of Beyer et al.

No labels in the loss; teacher and student see the very same aggressively augmented batch (Inception crop,
flip, then mixup with a uniform ratio and the batch rolled by one as partner), and the student is trained for
a long time to match the teacher's function on it. The paper's ablations are selectable with ``mode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, ConfigError, StepOutput
from kdistill.data.augment import inception_crop, mixup, random_flip, resize
from kdistill.methods.base import Method, MethodTraits, register_method

DISTANCES = ("kl", "euclidean_logits", "euclidean_log_probs", "squared_logits", "hard")
MODES = ("function_matching", "consistent", "independent_noise", "fixed_teacher")


def funmatch_loss(
    student_logits: Tensor, teacher_logits: Tensor, distance: str = "kl", temperature: float = 1.0
) -> Tensor:
    """Beyer, Zhai, Royer, Markeeva, Anil, Kolesnikov, "Knowledge distillation: A good teacher is patient and
    consistent" (CVPR 2022, arXiv:2106.05237). Distances between student logits s and teacher logits t, (B, K)
    each, averaged over the batch, as in big_vision's ``evaluators/proj/distill/distance.py``:

    - ``kl`` (the paper's choice): T^2 * KL(softmax(t/T) || softmax(s/T))
      = T^2 * sum_k p_t,k (log p_t,k - log p_s,k). big_vision uses T = 1 on ImageNet (1 to 10 on Flowers/Pets);
      the Keras example uses T = 10 (without the T^2 factor, which only rescales the loss).
    - ``euclidean_logits``: sqrt(||s - t||^2 + 1e-12) (big_vision ``euclidean``).
    - ``euclidean_log_probs``: sqrt(||log_softmax(s) - log_softmax(t)||^2 + 1e-12) (``logsoftmax_euclidean``).
    - ``squared_logits``: ||s - t||^2 (``l2``; the logit regression of Ba & Caruana).
    - ``hard``: cross-entropy with the teacher's argmax as label (``hard``).

    The temperature is used by ``kl`` only (as in big_vision). No label is read: only the two sets of logits.
    """
    if distance == "kl":
        log_p_student = F.log_softmax(student_logits / temperature, dim=1)  # (B, K)
        log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)  # (B, K)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
        return kl * temperature**2
    if distance == "euclidean_logits":
        return torch.sqrt(((student_logits - teacher_logits) ** 2).sum(1) + 1e-12).mean()
    if distance == "euclidean_log_probs":
        difference = F.log_softmax(student_logits, dim=1) - F.log_softmax(teacher_logits, dim=1)  # (B, K)
        return torch.sqrt((difference**2).sum(1) + 1e-12).mean()
    if distance == "squared_logits":
        return ((student_logits - teacher_logits) ** 2).sum(1).mean()
    if distance == "hard":
        return F.cross_entropy(student_logits, teacher_logits.argmax(1))
    raise ConfigError(f"method.distance: unknown distance {distance!r}; valid: {', '.join(DISTANCES)}")


@dataclass
class FunMatchConfig(MethodConfig):
    """Defaults: big_vision's ImageNet distillation (T = 1, KL, Inception crop 5%-100% + flip + uniform mixup)."""

    temperature: float = 1.0
    distance: str = "kl"  # kl | euclidean_logits | euclidean_log_probs | squared_logits | hard
    # function_matching: one crop+flip+mixup batch for both; consistent: same crop+flip, no mixup;
    # independent_noise: teacher and student get independently augmented views;
    # fixed_teacher: teacher sees the un-augmented input, the student the augmented one.
    mode: str = "function_matching"
    mixup: bool | None = None  # None: on in function_matching only; true/false forces it in any mode
    mixup_ratio: str = "uniform"  # uniform (the paper) | beta (classic mixup, Beta(mixup_alpha, mixup_alpha))
    mixup_alpha: float = 1.0
    mixup_per_sample: bool = False  # one ratio per sample instead of one per batch (big_vision: per batch)
    crop: bool = True  # Inception-style random-resized crop on the device
    crop_area_min: float = 0.05  # big_vision's inception_crop default (area_min=5)
    crop_area_max: float = 1.0
    crop_aspect_min: float = 0.75
    crop_aspect_max: float = 1.33  # TF's sample_distorted_bounding_box default, used by big_vision
    crop_size: int | None = None  # output side; None = the input size
    flip: bool = True  # random left-right flip

    CHOICES = {"mode": MODES, "distance": DISTANCES, "mixup_ratio": ("uniform", "beta")}
    RANGES = {
        "mixup_alpha": (1e-6, None),
        "crop_area_min": (1e-6, 1.0),
        "crop_area_max": (1e-6, 1.0),
        "crop_aspect_min": (1e-6, None),
        "crop_aspect_max": (1e-6, None),
        "crop_size": (1, None),
    }

    def problems(self) -> list[str]:
        found = super().problems()
        if self.crop_area_min > self.crop_area_max or self.crop_aspect_min > self.crop_aspect_max:
            found.append("crop_area_min/max and crop_aspect_min/max must each satisfy min <= max")
        return found


def mixup_enabled(config: FunMatchConfig) -> bool:
    """Mixup is on in ``function_matching`` mode unless ``mixup`` forces it on or off."""
    return config.mode == "function_matching" if config.mixup is None else config.mixup


def output_size(config: FunMatchConfig, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(h, w) of the augmented views: ``crop_size`` square, or the input size."""
    return tuple(input_shape[1:]) if config.crop_size is None else (config.crop_size, config.crop_size)  # type: ignore[return-value]


@register_method("funmatch")
class FunctionMatching(Method[FunMatchConfig]):
    """Student matches the teacher's function on shared, heavily augmented (mixed-up) inputs; no labels."""

    # no label is read; only the teacher's logits are (of the teacher's own view where the mode gives it one; served
    # from the stream cache of replayed epochs, since every view is drawn from the epoch's generator)
    traits = MethodTraits(kind="response", uses_labels=False, teacher_logits_only=True)

    def __init__(self, student, teachers, config: FunMatchConfig, info) -> None:
        super().__init__(student, teachers, config, info)
        if config.mode not in MODES:
            raise ConfigError(f"method.mode: unknown mode {config.mode!r}; valid: {', '.join(MODES)}")
        if config.distance not in DISTANCES:
            raise ConfigError(f"method.distance: unknown distance {config.distance!r}; valid: {', '.join(DISTANCES)}")
        if config.mixup_ratio not in ("uniform", "beta"):
            raise ConfigError(f"method.mixup_ratio: {config.mixup_ratio!r}; valid: uniform, beta")
        if config.temperature <= 0:
            raise ConfigError(f"method.temperature must be > 0, got {config.temperature}")
        if not 0 < config.crop_area_min <= config.crop_area_max <= 1:
            raise ConfigError(
                "method.crop_area_min/max must satisfy 0 < min <= max <= 1, "
                f"got {config.crop_area_min}, {config.crop_area_max}"
            )
        self.use_mixup = mixup_enabled(config)
        self.ratio_dist = "uniform" if config.mixup_ratio == "uniform" else ("beta", config.mixup_alpha)
        self.output_size = output_size(config, info.input_shape)

    # ------------------------------------------------------------------ augmentation
    def resolve_traits(self) -> MethodTraits:
        config = self.config
        resizes = output_size(config, self.info.input_shape) != tuple(self.info.input_shape[1:])
        return self.refined_traits(
            augments_batches=bool(config.crop or config.flip or mixup_enabled(config) or resizes)
        )

    def augmentation_spec(self) -> dict[str, Any]:
        """The settings of the views (not the loss's temperature or distance, which a teacher cache may ignore)."""
        fields = ["mode", "mixup_ratio", "mixup_alpha", "mixup_per_sample", "crop", "crop_area_min", "crop_area_max"]
        fields += ["crop_aspect_min", "crop_aspect_max", "flip"]
        spec = {name: getattr(self.config, name) for name in fields}
        return {**spec, "mixup": self.use_mixup, "output_size": list(self.output_size)}

    def augment_view(self, inputs: Tensor, generator: torch.Generator) -> Tensor:
        """One augmented view of a (B, C, H, W) batch: Inception crop -> flip -> mixup (each if enabled)."""
        config = self.config
        if config.crop:
            inputs = inception_crop(
                inputs,
                generator,
                self.output_size,
                area_range=(config.crop_area_min, config.crop_area_max),
                aspect_range=(config.crop_aspect_min, config.crop_aspect_max),
            )
        else:
            inputs = resize(inputs, self.output_size)
        if config.flip:
            inputs = random_flip(inputs, generator)
        if self.use_mixup:
            inputs, _, _ = mixup(inputs, generator, self.ratio_dist, per_sample=config.mixup_per_sample)
        return inputs

    def augment_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The student's inputs replace ``batch.inputs``; the teacher's go to ``extras["teacher_inputs"]``
        when they differ (independent noise, fixed teacher). Labels are passed through untouched (unused)."""
        if not self.traits.augments_batches:
            return batch
        mode = self.config.mode
        student_inputs = self.augment_view(batch.inputs, generator)  # (B, C, h, w)
        extras = dict(batch.extras)
        if mode == "independent_noise":
            extras["teacher_inputs"] = self.augment_view(batch.inputs, generator)
        elif mode == "fixed_teacher":
            extras["teacher_inputs"] = resize(batch.inputs, self.output_size)
        return batch.replace(inputs=student_inputs, extras=extras)

    # ------------------------------------------------------------------ loss
    def training_step(self, batch: Batch) -> StepOutput:
        teacher_logits = self.teacher_logits(batch)  # (B, K): of the teacher's view, live or from the stream cache
        student_logits = self.student(batch.inputs)  # (B, K)
        loss = funmatch_loss(student_logits, teacher_logits, self.config.distance, self.config.temperature)
        return StepOutput(logits=student_logits, losses={self.config.distance: loss})
