"""What a run is built from: the device, the architectures named in the config, and the method with its
student and teachers (checked against what the method declares it needs)."""

from __future__ import annotations

import contextlib
from dataclasses import replace as dataclass_replace
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.checks import config_problems
from kdistill.config import Config, ModelConfig, TrainConfig
from kdistill.contracts import ConfigError, DataInfo
from kdistill.data import DATASETS
from kdistill.data.transforms import PRESETS
from kdistill.engine.run_dir import output_problems
from kdistill.methods import METHODS, Method, MethodTraits
from kdistill.models import InputSpec, build_model
from kdistill.models.loading import architecture_from_checkpoint
from kdistill.models.registry import MODEL_SOURCES, MODELS
from kdistill.registry import Registry


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA device that is not there is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu or auto")
    return device


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA or the CPU when ``enabled``; a no-op otherwise."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_architectures(config: Config) -> Config:
    """Fill empty model names from their kdistill checkpoints so config.yaml names every architecture."""

    def resolve(model: ModelConfig, where: str) -> ModelConfig:
        if model.name or model.checkpoint is None:
            return model
        name, kwargs = architecture_from_checkpoint(model.checkpoint, where)
        return dataclass_replace(model, name=name, kwargs=kwargs)

    return dataclass_replace(
        config,
        student=resolve(config.student, "student"),
        teacher=resolve(config.teacher, "teacher") if config.teacher is not None else None,
        extra_teachers=[resolve(t, f"extra_teachers[{i}]") for i, t in enumerate(config.extra_teachers)],
    )


def _registry_problems(config: Config) -> list[str]:
    """Names the registries must know: dataset, augmentation preset, models, method."""
    problems = []
    if config.data.name and config.data.name not in DATASETS:
        problems.append(f"data.name: {_unknown(DATASETS, config.data.name)}")
    if config.data.augment not in PRESETS:
        problems.append(f"data.augment: {_unknown(PRESETS, config.data.augment)}")
    models = [("student", config.student)] + [
        ("teacher" if i == 0 else f"extra_teachers[{i - 1}]", t) for i, t in enumerate(config.teachers())
    ]
    for where, model in models:
        prefix, _, _ = model.name.partition(":")
        registry = MODEL_SOURCES if ":" in model.name else MODELS
        if model.name and prefix not in registry:
            problems.append(f"{where}.name: {_unknown(registry, prefix)}")
    if config.method.name not in METHODS:
        problems.append(f"method.name: {_unknown(METHODS, config.method.name)}")
    return problems


NOMINAL_CLASSES = 10  # the data is not loaded yet: the zoo models' options are checked for this many classes
NOMINAL_SIDE = 224  # ... and images this large (data.image_size when set), so no valid option is refused as "too small"


def _architecture_problems(config: Config) -> list[str]:
    """Each named zoo model built on the ``meta`` device (shapes only: no memory, no weights) with its options, so
    an option it does not take or a size it cannot build is reported with the rest. Checkpoint-defined
    architectures and outside models (``timm:``, ``torchvision:``: their libraries check their own options, when
    the run builds them) are not built here; what depends on the data's real size is checked when the run builds."""
    side = config.data.image_size if config.data.image_size is not None and config.data.image_size > 0 else None
    shape = (3, side or NOMINAL_SIDE, side or NOMINAL_SIDE)
    models = [("student", config.student)] + [
        ("teacher" if i == 0 else f"extra_teachers[{i - 1}]", t) for i, t in enumerate(config.teachers())
    ]
    problems = []
    for where, model in models:
        if not model.name or ":" in model.name or model.name not in MODELS:
            continue  # no name: the checkpoint's architecture; an unknown name is reported by _registry_problems
        shapes_only = dataclass_replace(model, checkpoint=None, checkpoint_key=None, sha256=None)
        try:
            with torch.device("meta"):
                build_model(shapes_only, NOMINAL_CLASSES, shape, where)
        except ConfigError as error:
            problems.append(str(error))
    return problems


def _unknown(registry: Registry[Any], name: str) -> str:
    try:
        registry.get(name)
    except KeyError as error:
        return str(error.args[0])
    return ""


def preflight(config: Config, output: bool = True) -> Config:
    """Every check that needs no data and no weights: the values (:func:`kdistill.checks.config_problems`), the
    names the registries must know, the zoo models' options (:func:`_architecture_problems`), the teacher count
    the method takes and, with ``output``, that the run directory can be written; all problems reported at once."""
    problems = config_problems(config) + _registry_problems(config) + _architecture_problems(config)
    if output:
        problems += output_problems(config)
    if config.method.name in METHODS:
        method_cls = METHODS.get(config.method.name)
        try:
            check_teacher_count(method_cls, len(config.teachers()))
        except ConfigError as error:
            problems.append(str(error))
        problems += _labelled_problems(config, method_cls.traits)
    if problems:
        listing = "\n  - ".join(problems)
        raise ConfigError(f"{len(problems)} problem(s) in the config:\n  - {listing}")
    return config


def _labelled_problems(config: Config, traits: MethodTraits) -> list[str]:
    """``data.labelled`` needs a method whose loss takes unlabelled samples; a label-only method should train on the
    labelled images alone."""
    labelled = config.data.labelled
    if labelled is None:
        return []
    if traits.kind == "labels":
        return [
            f"data.labelled={labelled} with method {config.method.name!r}, which learns from labels only: train on "
            f"the labelled images alone with data.train_subset={labelled} (the same images, same seed) instead"
        ]
    if traits.uses_labels and not traits.partial_labels:
        takes = sorted(name for name in METHODS.names() if _takes_unlabelled(METHODS.get(name).traits))
        return [
            f"data.labelled={labelled}: method {config.method.name!r} needs a label for every sample; methods that "
            f"take unlabelled samples: {', '.join(takes)}"
        ]
    return []


def _takes_unlabelled(traits: MethodTraits) -> bool:
    return traits.kind != "labels" and (traits.partial_labels or not traits.uses_labels)


def method_class(config: Config) -> type[Method[Any]]:
    """The registered method class of ``config.method.name``."""
    try:
        return METHODS.get(config.method.name)
    except KeyError as error:
        raise ConfigError(f"method.name: {error.args[0]}") from None


def check_teacher_count(method_cls: type[Method[Any]], count: int) -> None:
    """A method that needs a teacher gets one; none gets more than it takes."""
    traits = method_cls.traits
    if traits.needs_teacher and not count:
        raise ConfigError(
            f"method {method_cls.name!r} distils from a teacher: set teacher.checkpoint (and teacher.name)"
        )
    if traits.max_teachers is not None and count > traits.max_teachers:
        hint = "; use `kdistill distill` for distillation" if traits.max_teachers == 0 else ""
        raise ConfigError(
            f"method {method_cls.name!r} takes at most {traits.max_teachers} teacher(s), the config gives {count}{hint}"
        )


def build_method(config: Config, info: DataInfo, load_weights: bool = True) -> Method[Any]:
    """Student + teachers + method modules, checked against the method's needs.

    ``load_weights=False`` builds the architectures only (to load an exported state into).
    """
    method_cls = method_class(config)
    teacher_configs = config.teachers()
    check_teacher_count(method_cls, len(teacher_configs))
    student = _build_one(config.student, info, "student", load_weights)
    teachers: list[nn.Module] = []
    for i, teacher_config in enumerate(teacher_configs):
        where = "teacher" if i == 0 else f"extra_teachers[{i - 1}]"
        if load_weights and teacher_config.checkpoint is None and not teacher_config.pretrained:
            raise ConfigError(f"{where}: a teacher needs trained weights: set {where}.checkpoint (or pretrained: true)")
        teachers.append(_build_one(teacher_config, info, where, load_weights))
    return method_cls(student, teachers, config.method, info)


def place_method(method: Method[Any], device: torch.device, train: TrainConfig) -> Method[Any]:
    """The method on ``device``, in the NHWC layout with ``train.channels_last``, its student and teachers compiled
    with ``train.compile`` (in place: the state dict keeps its keys, so checkpoints and resume are unchanged). The
    trainer and ``cache-teacher`` place it alike, so the teacher logits one stores are the ones the other would
    compute (the cache key records both switches)."""
    method = method.to(device)
    if train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if train.compile:
        for model in (method.student, *method.teachers):
            model.compile()  # lazy: a model that never runs (the student in cache-teacher) is never compiled
    return method


def _build_one(model: ModelConfig, info: DataInfo, where: str, load_weights: bool) -> nn.Module:
    """One model for the data ``info`` describes; its input adapter (if any) follows the configured weights
    even when ``load_weights=False`` builds the architecture only."""
    normalization = InputSpec(info.input_mean, info.input_std) if info.input_mean and info.input_std else None
    if load_weights:
        return build_model(model, info.num_classes, info.input_shape, where, normalization)
    bare = dataclass_replace(model, checkpoint=None, pretrained=False)
    return build_model(bare, info.num_classes, info.input_shape, where, normalization, model.pretrained)


def load_method_state(method: Method[Any], state: dict[str, Tensor]) -> None:
    """Load a checkpoint's method state (which omits the frozen teachers)."""
    try:
        missing, unexpected = method.load_state_dict(state, strict=False)
    except RuntimeError as error:  # same names, other shapes: another architecture or width
        first = str(error).split("\n\t")[1:2] or [str(error)]
        raise ConfigError(
            f"checkpoint does not fit the configured models (another architecture or size?): {first[0].strip()}. "
            "Resume with the config the checkpoint was made with, or start a new run (--set name=...)"
        ) from None
    missing = [k for k in missing if not k.startswith("teachers.")]
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint does not match the configured method: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
