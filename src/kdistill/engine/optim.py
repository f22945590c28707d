"""Optimisers and per-step learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from kdistill.config import OptimConfig, ScheduleConfig
from kdistill.contracts import ConfigError


def build_optimizer(parameters: list[nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov), Adam or AdamW (decoupled weight decay) over ``parameters``."""
    if not parameters:
        raise ConfigError("nothing to optimise: the method has no trainable parameters")
    if config.name == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if config.name in ("adam", "adamw"):
        if len(config.betas) != 2:
            raise ConfigError(f"optim.betas must hold two numbers, got {config.betas}")
        cls = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
        return cls(parameters, lr=config.lr, betas=(config.betas[0], config.betas[1]), weight_decay=config.weight_decay)
    raise ConfigError(f"optim.name: unknown optimizer {config.name!r}; valid: sgd, adam, adamw")


def lr_multiplier(config: ScheduleConfig, base_lr: float, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The factor applied to the base lr at optimisation step ``s`` (0-based).

    Warmup: factor = (s + 1) / W for s < W (W = warmup steps), so the first update is not wasted.
    Then ``constant``: 1; ``step``: gamma ** (number of epoch milestones <= current epoch + number of
    step milestones <= s);
    ``cosine``: floor + (1 - floor) * (1 + cos(pi * p)) / 2 with p = (s - W) / (total - W),
    floor = min_lr / base_lr, total = epochs * steps_per_epoch.
    """
    total = epochs * steps_per_epoch
    if config.warmup_steps and config.warmup_epochs:
        raise ConfigError("schedule: set warmup_steps or warmup_epochs, not both")
    warmup = config.warmup_steps or round(config.warmup_epochs * steps_per_epoch)
    milestones, milestone_steps = sorted(config.milestones), sorted(config.milestone_steps)
    floor = config.min_lr / base_lr if base_lr > 0 else 0.0
    if config.name not in ("constant", "step", "cosine"):
        raise ConfigError(f"schedule.name: unknown schedule {config.name!r}; valid: constant, step, cosine")
    if config.name == "step" and not (milestones or milestone_steps):
        raise ConfigError(
            "schedule.name is 'step' but schedule.milestones (epochs) and schedule.milestone_steps are empty; "
            "give one, or use 'constant'"
        )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.name == "constant":
            return 1.0
        if config.name == "step":
            epoch = step // steps_per_epoch
            decays = sum(epoch >= m for m in milestones) + sum(step >= m for m in milestone_steps)
            return config.gamma**decays
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimisation step (its state is the step count: exact resume)."""
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config, base_lr, steps_per_epoch, epochs))
