"""``kdistill cache-teacher``: pay the teacher ahead of training.

Runs exactly what training would feed the teachers (the train loader at each epoch of the data stream, the
method's batch augmentation with the epoch's generator) without a student update, and writes what the teacher
cache keeps: the val/test logits, the train logits when nothing is augmented, and one table per replayed epoch
(:mod:`kdistill.engine.teacher_stream`) when training is augmented. Later runs of the same stream read them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from kdistill.config import Config
from kdistill.contracts import ConfigError
from kdistill.engine.builders import autocast, place_method, preflight, resolve_device
from kdistill.engine.loop import build_data_and_method, build_loaders, start_stream_epoch, steps_per_epoch
from kdistill.engine.teacher_cache import compute_teacher_references
from kdistill.engine.teacher_stream import StreamTeacherOutputs
from kdistill.methods import Method


def stream_epochs(config: Config) -> list[int]:
    """The data stream's epochs a run of ``config`` trains on (``train.teacher_views`` of them at most)."""
    return sorted({config.stream_epoch(epoch) for epoch in range(config.train.epochs)})


def _fill_epoch(method: Method[Any], config: Config, loader, stream_epoch: int, device: torch.device) -> None:
    """One epoch of the stream through the teachers, exactly as training draws it."""
    outputs = method.teacher_outputs
    generator = start_stream_epoch(config, loader, stream_epoch, device)
    method.on_epoch_start(stream_epoch, config.train.epochs)
    outputs.start_epoch(stream_epoch, from_start=True)
    steps = steps_per_epoch(loader, config.train.max_steps_per_epoch)
    bar = tqdm(total=steps, desc=f"teacher, epoch {stream_epoch + 1}", leave=False, disable=not config.train.progress)
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        batch = method.augment_batch(batch.to(device, channels_last=config.train.channels_last), generator)
        with autocast(device, config.train.amp):
            method.teacher_logits(batch)
        bar.update(1)
    bar.close()
    outputs.finish_epoch()


def cache_teacher(config: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fill the teacher cache of ``config``'s output directory for every epoch its training would run; returns
    what was read, written and how long the teacher took. Entries already there are validated, not recomputed."""
    started = time.time()
    preflight(config)
    if not config.teachers():
        raise ConfigError(f"config {config.name!r} has no teacher: nothing to cache")
    if not config.train.teacher_store:
        raise ConfigError("train.teacher_store=false: the cache is off; drop that override to fill it")
    device = resolve_device(config.train.device)
    config, data, _, method = build_data_and_method(config, device)
    method = place_method(method, device, config.train)
    train_loader, eval_loaders = build_loaders(config, data)
    references = compute_teacher_references(method, data, eval_loaders, device, config)
    result: dict[str, Any] = {"train_logits_cached": references.train_cached, **references.store}
    outputs = method.teacher_outputs
    if isinstance(outputs, StreamTeacherOutputs):
        method.train()
        epochs = stream_epochs(config)
        log(f"teacher logits of {len(epochs)} augmented epoch(s) -> {outputs.entry.directory}")
        for stream_epoch in epochs:
            _fill_epoch(method, config, train_loader, stream_epoch, device)
        result.update({"stream_dir": str(outputs.entry.directory), **outputs.usage()})
        result["teacher_samples_run"] = outputs.live_samples
    elif not references.train_cached:
        log(
            f"method {config.method.name!r} reads more of the teachers than their logits (or the cache is off): "
            "training runs them live; only the val/test logits were cached"
        )
    result["wall_time_s"] = round(time.time() - started, 3)
    return result
