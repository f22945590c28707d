"""The teachers' outputs the trainer computes once: val/test logits for the fidelity metrics, the train logits
served to the method instead of a live teacher when nothing is augmented, and, when training is augmented, the
stored logits of each replayed epoch (:mod:`kdistill.engine.teacher_stream`).

:func:`teacher_cache_allowed` is the one place that decides whether train logits can be cached, from what the
data pipeline declares (``Data.train_augmented``) and what the method declares (``MethodTraits``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from kdistill.config import Config
from kdistill.contracts import ConfigError
from kdistill.data import Data, make_loader
from kdistill.engine.evaluation import predict
from kdistill.engine.teacher_store import STORE_FOLDER, TeacherStore, teachers_digest
from kdistill.engine.teacher_stream import (
    DTYPES,
    StreamEntry,
    StreamTeacherOutputs,
    dataset_fingerprint,
    stream_key,
    table_layout,
)
from kdistill.methods import Method, MethodTraits
from kdistill.runtime.distributed import rank_and_world

logger = logging.getLogger(__name__)


@dataclass
class TeacherReferences:
    """Teacher logits per evaluation split (N, K), and the teachers' accuracy on each split."""

    eval_logits: dict[str, Tensor] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    train_cached: bool = False
    store: dict[str, int] = field(default_factory=dict)  # entries read from / written to the on-disk store

    def summary(self) -> dict[str, Any]:
        return {**{f"teacher_{split}_acc": acc for split, acc in self.accuracy.items()}, **self.store}


def teacher_cache_allowed(traits: MethodTraits, data: Data, enabled: bool) -> bool:
    """Train logits may be cached when the user allows it, the method reads nothing of the teachers but their
    logits, and neither the per-sample transforms nor the method's batch augmentation change the inputs."""
    return enabled and traits.teacher_logits_only and not data.train_augmented and not traits.augments_batches


def stream_entry(method: Method[Any], data: Data, config: Config, device: torch.device) -> StreamEntry | None:
    """Where the logits of augmented epochs are stored (``teacher_stream``), or None when they are not: the store
    or the cache is off, the method needs more than the logits, nothing is augmented (the plain cache serves it), or
    the entries would need more than ``train.teacher_stream_max_gb`` (then said in the log)."""
    train = config.train
    augmented = data.train_augmented or method.traits.augments_batches
    if not (train.teacher_store and train.cache_teacher_outputs and method.traits.teacher_logits_only and augmented):
        return None
    num_train = len(data.train)  # type: ignore[arg-type]
    epochs = train.epochs if train.teacher_views is None else min(train.epochs, train.teacher_views)
    topk = train.teacher_stream_topk or 0
    if topk >= data.num_classes:
        raise ConfigError(
            f"train.teacher_stream_topk={topk} keeps every logit of {data.num_classes} classes: use a k below "
            f"{data.num_classes}, or leave it unset to store the full logits"
        )
    width, dtype = table_layout(data.num_classes, train.teacher_stream_dtype, topk)
    gigabytes = epochs * num_train * width * DTYPES[dtype].itemsize / 1e9
    if gigabytes > train.teacher_stream_max_gb:
        logger.warning(
            "teacher logits of the augmented epochs are not stored: they would need %.1f GB (train.teacher_stream_"
            "max_gb=%g); raise it, store fewer views (train.teacher_views=K), teacher_stream_dtype=float16 or only "
            "the top logits (train.teacher_stream_topk=k)",
            gigabytes, train.teacher_stream_max_gb,
        )  # fmt: skip
        return None
    rank, world = rank_and_world()
    data_config = config.data
    parts = {
        "teachers": teachers_digest(method.teachers),
        "data": [data_config.name, data_config.root, data_config.augment, data_config.image_size, data_config.pipeline],
        "split": [
            data_config.val_size,
            data_config.train_subset,
            config.stream_seed() if data_config.train_subset else None,
        ],
        "fingerprint": dataset_fingerprint(data.train),
        "augmentation": method.augmentation_spec(),
        "stream": [config.stream_seed(), data_config.batch_size, train.teacher_views, world],
        "numerics": [train.amp, train.channels_last, train.compile, device.type, train.teacher_stream_dtype, topk],
    }
    key = stream_key(parts)
    directory = Path(config.output_dir) / STORE_FOLDER / f"stream-{key[:24]}"
    return StreamEntry(directory, key, num_train, data.num_classes, train.teacher_stream_dtype, rank, topk)


def compute_teacher_references(
    method: Method[Any], data: Data, eval_loaders: dict[str, DataLoader], device: torch.device, config: Config
) -> TeacherReferences:
    """Frozen teachers see deterministic eval inputs, so their val/test logits are computed once; the train
    logits too when :func:`teacher_cache_allowed` (then attached to the method as its teacher outputs). With
    ``train.teacher_store`` these passes are read from / written to the on-disk :class:`TeacherStore` shared by
    later runs, and augmented training's logits go through :class:`StreamTeacherOutputs` (see :func:`stream_entry`).
    """
    references = TeacherReferences()
    if not len(method.teachers):
        return references
    train = config.train
    amp = train.amp
    store = TeacherStore(Path(config.output_dir) / STORE_FOLDER, method.teachers) if train.teacher_store else None
    run = store.predict if store is not None else predict
    for split, loader in eval_loaders.items():
        logits, targets = run(method.teacher_outputs.of, loader, device, amp)
        references.eval_logits[split] = logits
        references.accuracy[split] = 100.0 * (logits.argmax(1) == targets).float().mean().item()
    if teacher_cache_allowed(method.traits, data, train.cache_teacher_outputs):
        plain_loader = make_loader(data.train, config.data.eval_batch_size, False, config.seed, config.data.num_workers)
        method.attach_teacher_cache(run(method.teacher_outputs.of, plain_loader, device, amp)[0])
        references.train_cached = True
    else:
        entry = stream_entry(method, data, config, device)
        if entry is not None:
            method.teacher_outputs = StreamTeacherOutputs(list(method.teachers), entry)
    if store is not None:
        references.store = store.usage()
    method.teacher_outputs.reset_counts()  # from here on the counts are the training steps'
    return references


def teacher_usage(method: Method[Any], references: TeacherReferences) -> dict[str, Any]:
    """How the training steps of this call got the teachers' logits: from the cache (hits) or live. Reported for
    methods that read only the logits (all their teacher calls go through ``method.teacher_outputs``)."""
    if not method.traits.teacher_logits_only:
        return {}
    outputs = method.teacher_outputs
    return {
        "teacher_train_logits_cached": references.train_cached,
        "teacher_cache_hits": outputs.hits,
        "teacher_live_samples": outputs.live_samples,
        **outputs.usage(),
    }
