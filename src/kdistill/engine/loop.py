"""The one training loop: ``train_one_epoch`` and ``fit`` (build -> epochs -> finish).

``fit(config)`` is a pure function of its config and its run directory (no global state beyond the
RNG seeding it does itself), so sweeps and trials can call it many times in one process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdistill.config import Config
from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput, TrainingDivergedError
from kdistill.data import Data, build_data, make_loader
from kdistill.engine.builders import autocast, build_method, resolve_architectures, resolve_device
from kdistill.engine.checkpoint import checkpoint_payload, restore, save_last
from kdistill.engine.evaluation import evaluate
from kdistill.engine.export import save_student
from kdistill.engine.optim import build_optimizer, build_scheduler
from kdistill.engine.run_dir import RunDir, TrackerFactory
from kdistill.engine.teacher_cache import TeacherReferences, compute_teacher_references, teacher_usage
from kdistill.methods import Method
from kdistill.methods.accounting import parameter_report
from kdistill.runtime.distributed import average_gradients, init_from_environment, is_main_process, reduce_sums
from kdistill.runtime.io import atomic_save
from kdistill.runtime.rng import seed_everything

__all__ = ["EpochSettings", "RunState", "TrainingDivergedError", "fit", "steps_per_epoch", "train_one_epoch"]

Optimizer = torch.optim.Optimizer
Scheduler = torch.optim.lr_scheduler.LRScheduler


# ----------------------------------------------------------------------------- one epoch


@dataclass(frozen=True)
class EpochSettings:
    """What one training epoch needs to know from the config."""

    num_epochs: int = 1  # for the progress bar's label
    max_steps: int | None = None  # cap on steps per epoch (smoke tests)
    clip_grad_norm: float | None = None
    amp: bool = False
    channels_last: bool = False
    progress: bool = True

    @classmethod
    def from_config(cls, config: Config) -> EpochSettings:
        train = config.train
        return cls(
            train.epochs,
            train.max_steps_per_epoch,
            config.optim.clip_grad_norm,
            train.amp,
            train.channels_last,
            train.progress,
        )


def steps_per_epoch(loader: DataLoader, max_steps: int | None) -> int:
    """Optimisation steps in one epoch: the loader's batches, capped by ``train.max_steps_per_epoch``."""
    return len(loader) if max_steps is None else min(len(loader), max_steps)


class _EpochTotals:
    """Sample-weighted sums of the loss terms and the correct predictions of one epoch (on the device)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, Tensor] = {}
        self.correct = torch.zeros((), device=device)
        self.seen = 0

    def add(self, output: StepOutput, loss: Tensor, batch: Batch, uses_labels: bool) -> None:
        size = len(batch)
        self.seen += size
        for key, value in output.losses.items():
            self.sums[key] = self.sums.get(key, torch.zeros((), device=self.device)) + value.detach().float() * size
        self.sums["loss"] = self.sums.get("loss", torch.zeros((), device=self.device)) + loss.detach().float() * size
        if uses_labels:
            self.correct += (output.logits.detach().argmax(1) == batch.targets).sum()

    def running_loss(self) -> float:
        return self.sums["loss"].item() / self.seen

    def diverged(self, epoch: int) -> TrainingDivergedError:
        terms = ", ".join(f"{k}={v.item() / max(self.seen, 1):.4g}" for k, v in self.sums.items())
        return TrainingDivergedError(
            f"the loss became NaN or infinite in epoch {epoch + 1} (running means: {terms}). Nothing was saved from "
            "this epoch; last.pt holds the last good state. Lower optim.lr, set optim.clip_grad_norm, or check the "
            "inputs."
        )

    def result(self, uses_labels: bool, epoch: int) -> dict[str, float]:
        values = {
            **{k: v.item() for k, v in self.sums.items()},
            "correct": self.correct.item(),
            "seen": float(self.seen),
        }
        totals = reduce_sums(values, self.device)
        seen_all = max(totals.pop("seen"), 1.0)
        correct_all = totals.pop("correct")
        result = {f"train_{k}": v / seen_all for k, v in totals.items()}
        if not math.isfinite(result["train_loss"]):
            raise self.diverged(epoch)
        if uses_labels:
            result["train_acc"] = 100.0 * correct_all / seen_all
        return result


def _optimisation_step(
    method: Method[Any], batch: Batch, optimizer: Optimizer, scheduler: Scheduler, settings: EpochSettings
) -> tuple[StepOutput, Tensor]:
    """Forward (under autocast), backward, gradient averaging over ranks, clipping, optimizer and schedule step."""
    parameters = method.trainable_parameters()
    with autocast(batch.inputs.device, settings.amp):
        output = method.training_step(batch)
    loss = output.loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(parameters)
    if settings.clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(parameters, settings.clip_grad_norm)
    optimizer.step()
    scheduler.step()
    return output, loss


def train_one_epoch(
    method: Method[Any],
    loader: DataLoader,
    optimizer: Optimizer,
    scheduler: Scheduler,
    device: torch.device,
    epoch: int,
    generator: torch.Generator,
    settings: EpochSettings,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of every loss term, the total, and train accuracy."""
    method.train()
    totals = _EpochTotals(device)
    steps = steps_per_epoch(loader, settings.max_steps)
    show = settings.progress and is_main_process()
    # disable=None: bars only on a terminal, so logs piped to a file stay readable
    bar = tqdm(
        total=steps, desc=f"epoch {epoch + 1}/{settings.num_epochs}", leave=False, disable=None if show else True
    )
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        batch = method.augment_batch(batch.to(device, channels_last=settings.channels_last), generator)
        output, loss = _optimisation_step(method, batch, optimizer, scheduler, settings)
        totals.add(output, loss, batch, method.traits.uses_labels)
        if step % 20 == 0 or step == steps - 1:
            current = totals.running_loss()
            if not math.isfinite(current):
                raise totals.diverged(epoch)
            bar.set_postfix(loss=f"{current:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        bar.update(1)
    bar.close()
    return totals.result(method.traits.uses_labels, epoch)


def _epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Batch-level augmentation randomness as a function of (seed, epoch): replayable, resumable."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


# ----------------------------------------------------------------------------- the run


@dataclass
class RunState:
    """Everything a run holds between its build, its epochs and its finish."""

    config: Config
    device: torch.device
    data: Data
    info: DataInfo
    method: Method[Any]
    optimizer: Optimizer
    scheduler: Scheduler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    epoch_steps: int
    run: RunDir
    started: float
    start_epoch: int = 0
    best: dict[str, Any] | None = None
    references: TeacherReferences | None = None
    summary_extra: dict[str, Any] | None = None


def _loaders(config: Config, data: Data) -> tuple[DataLoader, dict[str, DataLoader]]:
    data_config = config.data
    train_loader = make_loader(
        data.train, data_config.batch_size, True, config.seed, data_config.num_workers, drop_last=True
    )
    if len(train_loader) == 0:
        num_train = len(data.train)  # type: ignore[arg-type]  # every kdistill dataset has a length
        raise ConfigError(f"data.batch_size={data_config.batch_size} is larger than the training set ({num_train})")
    eval_loaders = {
        split: make_loader(dataset, data_config.eval_batch_size, False, config.seed, data_config.num_workers)
        for split, dataset in (("val", data.val), ("test", data.test))
        if dataset is not None
    }
    return train_loader, eval_loaders


def build_run(config: Config, resume: bool, overwrite: bool, trackers: TrackerFactory | None) -> RunState:
    """Device, data, method, loaders, optimizer and schedule, and the run directory (not yet restored)."""
    started = time.time()
    device = resolve_device(config.train.device)
    init_from_environment(device)
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    config = resolve_architectures(config)
    seed_everything(config.seed)
    data = build_data(config.data, config.seed)
    info = DataInfo(data.num_classes, data.input_shape, len(data.train), config.data.batch_size)  # type: ignore[arg-type]
    method = build_method(config, info).to(device)
    if config.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    train_loader, eval_loaders = _loaders(config, data)
    epoch_steps = steps_per_epoch(train_loader, config.train.max_steps_per_epoch)
    optimizer = build_optimizer(method.trainable_parameters(), config.optim)
    scheduler = build_scheduler(optimizer, config.schedule, epoch_steps, config.train.epochs)
    run = RunDir.for_config(config, resume=resume, overwrite=overwrite, trackers=trackers)
    return RunState(
        config, device, data, info, method, optimizer, scheduler, train_loader, eval_loaders, epoch_steps, run, started
    )


def prepare_run(state: RunState, resume: bool, log: Callable[[str], None]) -> None:
    """Restore ``last.pt`` when resuming, count parameters, compute the teachers' reference logits."""
    restored = restore(state.run, state.method, state.optimizer, state.scheduler, log) if resume else None
    state.start_epoch, state.best = restored or (0, {"epoch": -1, "val_acc": -math.inf})
    accounting = parameter_report(state.method)
    config = state.config
    state.references = compute_teacher_references(
        state.method, state.data, state.eval_loaders, state.device,
        cache_enabled=config.train.cache_teacher_outputs, amp=config.train.amp,
        loader_options=(config.data.eval_batch_size, config.seed, config.data.num_workers),
    )  # fmt: skip
    state.summary_extra = {
        "student_parameters": accounting["params_deployed"],  # what inference needs (SimKD: + projector + teacher head)
        "teacher_parameters": accounting["params_teachers"],
        **accounting,
        **state.references.summary(),
    }


def _evaluate_epoch(state: RunState, epoch: int, record: dict[str, Any]) -> None:
    """Evaluate on val/test into ``record``; keep ``best.pt`` by validation accuracy."""
    assert state.references is not None and state.best is not None
    for split, loader in state.eval_loaders.items():
        teacher_logits = state.references.eval_logits.get(split)
        result = evaluate(state.method, loader, state.device, teacher_logits, state.config.train.amp)
        record.update({f"{split}_{key}": value for key, value in result.items()})
    if "val_acc" in record and record["val_acc"] > state.best["val_acc"]:
        state.best = {"epoch": epoch + 1, "val_acc": record["val_acc"], "test_acc": record.get("test_acc")}
        if is_main_process():
            payload = checkpoint_payload(
                state.method, state.optimizer, state.scheduler, epoch + 1, state.best, state.config
            )
            atomic_save(payload, state.run.best)


def run_epoch(state: RunState, epoch: int, end_epoch: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Train one epoch, evaluate when due, write metrics and checkpoints; returns the epoch's record."""
    config, method = state.config, state.method
    epoch_start = time.time()
    state.train_loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]  # our EpochSampler
    state.train_loader.generator.manual_seed(config.seed * 1_000_003 + epoch)
    method.on_epoch_start(epoch, config.train.epochs)
    record: dict[str, Any] = {
        "epoch": epoch + 1, "step": (epoch + 1) * state.epoch_steps, "lr": state.optimizer.param_groups[0]["lr"]
    }  # fmt: skip
    generator = _epoch_generator(config.seed, epoch, state.device)
    settings = EpochSettings.from_config(config)
    record.update(
        train_one_epoch(
            method, state.train_loader, state.optimizer, state.scheduler, state.device, epoch, generator, settings
        )
    )
    record.update({f"train_{key}": value for key, value in method.epoch_metrics().items()})
    record["train_time_s"] = time.time() - epoch_start
    is_last = epoch + 1 == end_epoch
    if is_last or (epoch + 1) % config.train.eval_every == 0:
        _evaluate_epoch(state, epoch, record)
    record["epoch_time_s"] = time.time() - epoch_start
    state.run.append_metrics(record)
    log(_format_record(record))
    if is_main_process() and (is_last or (epoch + 1) % config.train.checkpoint_every == 0):
        payload = checkpoint_payload(method, state.optimizer, state.scheduler, epoch + 1, state.best or {}, config)
        save_last(state.run, payload, epoch + 1, config.train.keep_checkpoints)
    return record


def finish_run(state: RunState, last_eval: dict[str, Any]) -> dict[str, Any]:
    """Write the deployable student and ``summary.json``; returns the summary."""
    config, best = state.config, state.best or {}
    if is_main_process():
        save_student(state.method, config, state.info, state.run.path / "student.pt")
    summary = {
        "name": config.name,
        "method": config.method.name,
        "seed": config.seed,
        "epochs": config.train.epochs,
        "run_dir": str(state.run.path),
        "best_epoch": best["epoch"],
        "best_val_acc": best["val_acc"] if best["epoch"] > 0 else None,
        "test_acc_at_best_val": best.get("test_acc"),
        **{f"final_{k}": v for k, v in last_eval.items()},
        **(state.summary_extra or {}),
        **(teacher_usage(state.method, state.references) if state.references else {}),
        "wall_time_s": time.time() - state.started,
    }
    state.run.write_summary(summary)
    return summary


def fit(
    config: Config,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    stop_after_epochs: int | None = None,
    trackers: TrackerFactory | None = None,
) -> dict[str, Any]:
    """Train ``config`` to the end (or continue it with ``resume``) and return its summary.

    ``stop_after_epochs`` ends this call after that many completed epochs (the schedule still spans
    ``train.epochs``; a later ``resume=True`` call continues exactly), for time-limited jobs. ``trackers``
    starts optional experiment trackers for the run directory (``kdistill.track.build_sinks``).
    """
    state = build_run(config, resume, overwrite, trackers)
    try:  # from here on the run directory's trackers are closed on every exit
        prepare_run(state, resume, log)
        total = state.config.train.epochs
        end_epoch = total if stop_after_epochs is None else min(total, stop_after_epochs)
        last_eval: dict[str, Any] = {}
        for epoch in range(state.start_epoch, end_epoch):
            record = run_epoch(state, epoch, end_epoch, log)
            if any(key.startswith(("val_", "test_")) for key in record):
                last_eval = {k: v for k, v in record.items() if k.startswith(("val_", "test_"))}
        if end_epoch < total:
            log(f"stopped after epoch {end_epoch} of {total}; continue with resume")
            return {
                "name": config.name,
                "run_dir": str(state.run.path),
                "completed_epochs": end_epoch,
                "finished": False,
            }
        return finish_run(state, last_eval)
    finally:
        state.run.close()  # finish trackers on success, stop, divergence or interruption


def _format_record(record: dict[str, Any]) -> str:
    keys = ["train_loss", "train_acc", "val_acc", "test_acc", "test_agreement"]
    parts = [f"epoch {record['epoch']}"] + [f"{k}={record[k]:.4g}" for k in keys if k in record]
    return "  ".join(parts) + f"  ({record['epoch_time_s']:.1f}s)"
