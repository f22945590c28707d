"""Training checkpoints (``last.pt``, ``best.pt``, rotated ``epoch_NNNNN.pt``): what they hold, and restoring a
run from one. Writes are atomic (``kdistill.runtime.io``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kdistill.config import Config, to_dict
from kdistill.engine.builders import load_method_state
from kdistill.engine.run_dir import RunDir
from kdistill.methods import Method
from kdistill.models.loading import CHECKPOINT_KIND, read_checkpoint
from kdistill.runtime.io import atomic_save
from kdistill.runtime.rng import capture_rng_state, restore_rng_state

TEACHER_PREFIX = "teachers."  # frozen teachers are not stored: their own checkpoints are the source


def checkpoint_payload(
    method: Method[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    best: dict[str, Any],
    config: Config,
) -> dict[str, Any]:
    """Everything an exact resume needs: method modules, optimizer, schedule, completed epochs, RNG state."""
    return {
        "kind": CHECKPOINT_KIND,
        "epoch": epoch,  # number of completed epochs
        "method_state": {k: v for k, v in method.state_dict().items() if not k.startswith(TEACHER_PREFIX)},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng_state(),
        "best": best,
        "student_spec": getattr(method.student, "kdistill_spec", None),
        "config": to_dict(config),
    }


def restore(
    run: RunDir,
    method: Method[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    log: Callable[[str], None],
) -> tuple[int, dict[str, Any]] | None:
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


def save_last(run: RunDir, payload: dict[str, Any], epoch: int, keep: int) -> None:
    """``last.pt``, plus ``epoch_NNNNN.pt`` rotated to the newest ``keep`` when ``keep > 0``."""
    atomic_save(payload, run.last)
    if keep > 0:
        atomic_save(payload, run.path / f"epoch_{epoch:05d}.pt")
        for old in sorted(run.path.glob("epoch_*.pt"))[:-keep]:
            old.unlink()
