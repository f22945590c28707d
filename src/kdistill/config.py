"""Typed run configuration: dataclasses, YAML loading, dotted ``--set`` overrides.

A run is described by one :class:`Config`. YAML files hold literals only; every key is checked
against the schema (an unknown key fails with the list of valid ones, a value of the wrong type
fails with the expected type). The ``method`` section is typed by the chosen method: each method
registers its own dataclass of hyperparameters into :data:`METHOD_CONFIGS` (``@register_method`` in
``kdistill.methods.base`` does it), so ``method.temperature`` is valid for ``kd`` and an error for ``ce``.
This module does not import the methods: the registry is filled when ``kdistill.methods`` is imported, which the
registry itself does at its first lookup.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

import yaml

from kdistill.contracts import ConfigError
from kdistill.registry import Registry

__all__ = ["ConfigError", "Config", "METHOD_CONFIGS", "MethodConfig", "load_config", "from_dict", "to_dict", "replace"]

# --------------------------------------------------------------------------- schema


@dataclass
class DataConfig:
    """Which dataset, how it is split, augmented and batched."""

    name: str = "fashion_mnist"
    root: str | None = None  # where the files are; None = the dataset's default locations
    augment: str = "none"  # train transform preset (see `kdistill datasets`)
    # how in-memory datasets (CIFAR, the MNIST family, EMNIST, digits) run it: auto = on whole batches as tensor ops
    # (same distributions as torchvision's), batched = that or an error, per_sample = torchvision per image (slower;
    # file-based datasets always take that path, with data.num_workers loader processes)
    pipeline: str = "auto"
    image_size: int | None = None  # resize images to this side length (None = native size)
    val_size: int | None = (
        # samples carved from train for validation when the dataset has no val split (None = dataset default, 0 = none)
        None
    )
    train_subset: int | None = None  # use a seeded random subset of N training samples (quick runs)
    # keep the labels of a seeded N of the training samples, the others are unlabelled (target -1): the few-labels,
    # many-unlabelled-images setting (the same N images as data.train_subset=N with the same seed: the student alone)
    labelled: int | None = None
    test_subset: int | None = None  # evaluate on a seeded random subset of N val/test samples
    batch_size: int = 128
    eval_batch_size: int = 512
    num_workers: int = 0
    download: bool = False  # allow torchvision to download missing files (needs a connection)
    # seed of the data (subsets, sample order, per-sample augmentation, mixup): None = the run's seed. One value shared
    # by all trials makes them see the same data and augmented inputs (only initialisation and dropout vary) and lets
    # the teacher cache serve every trial after the first
    stream_seed: int | None = None


@dataclass
class ModelConfig:
    """A network: a registry name (zoo, ``timm:<name>``, ``torchvision:<name>``) plus its options."""

    name: str = ""  # empty: take the architecture recorded in a kdistill checkpoint
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder arguments, e.g. {hidden: [512]}
    pretrained: bool = False  # load the library's pretrained weights (timm / torchvision)
    checkpoint: str | None = None  # a kdistill run dir/.pt, a plain state dict, or .safetensors
    sha256: str | None = None  # if set, the checkpoint file must have this digest
    # keys to take from a composite checkpoint, e.g. module.student. (mdistiller) ; the prefix is stripped
    checkpoint_key: str | None = None


@dataclass
class MethodConfig:
    """Base of every method's hyperparameter dataclass; ``name`` picks the method.

    A subclass does not repeat the name: ``@register_method("kd")`` sets ``method_name`` on the method's
    config class, and ``name`` defaults to it.
    """

    method_name: ClassVar[str] = ""
    CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {}  # field -> the values it may take
    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {}  # field -> (low, high), inclusive
    name: str = ""

    def __post_init__(self) -> None:
        own = type(self).method_name
        if not self.name:
            self.name = own or "ce"
        elif own and self.name != own:
            raise ConfigError(f"method.name={self.name!r} does not match {type(self).__name__} (method {own!r})")

    def problems(self) -> list[str]:
        """Values out of range (keys without the ``method.`` prefix): every number finite, fields whose name
        contains ``weight`` >= 0, ``temperature`` fields > 0, and the class's ``CHOICES`` and ``RANGES``.
        Subclasses extend it with rules across fields (e.g. not every loss weight zero)."""
        found = []
        for item in dataclasses.fields(self):
            key, value = item.name, getattr(self, item.name)
            if key in self.CHOICES and value not in self.CHOICES[key]:
                found.append(f"{key}={value!r}; valid: {', '.join(map(str, self.CHOICES[key]))}")
            low, high = self.RANGES.get(key, (None, None))
            if "weight" in key:
                low = 0.0 if low is None else low
            found += number_problems(key, value, low, high)
            if "temperature" in key and isinstance(value, (int, float)) and math.isfinite(value) and value <= 0:
                found.append(f"{key}={value} must be > 0")
        return found


def number_problems(where: str, value: Any, low: float | None = None, high: float | None = None) -> list[str]:
    """A number outside [low, high] or not finite (nothing for other values)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where}={value} must be a finite number"]
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        return [f"{where}={value} must be in {bounds}"]
    return []


METHOD_CONFIGS: Registry[type[MethodConfig]] = Registry("method", filled_by="kdistill.methods")


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw | adam
    lr: float = 0.05
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 5e-4  # decoupled for adamw, L2 for sgd/adam
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam/adamw only
    clip_grad_norm: float | None = None  # clip the global gradient norm to this value


@dataclass
class ScheduleConfig:
    """Learning rate per optimisation step: linear warmup, then constant, step or cosine decay."""

    name: str = "cosine"  # constant | step | cosine
    warmup_epochs: float = 0.0  # linear warmup from 0 (converted to steps); or use warmup_steps
    warmup_steps: int = 0
    milestones: list[int] = field(default_factory=list)  # step schedule: epochs at which lr *= gamma
    milestone_steps: list[int] = field(default_factory=list)  # step schedule: optimisation steps at which lr *= gamma
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine floor


@dataclass
class TrainConfig:
    epochs: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16 autocast (CUDA; CPU too, where it pays only with AVX-512 BF16 / AMX)
    # NHWC memory layout of models and image batches: on by default, measured 0.82-0.86x a resnet32x4 -> resnet8x4 step
    # and 0.75x a Fashion-MNIST CNN epoch on a CPU, same accuracy (docs/speed.md); false for the NCHW layout
    channels_last: bool = True
    compile: bool = False  # torch.compile the student and the teachers (in place: checkpoints keep their keys)
    eval_every: int = 1  # evaluate val/test every K epochs (and always after the last)
    checkpoint_every: int = 1  # write last.pt every K epochs (and always after the last)
    checkpoint_every_steps: int | None = None  # also write last.pt every N optimisation steps (exact mid-epoch resume)
    checkpoint_every_minutes: float | None = None  # also write last.pt when this much time passed since the last one
    keep_checkpoints: int = 0  # also keep the newest N per-epoch checkpoints (0 = only last/best)
    max_steps_per_epoch: int | None = None  # cap steps per epoch (smoke tests)
    cache_teacher_outputs: bool = True  # compute teacher logits once when training data is not augmented
    teacher_store: bool = True  # keep teacher logits in <output_dir>/.teacher-cache for later runs (trials, sweeps)
    # teacher logits of augmented epochs in the store too (replayed stream); float16 | bfloat16 | float32 entries
    teacher_stream_dtype: str = "float16"
    teacher_stream_max_gb: float = 20.0  # no stream cache when its entries would need more disk than this
    # many classes: store only each sample's k largest teacher logits (+ log-sum-exp; the rest share the remaining mass)
    teacher_stream_topk: int | None = None
    # FKD-style approximation: the data stream repeats every K epochs (K stored views per sample; teacher paid K times)
    teacher_views: int | None = None
    sync_batchnorm: bool = False  # torchrun: SyncBatchNorm in the student and method modules
    scale_lr_with_world: bool = False  # torchrun: multiply optim.lr by the world size (linear scaling rule)
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; see docs/concepts.md)
    progress: bool = True  # progress bars
    on_nan: str = "stop"  # a NaN/inf loss: stop (last.pt keeps the last good state) | skip (drop that step's update)
    max_skipped_steps: int = 10  # on_nan=skip: stop after this many skipped steps in one run


@dataclass
class TrackConfig:
    """Optional experiment trackers, besides the run directory (always written)."""

    tensorboard: bool = False  # event files in <run dir>/tensorboard (pip install tensorboard)
    mlflow: bool = False  # params, per-epoch metrics, summary, artifacts (pip install 'kdistill[mlflow]')
    mlflow_tracking_uri: str | None = None  # None: SQLite database <output_dir>/mlflow.db
    mlflow_experiment: str = "kdistill"
    mlflow_parent_run_id: str | None = None  # the run is nested under this MLflow run (a sweep's parent run)


@dataclass
class Config:
    """Everything one run needs; ``fit(config)`` reads nothing else."""

    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig | None = None
    extra_teachers: list[ModelConfig] = field(default_factory=list)  # multi-teacher methods
    method: MethodConfig = field(default_factory=lambda: method_config_class("ce")())
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def teachers(self) -> list[ModelConfig]:
        return ([self.teacher] if self.teacher is not None else []) + list(self.extra_teachers)

    def stream_seed(self) -> int:
        """The data stream's seed: ``data.stream_seed``, or the run's seed when that is unset."""
        return self.seed if self.data.stream_seed is None else self.data.stream_seed

    def stream_epoch(self, epoch: int) -> int:
        """Which epoch of the data stream training epoch ``epoch`` replays (``train.teacher_views`` cycles them)."""
        views = self.train.teacher_views
        return epoch if views is None else epoch % views


# --------------------------------------------------------------------------- parsing


def method_config_class(name: str) -> type[MethodConfig]:
    """The hyperparameter dataclass registered for method ``name``."""
    try:
        return METHOD_CONFIGS.get(name)
    except KeyError as error:
        raise ConfigError(f"method.name: {error.args[0]}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in that type."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_convert(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp) or (Any, Any)
        # keys are checked too: YAML reads `kwargs=?` as {None: None}, which no builder takes as keyword arguments
        return {
            _convert(key, key_type, f"{where} (a key)"): _convert(item, value_type, f"{where}.{key}")
            for key, item in value.items()
        }
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string: accept numeric text
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if cls is MethodConfig or (isinstance(cls, type) and issubclass(cls, MethodConfig) and "name" in data):
        cls = method_config_class(str(data.get("name", "ce")))
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' of ' + where if where else ''}: {', '.join(names)}"
        )
    kwargs = {key: _convert(value, hints[key], f"{where}.{key}" if where else key) for key, value in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)``; the value is parsed as a YAML literal."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: value is not a YAML literal ({error})") from None
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    data = copy.deepcopy(data)
    keys = set()
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
        keys.add(key)
    _switch_optimizer(data, keys)
    return data


def _switch_optimizer(data: dict[str, Any], overridden: set[str]) -> None:
    """An override that switches ``optim.name`` from SGD to another optimizer turns the SGD-only
    ``optim.nesterov`` off, unless the same overrides set it: ``--set optim.name=adam`` on a config written for
    Nesterov SGD just works, and the resolved config records ``nesterov: false``, what Adam ran with. Nesterov
    asked for together with Adam stays a refusal (Adam has no Nesterov switch; NAdam is not offered)."""
    optim = data.get("optim")
    if "optim.name" not in overridden or "optim.nesterov" in overridden or not isinstance(optim, dict):
        return
    if optim.get("name") not in ("sgd", None) and optim.get("nesterov") is True:
        optim["nesterov"] = False


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Load a YAML file (or start from ``base`` / the defaults), apply overrides, validate."""
    data: dict[str, Any] = copy.deepcopy(base) if base else {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = _deep_merge(data, loaded)
    data = apply_overrides(data, overrides)
    return from_dict(Config, data)


def _deep_merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "method":
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def dump_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def replace(config: Config, overrides: list[str]) -> Config:
    """A new validated config with dotted overrides applied (the original is untouched)."""
    return from_dict(Config, apply_overrides(to_dict(config), overrides))
