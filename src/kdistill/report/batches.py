"""What the student sees: the first training batch of an epoch, and the learning-rate schedule (``kdistill
show-batch``, seed 000's picture of the augmented inputs).

:func:`training_batch` builds what ``fit`` builds, in the same order and with the same seeds (global seeding,
data, method, the training loader), positions the loader at ``epoch`` as the trainer does (sampler epoch,
loader generator) and applies the method's ``augment_batch`` with the trainer's own per-epoch generator: the
batch it returns is the one ``training_step`` receives in that epoch's first step. Exact for the batch-level
augmentation at every epoch and for per-sample random transforms at epoch 0, and at any epoch when
``data.num_workers > 0`` (workers are seeded from the per-epoch loader generator); with ``num_workers: 0``, later
epochs' per-sample transforms draw from the global RNG that training itself advances. Teachers are built
without their weights (augmentation never reads them).

:func:`lr_per_step` steps the real optimiser and schedule (``build_optimizer`` / ``build_scheduler``) on a dummy
parameter for every optimisation step of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdistill.config import Config
from kdistill.contracts import Batch, ConfigError
from kdistill.data import build_data, data_info
from kdistill.engine.builders import build_method, preflight, resolve_architectures, resolve_device
from kdistill.engine.loop import build_loaders, start_stream_epoch, steps_per_epoch
from kdistill.engine.optim import build_optimizer, build_scheduler
from kdistill.methods import Method
from kdistill.report.plots import Plot, plot_image_grid, plot_lr
from kdistill.runtime.rng import seed_everything


@dataclass
class TrainingBatch:
    """The first batch of one epoch, before and after the method's batch-level augmentation."""

    config: Config
    method: Method[Any]
    epoch: int  # 0-based
    loaded: Batch  # from the training loader (train transform), on the training device
    batch: Batch  # after ``method.augment_batch``: what ``training_step`` receives
    mean: tuple[float, ...] | None  # the data's normalisation
    std: tuple[float, ...] | None
    class_names: list[str]
    steps_per_epoch: int


def training_batch(config: Config, epoch: int = 0) -> TrainingBatch:
    """The batch ``training_step`` receives at the first step of ``epoch`` (0-based) of ``config``'s run."""
    config = resolve_architectures(preflight(config, output=False))  # reads only: no run directory is written
    if not 0 <= epoch < config.train.epochs:
        raise ConfigError(f"--epoch {epoch}: the run has epochs 0 to {config.train.epochs - 1}")
    device = resolve_device(config.train.device)
    seed_everything(config.seed)
    data = build_data(config.data, config.seed, config.stream_seed())
    method = build_method(config, data_info(data, config.data.batch_size), load_weights=False).to(device)
    loader, _ = build_loaders(config, data)
    method.train()
    method.on_epoch_start(epoch, config.train.epochs)
    generator = start_stream_epoch(config, loader, epoch, device)  # as the trainer starts the epoch
    loaded = next(iter(loader)).to(device, channels_last=config.train.channels_last)
    batch = method.augment_batch(loaded, generator)
    names = data.class_names or [str(i) for i in range(data.num_classes)]
    steps = steps_per_epoch(loader, config.train.max_steps_per_epoch)
    return TrainingBatch(config, method, epoch, loaded, batch, data.mean, data.std, list(names), steps)


def display_images(inputs: torch.Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> np.ndarray:
    """(B, C, H, W) normalised inputs -> (B, C, H, W) pixels in [0, 1] (x * std + mean, clipped)."""
    pixels = inputs.detach().float().cpu()
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        pixels = pixels * torch.tensor(std).reshape(shape) + torch.tensor(mean).reshape(shape)
    return pixels.clamp(0.0, 1.0).numpy()


def batch_titles(shown: TrainingBatch) -> list[str]:
    """Each image's label: the two mixed labels with their weights for mixup that records its partner, the label
    for methods that train on labels or do not augment, none for label-free methods that augment (function
    matching mixes images without recording a partner, so no single label describes them)."""
    batch, names = shown.batch, shown.class_names
    targets = batch.targets.tolist()
    if "mixup_partner" in batch.extras and "mixup_ratio" in batch.extras:
        partners = batch.extras["mixup_partner"].tolist()
        ratios = batch.extras["mixup_ratio"].tolist()
        return [
            f"{names[targets[i]]} ({ratio:.2f}) + {names[targets[partner]]} ({1 - ratio:.2f})"
            for i, (partner, ratio) in enumerate(zip(partners, ratios))
        ]
    traits = shown.method.traits
    if traits.uses_labels or not traits.augments_batches:
        return [names[target] for target in targets]
    return []


def lr_per_step(config: Config, steps: int) -> list[float]:
    """The learning rate of each optimisation step of the run (``steps`` per epoch, ``train.epochs`` epochs), from
    the real optimiser and schedule stepped on a dummy parameter (no gradient: the optimiser step is a no-op)."""
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([parameter], config.optim)
    scheduler = build_scheduler(optimizer, config.schedule, steps, config.train.epochs)
    rates = []
    for _ in range(steps * config.train.epochs):
        rates.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return rates


@dataclass
class ShownBatch:
    """What :func:`show_batch` wrote."""

    batch_plot: Plot
    lr_plot: Plot
    shown: TrainingBatch
    lrs: list[float]


def lr_path(batch_path: str | Path) -> Path:
    """``batch.png`` -> ``batch_lr.png``."""
    path = Path(batch_path)
    return path.with_name(f"{path.stem}_lr{path.suffix or '.png'}")


def show_batch(config: Config, out: str | Path = "batch.png", grid: int = 5, epoch: int = 0) -> ShownBatch:
    """Write the first ``grid`` x ``grid`` training images of ``epoch`` as the student sees them (de-normalised for
    display) to ``out`` and the learning rate per step over the whole run to ``<out stem>_lr.png``."""
    if grid < 1:
        raise ConfigError(f"--grid {grid}: at least 1")
    shown = training_batch(config, epoch)
    count = min(grid * grid, len(shown.batch))
    images = display_images(shown.batch.inputs[:count], shown.mean, shown.std)
    name = shown.config.method.name
    augmentation = "augment_batch applied" if shown.method.traits.augments_batches else "no batch-level augmentation"
    title = f"{shown.config.name}: first training batch of epoch {epoch} ({name}, {augmentation})"
    batch_plot = plot_image_grid(images, batch_titles(shown)[:count], grid, out, title)
    rates = lr_per_step(shown.config, shown.steps_per_epoch)
    optim, schedule = shown.config.optim, shown.config.schedule
    lr_title = f"{optim.name} lr {optim.lr:g}, {schedule.name} schedule, {shown.steps_per_epoch} steps per epoch"
    lr_plot = plot_lr(rates, shown.steps_per_epoch, lr_path(out), lr_title)
    return ShownBatch(batch_plot, lr_plot, shown, rates)
