"""The teachers' outputs the trainer computes once: val/test logits for the fidelity metrics, and the train
logits served to the method instead of a live teacher when nothing is augmented.

:func:`teacher_cache_allowed` is the one place that decides whether train logits can be cached, from what the
data pipeline declares (``Data.train_augmented``) and what the method declares (``MethodTraits``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from kdistill.data import Data, make_loader
from kdistill.engine.evaluation import predict
from kdistill.engine.teacher_store import TeacherStore
from kdistill.methods import Method, MethodTraits


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


def compute_teacher_references(
    method: Method[Any],
    data: Data,
    eval_loaders: dict[str, DataLoader],
    device: torch.device,
    *,
    cache_enabled: bool,
    amp: bool,
    loader_options: tuple[int, int, int],
    store_dir: Path | None = None,
) -> TeacherReferences:
    """Frozen teachers see deterministic eval inputs, so their val/test logits are computed once; the train
    logits too when :func:`teacher_cache_allowed` (then attached to the method as its teacher outputs). With
    ``store_dir`` these passes are read from / written to the on-disk :class:`TeacherStore` shared by later runs.

    ``loader_options`` = (eval batch size, seed, loader workers) of the train-logit pass.
    """
    references = TeacherReferences()
    if not len(method.teachers):
        return references
    store = TeacherStore(store_dir, method.teachers) if store_dir is not None else None
    run = store.predict if store is not None else predict
    for split, loader in eval_loaders.items():
        logits, targets = run(method.teacher_outputs.of, loader, device, amp)
        references.eval_logits[split] = logits
        references.accuracy[split] = 100.0 * (logits.argmax(1) == targets).float().mean().item()
    if teacher_cache_allowed(method.traits, data, cache_enabled):
        eval_batch_size, seed, num_workers = loader_options
        plain_loader = make_loader(data.train, eval_batch_size, False, seed, num_workers)
        method.attach_teacher_cache(run(method.teacher_outputs.of, plain_loader, device, amp)[0])
        references.train_cached = True
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
    }
