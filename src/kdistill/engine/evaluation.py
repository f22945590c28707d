"""Evaluation: logits of a whole split, and top-1/top-5/loss with the teacher-fidelity metrics."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdistill.contracts import ConfigError
from kdistill.engine.builders import autocast
from kdistill.runtime.distributed import reduce_sums


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
