"""MLKD: multi-level logit distillation (instance, batch and class level) at several temperatures, on a weak
and a strong view of every image."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, StepOutput
from kdistill.methods.base import Method, MethodTraits, register_method
from kdistill.methods.ce import cross_entropy_loss
from kdistill.methods.kd import kd_loss, standardize_logits

REFERENCE = "Jin-Ying/Multi-Level-Logit-Distillation mdistiller/distillers/KD_ours.py"


def class_correlation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Class level: with P = softmax(Z / T) (B, K), G = P^T P (K, K); loss = sum (G_t - G_s)^2 / K
    (the reference's ``cc_loss``; no T^2 factor)."""
    p_student = F.softmax(student_logits / temperature, dim=1)  # (B, K)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    difference = p_teacher.t() @ p_teacher - p_student.t() @ p_student  # (K, K)
    return (difference**2).sum() / student_logits.shape[1]


def batch_correlation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Batch level: with P = softmax(Z / T) (B, K), M = P P^T (B, B); loss = sum (M_t - M_s)^2 / B
    (the reference's ``bc_loss``; no T^2 factor)."""
    p_student = F.softmax(student_logits / temperature, dim=1)  # (B, K)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    difference = p_teacher @ p_teacher.t() - p_student @ p_student.t()  # (B, B)
    return (difference**2).sum() / student_logits.shape[0]


def confidence_fractions(teacher_weak_logits: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's confidence masks, reduced as it reduces them.

    With p = softmax(z_t) at T 1 on the weak view: a sample is kept when max_k p <= the batch median of that
    confidence, a class when sum_i p[i, k] <= the median over classes (``np.percentile(., 50)``, linear
    interpolation = ``torch.quantile``). The reference multiplies a loss already averaged over the batch
    (``kd_loss(..., reduce=True)``) by the (B,) or (K,) mask and takes the mean, so a mask acts as the fraction it
    keeps (about 1/2): this returns (fraction of samples kept, fraction of classes kept)."""
    probabilities = F.softmax(teacher_weak_logits.detach(), dim=1)  # (B, K)
    confidence = probabilities.max(dim=1).values  # (B,)
    class_confidence = probabilities.sum(dim=0)  # (K,)
    sample_mask = confidence <= torch.quantile(confidence, 0.5)
    class_mask = class_confidence <= torch.quantile(class_confidence, 0.5)
    return sample_mask.to(probabilities.dtype).mean(), class_mask.to(probabilities.dtype).mean()


def mlkd_terms(
    student_weak: Tensor,
    teacher_weak: Tensor,
    student_strong: Tensor,
    teacher_strong: Tensor,
    temperatures: list[float],
    logit_standardization: bool = False,
    strong_terms_on_strong_view: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Jin, Wang, Lin, "Multi-Level Logit Distillation" (CVPR 2023), checked against ``KD_ours.forward_train`` of
    Jin-Ying/Multi-Level-Logit-Distillation ``mdistiller/distillers/KD_ours.py`` (and its logit-standardization
    variant, sunshangquan/logit-standardization-KD ``mdistiller/distillers/MLKD.py``).

    With f_s = fraction of samples and f_c = fraction of classes kept by :func:`confidence_fractions`,
    KD_T = T^2 KL(softmax(z_t / T) || softmax(z_s / T)) averaged over the batch, summed over T in ``temperatures``:
    instance = sum_T f_s KD_T(weak) + sum_T KD_T(strong),
    class    = sum_T f_c CC_T(weak) (:func:`class_correlation_loss`),
    batch    = sum_T f_s BC_T(weak) (:func:`batch_correlation_loss`).
    As the reference: the strong view's terms at the 4th and later temperatures (2 and 6 there) read the weak
    view's logits unless ``strong_terms_on_strong_view``; the class and batch terms of the strong view are computed
    there but left out of the loss (so here too); ``logit_standardization`` z-scores the logits of the instance
    terms only (:func:`kdistill.methods.kd.standardize_logits`).
    """
    sample_fraction, class_fraction = confidence_fractions(teacher_weak)
    z = standardize_logits if logit_standardization else (lambda logits: logits)
    instance = class_level = batch_level = student_weak.new_zeros(())
    for position, temperature in enumerate(temperatures):
        strong_view = strong_terms_on_strong_view or position < 3
        student_view, teacher_view = (student_strong, teacher_strong) if strong_view else (student_weak, teacher_weak)
        instance = instance + sample_fraction * kd_loss(z(student_weak), z(teacher_weak), temperature)
        instance = instance + kd_loss(z(student_view), z(teacher_view), temperature)
        class_level = class_level + class_fraction * class_correlation_loss(student_weak, teacher_weak, temperature)
        batch_level = batch_level + sample_fraction * batch_correlation_loss(student_weak, teacher_weak, temperature)
    return instance, class_level, batch_level


# RandAugment's operations as in the reference's ``augment_list`` (name, low, high) for a magnitude drawn
# uniformly in [low, high] (FixMatch's variant, mdistiller/dataset/cifar100.py of the MLKD code).
RANDAUGMENT_OPS: tuple[tuple[str, float, float], ...] = (
    ("autocontrast", 0, 1),
    ("brightness", 0.05, 0.95),
    ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95),
    ("equalize", 0, 1),
    ("identity", 0, 1),
    ("posterize", 4, 8),
    ("rotate", -30, 30),
    ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("solarize", 0, 256),
    ("translate_x", -0.3, 0.3),
    ("translate_y", -0.3, 0.3),
)


def _shear(image: Tensor, horizontal: float, vertical: float) -> Tensor:
    angles = [math.degrees(math.atan(horizontal)), math.degrees(math.atan(vertical))]
    return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=angles)


def _translate(image: Tensor, dx: float, dy: float) -> Tensor:
    return TF.affine(image, angle=0.0, translate=[int(-dx), int(-dy)], scale=1.0, shear=[0.0, 0.0])


OPERATIONS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "autocontrast": lambda image, _: TF.autocontrast(image),
    "brightness": TF.adjust_brightness,
    "color": TF.adjust_saturation,
    "contrast": TF.adjust_contrast,
    "equalize": lambda image, _: TF.equalize(image),
    "identity": lambda image, _: image,
    "posterize": lambda image, v: TF.posterize(image, max(1, int(v))),
    "rotate": lambda image, v: TF.rotate(image, v),
    "sharpness": TF.adjust_sharpness,
    "shear_x": lambda image, v: _shear(image, v, 0.0),
    "shear_y": lambda image, v: _shear(image, 0.0, v),
    "solarize": lambda image, v: image if v > 255 else TF.solarize(image, v),  # no uint8 pixel reaches v
    "translate_x": lambda image, v: _translate(image, v * image.shape[-1], 0.0),
    "translate_y": lambda image, v: _translate(image, 0.0, v * image.shape[-2]),
}
CUTOUT_FILL = (125, 123, 114)  # the reference's Cutout colour (uint8 RGB)


def _cutout(image: Tensor, size: float, centre_x: float, centre_y: float) -> Tensor:
    """Fill a size x size square (clipped at the border) at the given centre, as the reference's ``CutoutAbs``."""
    if size <= 0:
        return image
    height, width = image.shape[-2:]
    x0, y0 = int(max(0.0, centre_x - size / 2)), int(max(0.0, centre_y - size / 2))
    x1, y1 = int(min(width, x0 + size)), int(min(height, y0 + size))
    fill = CUTOUT_FILL if image.shape[0] == 3 else (sum(CUTOUT_FILL) // 3,) * image.shape[0]
    image = image.clone()
    image[:, y0:y1, x0:x1] = torch.tensor(fill, dtype=image.dtype, device=image.device)[:, None, None]
    return image


def rand_augment(images: Tensor, generator: torch.Generator, num_ops: int = 2, cutout: float = 0.5) -> Tensor:
    """FixMatch-style RandAugment of a (B, C, H, W) uint8 batch: per image, ``num_ops`` operations drawn with
    replacement from :data:`RANDAUGMENT_OPS`, each at a magnitude drawn uniformly in its range, then Cutout of a
    square of side U(0, ``cutout``) x W at a uniform centre. The torchvision counterparts of the reference's PIL
    operations are used (shear and translation about the image centre rather than its corner)."""
    count = images.shape[0]
    device = generator.device
    choices = torch.randint(len(RANDAUGMENT_OPS), (count, num_ops), generator=generator, device=device).tolist()
    magnitudes = torch.rand((count, num_ops), generator=generator, device=device).tolist()
    cutouts = torch.rand((count, 3), generator=generator, device=device).tolist()
    height, width = images.shape[-2:]
    augmented = []
    for image, ops, levels, (size, x, y) in zip(images, choices, magnitudes, cutouts):
        for op, level in zip(ops, levels):
            name, low, high = RANDAUGMENT_OPS[op]
            image = OPERATIONS[name](image, low + (high - low) * level)
        augmented.append(_cutout(image, size * cutout * width, x * width, y * height))
    return torch.stack(augmented)  # (B, C, H, W) uint8


@dataclass
class MLKDConfig(MethodConfig):
    """Defaults from Jin-Ying/Multi-Level-Logit-Distillation: ``mdistiller/engine/cfg.py`` (KD.TEMPERATURE 4,
    CE_WEIGHT 0.1, KD_WEIGHT 0.9) and the temperatures written in ``KD_ours.py`` (T, 3, 5, 2, 6). Its RandAugment
    strong view: 2 operations + Cutout up to half the width. With ``logit_standardization`` sunshangquan's
    ``tools/train.py`` sets the first temperature to the base temperature 2 and kd_weight to 9."""

    temperatures: list[float] = field(default_factory=lambda: [4.0, 3.0, 5.0, 2.0, 6.0])
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    logit_standardization: bool = False
    strong_terms_on_strong_view: bool = False  # False = the reference (see mlkd_terms)
    strong_ops: int = 2  # RandAugment operations per image of the strong view
    cutout: float = 0.5  # largest Cutout side, as a fraction of the width (0 = none)

    RANGES = {"strong_ops": (0, None), "cutout": (0.0, 1.0)}

    def problems(self) -> list[str]:
        found = super().problems()
        if not self.temperatures or any(not math.isfinite(t) or t <= 0 for t in self.temperatures):
            found.append(f"temperatures={self.temperatures} must be a non-empty list of numbers > 0")
        if not any((self.ce_weight, self.kd_weight)):
            found.append("ce_weight and kd_weight are all 0: the student would learn nothing")
        return found


@register_method("mlkd")
class MLKD(Method[MLKDConfig]):
    """Multi-level logit distillation on a weak and a RandAugment strong view (instance, batch, class level)."""

    # augment_batch adds the strong view; the teacher runs live on both views (no cache)
    traits = MethodTraits(kind="response", augments_batches=True)

    def _normalisation(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The data's per-channel mean and std as (1, C, 1, 1); unknown: the inputs are taken to be in [0, 1]."""
        channels = like.shape[1]
        mean = self.info.input_mean or (0.0,) * channels
        std = self.info.input_std or (1.0,) * channels
        mean_tensor = torch.tensor(mean, dtype=like.dtype, device=like.device)[None, :, None, None]  # (1, C, 1, 1)
        return mean_tensor, torch.tensor(std, dtype=like.dtype, device=like.device)[None, :, None, None]

    def strong_view(self, inputs: Tensor, generator: torch.Generator) -> Tensor:
        """RandAugment (:func:`rand_augment`) of the weak view, in the pixel space the data normalisation maps from:
        (B, C, H, W) normalised -> [0, 255] uint8 -> augmented -> normalised again."""
        mean, std = self._normalisation(inputs)
        pixels = ((inputs * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)  # (B, C, H, W)
        augmented = rand_augment(pixels, generator, self.config.strong_ops, self.config.cutout)
        return (augmented.to(inputs.dtype) / 255 - mean) / std

    def augment_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The data pipeline's (crop + flip) batch is the weak view; the strong view goes into ``extras``."""
        strong = self.strong_view(batch.inputs, generator)
        return batch.replace(extras={**batch.extras, "strong_inputs": strong})

    def augmentation_spec(self) -> dict[str, Any]:
        return {"strong_ops": self.config.strong_ops, "cutout": self.config.cutout}

    def training_step(self, batch: Batch) -> StepOutput:
        config = self.config
        strong_inputs = batch.extras.get("strong_inputs")
        if strong_inputs is None:
            raise ValueError("mlkd: the batch has no strong view; pass it through augment_batch (the trainer does)")
        student_weak, student_strong = self.student(batch.inputs), self.student(strong_inputs)  # each (B, K)
        teacher_weak = self.teacher_outputs.of(batch.inputs)
        teacher_strong = self.teacher_outputs.of(strong_inputs)
        instance, class_level, batch_level = mlkd_terms(
            student_weak.float(),
            teacher_weak,
            student_strong.float(),
            teacher_strong,
            list(config.temperatures),
            config.logit_standardization,
            config.strong_terms_on_strong_view,
        )
        losses = {
            "instance": config.kd_weight * instance,
            "class": config.kd_weight * class_level,
            "batch": config.kd_weight * batch_level,
        }
        if config.ce_weight:
            ce = cross_entropy_loss(student_weak, batch.targets) + cross_entropy_loss(student_strong, batch.targets)
            losses["ce"] = config.ce_weight * ce
        return StepOutput(logits=student_weak, losses=losses)
