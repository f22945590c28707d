"""One validation pass over a whole config, before anything is built: every out-of-range or contradictory value
is reported at once, each with what is allowed.

Types and unknown keys are checked when the config is read (:mod:`kdistill.config`); this module checks the
values. Methods add their own rules: :meth:`kdistill.config.MethodConfig.problems` (ranges by field name,
``CHOICES``, ``RANGES``, and overrides for rules across fields). What needs the registries (dataset, model and
method names) is checked by ``kdistill.engine.builders.preflight``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from kdistill.choices import PIPELINES
from kdistill.config import (
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrackConfig,
    TrainConfig,
)

MAX_NAME_LENGTH = 200
MAX_SEED = 2**40  # the seed is scaled by ~1e6 to derive per-epoch generator seeds, which must fit in 64 bits
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
STREAM_DTYPES = ("float16", "bfloat16", "float32")
MLFLOW_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")

Problems = list[str]


def _at_least(where: str, value: float | None, low: float, allow_none: bool = True) -> Problems:
    if value is None:
        return [] if allow_none else [f"{where} must be set"]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where}={value} must be a finite number >= {low:g}"]
    return [] if value >= low else [f"{where}={value} must be >= {low:g}"]


def _positive(where: str, value: float | None, allow_none: bool = True) -> Problems:
    if value is None:
        return [] if allow_none else [f"{where} must be set"]
    if not math.isfinite(value) or value <= 0:
        return [f"{where}={value} must be a finite number > 0"]
    return []


def name_problems(name: str) -> Problems:
    """A run name is one plain directory name, so its run directory stays inside ``output_dir``."""
    problems = []
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        problems.append(f"name={name!r} must be a plain directory name (no '/', not '', '.' or '..')")
    if len(name) > MAX_NAME_LENGTH:
        problems.append(f"name is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
    return problems


def _data_problems(data: DataConfig) -> Problems:
    problems = _at_least("data.batch_size", data.batch_size, 1) + _at_least(
        "data.eval_batch_size", data.eval_batch_size, 1
    )
    problems += _at_least("data.num_workers", data.num_workers, 0)
    problems += _at_least("data.image_size", data.image_size, 1) + _at_least("data.val_size", data.val_size, 0)
    problems += _at_least("data.labelled", data.labelled, 1)
    problems += _at_least("data.train_subset", data.train_subset, 1) + _at_least(
        "data.test_subset", data.test_subset, 1
    )
    if data.pipeline not in PIPELINES:
        problems.append(f"data.pipeline={data.pipeline!r}; valid: {', '.join(PIPELINES)}")
    if not data.name:
        problems.append("data.name is empty: name a dataset (see `kdistill datasets`)")
    if data.stream_seed is not None and not 0 <= data.stream_seed < MAX_SEED:
        problems.append(f"data.stream_seed={data.stream_seed} must be in [0, 2**40) (or null: the run's seed)")
    return problems


def _model_problems(model: ModelConfig, where: str) -> Problems:
    problems = []
    if not model.name and model.checkpoint is None:
        problems.append(f"{where}.name is empty: give a model name (see `kdistill models`) or a kdistill checkpoint")
    if not model.name and model.checkpoint is not None and model.kwargs:
        problems.append(
            f"{where}.kwargs={model.kwargs} would be ignored: the architecture comes from {where}.checkpoint. "
            f"Set {where}.name as well, or drop the kwargs"
        )
    if model.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", model.sha256):
        problems.append(f"{where}.sha256 must be 64 hexadecimal digits")
    return problems


def _optim_problems(optim: OptimConfig) -> Problems:
    problems = _positive("optim.lr", optim.lr) + _at_least("optim.weight_decay", optim.weight_decay, 0)
    problems += _positive("optim.clip_grad_norm", optim.clip_grad_norm)
    if optim.name not in ("sgd", "adam", "adamw"):
        problems.append(f"optim.name={optim.name!r}; valid: sgd, adam, adamw")
    if not (math.isfinite(optim.momentum) and 0 <= optim.momentum < 1):
        problems.append(f"optim.momentum={optim.momentum} must be in [0, 1)")
    if optim.nesterov and optim.name != "sgd":
        problems.append(
            f"optim.nesterov=true is an SGD option, and optim.name={optim.name!r} (its momentum is optim.betas): "
            "add --set optim.nesterov=false"
        )
    elif optim.nesterov and optim.momentum <= 0:
        problems.append(
            f"optim.nesterov=true needs momentum, and optim.momentum={optim.momentum}: add --set optim.momentum=0.9 "
            "or --set optim.nesterov=false"
        )
    if len(optim.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in optim.betas):
        problems.append(f"optim.betas={optim.betas} must be two numbers in [0, 1)")
    return problems


def _schedule_problems(schedule: ScheduleConfig, lr: float) -> Problems:
    problems = _at_least("schedule.warmup_epochs", schedule.warmup_epochs, 0)
    problems += _at_least("schedule.warmup_steps", schedule.warmup_steps, 0)
    problems += _positive("schedule.gamma", schedule.gamma) + _at_least("schedule.min_lr", schedule.min_lr, 0)
    if schedule.name not in ("constant", "step", "cosine"):
        problems.append(f"schedule.name={schedule.name!r}; valid: constant, step, cosine")
    for key in ("milestones", "milestone_steps"):
        values = getattr(schedule, key)
        if any(v < 0 for v in values):
            problems.append(f"schedule.{key}={values} must not be negative")
    if math.isfinite(schedule.min_lr) and math.isfinite(lr) and schedule.min_lr > lr > 0:
        problems.append(f"schedule.min_lr={schedule.min_lr} is above optim.lr={lr}")
    return problems


def _train_problems(train: TrainConfig) -> Problems:
    problems = _at_least("train.epochs", train.epochs, 1) + _at_least("train.eval_every", train.eval_every, 1)
    problems += _at_least("train.checkpoint_every", train.checkpoint_every, 1)
    problems += _at_least("train.checkpoint_every_steps", train.checkpoint_every_steps, 1)
    problems += _positive("train.checkpoint_every_minutes", train.checkpoint_every_minutes)
    problems += _at_least("train.keep_checkpoints", train.keep_checkpoints, 0)
    problems += _at_least("train.max_steps_per_epoch", train.max_steps_per_epoch, 1)
    problems += _at_least("train.max_skipped_steps", train.max_skipped_steps, 0)
    if not DEVICE_PATTERN.match(train.device):
        problems.append(f"train.device={train.device!r}; valid: auto, cpu, cuda, cuda:N, mps")
    if train.on_nan not in ("stop", "skip"):
        problems.append(f"train.on_nan={train.on_nan!r}; valid: stop, skip")
    problems += _at_least("train.teacher_views", train.teacher_views, 1)
    problems += _at_least("train.teacher_stream_topk", train.teacher_stream_topk, 1)
    problems += _at_least("train.teacher_stream_max_gb", train.teacher_stream_max_gb, 0, allow_none=False)
    if train.teacher_stream_dtype not in STREAM_DTYPES:
        problems.append(f"train.teacher_stream_dtype={train.teacher_stream_dtype!r}; valid: {', '.join(STREAM_DTYPES)}")
    return problems


def _track_problems(track: TrackConfig) -> Problems:
    uri = track.mlflow_tracking_uri
    if uri is None or not track.mlflow:
        return []
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in MLFLOW_SCHEMES:
        return [
            f"track.mlflow_tracking_uri={uri!r} is not a tracking URI MLflow can use; e.g. sqlite:///runs/mlflow.db, "
            f"file:///path/mlruns or http://host:5000 (schemes: {', '.join(MLFLOW_SCHEMES)})"
        ]
    return []


def config_problems(config: Config) -> Problems:
    """Every problem with the values of ``config`` (empty when it is valid)."""
    problems = name_problems(config.name)
    if not 0 <= config.seed < MAX_SEED:
        problems.append(f"seed={config.seed} must be in [0, 2**40)")
    if not config.output_dir:
        problems.append("output_dir is empty: give a directory for the run directories")
    checks: list[Callable[[], Problems]] = [
        lambda: _data_problems(config.data),
        lambda: _model_problems(config.student, "student"),
        lambda: _optim_problems(config.optim),
        lambda: _schedule_problems(config.schedule, config.optim.lr),
        lambda: _train_problems(config.train),
        lambda: _track_problems(config.track),
        lambda: [f"method.{problem}" for problem in config.method.problems()],
    ]
    for check in checks:
        problems += check()
    for i, teacher in enumerate(config.teachers()):
        problems += _model_problems(teacher, "teacher" if i == 0 else f"extra_teachers[{i - 1}]")
    return problems
