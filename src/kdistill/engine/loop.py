"""The one training loop: ``train_one_epoch`` and ``fit`` (build -> epochs -> finish).

``fit(config)`` is a pure function of its config and its run directory (no global state beyond the
RNG seeding it does itself), so sweeps and trials can call it many times in one process.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdistill.config import Config
from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput, TrainingDivergedError, TrainingInterrupted
from kdistill.data import Data, build_data, data_info, make_loader, place_data, start_epoch
from kdistill.engine.builders import (
    autocast,
    build_method,
    place_method,
    preflight,
    resolve_architectures,
    resolve_device,
)
from kdistill.engine.checkpoint import Position, checkpoint_payload, restore, save_last
from kdistill.engine.evaluation import evaluate_deployables
from kdistill.engine.export import save_deployables
from kdistill.engine.optim import build_optimizer, build_scheduler
from kdistill.engine.parallel import StepForward, convert_sync_batchnorm, training_forward
from kdistill.engine.run_dir import RunDir, TrackerFactory, read_metrics, read_summary
from kdistill.engine.teacher_cache import TeacherReferences, compute_teacher_references, teacher_usage
from kdistill.methods import Method
from kdistill.methods.accounting import parameter_report
from kdistill.runtime.distributed import (
    init_from_environment,
    is_distributed,
    is_main_process,
    rank_and_world,
    reduce_sums,
)
from kdistill.runtime.io import atomic_save
from kdistill.runtime.rng import seed_everything
from kdistill.runtime.signals import StopRequests, signal_name

__all__ = [
    "EpochSettings",
    "EpochTotals",
    "RunState",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "fit",
    "optimisation_step",
    "steps_per_epoch",
    "train_one_epoch",
]

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
    skip_nonfinite: bool = False  # train.on_nan=skip: drop a step whose loss is NaN/inf instead of stopping
    max_skipped_steps: int = 10

    @classmethod
    def from_config(cls, config: Config) -> EpochSettings:
        train = config.train
        return cls(
            train.epochs, train.max_steps_per_epoch, config.optim.clip_grad_norm, train.amp, train.channels_last,
            train.progress, train.on_nan == "skip", train.max_skipped_steps,
        )  # fmt: skip


def steps_per_epoch(loader: DataLoader, max_steps: int | None) -> int:
    """Optimisation steps in one epoch: the loader's batches, capped by ``train.max_steps_per_epoch``."""
    return len(loader) if max_steps is None else min(len(loader), max_steps)


class EpochTotals:
    """Sample-weighted sums of the loss terms and the correct predictions of one epoch, the steps taken and the
    steps skipped; saved in mid-epoch checkpoints so a resumed epoch reports the same means."""

    def __init__(self, device: torch.device, state: dict[str, float] | None = None, skipped: int = 0) -> None:
        self.device = device
        saved = dict(state or {})
        self.step = int(saved.pop("_step", 0))
        self.start_lr: float | None = saved.pop("_lr", None)  # the learning rate the epoch began with
        self.seen = int(saved.pop("_seen", 0))
        self.correct = torch.tensor(saved.pop("_correct", 0.0), device=device)
        self.labelled = torch.tensor(saved.pop("_labelled", 0.0), device=device)
        self.sums: dict[str, Tensor] = {k: torch.tensor(v, device=device) for k, v in saved.items()}
        self.skipped = skipped  # over the run, not only this epoch

    def state(self) -> dict[str, float]:
        """The sums as floats (exact: float32 values round-trip through Python floats)."""
        values = {k: v.item() for k, v in self.sums.items()}
        extra = {"_step": float(self.step), "_seen": float(self.seen), "_correct": self.correct.item()}
        extra["_labelled"] = self.labelled.item()
        return {**values, **extra, **({"_lr": self.start_lr} if self.start_lr is not None else {})}

    def add(self, output: StepOutput, loss: Tensor, batch: Batch, uses_labels: bool) -> None:
        size = len(batch)
        self.seen += size
        zero = torch.zeros((), device=self.device)
        for key, value in output.losses.items():
            self.sums[key] = self.sums.get(key, zero) + value.detach().float() * size
        self.sums["loss"] = self.sums.get("loss", zero) + loss.detach().float() * size
        if uses_labels:  # over labelled samples (target -1: unlabelled, data.labelled)
            self.correct += (output.logits.detach().argmax(1) == batch.targets).sum()
            self.labelled += (batch.targets >= 0).sum()

    def running_loss(self) -> float:
        return self.sums["loss"].item() / max(self.seen, 1) if "loss" in self.sums else math.nan

    def result(self, uses_labels: bool) -> dict[str, float]:
        values = {
            **{k: v.item() for k, v in self.sums.items()},
            "correct": self.correct.item(),
            "labelled": self.labelled.item(),
            "seen": float(self.seen),
        }
        totals = reduce_sums(values, self.device)
        seen_all = max(totals.pop("seen"), 1.0)
        correct_all = totals.pop("correct")
        labelled_all = max(totals.pop("labelled"), 1.0)
        result = {f"train_{k}": v / seen_all for k, v in totals.items()}
        if uses_labels:
            result["train_acc"] = 100.0 * correct_all / labelled_all
        result["train_skipped_steps"] = float(self.skipped)
        return result


def _diverged(epoch: int, step: int, output: StepOutput, totals: EpochTotals) -> TrainingDivergedError:
    terms = ", ".join(f"{k}={v.item():.4g}" for k, v in output.losses.items())
    return TrainingDivergedError(
        f"the loss became NaN or infinite at step {step + 1} of epoch {epoch + 1} (this step's terms: {terms}; "
        f"{totals.skipped} step(s) skipped before). Nothing was saved from this step; last.pt holds the last good "
        "state. Lower optim.lr, set optim.clip_grad_norm, check the inputs and the method's weights, or set "
        "train.on_nan=skip to drop such steps."
    )


def _finite_everywhere(loss: Tensor, device: torch.device) -> bool:
    """Whether the loss is finite on every rank (one rank's NaN skips or stops all of them together)."""
    bad = 0.0 if bool(torch.isfinite(loss.detach()).item()) else 1.0
    return reduce_sums({"bad": bad}, device)["bad"] == 0.0


def optimisation_step(
    method: Method[Any],
    batch: Batch,
    parameters: list[nn.Parameter],
    optimizer: Optimizer,
    scheduler: Scheduler,
    settings: EpochSettings,
    forward: StepForward | None = None,
) -> tuple[StepOutput, Tensor, bool]:
    """Forward (under autocast; ``forward``: the DDP-wrapped step under torchrun, else ``method.training_step``); if
    the loss is finite: backward (DDP averages the gradients over ranks during it), clipping and the optimizer step.
    The schedule steps either way. Returns (output, loss, whether the update was applied)."""
    with autocast(batch.inputs.device, settings.amp):
        output = (forward or method.training_step)(batch)
    loss = output.loss
    optimizer.zero_grad(set_to_none=True)
    finite = _finite_everywhere(loss, batch.inputs.device)
    if finite:
        loss.backward()
        if settings.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(parameters, settings.clip_grad_norm)
        optimizer.step()
    scheduler.step()
    return output, loss, finite


StepHook = Callable[[EpochTotals], None]  # called after every step (checkpoints, stop requests)


def train_one_epoch(
    method: Method[Any],
    loader: DataLoader,
    optimizer: Optimizer,
    scheduler: Scheduler,
    device: torch.device,
    epoch: int,
    generator: torch.Generator,
    settings: EpochSettings,
    totals: EpochTotals | None = None,
    after_step: StepHook | None = None,
    forward: StepForward | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of every loss term, the total, and train accuracy.

    ``totals`` continues an epoch resumed in its middle (the loader then yields the remaining batches only);
    ``forward`` is the step's forward (:func:`~kdistill.engine.parallel.training_forward`).
    """
    method.train()
    totals = totals or EpochTotals(device)
    parameters = method.trainable_parameters()  # once per epoch, not per step
    steps = steps_per_epoch(loader, settings.max_steps)
    show = settings.progress and is_main_process()
    # disable=None: bars only on a terminal, so logs piped to a file stay readable
    label = f"epoch {epoch + 1}/{settings.num_epochs}"
    bar = tqdm(total=steps, initial=totals.step, desc=label, leave=False, disable=None if show else True)
    for batch in loader:
        if totals.step >= steps:
            break
        batch = method.augment_batch(batch.to(device, channels_last=settings.channels_last), generator)
        output, loss, applied = optimisation_step(method, batch, parameters, optimizer, scheduler, settings, forward)
        if not applied:
            if not settings.skip_nonfinite or totals.skipped >= settings.max_skipped_steps:
                raise _diverged(epoch, totals.step, output, totals)
            totals.skipped += 1
        else:
            totals.add(output, loss, batch, method.traits.uses_labels)
        totals.step += 1
        if totals.step % 20 == 1 or totals.step == steps:
            bar.set_postfix(loss=f"{totals.running_loss():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        bar.update(1)
        if after_step is not None:
            after_step(totals)
    bar.close()
    return totals.result(method.traits.uses_labels)


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Batch-level augmentation randomness as a function of (stream seed, stream epoch): replayable, resumable."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


def start_stream_epoch(config: Config, loader: DataLoader, epoch: int, device: torch.device, skip: int = 0):
    """Put the train loader at training epoch ``epoch`` of ``config``'s data stream (its order and its per-sample
    transform seeds) and return that epoch's batch-augmentation generator: all a function of (``data.stream_seed``
    or the seed, the stream epoch) only, so the inputs of any epoch can be produced again."""
    stream_epoch = config.stream_epoch(epoch)
    start_epoch(loader, config.stream_seed(), stream_epoch, skip)
    return epoch_generator(config.stream_seed(), stream_epoch, device)


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
    position: Position = field(default_factory=Position)
    references: TeacherReferences | None = None
    summary_extra: dict[str, Any] | None = None
    forward: StepForward | None = None  # DDP over the method under torchrun (None: method.training_step)
    last_save: float = field(default_factory=time.time)  # when last.pt was last written (time-based checkpoints)
    stop: StopRequests = field(default_factory=StopRequests)


def build_loaders(config: Config, data: Data) -> tuple[DataLoader, dict[str, DataLoader]]:
    """The train loader (the data stream: ``data.stream_seed`` or the seed; last partial batch dropped) and the
    val/test loaders of a run."""
    data_config = config.data
    train_loader = make_loader(
        data.train, data_config.batch_size, True, config.stream_seed(), data_config.num_workers, drop_last=True
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


def build_data_and_method(config: Config, device: torch.device) -> tuple[Config, Data, DataInfo, Method[Any]]:
    """The data (in-memory images on ``device`` when they fit) and the method (not yet placed) of a run of ``config``:
    architectures resolved from checkpoints, the global RNG seeded with ``config.seed`` before anything random is
    built. The trainer and ``cache-teacher`` both build through here, so the teacher logits one stores are the ones
    the other would compute."""
    config = resolve_architectures(config)
    seed_everything(config.seed)
    data = build_data(config.data, config.seed, config.stream_seed())
    place_data(data, device)
    info = data_info(data, config.data.batch_size)
    return config, data, info, build_method(config, info)


def build_run(config: Config, resume: bool, overwrite: bool, trackers: TrackerFactory | None) -> RunState:
    """Device, data, method, loaders, optimizer and schedule, and the run directory (not yet restored)."""
    started = time.time()
    preflight(config)  # every value and name checked before anything is built
    device = init_from_environment(resolve_device(config.train.device))
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    config, data, info, method = build_data_and_method(config, device)
    if config.train.sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError(
                f"train.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only), the device "
                f"here is {device.type}: drop the override, or train on GPUs"
            )
        if is_distributed():
            method = convert_sync_batchnorm(method)
    method = place_method(method, device, config.train)
    train_loader, eval_loaders = build_loaders(config, data)
    epoch_steps = steps_per_epoch(train_loader, config.train.max_steps_per_epoch)
    world = rank_and_world()[1]
    optim = config.optim
    if config.train.scale_lr_with_world and world > 1:
        optim = dataclasses.replace(optim, lr=optim.lr * world)
    optimizer = build_optimizer(method.trainable_parameters(), optim)
    scheduler = build_scheduler(optimizer, config.schedule, epoch_steps, config.train.epochs)
    run = RunDir.for_config(config, resume=resume, overwrite=overwrite, trackers=trackers)
    state = RunState(
        config, device, data, info, method, optimizer, scheduler, train_loader, eval_loaders, epoch_steps, run, started
    )
    state.forward = training_forward(method, device)
    return state


def prepare_run(state: RunState, resume: bool, log: Callable[[str], None]) -> None:
    """Restore ``last.pt`` when resuming, count parameters, compute the teachers' reference logits."""
    restored = restore(state.run, state.method, state.optimizer, state.scheduler, state.config, log) if resume else None
    state.position = restored or Position()
    accounting = parameter_report(state.method)
    config = state.config
    state.references = compute_teacher_references(state.method, state.data, state.eval_loaders, state.device, config)
    views = config.train.teacher_views
    if views is not None and views < config.train.epochs:
        log(
            f"train.teacher_views={views}: an approximation (FKD-style); epoch e replays the inputs of epoch e mod "
            f"{views}, so the student sees {views} augmented views per sample, not {config.train.epochs}"
        )
    topk = config.train.teacher_stream_topk
    state.summary_extra = {
        **({"teacher_views": views} if views is not None else {}),
        **({"teacher_stream_topk": topk} if topk is not None else {}),  # an approximation of the teacher, recorded
        "data_stream_seed": config.stream_seed(),
        "student_parameters": accounting["params_deployed"],  # what inference needs (SimKD: + projector + teacher head)
        "teacher_parameters": accounting["params_teachers"],
        **accounting,
        **state.references.summary(),
    }


def _evaluate_epoch(state: RunState, epoch: int, record: dict[str, Any]) -> None:
    """Evaluate on val/test into ``record``; keep ``best.pt`` by validation accuracy. A non-finite evaluation
    loss is divergence too: nothing is checkpointed from it."""
    assert state.references is not None
    for split, loader in state.eval_loaders.items():
        teacher_logits = state.references.eval_logits.get(split)
        result = evaluate_deployables(state.method, loader, state.device, teacher_logits, state.config.train.amp)
        losses = {key: value for key, value in result.items() if key.split("_")[0] == "loss"}  # each network's
        bad = {key: value for key, value in losses.items() if not math.isfinite(value)}
        if bad:
            raise TrainingDivergedError(
                f"evaluation on {split} after epoch {epoch + 1} gave a non-finite loss ({bad}): the model "
                "diverged. Nothing was saved from this epoch; last.pt holds the last good state. Lower optim.lr or "
                "set optim.clip_grad_norm."
            )
        record.update({f"{split}_{key}": value for key, value in result.items()})
    best = state.position.best
    if "val_acc" in record and record["val_acc"] > best["val_acc"]:
        state.position.best = {"epoch": epoch + 1, "val_acc": record["val_acc"], "test_acc": record.get("test_acc")}
        if is_main_process():
            at_epoch_end = Position(epoch + 1, best=state.position.best, skipped_steps=state.position.skipped_steps)
            payload = checkpoint_payload(state.method, state.optimizer, state.scheduler, at_epoch_end, state.config)
            atomic_save(payload, state.run.best)


def _save_within_epoch(state: RunState, epoch: int, totals: EpochTotals, generator: torch.Generator) -> None:
    position = Position(
        epoch, totals.step, totals.state(), generator.get_state(), totals.skipped, best=state.position.best
    )  # fmt: skip
    if is_main_process():
        payload = checkpoint_payload(state.method, state.optimizer, state.scheduler, position, state.config)
        save_last(state.run, payload, state.config.train.keep_checkpoints)
    state.last_save = time.time()


def _step_hook(state: RunState, epoch: int, generator: torch.Generator) -> StepHook:
    """After each step: a step- or time-based checkpoint when due; on a stop signal a checkpoint, then stop."""
    train = state.config.train

    def after_step(totals: EpochTotals) -> None:
        global_step = epoch * state.epoch_steps + totals.step
        by_steps = train.checkpoint_every_steps is not None and global_step % train.checkpoint_every_steps == 0
        minutes = train.checkpoint_every_minutes
        by_time = minutes is not None and time.time() - state.last_save >= 60 * minutes
        stop = reduce_sums({"stop": float(state.stop.requested)}, state.device)["stop"] > 0
        if by_steps or by_time or stop:
            _save_within_epoch(state, epoch, totals, generator)
        if stop:
            number = state.stop.signal_number or signal.SIGTERM
            raise TrainingInterrupted(
                f"stopped by {signal_name(number)} after step {totals.step} of epoch {epoch + 1}; "
                f"{state.run.last} holds that step. Continue with the same command and --resume "
                "(Python: fit(config, resume=True)).",
                number,
            )

    return after_step


def run_epoch(state: RunState, epoch: int, end_epoch: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Train one epoch (or its rest, after a mid-epoch resume), evaluate when due, write metrics and
    checkpoints; returns the epoch's record."""
    config, method, position = state.config, state.method, state.position
    epoch_start = time.time()
    totals = None
    skip = 0
    mid_epoch = bool(position.step_in_epoch and position.epoch == epoch)  # resumed in the middle of this epoch
    if mid_epoch:
        totals = EpochTotals(state.device, position.epoch_totals, position.skipped_steps)
        skip = position.step_in_epoch * config.data.batch_size
    generator = start_stream_epoch(config, state.train_loader, epoch, state.device, skip)
    if mid_epoch and position.generator_state is not None:
        generator.set_state(position.generator_state)
    method.on_epoch_start(epoch, config.train.epochs)
    totals = totals or EpochTotals(state.device, skipped=position.skipped_steps)
    if totals.start_lr is None:
        totals.start_lr = state.optimizer.param_groups[0]["lr"]
    record: dict[str, Any] = {"epoch": epoch + 1, "step": (epoch + 1) * state.epoch_steps, "lr": totals.start_lr}
    settings = EpochSettings.from_config(config)
    hook = _step_hook(state, epoch, generator)
    loader, optimizer, scheduler = state.train_loader, state.optimizer, state.scheduler
    method.teacher_outputs.start_epoch(config.stream_epoch(epoch), from_start=not mid_epoch)
    record.update(
        train_one_epoch(
            method, loader, optimizer, scheduler, state.device, epoch, generator, settings, totals, hook, state.forward
        )
    )
    method.teacher_outputs.finish_epoch()
    state.position = Position(epoch + 1, best=position.best, skipped_steps=totals.skipped)
    record.update({f"train_{key}": value for key, value in method.epoch_metrics().items()})
    record["train_time_s"] = time.time() - epoch_start
    is_last = epoch + 1 == end_epoch
    if is_last or (epoch + 1) % config.train.eval_every == 0:
        _evaluate_epoch(state, epoch, record)
    record["epoch_time_s"] = time.time() - epoch_start
    state.run.append_metrics(record)
    log(_format_record(record))
    if is_main_process() and (is_last or (epoch + 1) % config.train.checkpoint_every == 0):
        payload = checkpoint_payload(method, state.optimizer, state.scheduler, state.position, config)
        save_last(state.run, payload, config.train.keep_checkpoints)
        state.last_save = time.time()
    return record


def finish_run(state: RunState, last_eval: dict[str, Any]) -> dict[str, Any]:
    """Write the deployable student and ``summary.json``; returns the summary."""
    config, best = state.config, state.position.best
    if is_main_process():
        save_deployables(state.method, config, state.info, state.run.path)
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


def _finished_summary(state: RunState, log: Callable[[str], None]) -> dict[str, Any] | None:
    """A resumed run whose checkpoint is already at the end: its summary (written anew if a kill lost it)."""
    if state.position.epoch < state.config.train.epochs or state.position.step_in_epoch:
        return None
    log(f"{state.run.path} has already finished all {state.config.train.epochs} epochs; nothing to train")
    summary_path = state.run.path / "summary.json"
    if summary_path.exists():
        summary = read_summary(state.run.path)
        if summary.get("epochs") == state.config.train.epochs and "best_epoch" in summary:
            return summary
    records = read_metrics(state.run.path) if (state.run.path / "metrics.jsonl").exists() else []
    last_eval = {k: v for k, v in (records[-1] if records else {}).items() if k.startswith(("val_", "test_"))}
    if not last_eval:
        _evaluate_epoch(state, state.position.epoch - 1, last_eval)
    return finish_run(state, last_eval)


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
    starts optional experiment trackers for the run directory (``kdistill.track.build_sinks``). SIGTERM, SIGINT
    and SIGUSR1 stop training after the current step with a checkpoint (:class:`TrainingInterrupted`).
    """
    state = build_run(config, resume, overwrite, trackers)
    try:  # from here on the run directory's trackers are closed on every exit
        prepare_run(state, resume, log)
        finished = _finished_summary(state, log) if resume else None
        if finished is not None:
            return finished
        total = state.config.train.epochs
        end_epoch = total if stop_after_epochs is None else min(total, stop_after_epochs)
        last_eval: dict[str, Any] = {}
        with state.stop:
            for epoch in range(state.position.epoch, end_epoch):
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
    keys += [key for key in record if key.startswith("test_acc_")]  # each deployed network's (mutual learning)
    parts = [f"epoch {record['epoch']}"] + [f"{k}={record[k]:.4g}" for k in keys if k in record]
    return "  ".join(parts) + f"  ({record['epoch_time_s']:.1f}s)"
