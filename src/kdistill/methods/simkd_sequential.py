"""SimKD "sequential" (paper Table 4): a new student classifier trained with label cross-entropy on the frozen
encoder of a finished SimKD run, in place of the reused teacher classifier.

Chen et al., "Knowledge Distillation with the Reused Teacher Classifier" (CVPR 2022, arXiv:2203.14001), Table 4:
"Sequential" vs SimKD, e.g. resnet32x4 -> resnet8x4 51.97 vs 78.08, wrn_40_2 -> wrn_40_1 74.48 vs 75.56.
The reference code (DefangChen/SimKD, ``train_student.py`` / ``helper/loops.py``) has no script for it; this is
our reading of the table: the student network as trained by SimKD (its encoder) is frozen, BN statistics
included, and its own classifier head, re-initialised, is the only part trained:

    loss = CE(h(f_s(x)), y) = mean over the batch of -log softmax(h(f_s(x)))[y],

with f_s the frozen encoder (the student's stages up to its final map) and h the student's classifier head
(pooling + linear). The SimKD projector is not used (the classifier reads the student's own final map).

The encoder comes from the SimKD run through the ordinary student weights: ``student.checkpoint`` = the SimKD
run's ``student.pt`` with ``student.checkpoint_key: student.`` (the export holds ``student.*`` = the student
network, ``projectors.*`` and ``heads.*``), e.g.::

    kdistill train --config configs/cifar100/ce_resnet8x4.yaml --set method.name=simkd_sequential \\
        --set student.checkpoint=runs/cifar100_simkd_resnet32x4_resnet8x4/student.pt \\
        --set student.checkpoint_key=student. --set name=cifar100_simkd_sequential_resnet8x4
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, DataInfo, StepOutput
from kdistill.methods.base import Method, MethodTraits, register_method
from kdistill.methods.ce import cross_entropy_loss
from kdistill.models.taps import as_tapped, reinitialise


def sequential_classifier_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Table 4's "Sequential" loss: CE(h(f_s(x)), y) of the new classifier h on the frozen encoder's map,
    the mean over the batch's labelled samples (see :func:`kdistill.methods.ce.cross_entropy_loss`)."""
    return cross_entropy_loss(logits, targets, label_smoothing)


@dataclass
class SimKDSequentialConfig(MethodConfig):
    """A fresh classifier (``reset_classifier``: default init) trained with CE on the frozen student encoder."""

    reset_classifier: bool = True  # False: start from the classifier weights the checkpoint holds
    label_smoothing: float = 0.0

    RANGES = {"label_smoothing": (0.0, 1.0)}


@register_method("simkd_sequential")
class SimKDSequential(Method[SimKDSequentialConfig]):
    """A new classifier on a frozen (SimKD-distilled) student encoder, trained with labels only (Table 4)."""

    traits = MethodTraits(kind="labels", needs_teacher=False, max_teachers=0)

    def __init__(self, student, teachers, config: SimKDSequentialConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        head = self.classifier()
        self.student.requires_grad_(False)
        head.requires_grad_(True)
        if config.reset_classifier:
            reinitialise(head)
        self.train(self.training)

    def classifier(self) -> nn.Module:
        """The student's classifier head (its own layers: training it trains the student's)."""
        return as_tapped(self.student).classifier_head()

    def train(self, mode: bool = True) -> SimKDSequential:
        """The encoder stays in eval mode (frozen BN statistics, no dropout); the classifier follows ``mode``."""
        super().train(mode)
        self.student.eval()
        self.classifier().train(mode)
        return self

    def training_step(self, batch: Batch) -> StepOutput:
        with torch.no_grad():
            final_map = as_tapped(self.student).forward_features(batch.inputs).final_map  # (B, C, H, W), frozen
        logits = self.classifier()(final_map)  # (B, K)
        loss = sequential_classifier_loss(logits, batch.targets, self.config.label_smoothing)
        return StepOutput(logits=logits, losses={"ce": loss})
