"""Evaluation: logits of a whole split, and top-1/top-5/loss with the teacher-fidelity metrics (of every network
a method deploys)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdistill.contracts import ConfigError
from kdistill.engine.builders import autocast
from kdistill.methods import Method
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


def topk_agreement(student_logits: Tensor, teacher_logits: Tensor, k: int) -> Tensor:
    """Per sample (B,), 1.0 where the teacher's top-1 class is among the student's top ``k`` classes, else 0.0.

    big_vision ``evaluators/proj/distill/distance.py``, ``dist(kind="agree", k=k)``: ``top_k(student, k) ==
    top_k(teacher, 1)`` summed over the k positions (its distill configs report k = 1 and 5). k = 1 is top-1
    agreement; ``k`` above the number of classes is capped (every class is then in the top k).
    """
    k = min(k, student_logits.shape[1])
    student_top = student_logits.topk(k, dim=1).indices  # (B, k)
    teacher_top = teacher_logits.argmax(dim=1, keepdim=True)  # (B, 1)
    return (student_top == teacher_top).any(dim=1).float()


def hard_distance(student_logits: Tensor, teacher_logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Per sample (B,), KL(y || softmax(student)) for the teacher's smoothed pseudo-label y.

    big_vision ``evaluators/proj/distill/distance.py``, ``dist(kind="hard", ls=...)``: y is the one-hot of the
    teacher's argmax with ``(1 - ls)`` on it and ``ls / (K - 1)`` on each other class (not PyTorch's ``ls / K``
    everywhere), and ``softmax_xent(..., kl=True)`` = cross-entropy minus y's entropy, with ``log(max(y, 1e-8))``.
    With ``label_smoothing = 0`` it is the cross-entropy against the teacher's top-1 class.
    """
    num_classes = student_logits.shape[1]
    pseudo_labels = F.one_hot(teacher_logits.argmax(dim=1), num_classes).float()  # (B, K)
    if label_smoothing:
        off_value = label_smoothing / (num_classes - 1)
        pseudo_labels = (1.0 - label_smoothing) * pseudo_labels + off_value * (1.0 - pseudo_labels)
    cross_entropy = -(pseudo_labels * student_logits.log_softmax(dim=1)).sum(dim=1)  # (B,)
    return cross_entropy + (pseudo_labels * pseudo_labels.clamp_min(1e-8).log()).sum(dim=1)


AGREEMENT_TOP_K = (3, 5)  # top-k agreements reported besides top-1 (``agreement_top3``, ``agreement_top5``)
HARD_LABEL_SMOOTHING = 0.1  # label smoothing of the reported ``hard`` distance


def fidelity_sums(student_logits: Tensor, teacher_logits: Tensor) -> dict[str, float]:
    """Sums over a batch of the fidelity metrics (Beyer et al.; big_vision's distill evaluator): top-1 and top-k
    agreement counts, KL(teacher || student) and the ``hard`` distance."""
    sums = {"agree": (student_logits.argmax(1) == teacher_logits.argmax(1)).sum().item()}
    for k in AGREEMENT_TOP_K:
        sums[f"agree_top{k}"] = topk_agreement(student_logits, teacher_logits, k).sum().item()
    sums["kl"] = F.kl_div(
        student_logits.log_softmax(1), teacher_logits.log_softmax(1), log_target=True, reduction="sum"
    ).item()
    sums["hard"] = hard_distance(student_logits, teacher_logits, HARD_LABEL_SMOOTHING).sum().item()
    return sums


def _fidelity(totals: dict[str, float], count: float) -> dict[str, float]:
    result = {"agreement": 100.0 * totals["agree"] / count}
    result.update({f"agreement_top{k}": 100.0 * totals[f"agree_top{k}"] / count for k in AGREEMENT_TOP_K})
    result.update({"kl": totals["kl"] / count, "hard": totals["hard"] / count})
    return result


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, teacher_logits: Tensor | None = None, amp: bool = False
) -> dict[str, float]:
    """Top-1/top-5 accuracy and CE loss of ``model`` (a method: its deployable student); with
    ``teacher_logits`` (N, K) also the fidelity metrics of Beyer et al. / big_vision's distill evaluator: top-1,
    top-3 and top-5 agreement with the teacher (%), mean KL(teacher || student) and the mean ``hard`` distance
    (label smoothing :data:`HARD_LABEL_SMOOTHING`)."""
    model.eval()
    totals = {"loss": 0.0, "correct": 0.0, "correct5": 0.0, "count": 0.0}
    if teacher_logits is not None:  # every key present from the start: reduce_sums needs the same keys on all ranks
        totals.update(dict.fromkeys(["agree", *(f"agree_top{k}" for k in AGREEMENT_TOP_K), "kl", "hard"], 0.0))
    for batch in loader:
        batch = batch.to(device)
        with autocast(device, amp):
            logits = model(batch.inputs).float()  # (B, K)
        totals["loss"] += F.cross_entropy(logits, batch.targets, reduction="sum").item()
        totals["correct"] += (logits.argmax(1) == batch.targets).sum().item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
        totals["correct5"] += (top5 == batch.targets[:, None]).any(1).sum().item()
        if teacher_logits is not None:
            for key, value in fidelity_sums(logits, teacher_logits[batch.indices]).items():
                totals[key] += value
        totals["count"] += len(batch)
    totals = reduce_sums(totals, device)
    count = max(totals["count"], 1.0)
    result = {
        "loss": totals["loss"] / count,
        "acc": 100.0 * totals["correct"] / count,
        "top5": 100.0 * totals["correct5"] / count,
    }
    if teacher_logits is not None:
        result.update(_fidelity(totals, count))
    return result


def evaluate_deployables(
    method: Method[Any],
    loader: DataLoader,
    device: torch.device,
    teacher_logits: Tensor | None = None,
    amp: bool = False,
) -> dict[str, float]:
    """:func:`evaluate` of the method (its first deployable), and when it deploys several networks (mutual
    learning's peers) every one of them too, with keys suffixed by its name (``acc_peer2``); the first one's
    suffixed keys repeat the method's own numbers (``forward`` is that network)."""
    result = evaluate(method, loader, device, teacher_logits, amp)
    deployables = method.deployables()
    if len(deployables) == 1:
        return result
    names = list(deployables)
    per_network = {names[0]: result}
    for name in names[1:]:
        per_network[name] = evaluate(deployables[name], loader, device, teacher_logits, amp)
    for name, values in per_network.items():
        result = {**result, **{f"{key}_{name}": value for key, value in values.items()}}
    return result
