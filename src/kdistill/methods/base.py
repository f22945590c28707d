"""The method interface: how a student learns (from teachers, peers, itself, or labels only).

A method is an ``nn.Module`` holding the student, the frozen teachers and any learnable parts of
its own (regressors, projectors, memories). The trainer calls only what is defined here:

- ``training_step(batch) -> StepOutput``: the losses of one batch, already weighted;
- ``forward(inputs) -> logits``: the deployable student's prediction (used by evaluation);
- ``student_for_export()`` and ``deployed_parameters()``: what is deployed, and its parameter count;
  ``deployables()``: every deployed network by name, when a method trains several (mutual learning's peers);
- hooks the method may override: ``on_epoch_start``, ``augment_batch`` (batch-level augmentation run on
  the device, e.g. mixup), ``epoch_metrics``.

What a method needs and does is declared once, in a :class:`MethodTraits` (class attribute ``traits``;
``resolve_traits`` may refine it from the method's config). Its hyperparameters are the config class given
as the type argument (``class KD(Method[KDConfig])``), and its name is given once, in ``@register_method``.
Teachers' logits come from ``self.teacher_outputs``: the teachers run live, or a cache the trainer attached.

Response-, feature- and relation-based methods differ only in ``training_step``; offline methods
pass frozen teachers, online methods (mutual learning) hold trainable peers as their own
submodules, and self-distillation needs no teacher at all.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from kdistill.config import METHOD_CONFIGS, MethodConfig
from kdistill.contracts import Batch, DataInfo, StepOutput
from kdistill.models.taps import count_parameters
from kdistill.registry import Registry

ConfigT = TypeVar("ConfigT", bound=MethodConfig)
MethodT = TypeVar("MethodT", bound="type[Method[Any]]")
METHODS: Registry[type[Method[Any]]] = Registry("method")

KINDS = ("labels", "response", "feature", "relation")
TRAINING_MODES = ("offline", "online", "self")


@dataclass(frozen=True)
class MethodTraits:
    """What a method needs from the data and the teachers, declared in one place."""

    kind: str = "response"  # labels | response | feature | relation (seed 003's taxonomy)
    training: str = "offline"  # offline (frozen teachers) | online (trainable peers) | self (no teacher)
    needs_teacher: bool = True  # at least one teacher must be configured
    max_teachers: int | None = 1  # None = any number (multi-teacher methods)
    uses_labels: bool = True  # False: the loss never reads targets (train accuracy is not logged)
    teacher_logits_only: bool = False  # only the teachers' logits are read: they may be served from a cache
    augments_batches: bool = False  # augment_batch changes the inputs (mixup, crops on the device)
    # the loss takes unlabelled samples (target -1, data.labelled): labels enter only through cross_entropy_loss
    partial_labels: bool = False
    # some trainable parameters get no gradient in some steps (initialisation phases): DDP then looks for them
    unused_parameters: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.training not in TRAINING_MODES:
            raise ValueError(f"MethodTraits: kind must be one of {KINDS}, training one of {TRAINING_MODES}")


def register_method(name: str) -> Callable[[MethodT], MethodT]:
    """Class decorator: ``@register_method("kd")`` makes the method available as ``method.name: kd``.

    The name is written only here: it is set on the class and on its config class, which is registered
    for the config schema (:data:`kdistill.config.METHOD_CONFIGS`).
    """

    def decorator(cls: MethodT) -> MethodT:
        config_class = cls.config_class
        # a config subclassing another method's config (a variant) inherits its name: only its own counts
        if config_class is MethodConfig or vars(config_class).get("method_name", "") not in ("", name):
            raise TypeError(f"method {name!r} needs its own config class: class {cls.__name__}(Method[<Config>])")
        cls.name = name
        config_class.method_name = name
        METHOD_CONFIGS.register(name)(config_class)
        METHODS.register(name)(cls)
        return cls

    return decorator


def _config_type_argument(cls: type) -> type[MethodConfig] | None:
    """The MethodConfig subclass given as type argument in ``cls``'s own bases (``Method[KDConfig]``), if any (a
    subclass of a method inherits its parent's ``__orig_bases__``, which must not override its own config_class)."""
    for base in vars(cls).get("__orig_bases__", ()):
        for argument in typing.get_args(base):
            if isinstance(argument, type) and issubclass(argument, MethodConfig):
                return argument
    return None


def teacher_inputs(batch: Batch) -> Tensor:
    """What the teachers see of a batch: ``extras["teacher_inputs"]`` when a method's batch augmentation gave them
    other pixels than the student (function matching's independent noise, fixed teacher), else the inputs."""
    return batch.extras.get("teacher_inputs", batch.inputs)


class TeacherOutputs:
    """The teachers' logits, computed live from the inputs (no gradient).

    With several teachers the logits are the log of their mean probabilities (the ensemble).
    """

    def __init__(self, teachers: Iterable[nn.Module]) -> None:
        self.teachers = list(teachers)
        self.live_samples = 0  # inputs the teachers ran on (since the last reset_counts)
        self.hits = 0  # samples served from a cache

    def reset_counts(self) -> None:
        self.live_samples = self.hits = 0

    def of(self, inputs: Tensor) -> Tensor:
        """Logits (B, K) of the teachers for ``inputs``, computed under ``torch.inference_mode`` (no autograd
        bookkeeping at all) and returned as an ordinary tensor that losses may use."""
        self.live_samples += inputs.shape[0]
        with torch.inference_mode():
            outputs = [teacher(inputs).float() for teacher in self.teachers]
            if len(outputs) == 1:
                logits = outputs[0]
            else:
                log_probs = torch.stack([o.log_softmax(dim=1) for o in outputs])  # (N_teachers, B, K)
                logits = torch.logsumexp(log_probs, dim=0) - math.log(len(outputs))
        return logits.clone()  # an inference tensor cannot be saved for the student's backward; a copy can

    def logits(self, batch: Batch) -> Tensor:
        """Logits (B, K) for what the teachers see of the batch (:func:`teacher_inputs`)."""
        return self.of(teacher_inputs(batch))

    def start_epoch(self, epoch: int, from_start: bool) -> None:
        """Called by the trainer before each epoch (``epoch``: the data stream's epoch; ``from_start``: not a resume
        in its middle); a cache of augmented epochs opens that epoch's logits here."""

    def finish_epoch(self) -> None:
        """Called by the trainer after each epoch."""

    def usage(self) -> dict[str, Any]:
        """Counts for the run summary beyond hits and live samples."""
        return {}


class CachedTeacherOutputs(TeacherOutputs):
    """Logits precomputed by the trainer for every training sample, served by sample index.

    Only valid for inputs the cache was computed on: the trainer attaches it only when neither the data
    pipeline nor the method augments (see ``kdistill.engine.teacher_cache``).
    """

    def __init__(self, teachers: Iterable[nn.Module], table: Tensor) -> None:
        super().__init__(teachers)
        self.table = table  # (N_train, K)

    def logits(self, batch: Batch) -> Tensor:
        self.hits += len(batch)
        return self.table[batch.indices]  # (B, K)


class Method(nn.Module, Generic[ConfigT]):
    """Base class. Subclass as ``class X(Method[XConfig])`` and implement ``training_step``."""

    name: ClassVar[str] = "base"
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    traits: MethodTraits = MethodTraits()  # the class declares it; an instance may refine it (resolve_traits)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = _config_type_argument(cls)
        if declared is not None:
            cls.config_class = declared

    def __init__(self, student: nn.Module, teachers: list[nn.Module], config: ConfigT, info: DataInfo) -> None:
        super().__init__()
        self.student = student
        self.config: ConfigT = config
        self.info = info
        self.teachers = nn.ModuleList(teachers)
        for teacher in self.teachers:
            teacher.eval()
            teacher.requires_grad_(False)
        self.teacher_outputs: TeacherOutputs = TeacherOutputs(self.teachers)
        self.current_epoch = 0
        self.num_epochs = 1
        self.traits = self.resolve_traits()

    def resolve_traits(self) -> MethodTraits:
        """The traits of this instance; override to derive them from the config (e.g. mixup on or off)."""
        return type(self).traits

    def refined_traits(self, **changes: Any) -> MethodTraits:
        """The class's traits with ``changes`` (for ``resolve_traits``)."""
        return dataclass_replace(type(self).traits, **changes)

    # ------------------------------------------------------------------ teachers
    @property
    def teacher(self) -> nn.Module:
        return self.teachers[0]

    def train(self, mode: bool = True) -> Method[ConfigT]:
        super().train(mode)
        for teacher in self.teachers:
            teacher.eval()  # frozen teachers keep BN statistics and dropout off
        return self

    def teacher_logits(self, batch: Batch) -> Tensor:
        """The teachers' logits (B, K) for the batch's inputs: live, or from the trainer's cache."""
        return self.teacher_outputs.logits(batch)

    def attach_teacher_cache(self, table: Tensor) -> None:
        """Serve ``teacher_logits`` from precomputed logits (N_train, K), indexed by sample."""
        self.teacher_outputs = CachedTeacherOutputs(self.teachers, table)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Batch) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement training_step")

    def augment_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Batch-level augmentation on the device (mixup, crops); declare ``augments_batches`` with it."""
        return batch

    def augmentation_spec(self) -> dict[str, Any]:
        """What decides ``augment_batch``'s output besides the inputs and the generator (a teacher cache of
        augmented epochs is keyed by it). Default: the whole method config when the method augments batches (a
        change of any hyperparameter then misses the cache); override to name only the augmentation's settings."""
        return dataclasses.asdict(self.config) if self.traits.augments_batches else {}

    def epoch_metrics(self) -> dict[str, float]:
        """Loss-free numbers of the epoch just trained, logged as ``train_<key>`` (e.g. SimKD's kept fraction)."""
        return {}

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called before each epoch (0-based), e.g. for loss-weight warmups."""
        self.current_epoch = epoch
        self.num_epochs = num_epochs

    # ------------------------------------------------------------------ deployment
    def forward(self, inputs: Tensor) -> Tensor:
        """Logits of the deployable student (what evaluation and export measure)."""
        return self.student(inputs)

    def student_for_export(self) -> nn.Module:
        """The module saved as the final student. SimKD returns encoder + projector + teacher head."""
        return self.student

    def deployables(self) -> dict[str, nn.Module]:
        """Every network this method deploys, by name; the first is what ``forward`` and ``student_for_export``
        give (``student.pt``). Online methods (mutual learning) return each trained peer: with more than one, the
        trainer evaluates each (``test_acc_<name>``, ...) and exports each (``<name>.pt``) besides ``student.pt``."""
        return {"student": self.student_for_export()}

    def deployed_parameters(self) -> dict[str, Any]:
        """``params_deployed`` (what inference needs) and any method-specific counts behind it."""
        return {"params_deployed": count_parameters(self.student)}

    def trainable_parameters(self) -> list[nn.Parameter]:
        teacher_ids = {id(p) for p in self.teachers.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in teacher_ids]
