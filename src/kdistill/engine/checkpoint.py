"""Training checkpoints (``last.pt``, ``best.pt``, rotated ``epoch_NNNNN.pt``): what they hold, and restoring a
run from one, at an epoch boundary or in the middle of an epoch. Writes are atomic (``kdistill.runtime.io``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kdistill.config import Config, to_dict
from kdistill.contracts import CheckpointError, ConfigError
from kdistill.engine.builders import load_method_state
from kdistill.engine.run_dir import RunDir, recipe_differences
from kdistill.methods import Method
from kdistill.models.loading import CHECKPOINT_KIND, read_checkpoint
from kdistill.runtime.io import atomic_save
from kdistill.runtime.rng import capture_rng_state, restore_rng_state

TEACHER_PREFIX = "teachers."  # frozen teachers are not stored: their own checkpoints are the source


@dataclass
class Position:
    """Where training stands: completed epochs, and within the next epoch the steps already taken."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # optimisation steps of the current epoch already taken (0 = at the epoch boundary)
    epoch_totals: dict[str, float] | None = None  # that epoch's running sums at that step
    generator_state: Tensor | None = None  # the batch-augmentation generator at that step
    skipped_steps: int = 0  # steps dropped by train.on_nan=skip so far
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": -1, "val_acc": float("-inf")})


def checkpoint_payload(
    method: Method[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    position: Position,
    config: Config,
) -> dict[str, Any]:
    """Everything an exact resume needs: method modules, optimizer, schedule, position, every RNG state."""
    return {
        "kind": CHECKPOINT_KIND,
        "epoch": position.epoch,  # number of completed epochs
        "step_in_epoch": position.step_in_epoch,
        "epoch_totals": position.epoch_totals,
        "augment_generator": position.generator_state,
        "skipped_steps": position.skipped_steps,
        "method_state": {k: v for k, v in method.state_dict().items() if not k.startswith(TEACHER_PREFIX)},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng_state(),
        "best": position.best,
        "student_spec": getattr(method.student, "kdistill_spec", None),
        "config": to_dict(config),
    }


def _read_run_checkpoint(run: RunDir, config: Config) -> dict[str, Any]:
    checkpoint = read_checkpoint(run.last)
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{run.last} is not a kdistill training checkpoint; remove it to start afresh")
    diffs = recipe_differences(checkpoint.get("config", {}), to_dict(config))
    if diffs:
        raise ConfigError(
            f"--resume: {run.last} was made with another recipe: {'; '.join(diffs)}. Resume with the settings it "
            "was made with, or start a new run (--set name=...)"
        )
    return checkpoint


def restore(
    run: RunDir,
    method: Method[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: Config,
    log: Callable[[str], None],
) -> Position | None:
    """Load ``last.pt`` (method modules, optimizer, schedule, RNG) after checking it was made with this recipe;
    returns where training stands. Without ``last.pt`` the run starts afresh (and its metrics are cleared)."""
    if not run.last.exists():
        log(f"--resume: {run.last} does not exist yet, starting from scratch")
        run.truncate_metrics_after(0)
        return None
    checkpoint = _read_run_checkpoint(run, config)
    load_method_state(method, checkpoint["method_state"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    restore_rng_state(checkpoint["rng"])
    run.truncate_metrics_after(checkpoint["epoch"])
    position = Position(
        epoch=checkpoint["epoch"],
        step_in_epoch=checkpoint.get("step_in_epoch", 0),
        epoch_totals=checkpoint.get("epoch_totals"),
        generator_state=checkpoint.get("augment_generator"),
        skipped_steps=checkpoint.get("skipped_steps", 0),
        best=checkpoint["best"],
    )
    within = f", step {position.step_in_epoch} of epoch {position.epoch + 1}" if position.step_in_epoch else ""
    log(f"resumed {run.path} after epoch {position.epoch}{within}")
    return position


def save_last(run: RunDir, payload: dict[str, Any], keep: int) -> None:
    """``last.pt``, plus ``epoch_NNNNN.pt`` rotated to the newest ``keep`` when ``keep > 0`` (epoch boundaries)."""
    atomic_save(payload, run.last)
    if keep > 0 and not payload["step_in_epoch"]:
        atomic_save(payload, run.path / f"epoch_{payload['epoch']:05d}.pt")
        for old in sorted(run.path.glob("epoch_*.pt"))[:-keep]:
            old.unlink()
