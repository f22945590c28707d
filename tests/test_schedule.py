"""Learning-rate schedules against hand-computed values, and optimizer construction."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.config import OptimConfig, ScheduleConfig
from kdistill.contracts import ConfigError
from kdistill.engine.optim import build_optimizer, build_scheduler, lr_multiplier


def test_warmup_then_cosine_by_step():
    factor = lr_multiplier(
        ScheduleConfig(name="cosine", warmup_steps=10, min_lr=0.0), base_lr=0.1, steps_per_epoch=10, epochs=11
    )
    assert factor(0) == pytest.approx(0.1)  # (0 + 1) / 10
    assert factor(4) == pytest.approx(0.5)
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)  # cosine starts at its top
    assert factor(60) == pytest.approx(0.5)  # halfway through the 100 cosine steps
    assert factor(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert factor(110) == pytest.approx(0.0, abs=1e-12)


def test_cosine_floor():
    factor = lr_multiplier(ScheduleConfig(name="cosine", min_lr=0.01), base_lr=0.1, steps_per_epoch=5, epochs=2)
    assert factor(10) == pytest.approx(0.1)  # floor = min_lr / base_lr
    assert factor(5) == pytest.approx(0.1 + 0.9 * 0.5)


def test_step_schedule_decays_at_epoch_milestones():
    factor = lr_multiplier(
        ScheduleConfig(name="step", milestones=[150, 180, 210], gamma=0.1), 0.05, steps_per_epoch=782, epochs=240
    )
    assert factor(149 * 782 + 781) == pytest.approx(1.0)
    assert factor(150 * 782) == pytest.approx(0.1)
    assert factor(180 * 782) == pytest.approx(0.01)
    assert factor(239 * 782) == pytest.approx(0.001)


def test_step_schedule_with_milestones_in_steps():
    factor = lr_multiplier(ScheduleConfig(name="step", warmup_steps=100, milestone_steps=[200, 300, 400]), 0.003, 7, 72)
    assert factor(99) == pytest.approx(1.0)
    assert [factor(s) for s in (199, 200, 299, 300, 400, 499)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.001, 0.001])


def test_scheduler_steps_the_optimizer_lr():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([parameter], OptimConfig(name="adamw", lr=3e-3, weight_decay=1e-3))
    assert isinstance(optimizer, torch.optim.AdamW)
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="cosine", warmup_steps=4), steps_per_epoch=4, epochs=3)
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[:4] == pytest.approx([0.75e-3, 1.5e-3, 2.25e-3, 3e-3])
    assert seen[4] == pytest.approx(3e-3) and seen[-1] < 0.2e-3


def test_schedule_and_optimizer_errors():
    with pytest.raises(ConfigError, match="milestone_steps are empty"):
        lr_multiplier(ScheduleConfig(name="step"), 0.1, 10, 10)
    with pytest.raises(ConfigError, match="unknown schedule"):
        lr_multiplier(ScheduleConfig(name="linear"), 0.1, 10, 10)
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(name="rmsprop"))
