"""Deep mutual learning: two or more students trained together, each distilling from the others (online)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.config import MethodConfig, ModelConfig
from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.methods.base import Method, MethodTraits, register_method
from kdistill.methods.ce import cross_entropy_loss
from kdistill.models import InputSpec, build_model
from kdistill.models.taps import reinitialise


def mutual_learning_loss(peer_logits: Tensor, other_logits: list[Tensor], temperature: float = 1.0) -> Tensor:
    """Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning" (CVPR 2018, arXiv:1706.00384), eq. (10).

    The mimicry term of peer k among K peers: ``T^2 / (K - 1) * sum_{l != k} KL(p_l || p_k)``, with
    ``p = softmax(logits / T)``, each KL summed over classes and averaged over the batch. The other peers'
    probabilities are targets: no gradient flows into them (their own terms train them). T = 1 is the paper's.

    Checked against the authors' TensorFlow code (YingZhangDUT/Deep-Mutual-Learning, ``train_models.py``,
    ``kl_loss_compute(logits_k, logits_l)`` = mean over the batch of ``sum p_l log(p_l / p_k)``, minimised over
    peer k's variables only) and AberHu/Knowledge-Distillation-Zoo ``kd_losses/dml.py`` (``F.kl_div`` of
    ``log_softmax`` vs ``softmax``, ``batchmean``). Departure: the TF code adds the K - 1 terms (no 1 / (K - 1));
    for two peers the two agree.
    """
    log_p_peer = F.log_softmax(peer_logits / temperature, dim=1)  # (B, K_classes)
    terms = [
        F.kl_div(log_p_peer, F.log_softmax(other.detach() / temperature, dim=1), log_target=True, reduction="batchmean")
        for other in other_logits
    ]
    return temperature**2 * sum(terms, peer_logits.new_zeros(())) / len(terms)


def fresh_copy(student: nn.Module, info: DataInfo) -> nn.Module:
    """A newly initialised network of the student's architecture (same input adapter): built again from the
    architecture ``build_model`` recorded (so the zoo's own initialisation applies), else a deep copy whose
    layers are re-initialised (``reset_parameters``). Weights loaded into the student are not copied."""
    spec = getattr(student, "kdistill_spec", None)
    if spec is not None:
        mean, std = info.input_mean, info.input_std
        normalization = InputSpec(mean, std) if mean and std else None
        model = ModelConfig(name=spec["name"], kwargs=dict(spec["kwargs"]))
        pretrained_inputs = bool(spec.get("pretrained_inputs", False))
        return build_model(model, info.num_classes, info.input_shape, "peer", normalization, pretrained_inputs)
    peer = copy.deepcopy(student)
    reinitialise(peer)
    return peer


@dataclass
class DMLConfig(MethodConfig):
    """Defaults from the paper (T 1, CE + KL with weight 1 for every peer); ``peers``: how many networks train
    together, each of the student's architecture (the student is peer 1, the others start from a fresh init)."""

    peers: int = 2
    temperature: float = 1.0
    ce_weight: float = 1.0
    kl_weight: float = 1.0

    RANGES = {"peers": (2, 16)}

    def problems(self) -> list[str]:
        found = super().problems()
        if not any((self.ce_weight, self.kl_weight)):
            found.append("ce_weight and kl_weight are all 0: the peers would learn nothing")
        return found


@register_method("dml")
class DeepMutualLearning(Method[DMLConfig]):
    """Peers trained together: each ``ce_weight * CE + kl_weight * mean_l KL(p_l || p_k)``; every peer deployed."""

    traits = MethodTraits(kind="response", training="online", needs_teacher=False, max_teachers=0)

    def __init__(self, student: nn.Module, teachers: list[nn.Module], config: DMLConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        if config.peers < 2:
            raise ConfigError(f"method.peers must be at least 2 (mutual learning needs peers), got {config.peers}")
        self.other_peers = nn.ModuleList(fresh_copy(student, info) for _ in range(config.peers - 1))

    @property
    def peers(self) -> list[nn.Module]:
        """Every peer, the student first."""
        return [self.student, *self.other_peers]

    def training_step(self, batch: Batch) -> StepOutput:
        all_logits = [peer(batch.inputs) for peer in self.peers]  # each (B, K)
        losses: dict[str, Tensor] = {}
        for index, logits in enumerate(all_logits):
            others = all_logits[:index] + all_logits[index + 1 :]
            name = f"peer{index + 1}"
            if self.config.ce_weight:
                losses[f"ce_{name}"] = self.config.ce_weight * cross_entropy_loss(logits, batch.targets)
            if self.config.kl_weight:
                kl = mutual_learning_loss(logits, others, self.config.temperature)
                losses[f"kl_{name}"] = self.config.kl_weight * kl
        return StepOutput(logits=all_logits[0], losses=losses)

    def deployables(self) -> dict[str, nn.Module]:
        """Every peer: ``peer1`` (the student, ``student.pt``), ``peer2``, ..."""
        return {f"peer{index + 1}": peer for index, peer in enumerate(self.peers)}
