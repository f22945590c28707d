"""The one training loop: ``train_one_epoch``, ``evaluate`` and ``fit``.

``fit(config)`` is a pure function of its config and its run directory (no global state beyond the
RNG seeding it does itself), so sweeps and trials can call it many times in one process.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace as dataclass_replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdistill.config import Config, ConfigError, ModelConfig, to_dict
from kdistill.data import Data, build_data, make_loader
from kdistill.engine.checkpoint import atomic_save, capture_rng_state, restore_rng_state, seed_everything
from kdistill.engine.distributed import average_gradients, init_from_environment, is_main_process, reduce_sums
from kdistill.engine.export import save_student
from kdistill.engine.optim import build_optimizer, build_scheduler
from kdistill.methods import METHODS, DataInfo, Method
from kdistill.models import InputSpec, build_model
from kdistill.models.loading import CHECKPOINT_KIND, architecture_from_checkpoint, read_checkpoint
from kdistill.report.accounting import parameter_report
from kdistill.track import RunDir


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; no checkpoint was written from the diverged state."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu or auto")
    return device


def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- building


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


def build_method(config: Config, info: DataInfo, load_weights: bool = True) -> Method:
    """Student + teachers + method modules, checked against the method's needs.

    ``load_weights=False`` builds the architectures only (to load an exported state into).
    """
    try:
        method_cls = METHODS.get(config.method.name)
    except KeyError as error:
        raise ConfigError(f"method.name: {error.args[0]}") from None
    teacher_configs = config.teachers()
    if method_cls.requires_teacher and not teacher_configs:
        raise ConfigError(f"method {method_cls.name!r} distils from a teacher: set teacher.checkpoint (and teacher.name)")
    if method_cls.max_teachers is not None and len(teacher_configs) > method_cls.max_teachers:
        raise ConfigError(
            f"method {method_cls.name!r} takes at most {method_cls.max_teachers} teacher(s), the config gives "
            f"{len(teacher_configs)}" + ("; use `kdistill distill` for distillation" if method_cls.max_teachers == 0 else "")
        )
    normalization = InputSpec(info.input_mean, info.input_std) if info.input_mean and info.input_std else None

    def build(model_config: ModelConfig, where: str) -> nn.Module:
        if load_weights:
            return build_model(model_config, info.num_classes, info.input_shape, where, normalization)
        # architecture only; the input adapter still follows whether the configured weights were pretrained
        bare = dataclass_replace(model_config, checkpoint=None, pretrained=False)
        return build_model(bare, info.num_classes, info.input_shape, where, normalization, model_config.pretrained)

    student = build(config.student, "student")
    teachers = []
    for i, teacher_config in enumerate(teacher_configs):
        where = "teacher" if i == 0 else f"extra_teachers[{i - 1}]"
        if load_weights and teacher_config.checkpoint is None and not teacher_config.pretrained:
            raise ConfigError(f"{where}: a teacher needs trained weights: set {where}.checkpoint (or pretrained: true)")
        teachers.append(build(teacher_config, where))
    return method_cls(student, teachers, config.method, info)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(
    model: Callable[[Tensor], Tensor], loader: DataLoader, device: torch.device, amp: bool = False
) -> tuple[Tensor, Tensor]:
    """Logits (N, K) and targets (N,) for every sample of ``loader``'s dataset, in dataset-index order."""
    outputs: Tensor | None = None
    targets = torch.empty(len(loader.dataset), dtype=torch.int64, device=device)  # type: ignore[arg-type]
    for batch in loader:
        batch = batch.to(device)
        with autocast(device, amp):
            logits = model(batch.inputs).float()  # (B, K)
        if outputs is None:
            outputs = torch.empty(len(loader.dataset), logits.shape[1], device=device)  # type: ignore[arg-type]
        outputs[batch.indices] = logits
        targets[batch.indices] = batch.targets
    if outputs is None:
        raise ConfigError("cannot predict on an empty dataset")
    return outputs, targets


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, teacher_logits: Tensor | None = None, amp: bool = False
) -> dict[str, float]:
    """Top-1/top-5 accuracy and CE loss of ``model`` (a method: its deployable student); with
    ``teacher_logits`` (N, K) also the fidelity metrics of Beyer et al.: top-1 agreement with the
    teacher and mean KL(teacher || student)."""
    model.eval()
    totals = {"loss": 0.0, "correct": 0.0, "correct5": 0.0, "agree": 0.0, "kl": 0.0, "count": 0.0}
    for batch in loader:
        batch = batch.to(device)
        with autocast(device, amp):
            logits = model(batch.inputs).float()  # (B, K)
        totals["loss"] += F.cross_entropy(logits, batch.targets, reduction="sum").item()
        totals["correct"] += (logits.argmax(1) == batch.targets).sum().item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
        totals["correct5"] += (top5 == batch.targets[:, None]).any(1).sum().item()
        if teacher_logits is not None:
            reference = teacher_logits[batch.indices]  # (B, K)
            totals["agree"] += (logits.argmax(1) == reference.argmax(1)).sum().item()
            totals["kl"] += F.kl_div(
                logits.log_softmax(1), reference.log_softmax(1), log_target=True, reduction="sum"
            ).item()
        totals["count"] += len(batch)
    totals = reduce_sums(totals, device)
    count = max(totals["count"], 1.0)
    result = {
        "loss": totals["loss"] / count,
        "acc": 100.0 * totals["correct"] / count,
        "top5": 100.0 * totals["correct5"] / count,
    }
    if teacher_logits is not None:
        result["agreement"] = 100.0 * totals["agree"] / count
        result["kl"] = totals["kl"] / count
    return result


# ----------------------------------------------------------------------------- training


def steps_per_epoch(loader: DataLoader, max_steps: int | None) -> int:
    """Optimisation steps in one epoch: the loader's batches, capped by ``train.max_steps_per_epoch``."""
    return len(loader) if max_steps is None else min(len(loader), max_steps)


def train_one_epoch(
    method: Method,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
    config: Config,
    generator: torch.Generator,
    teacher_cache: Tensor | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of every loss term, the total, and train accuracy."""
    method.train()
    train = config.train
    parameters = method.trainable_parameters()
    sums: dict[str, Tensor] = {}
    correct = torch.zeros((), device=device)
    seen = 0
    steps = steps_per_epoch(loader, train.max_steps_per_epoch)
    show = train.progress and is_main_process()
    # disable=None: bars only on a terminal, so logs piped to a file stay readable
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{train.epochs}", leave=False, disable=None if show else True)
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        batch = batch.to(device, channels_last=train.channels_last)
        if teacher_cache is not None:
            batch.teacher_logits = teacher_cache[batch.indices]  # (B, K)
        batch = method.augment_batch(batch, generator)
        with autocast(device, train.amp):
            output = method.training_step(batch)
        loss = output.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(parameters)
        if config.optim.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(parameters, config.optim.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        size = len(batch)
        seen += size
        for key, value in output.losses.items():
            sums[key] = sums.get(key, torch.zeros((), device=device)) + value.detach().float() * size
        sums["loss"] = sums.get("loss", torch.zeros((), device=device)) + loss.detach().float() * size
        if method.uses_labels:
            correct += (output.logits.detach().argmax(1) == batch.targets).sum()
        if step % 20 == 0 or step == steps - 1:
            current = sums["loss"].item() / seen
            if not math.isfinite(current):
                _raise_diverged(epoch, sums, seen)
            bar.set_postfix(loss=f"{current:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        bar.update(1)
    bar.close()
    totals = reduce_sums({**{k: v.item() for k, v in sums.items()}, "correct": correct.item(), "seen": float(seen)}, device)
    seen_all = max(totals.pop("seen"), 1.0)
    correct_all = totals.pop("correct")
    result = {f"train_{k}": v / seen_all for k, v in totals.items()}
    if not math.isfinite(result["train_loss"]):
        _raise_diverged(epoch, sums, seen)
    if method.uses_labels:
        result["train_acc"] = 100.0 * correct_all / seen_all
    return result


def _raise_diverged(epoch: int, sums: dict[str, Tensor], seen: int) -> None:
    terms = ", ".join(f"{k}={v.item() / max(seen, 1):.4g}" for k, v in sums.items())
    raise TrainingDivergedError(
        f"the loss became NaN or infinite in epoch {epoch + 1} (running means: {terms}). Nothing was saved from "
        f"this epoch; last.pt holds the last good state. Lower optim.lr, set optim.clip_grad_norm, or check the inputs."
    )


def _epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Batch-level augmentation randomness as a function of (seed, epoch): replayable, resumable."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


def _checkpoint_payload(method: Method, optimizer, scheduler, epoch: int, best: dict, config: Config) -> dict[str, Any]:
    teacher_prefix = "teachers."
    return {
        "kind": CHECKPOINT_KIND,
        "epoch": epoch,  # number of completed epochs
        "method_state": {k: v for k, v in method.state_dict().items() if not k.startswith(teacher_prefix)},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng_state(),
        "best": best,
        "student_spec": getattr(method.student, "kdistill_spec", None),
        "config": to_dict(config),
    }


def load_method_state(method: Method, state: dict[str, Tensor]) -> None:
    """Load a checkpoint's method state (which omits the frozen teachers)."""
    missing, unexpected = method.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("teachers.")]
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint does not match the configured method: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def fit(
    config: Config,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train ``config`` to the end (or continue it with ``resume``) and return its summary.

    ``stop_after_epochs`` ends this call after that many completed epochs (the schedule still spans
    ``train.epochs``; a later ``resume=True`` call continues exactly), for time-limited jobs.
    """
    started = time.time()
    device = resolve_device(config.train.device)
    init_from_environment(device)
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    config = resolve_architectures(config)
    seed_everything(config.seed)
    data = build_data(config.data, config.seed)
    info = DataInfo(data.num_classes, data.input_shape, len(data.train), config.data.batch_size, data.mean, data.std)  # type: ignore[arg-type]
    method = build_method(config, info).to(device)
    if config.train.channels_last:
        method = method.to(memory_format=torch.channels_last)

    train_loader = make_loader(data.train, config.data.batch_size, True, config.seed, config.data.num_workers, drop_last=True)
    if len(train_loader) == 0:
        raise ConfigError(f"data.batch_size={config.data.batch_size} is larger than the training set ({len(data.train)})")  # type: ignore[arg-type]
    eval_loaders = {
        split: make_loader(dataset, config.data.eval_batch_size, False, config.seed, config.data.num_workers)
        for split, dataset in (("val", data.val), ("test", data.test))
        if dataset is not None
    }
    epoch_steps = steps_per_epoch(train_loader, config.train.max_steps_per_epoch)
    optimizer = build_optimizer(method.trainable_parameters(), config.optim)
    scheduler = build_scheduler(optimizer, config.schedule, epoch_steps, config.train.epochs)
    run = RunDir.for_config(config, resume=resume, overwrite=overwrite)

    try:  # from here on the run directory's trackers are closed on every exit
        restored = _restore(run, method, optimizer, scheduler, log) if resume else None
        start_epoch, best = restored or (0, {"epoch": -1, "val_acc": -math.inf})
        accounting = parameter_report(method)
        summary_extra: dict[str, Any] = {
            "student_parameters": accounting["params_deployed"],  # what inference needs (SimKD: + projector + teacher head)
            "teacher_parameters": accounting["params_teachers"],
            **accounting,
        }
        teacher_eval_logits, teacher_cache = _teacher_references(method, data, eval_loaders, config, device, summary_extra)
        last_eval: dict[str, float] = {}
        end_epoch = config.train.epochs if stop_after_epochs is None else min(config.train.epochs, stop_after_epochs)
        for epoch in range(start_epoch, end_epoch):
            epoch_start = time.time()
            train_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
            train_loader.generator.manual_seed(config.seed * 1_000_003 + epoch)  # type: ignore[union-attr]
            method.on_epoch_start(epoch, config.train.epochs)
            record: dict[str, Any] = {"epoch": epoch + 1, "step": (epoch + 1) * epoch_steps, "lr": optimizer.param_groups[0]["lr"]}
            record.update(
                train_one_epoch(method, train_loader, optimizer, scheduler, device, epoch, config,
                                _epoch_generator(config.seed, epoch, device), teacher_cache)
            )
            record.update({f"train_{key}": value for key, value in method.epoch_metrics().items()})
            record["train_time_s"] = time.time() - epoch_start
            is_last = epoch + 1 == end_epoch
            if is_last or (epoch + 1) % config.train.eval_every == 0:
                for split, loader in eval_loaders.items():
                    result = evaluate(method, loader, device, teacher_eval_logits.get(split), config.train.amp)
                    record.update({f"{split}_{key}": value for key, value in result.items()})
                last_eval = {k: v for k, v in record.items() if k.startswith(("val_", "test_"))}
                if "val_acc" in record and record["val_acc"] > best["val_acc"]:
                    best = {"epoch": epoch + 1, "val_acc": record["val_acc"], "test_acc": record.get("test_acc")}
                    if is_main_process():
                        atomic_save(_checkpoint_payload(method, optimizer, scheduler, epoch + 1, best, config), run.best)
            record["epoch_time_s"] = time.time() - epoch_start
            run.append_metrics(record)
            log(_format_record(record))
            if is_main_process() and (is_last or (epoch + 1) % config.train.checkpoint_every == 0):
                _save_last(run, _checkpoint_payload(method, optimizer, scheduler, epoch + 1, best, config), epoch + 1, config.train.keep_checkpoints)

        if end_epoch < config.train.epochs:
            log(f"stopped after epoch {end_epoch} of {config.train.epochs}; continue with resume")
            return {"name": config.name, "run_dir": str(run.path), "completed_epochs": end_epoch, "finished": False}
        if is_main_process():
            save_student(method, config, info, run.path / "student.pt")
        summary = {
            "name": config.name,
            "method": config.method.name,
            "seed": config.seed,
            "epochs": config.train.epochs,
            "run_dir": str(run.path),
            "best_epoch": best["epoch"],
            "best_val_acc": best["val_acc"] if best["epoch"] > 0 else None,
            "test_acc_at_best_val": best.get("test_acc"),
            **{f"final_{k}": v for k, v in last_eval.items()},
            **summary_extra,
            "wall_time_s": time.time() - started,
        }
        run.write_summary(summary)
        return summary
    finally:
        run.close()  # finish trackers on success, stop, divergence or interruption


def _restore(run: RunDir, method: Method, optimizer, scheduler, log: Callable[[str], None]) -> tuple[int, dict] | None:
    """Load ``last.pt`` (method modules, optimizer, schedule, RNG); returns (completed epochs, best so far)."""
    if not run.last.exists():
        log(f"--resume: {run.last} does not exist yet, starting from scratch")
        return None
    checkpoint = read_checkpoint(run.last)
    load_method_state(method, checkpoint["method_state"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    restore_rng_state(checkpoint["rng"])
    run.truncate_metrics_after(checkpoint["epoch"])
    log(f"resumed {run.path} after epoch {checkpoint['epoch']}")
    return checkpoint["epoch"], checkpoint["best"]


def _teacher_references(
    method: Method, data: Data, eval_loaders: dict[str, DataLoader], config: Config, device: torch.device, summary: dict[str, Any]
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Frozen teachers see deterministic eval inputs, so their val/test logits (fidelity metrics) are
    computed once; their train logits too when neither the data nor the method augments. Records the
    teachers' accuracy per split in ``summary``."""
    if not len(method.teachers):
        return {}, None
    eval_logits = {}
    for split, loader in eval_loaders.items():
        logits, targets = predict(method.teacher_logits, loader, device, config.train.amp)
        eval_logits[split] = logits
        summary[f"teacher_{split}_acc"] = 100.0 * (logits.argmax(1) == targets).float().mean().item()
    cacheable = method.teacher_outputs_cacheable and not data.train_augmented and not method.augments_batches
    if not (config.train.cache_teacher_outputs and cacheable):
        return eval_logits, None
    plain_loader = make_loader(data.train, config.data.eval_batch_size, False, config.seed, config.data.num_workers)
    return eval_logits, predict(method.teacher_logits, plain_loader, device, config.train.amp)[0]


def _save_last(run: RunDir, payload: dict[str, Any], epoch: int, keep: int) -> None:
    """``last.pt``, plus ``epoch_NNNNN.pt`` rotated to the newest ``keep`` when ``keep > 0``."""
    atomic_save(payload, run.last)
    if keep > 0:
        atomic_save(payload, run.path / f"epoch_{epoch:05d}.pt")
        for old in sorted(run.path.glob("epoch_*.pt"))[:-keep]:
            old.unlink()


def _format_record(record: dict[str, Any]) -> str:
    keys = ["train_loss", "train_acc", "val_acc", "test_acc", "test_agreement"]
    parts = [f"epoch {record['epoch']}"] + [f"{k}={record[k]:.4g}" for k in keys if k in record]
    return "  ".join(parts) + f"  ({record['epoch_time_s']:.1f}s)"
