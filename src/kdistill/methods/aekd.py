"""AEKD and AEKD-F: several teachers, weighted per batch by the min-norm point of their gradients.

Du et al., "Agree to Disagree: Adaptive Ensemble Knowledge Distillation in Gradient Space" (NeurIPS 2020);
reference code AnTuo1998/AE-KD (``helper/loops.py`` ``train_distill_Multi_teacher``, ``helper/optimization.py``
``find_optimal_svm``, ``train_student.py``). (DefangChen/SimKD, whose Table 6 compares AEKD / AEKD-F, has no
implementation of it.)

For teachers m = 1..M with KD losses L_m = T^2 KL(p_t^m || p_s) (batch mean) and g_m = dL_m / dz_s, the gradient
w.r.t. the student logits averaged over the batch's rows (the reference's ``mean(dim=1)`` of the (M, B, K) hook
gradients), the weights solve

    alpha* = argmin_alpha || sum_m alpha_m g_m ||^2   s.t.  sum_m alpha_m = 1,  0 <= alpha_m <= C,

the dual of a one-class SVM with the Gram matrix G = [g_m . g_n] as precomputed kernel and nu = 1 / (C M) (the
reference solves it with scikit-learn's ``OneClassSVM``; dual_coef / (M nu) = alpha). The reference clips nu to
[1/M, 1], i.e. the cap to C' = min(max(C, 1/M), 1). With ``normalize_gradients`` (the reference's ``--svm_norm``)
G is built from g_m / ||g_m|| and the weights are alpha_m / ||g_m||, renormalised to sum 1. The loss is

    L = ce_weight * CE + kd_weight * sum_m alpha*_m L_m  (+ feature_weight * sum_m beta*_m H_m for AEKD-F),

with the weights treated as constants. AEKD-F adds FitNet hints H_m = MSE(r_m(f_s), f_t^m) from one student
stage (``hint_layer``, numbered as FitNet's: 2 = the second stage) through a regressor r_m per teacher, weighted
by the same min-norm rule over the gradients dH_m / df_s (w.r.t. the shared student map, as the reference's hook
on ``feat_s[hint_layer]``); as in the reference the hint term is left out in the first epoch.

Defaults from AE-KD's ``train_student.py``: CE 1 (``-r``), KD 0.9 (``-a``), T 4, C 0.6 (``-C``), no gradient
normalisation, hint weight 0 (``-b``: AEKD; the README gives 100, which the AEKD-F configs use), hint layer 2.
Departure: the KD gradients g_m come from their closed form T (p_s - p_t^m) / B per row instead of backward hooks
(the same numbers, checked against autograd in tests/test_aekd.py), and the QP is solved with SciPy's SLSQP
rather than libsvm (checked against scikit-learn's OneClassSVM in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from torch import Tensor, nn

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.methods.base import Method, MethodTraits, register_method
from kdistill.methods.ce import cross_entropy_loss
from kdistill.methods.feature_utils import map_shape, require_maps
from kdistill.methods.fitnet import ConvRegressor, hint_loss
from kdistill.methods.kd import kd_loss
from kdistill.models.taps import Features, as_tapped, feature_shapes

# ----------------------------------------------------------------------------- losses


def kd_logit_gradient(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """(B, K) x2 -> (B, K): d kd_loss / d student_logits = T (softmax(z_s / T) - softmax(z_t / T)) / B."""
    batch_size = student_logits.shape[0]
    difference = F.softmax(student_logits / temperature, dim=1) - F.softmax(teacher_logits / temperature, dim=1)
    return temperature * difference / batch_size


def _min_quadratic_on_capped_simplex(gram: np.ndarray, cap: float) -> np.ndarray:
    """argmin_a 1/2 a^T G a over {sum a = 1, 0 <= a <= cap}, started (and, where flat, left) at the uniform point."""
    count = gram.shape[0]
    start = np.full(count, 1.0 / count)
    scale = float(np.abs(gram).max())
    if count == 1 or scale == 0.0:
        return start
    scaled = gram / scale  # the solver's tolerances are absolute
    result = minimize(
        lambda a: 0.5 * a @ scaled @ a,
        start,
        jac=lambda a: scaled @ a,
        bounds=[(0.0, cap)] * count,
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones_like(a)}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 500},
    )
    weights = np.clip(result.x, 0.0, cap)
    return weights / weights.sum()


def min_norm_weights(gradients: Tensor, max_weight: float = 0.6, normalize: bool = False) -> Tensor:
    """AE-KD's teacher weights (module docstring): (M, D) gradient vectors -> (M,) weights summing to 1, the
    minimiser of ||sum_m a_m g_m||^2 on the simplex with every a_m <= min(max(max_weight, 1/M), 1)."""
    count = gradients.shape[0]
    vectors = gradients.detach().double().reshape(count, -1).cpu()  # (M, D)
    norms = vectors.norm(dim=1).clamp_min(1e-12)  # (M,)
    if normalize:
        vectors = vectors / norms[:, None]
    cap = min(max(max_weight, 1.0 / count), 1.0)
    weights = _min_quadratic_on_capped_simplex((vectors @ vectors.T).numpy(), cap)
    if normalize:
        weights = weights / norms.numpy()
        weights = weights / weights.sum()
    return torch.as_tensor(weights, dtype=torch.float32, device=gradients.device)


def aekd_loss(per_teacher_losses: Tensor, weights: Tensor) -> Tensor:
    """sum_m w_m L_m for (M,) losses and (M,) constant weights (no gradient flows into the weights)."""
    return (weights.detach() * per_teacher_losses).sum()


# ----------------------------------------------------------------------------- method


@dataclass
class AEKDConfig(MethodConfig):
    """AnTuo1998/AE-KD ``train_student.py`` defaults (-r 1 -a 0.9 -b 0 -C 0.6, T 4); feature_weight > 0 = AEKD-F."""

    ce_weight: float = 1.0
    kd_weight: float = 0.9
    temperature: float = 4.0
    max_weight: float = 0.6  # C: the cap on each teacher's weight (tolerance for disagreement)
    normalize_gradients: bool = False  # the reference's --svm_norm
    feature_weight: float = 0.0  # AEKD-F: weight of the adaptively weighted FitNet hints
    hint_layer: int = 2  # the student and teacher stage of the hints (1-based, as FitNet's)
    hint_warmup_epochs: int = 1  # epochs without the hint term (the reference skips it in epoch 1)

    RANGES = {"max_weight": (0.0, None), "hint_layer": (1, None), "hint_warmup_epochs": (0, None)}

    def problems(self) -> list[str]:
        found = super().problems()
        if not any((self.ce_weight, self.kd_weight, self.feature_weight)):
            found.append("ce_weight, kd_weight and feature_weight are all 0: the student would learn nothing")
        return found


@register_method("aekd")
class AEKD(Method[AEKDConfig]):
    """KD from several teachers weighted per batch by the min-norm point of their gradients (AEKD; AEKD-F adds
    hints weighted the same way)."""

    traits = MethodTraits(kind="response", max_teachers=None)

    def __init__(self, student, teachers, config: AEKDConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        problems = config.problems()
        if problems:
            raise ConfigError(f"aekd: method.{problems[0]}")
        self.regressors = nn.ModuleList()
        if config.feature_weight > 0:
            student_shapes = feature_shapes(student, info.input_shape).stages
            teacher_shapes = [feature_shapes(t, info.input_shape).stages for t in self.teachers]
            index = config.hint_layer - 1
            if index >= min(len(shapes) for shapes in [student_shapes, *teacher_shapes]):
                raise ConfigError(f"aekd: hint_layer={config.hint_layer} is beyond the student's or a teacher's stages")
            require_maps([student_shapes[index]], "aekd", "student")
            require_maps([shapes[index] for shapes in teacher_shapes], "aekd", "teacher")
            self.regressors = nn.ModuleList(
                ConvRegressor(map_shape(student_shapes[index]), map_shape(shapes[index])) for shapes in teacher_shapes
            )
        self.weight_sum = torch.zeros(len(self.teachers))
        self.weight_steps = 0
        self.last_weights = torch.full((len(self.teachers),), 1.0 / max(len(self.teachers), 1))

    def resolve_traits(self) -> MethodTraits:
        return self.refined_traits(kind="feature" if self.config.feature_weight > 0 else "response")

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        self.weight_sum.zero_()
        self.weight_steps = 0

    def epoch_metrics(self) -> dict[str, float]:
        """The KD weight each teacher got, averaged over the epoch's steps."""
        if not self.weight_steps:
            return {}
        return {f"teacher_weight_{m}": float(w) / self.weight_steps for m, w in enumerate(self.weight_sum)}

    def hints_on(self) -> bool:
        return self.config.feature_weight > 0 and self.current_epoch >= self.config.hint_warmup_epochs

    def hint_term(self, student_features: Features, teacher_features: list[Features]) -> Tensor:
        """sum_m beta*_m H_m, the weights from the hints' gradients w.r.t. the shared student map."""
        index = self.config.hint_layer - 1
        student_map = student_features.stages[index]  # (B, C_s, H_s, W_s)
        terms = []
        for regressor, features in zip(self.regressors, teacher_features):
            regressed, target = regressor(student_map, features.stages[index].float())
            terms.append(hint_loss(regressed.float(), target))
        if student_map.requires_grad:
            gradients = [torch.autograd.grad(t, student_map, retain_graph=True)[0] for t in terms]
            vectors = torch.stack([g.flatten(1).mean(0) for g in gradients])  # (M, C_s H_s W_s)
            weights = min_norm_weights(vectors, self.config.max_weight, self.config.normalize_gradients)
        else:  # evaluated without autograd: no gradients to weigh by
            weights = torch.full((len(terms),), 1.0 / len(terms), device=student_map.device)
        return aekd_loss(torch.stack(terms), weights)

    def kd_term(self, student_logits: Tensor, teacher_logits: list[Tensor]) -> Tensor:
        """sum_m alpha*_m L_m, the weights from the KD gradients w.r.t. the student logits."""
        temperature = self.config.temperature
        logits = student_logits.float()
        losses = torch.stack([kd_loss(logits, t, temperature) for t in teacher_logits])  # (M,)
        vectors = torch.stack([kd_logit_gradient(logits.detach(), t, temperature).mean(0) for t in teacher_logits])
        weights = min_norm_weights(vectors, self.config.max_weight, self.config.normalize_gradients)  # (M,)
        self.last_weights = weights.detach().cpu()
        self.weight_sum += self.last_weights
        self.weight_steps += 1
        return aekd_loss(losses, weights)

    def training_step(self, batch: Batch) -> StepOutput:
        config = self.config
        hints = self.hints_on()
        student_features = as_tapped(self.student).forward_features(batch.inputs)
        with torch.no_grad():
            teacher_features = [as_tapped(t).forward_features(batch.inputs) for t in self.teachers]
        logits = student_features.logits  # (B, K)
        losses: dict[str, Tensor] = {}
        if config.ce_weight:
            losses["ce"] = config.ce_weight * cross_entropy_loss(logits, batch.targets)
        if config.kd_weight:
            losses["kd"] = config.kd_weight * self.kd_term(logits, [f.logits.float() for f in teacher_features])
        if hints:
            losses["hint"] = config.feature_weight * self.hint_term(student_features, teacher_features)
        if not losses:  # AEKD-F with only the hint weight, in its warmup epoch
            losses["hint"] = logits.sum() * 0.0
        return StepOutput(logits=logits, losses=losses)
