"""SimKD: align the student's final feature map to the teacher's through a projector and reuse the
teacher's frozen classifier for the student's predictions.

Chen et al., "Knowledge Distillation with the Reused Teacher Classifier" (CVPR 2022, arXiv:2203.14001);
reference code DefangChen/SimKD (``models/util.py`` class ``SimKD``, ``helper/loops.py``).

Training: loss = MSE(P(f_s), f_t) (``nn.MSELoss()``: the mean over B, C, H, W), CE and KD weights 0.
Inference (``forward``, ``student_for_export``): student encoder -> projector -> teacher classifier head.

Variants (seed 003), all by config:

- ``loss``: ``l2`` (the paper), ``cosine`` = 1 - cos(vec(P(f_s)), vec(f_t)) per sample, with each
  sample's whole projected map flattened to one vector (C*H*W) (scale-invariant per sample; the seed
  does not define it further), ``kl`` = T^2 KL(softmax(z_t/T) || softmax(z_s/T)) on the logits the
  reused classifier gives for P(f_s) vs the teacher's logits.
- ``projectors``: ``final`` (the paper); ``multi``: one more projector after the student stage at
  about 2/3 of the depth, aligned to the teacher stage at the same relative depth, weighted
  ``multi_weight`` (1/3) while the final one gets 1 - multi_weight (2/3); ``all``: one projector after
  every student stage, stage i aligned to the teacher stage at the same relative depth, equal weights.
  The extra projectors serve training only (inference uses the final one); with ``loss: kl`` they use
  the l2 loss (the teacher classifier only reads the final map).
- ``label_filter``: a sample contributes to the losses only where the teacher's prediction (for several
  teachers, the argmax of their averaged reused-classifier logits) is correct; the losses are averaged
  over the kept samples (0 when none is kept). ``last_kept_fraction`` holds the kept fraction of the last
  batch, ``kept_samples`` / ``seen_samples`` count since the start of the epoch (a loss-free metric:
  StepOutput carries losses only).
- Several teachers (paper Table 6): ``multi_teacher: per_teacher`` (default) gives every teacher its own
  projector and l2 target, the prediction is the average of each teacher classifier applied to its own
  projected map; ``multi_teacher: average`` (our reading of the paper's SimKD_v baseline) uses one
  projector aligned to the average of the teachers' final maps (same shapes required) and averages the
  teachers' classifier outputs on that one map. (The paper's text on this could not be checked here;
  both forms are documented choices.)
- ``projector`` (paper Table 5, resnet32x4 -> resnet8x4: 75.15 / 75.71 / 77.76 / 78.08): ``1x1`` = one 1x1 conv
  C_s -> C_t; ``1x1-1x1`` = 1x1 C_s -> C_t/r, 1x1 -> C_t; ``1x1-dw3x3-1x1`` = the default with the 3x3 conv
  depthwise (``groups = C_t/r``: the line the reference ``models/util.py`` leaves commented out);
  ``1x1-3x3-1x1`` (default) = the reference projector. Every conv without bias and followed by BN + ReLU, as
  the reference's layers. The reference code has only the last two; the first two follow the table's names.
- ``reuse_teacher_stages`` (paper Table S.10, "SimKD+"): k > 0 cuts the student after its stage S-k, projects
  that map to the teacher's stage T-k output (the l2 target), and runs the teacher's last k stages (frozen) and
  its classifier on it. The deployable student is student stages 1..S-k + projector + teacher stages T-k+1..T +
  head. Our reading, from the pruning ratio: k = 1 on resnet32x4 -> resnet8x4 gives 19.15% against S.10's
  19.21% for SimKD+; the reference code has no SimKD+ / SimKD++ and the appendix text was not available here,
  so the layout of the paper's SimKD++ (15.97%) is not reproduced (k = 2 gives 3.80%). Needs models that
  expose ``stage_modules()`` (CIFAR ResNets, cnn) and a single teacher with ``projectors: final``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.methods.accounting import classifier_count
from kdistill.methods.base import Method, MethodTraits, register_method
from kdistill.methods.feature_utils import align_spatial, relative_depth_index, require_maps
from kdistill.models.taps import Features, TappedModel, as_tapped, count_parameters, feature_shapes

LOSSES = ("l2", "cosine", "kl")
PROJECTOR_MODES = ("final", "multi", "all")
PROJECTOR_LAYOUTS = ("1x1", "1x1-1x1", "1x1-dw3x3-1x1", "1x1-3x3-1x1")  # paper Table 5
MULTI_TEACHER_MODES = ("per_teacher", "average")


# ----------------------------------------------------------------------------- losses


def simkd_l2_per_sample(projected: Tensor, target: Tensor) -> Tensor:
    """(B, C, H, W) x2 -> (B,): mean squared error of each sample. Its batch mean is the paper's loss
    ``nn.MSELoss()(P(f_s), f_t)``; 0 exactly when the projected map equals the teacher map."""
    return (projected - target).pow(2).flatten(1).mean(1)


def simkd_cosine_per_sample(projected: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """(B, C, H, W) x2 -> (B,): 1 - cos(vec(P(f_s)), vec(f_t)), each sample's map flattened to C*H*W."""
    return 1.0 - F.cosine_similarity(projected.flatten(1), target.flatten(1), dim=1, eps=eps)


def simkd_kl_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """(B, K) x2 -> (B,): T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) per sample."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1) * temperature**2


def simkd_loss(projected: Tensor, target: Tensor) -> Tensor:
    """The paper's loss: ||f_t - P(f_s)||^2 as ``nn.MSELoss()`` (mean over B, C, H, W)."""
    return F.mse_loss(projected, target)


# ----------------------------------------------------------------------------- modules


def projector_convs(c_s: int, c_t: int, factor: int, layout: str) -> list[nn.Conv2d]:
    """The convolutions of a projector ``layout`` (paper Table 5), all without bias; mid width C_t / r."""
    mid = max(c_t // factor, 1)
    if layout == "1x1":
        return [nn.Conv2d(c_s, c_t, 1, bias=False)]
    if layout == "1x1-1x1":
        return [nn.Conv2d(c_s, mid, 1, bias=False), nn.Conv2d(mid, c_t, 1, bias=False)]
    if layout not in ("1x1-dw3x3-1x1", "1x1-3x3-1x1"):
        raise ConfigError(f"simkd: method.projector={layout!r}; valid: {', '.join(PROJECTOR_LAYOUTS)}")
    groups = mid if layout == "1x1-dw3x3-1x1" else 1
    return [
        nn.Conv2d(c_s, mid, 1, bias=False),
        nn.Conv2d(mid, mid, 3, padding=1, groups=groups, bias=False),
        nn.Conv2d(mid, c_t, 1, bias=False),
    ]


class SimKDProjector(nn.Module):
    """Default (``1x1-3x3-1x1``): 1x1 conv (C_s -> C_t / r) -> BN -> ReLU -> 3x3 conv (pad 1) -> BN -> ReLU ->
    1x1 conv (-> C_t) -> BN -> ReLU; the other layouts of :func:`projector_convs` likewise, each conv + BN + ReLU.

    All convolutions without bias and the 3x3 one not grouped, as in DefangChen/SimKD ``models/util.py``.
    A student map taller than the teacher's is average-pooled to the teacher's (H, W) first (the
    reference's spatial alignment, applied at inference too).
    """

    def __init__(
        self,
        student_shape: tuple[int, ...],
        teacher_shape: tuple[int, ...],
        factor: int = 2,
        layout: str = "1x1-3x3-1x1",
    ) -> None:
        super().__init__()
        (c_s, h_s, _), (c_t, h_t, w_t) = student_shape, teacher_shape
        self.pool_to: tuple[int, int] | None = (h_t, w_t) if h_s > h_t else None
        layers: list[nn.Module] = []
        for conv in projector_convs(c_s, c_t, factor, layout):
            layers += [conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(inplace=True)]
        self.transfer = nn.Sequential(*layers)

    def forward(self, student_map: Tensor) -> Tensor:
        if self.pool_to is not None:
            student_map = F.adaptive_avg_pool2d(student_map, self.pool_to)
        return self.transfer(student_map)  # (B, C_t, H, W)


class AveragedHeads(nn.Module):
    """Several classifier heads on one map: the mean of their logits."""

    def __init__(self, heads: list[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, feature_map: Tensor) -> Tensor:
        return torch.stack([head(feature_map) for head in self.heads]).mean(0)


class SimKDStudent(TappedModel):
    """The deployable SimKD student: student encoder -> projector(s) -> the teachers' frozen classifier heads.

    ``projectors`` has one entry (single teacher, or ``average`` mode) or one per head (``per_teacher``).
    ``forward_features``: stages = the student's stages + [the (first) projected map]; embedding = that
    map pooled as the first head pools it; logits = the mean over heads of head(projected map). The
    student's own classifier is kept in the module (its weights are part of ``student``) but unused.
    """

    def __init__(self, student: TappedModel, projectors: nn.ModuleList, heads: list[nn.Module]) -> None:
        super().__init__()
        if len(projectors) not in (1, len(heads)):
            raise ValueError(f"SimKDStudent: {len(projectors)} projectors for {len(heads)} heads")
        self.student = student
        self.projectors = projectors
        self.heads = nn.ModuleList(heads)

    def projected_maps(self, student_final_map: Tensor) -> list[Tensor]:
        return [projector(student_final_map) for projector in self.projectors]

    def logits_from_maps(self, maps: list[Tensor]) -> Tensor:
        if len(maps) == 1:
            outputs = [head(maps[0]) for head in self.heads]
        else:
            outputs = [head(feature_map) for head, feature_map in zip(self.heads, maps)]
        return outputs[0] if len(outputs) == 1 else torch.stack(outputs).mean(0)

    def forward_features(self, x: Tensor) -> Features:
        student_features = self.student.forward_features(x)
        maps = self.projected_maps(student_features.final_map)
        pool = getattr(self.heads[0], "pool", None)  # the head's own pooling, where it has one
        embedding = pool(maps[0]) if pool is not None else torch.flatten(F.adaptive_avg_pool2d(maps[0], 1), 1)
        return Features(
            stages=[*student_features.stages, maps[0]], embedding=embedding, logits=self.logits_from_maps(maps)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.logits_from_maps(self.projected_maps(self.student.forward_features(x).final_map))

    def classifier_head(self) -> nn.Module:
        if len(self.projectors) > 1:
            raise NotImplementedError("a per-teacher SimKD student has one projected map per teacher: no single head")
        return self.heads[0] if len(self.heads) == 1 else AveragedHeads(list(self.heads))


class ReusedStagesStudent(TappedModel):
    """SimKD+ (``reuse_teacher_stages`` k > 0): the student's first stages -> projector -> the teacher's last k
    stages (frozen) -> the teacher's classifier head. ``stages`` = the student's kept stages, the projected
    map, then each reused teacher stage's output."""

    def __init__(
        self, student_stages: list[nn.Module], projector: nn.Module, teacher_stages: list[nn.Module], head: nn.Module
    ) -> None:
        super().__init__()
        self.student_stages = nn.ModuleList(student_stages)
        self.projector = projector
        self.teacher_stages = nn.ModuleList(teacher_stages)
        self.head = head

    def forward_features(self, x: Tensor) -> Features:
        stages = []
        for stage in self.student_stages:
            x = stage(x)  # (B, C_i, H_i, W_i)
            stages.append(x)
        x = self.projector(x)  # (B, C_t, H, W): the teacher's stage T-k map
        stages.append(x)
        for stage in self.teacher_stages:
            x = stage(x)
            stages.append(x)
        pool = getattr(self.head, "pool", None)
        embedding = pool(x) if pool is not None else torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return Features(stages=stages, embedding=embedding, logits=self.head(x))

    def classifier_head(self) -> nn.Module:
        return self.head


def stage_modules_of(model: nn.Module, who: str) -> list[nn.Module]:
    """A model's per-stage modules (``TappedModel.stage_modules``), or a ConfigError naming those that have them."""
    try:
        return as_tapped(model).stage_modules()
    except NotImplementedError:
        raise ConfigError(
            f"simkd: reuse_teacher_stages needs a {who} that exposes stage_modules() (CIFAR ResNets, cnn); "
            f"{type(model).__name__} does not"
        ) from None


# ----------------------------------------------------------------------------- method


@dataclass
class SimKDConfig(MethodConfig):
    """SimKD's run_distill.sh: -c 0 -d 0 -b 1 -f 2 (CE 0, KD 0, feature loss 1, reduction factor 2)."""

    factor: int = 2  # projector reduction ratio r
    loss: str = "l2"  # l2 | cosine | kl
    projectors: str = "final"  # final | multi | all
    multi_weight: float = 1.0 / 3.0  # ``multi``: weight of the ~2/3-depth projector; the final one gets the rest
    label_filter: bool = False  # only samples the teacher classifies correctly contribute
    multi_teacher: str = "per_teacher"  # per_teacher | average (several teachers)
    projector: str = "1x1-3x3-1x1"  # Table 5: 1x1 | 1x1-1x1 | 1x1-dw3x3-1x1 | 1x1-3x3-1x1
    reuse_teacher_stages: int = 0  # S.10: 0 = SimKD; k > 0 = the teacher's last k stages replace the student's
    weight: float = 1.0  # the SimKD loss (beta)
    ce_weight: float = 0.0  # CE of the reused-classifier logits
    kd_weight: float = 0.0  # Hinton KD of the reused-classifier logits
    temperature: float = 4.0  # for loss=kl and kd_weight

    CHOICES = {
        "loss": LOSSES,
        "projectors": PROJECTOR_MODES,
        "multi_teacher": MULTI_TEACHER_MODES,
        "projector": PROJECTOR_LAYOUTS,
    }
    RANGES = {"factor": (1, None), "multi_weight": (0.0, 1.0), "reuse_teacher_stages": (0, None)}

    def problems(self) -> list[str]:
        found = super().problems()
        if self.reuse_teacher_stages and self.projectors != "final":
            found.append(
                f"reuse_teacher_stages={self.reuse_teacher_stages} works with projectors=final only "
                f"(got {self.projectors!r})"
            )
        return found


@register_method("simkd")
class SimKD(Method[SimKDConfig]):
    """Student encoder -> projector -> the teacher's reused classifier (see the module docstring).

    ``projectors`` = the inference projectors, ``extra_projectors`` = training-only ones."""

    traits = MethodTraits(kind="feature", max_teachers=None)

    def __init__(self, student, teachers, config: SimKDConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        problems = config.problems()
        if problems:
            raise ConfigError(f"simkd: method.{problems[0]}")
        student_shapes = feature_shapes(student, info.input_shape).stages
        teacher_shapes = [feature_shapes(t, info.input_shape).stages for t in self.teachers]
        several = len(self.teachers) > 1
        if several and config.projectors != "final":
            raise ConfigError("simkd: projectors 'multi' / 'all' are implemented for a single teacher")
        self.reuse = config.reuse_teacher_stages  # k: the teacher's last k stages are reused (SimKD+)
        self.student_index, self.teacher_index = self._projected_stages(len(student_shapes), len(teacher_shapes[0]))
        require_maps([student_shapes[self.student_index]], "simkd", "student")
        for shapes in teacher_shapes:
            require_maps([shapes[self.teacher_index]], "simkd", "teacher")
        self.average_teachers = several and config.multi_teacher == "average"
        if self.average_teachers and len({shapes[-1] for shapes in teacher_shapes}) > 1:
            raise ConfigError(
                f"simkd: multi_teacher=average needs equal teacher final maps, got {[s[-1] for s in teacher_shapes]}"
            )
        targets = teacher_shapes[:1] if (self.average_teachers or not several) else teacher_shapes
        self.projectors = nn.ModuleList(
            SimKDProjector(
                student_shapes[self.student_index], shapes[self.teacher_index], config.factor, config.projector
            )
            for shapes in targets
        )
        self._set_extra_projectors(student_shapes, teacher_shapes[0])
        self.last_kept_fraction = 1.0
        self.kept_samples = 0
        self.seen_samples = 0

    def _projected_stages(self, num_s: int, num_t: int) -> tuple[int, int]:
        """(student stage, teacher stage) the inference projector connects: the final maps, or with
        ``reuse_teacher_stages`` k the student's stage S-k and the teacher's stage T-k (1-based)."""
        k = self.reuse
        if not k:
            return -1, -1  # the final maps (each teacher's own last stage)
        if len(self.teachers) != 1:
            raise ConfigError("simkd: reuse_teacher_stages needs a single teacher")
        if k >= min(num_s, num_t):
            raise ConfigError(
                f"simkd: reuse_teacher_stages={k} must be below the student's ({num_s}) and the teacher's ({num_t}) "
                "number of stages"
            )
        stage_modules_of(self.student, "student")
        stage_modules_of(self.teacher, "teacher")
        return num_s - 1 - k, num_t - 1 - k

    def _set_extra_projectors(
        self, student_shapes: list[tuple[int, ...]], teacher_shapes: list[tuple[int, ...]]
    ) -> None:
        """Training-only projectors (``projectors: multi | all``): pairs (student stage, teacher stage) and weights."""
        config = self.config
        num_s, num_t = len(student_shapes), len(teacher_shapes)
        self.extra_pairs: list[tuple[int, int]] = []
        if config.projectors == "multi":
            s = max(0, round(2 * num_s / 3) - 1)
            if s == num_s - 1:
                raise ConfigError(f"simkd: projectors=multi needs a student with at least 2 stages (got {num_s})")
            self.extra_pairs = [(s, max(0, round(2 * num_t / 3) - 1))]
            self.final_weight, self.extra_weights = 1.0 - config.multi_weight, [config.multi_weight]
        elif config.projectors == "all":
            self.extra_pairs = [(i, relative_depth_index(i, num_s, num_t)) for i in range(num_s - 1)]
            self.final_weight, self.extra_weights = 1.0 / num_s, [1.0 / num_s] * (num_s - 1)
        else:
            self.final_weight, self.extra_weights = 1.0, []
        if self.extra_pairs:
            require_maps([student_shapes[i] for i, _ in self.extra_pairs], "simkd", "student")
            require_maps([teacher_shapes[j] for _, j in self.extra_pairs], "simkd", "teacher")
        self.extra_projectors = nn.ModuleList(
            SimKDProjector(student_shapes[i], teacher_shapes[j], config.factor, config.projector)
            for i, j in self.extra_pairs
        )

    # ------------------------------------------------------------------ deployment
    def teacher_heads(self) -> list[nn.Module]:
        return [as_tapped(teacher).classifier_head() for teacher in self.teachers]

    def student_for_export(self) -> SimKDStudent | ReusedStagesStudent:
        """Encoder + inference projector(s) + the teachers' heads (shared with the frozen teachers); with
        ``reuse_teacher_stages``: the student's kept stages + projector + the teacher's last stages + head."""
        if self.reuse:
            student_stages = stage_modules_of(self.student, "student")[: self.student_index + 1]
            teacher_stages = stage_modules_of(self.teacher, "teacher")[self.teacher_index + 1 :]
            return ReusedStagesStudent(student_stages, self.projectors[0], teacher_stages, self.teacher_heads()[0])
        return SimKDStudent(as_tapped(self.student), self.projectors, self.teacher_heads())

    def forward(self, inputs: Tensor) -> Tensor:
        return self.student_for_export()(inputs)

    def deployed_parameters(self) -> dict[str, Any]:
        """Seed 003's count: student as built + inference projector(s) + Delta, where Delta = teacher
        classifier(s) - student classifier (= encoder + projector + reused head; training-only projectors excluded).
        With ``reuse_teacher_stages``: what the deployable chain holds (kept student stages + projector + reused
        teacher stages + head), the student's dropped stages and classifier excluded."""
        projector = count_parameters(self.projectors)
        delta = sum(classifier_count(t) or 0 for t in self.teachers) - (classifier_count(self.student) or 0)
        counts = {
            "params_deployed": count_parameters(self.student) + projector + delta,
            "params_projector": projector,
            "params_training_only_projectors": count_parameters(self.extra_projectors),
            "params_classifier_delta": delta,
        }
        export = self.student_for_export()
        if isinstance(export, ReusedStagesStudent):
            counts["params_deployed"] = count_parameters(export)
            counts["params_reused_teacher_stages"] = count_parameters(export.teacher_stages)
        return counts

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        self.kept_samples = self.seen_samples = 0

    def epoch_metrics(self) -> dict[str, float]:
        """With label filtering: the fraction of the epoch's samples the teacher classified correctly."""
        if not self.config.label_filter or not self.seen_samples:
            return {}
        return {"kept_fraction": self.kept_samples / self.seen_samples}

    # ------------------------------------------------------------------ training
    def _feature_loss(self, projected: Tensor, target: Tensor) -> Tensor:
        if self.config.loss == "cosine":
            return simkd_cosine_per_sample(projected.float(), target.float())
        return simkd_l2_per_sample(projected.float(), target.float())

    def _student_maps(self, inputs: Tensor) -> tuple[list[Tensor], Tensor, Features]:
        """(projected map per projector (B, C_t, H, W), logits (B, K) of the deployable student, the taps that
        the training-only projectors read: the student's own, or with reused stages the chain's)."""
        export = self.student_for_export()
        if isinstance(export, ReusedStagesStudent):
            features = export.forward_features(inputs)
            return [features.stages[self.student_index + 1]], features.logits, features
        student_features = as_tapped(self.student).forward_features(inputs)
        maps = export.projected_maps(student_features.final_map)  # per projector (B, C_t, H, W)
        return maps, export.logits_from_maps(maps), student_features  # logits through the reused classifier(s)

    def _per_sample_feature_loss(
        self, maps: list[Tensor], logits: Tensor, student_features: Features, teacher_features: list[Features]
    ) -> tuple[Tensor, Tensor]:
        """(the SimKD loss per sample (B,), the teachers' averaged logits (B, K))."""
        config = self.config
        teacher_logits = torch.stack([f.logits.float() for f in teacher_features]).mean(0)  # (B, K)
        targets = [f.stages[self.teacher_index].float() for f in teacher_features]
        if self.average_teachers:
            targets = [torch.stack(targets).mean(0)]
        if config.loss == "kl":
            per_sample = simkd_kl_per_sample(logits.float(), teacher_logits, config.temperature)  # (B,)
        else:
            terms = [self._feature_loss(*align_spatial(m, t)) for m, t in zip(maps, targets)]
            per_sample = torch.stack(terms).mean(0)  # (B,)
        per_sample = self.final_weight * per_sample
        for (i, j), weight, projector in zip(self.extra_pairs, self.extra_weights, self.extra_projectors):
            projected, target = align_spatial(projector(student_features.stages[i]), teacher_features[0].stages[j])
            per_sample = per_sample + weight * self._feature_loss(projected, target)
        return per_sample, teacher_logits

    def training_step(self, batch: Batch) -> StepOutput:
        config = self.config
        maps, logits, student_features = self._student_maps(batch.inputs)
        with torch.no_grad():
            teacher_features = [as_tapped(teacher).forward_features(batch.inputs) for teacher in self.teachers]
        per_sample, teacher_logits = self._per_sample_feature_loss(maps, logits, student_features, teacher_features)
        per_sample_terms = {"simkd": config.weight * per_sample}
        if config.ce_weight:
            per_sample_terms["ce"] = config.ce_weight * F.cross_entropy(logits.float(), batch.targets, reduction="none")
        if config.kd_weight:
            per_sample_terms["kd"] = config.kd_weight * simkd_kl_per_sample(
                logits.float(), teacher_logits, config.temperature
            )

        if config.label_filter:
            keep = (teacher_logits.argmax(1) == batch.targets).float()  # (B,)
            kept = keep.sum()
            losses = {k: (v * keep).sum() / kept.clamp(min=1.0) for k, v in per_sample_terms.items()}
            kept_count = int(kept.item())
            self.last_kept_fraction = kept_count / len(batch)
            self.kept_samples += kept_count
            self.seen_samples += len(batch)
        else:
            losses = {k: v.mean() for k, v in per_sample_terms.items()}
        return StepOutput(logits=logits, losses=losses)
