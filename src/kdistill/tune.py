"""Teacher fine-tuning support: the BiT-HyperRule preset and a small learning-rate x schedule grid.

``bit_hyperrule`` turns the rule of Kolesnikov et al., "Big Transfer (BiT): General Visual Representation
Learning" (arXiv:1912.11370; google-research/big_transfer ``bit_hyperrule.py``) into kdistill config overrides.
``lr_search`` fine-tunes one config over a grid of learning rates and schedule lengths (seed 001's tuning
notebook does this with Keras Tuner) and ranks the points by validation accuracy: a preset of
:func:`kdistill.sweep.run_sweep`, so it is resumable and runs on several workers like any sweep.

>>> from kdistill.config import load_config, replace
>>> from kdistill.tune import bit_hyperrule, as_overrides
>>> config = load_config("configs/flowers102/bit_finetune_bit101x3.yaml")
>>> config = replace(config, as_overrides(bit_hyperrule(num_train=1020, image_size=224, batch_size=64)))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdistill.config import Config
from kdistill.contracts import ConfigError
from kdistill.sweep import Param, SweepResult, SweepSpec, default_sweep_dir, override, run_sweep

BIT_BASE_LR = 0.003  # at batch size 512
BIT_BASE_BATCH = 512


def bit_schedule(num_train: int) -> list[int]:
    """BiT's ``get_schedule``: [warmup end, decay steps..., end] in optimisation steps."""
    if num_train < 20_000:
        return [100, 200, 300, 400, 500]
    if num_train < 500_000:
        return [500, 3000, 6000, 9000, 10_000]
    return [500, 6000, 12_000, 18_000, 20_000]


def bit_resolution(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """BiT's ``get_resolution``: (pre-crop resize, crop) = (160, 128) below 96x96 pixels of area, else (512, 480)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return (160, 128) if height * width < 96 * 96 else (512, 480)


def bit_mixup(num_train: int) -> float:
    """BiT's ``get_mixup``: Beta(0.1, 0.1) mixup from 20,000 training images, none below."""
    return 0.0 if num_train < 20_000 else 0.1


def bit_hyperrule(
    num_train: int, image_size: int | tuple[int, int], batch_size: int = BIT_BASE_BATCH, base_lr: float = BIT_BASE_LR
) -> dict[str, Any]:
    """Config overrides (dotted key -> value) that fine-tune a pretrained model with BiT-HyperRule.

    From google-research/big_transfer ``bit_hyperrule.py`` and ``bit_pytorch/train.py``:

    - SGD, momentum 0.9, no weight decay; lr 0.003 at batch 512, here scaled linearly to ``batch_size``
      (BiT's code uses 0.003 at its batch 512 and does not scale; linear scaling is our addition);
    - schedule length (steps): 500 below 20k training images, 10,000 below 500k, else 20,000;
    - linear warmup: 100 steps below 20k images, else 500 (the rule's own "scaled down for small data");
    - lr divided by 10 at the intermediate supports: steps 200/300/400 of 500 (40/60/80%), 3k/6k/9k of 10k and
      6k/12k/18k of 20k (30/60/90%);
    - mixup Beta(0.1, 0.1) from 20k images (``method.mixup_alpha``, the ``ce`` method's);
    - resolution: images under 96x96 are resized to 160 and randomly cropped to 128, larger ones 512 -> 480.

    The decays land on exactly these steps (``schedule.milestone_steps``); the schedule is rounded up to
    whole epochs (``steps_per_epoch = num_train // batch_size``, as the trainer drops the last partial
    batch). ``batch_size`` is capped at ``num_train``. The crop preset is ``resize_crop`` (resize to 1.25x
    the crop, random crop, flip): exact for 160 -> 128, 600 -> 480 instead of BiT's 512 -> 480 for large images.
    """
    if num_train <= 0:
        raise ValueError(f"num_train must be positive, got {num_train}")
    batch_size = min(batch_size, num_train)
    steps_per_epoch = max(1, num_train // batch_size)
    supports = bit_schedule(num_train)
    warmup, *decays, total = supports
    epochs = math.ceil(total / steps_per_epoch)
    _, crop = bit_resolution(image_size)
    return {
        "optim.name": "sgd",
        "optim.lr": base_lr * batch_size / BIT_BASE_BATCH,
        "optim.momentum": 0.9,
        "optim.nesterov": False,
        "optim.weight_decay": 0.0,
        "schedule.name": "step",
        "schedule.warmup_epochs": 0.0,
        "schedule.warmup_steps": warmup,
        "schedule.milestones": [],
        "schedule.milestone_steps": list(decays),
        "schedule.gamma": 0.1,
        "train.epochs": epochs,
        "data.batch_size": batch_size,
        "data.image_size": crop,
        "data.augment": "resize_crop",
        "method.mixup_alpha": bit_mixup(num_train),
    }


def as_overrides(values: dict[str, Any]) -> list[str]:
    """``{"optim.lr": 0.003}`` -> ``["optim.lr=0.003"]`` (values written as JSON, which YAML reads back)."""
    return [override(key, value) for key, value in values.items()]


def tune_spec(
    base_config: Config,
    lrs: list[float],
    epochs_options: list[int],
    trials: int = 1,
    out_dir: str | Path | None = None,
    workers: int = 1,
    storage: str | None = None,
) -> SweepSpec:
    """``kdistill tune`` as a sweep preset: the grid learning rate x schedule length, ``trials`` seeds per point,
    ranked by the mean best validation accuracy (seed 001 tunes its teacher this way with Keras Tuner). A step
    schedule's milestones keep their fractions when the length changes (as in every sweep over train.epochs)."""
    if trials < 1 or not lrs or not epochs_options:
        raise ConfigError("tune needs at least one learning rate, one schedule length and one trial")
    params = [
        Param("optim.lr", "values", values=tuple(float(lr) for lr in lrs)),
        Param("train.epochs", "values", values=tuple(int(epochs) for epochs in epochs_options)),
    ]
    out = Path(out_dir) if out_dir is not None else default_sweep_dir(base_config, "-tune")
    return SweepSpec(
        base_config, params, out, trials=trials, objective="best_val_acc", workers=workers, storage=storage,
        extra={"preset": "tune"},
    )  # fmt: skip


def lr_search(
    base_config: Config,
    lrs: list[float],
    epochs_options: list[int],
    trials: int = 1,
    out_dir: str | Path | None = None,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Run :func:`tune_spec`'s sweep (resumable: the same call continues it); ``result.points`` is best first."""
    return run_sweep(tune_spec(base_config, lrs, epochs_options, trials, out_dir, workers), log)
