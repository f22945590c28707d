"""Factor transfer: a paraphraser (autoencoder) trained on the teacher's final map gives "factors"; a translator on
the student's final map learns to match them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.contracts import Batch, DataInfo, StepOutput
from kdistill.methods.base import MethodTraits, register_method
from kdistill.methods.feature_utils import InitPhaseConfig, InitPhaseMethod, align_spatial


def factor_vector(factor_map: Tensor, p: float = 2.0) -> Tensor:
    """(B, C, H, W) -> (B, H*W): vec(mean_c f^p), L2-normalised per sample (RepDistiller's ``factor``)."""
    return F.normalize(factor_map.pow(p).mean(dim=1).flatten(1), dim=1)


def ft_loss(student_factor: Tensor, teacher_factor: Tensor, p: float = 2.0) -> Tensor:
    """Kim, Park, Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer" (arXiv:1802.04977).

    With F_t = paraphraser encoder(teacher map), F_s = translator(student map), pooled to the smaller spatial size,
    and v(F) = vec(mean_c F^p) / ||vec(mean_c F^p)||_2 (p = 2),
    loss = mean over (B, H*W) of |v(F_s) - v(F_t)| (the L1 distance, p = 1 in the paper, averaged).
    Checked against HobbitLong/RepDistiller ``distiller_zoo/FT.py``, whose channel-mean-of-squares ``factor`` we
    follow (the paper normalises the flattened factor F itself).
    """
    student_factor, teacher_factor = align_spatial(student_factor, teacher_factor)
    return (factor_vector(student_factor, p) - factor_vector(teacher_factor, p)).abs().mean()


def paraphraser_loss(reconstruction: Tensor, teacher_map: Tensor) -> Tensor:
    """FT's initialisation phase: mean squared error between the paraphraser's reconstruction and the teacher's map
    (RepDistiller ``helper/pretrain.py``: ``nn.MSELoss()``)."""
    return F.mse_loss(reconstruction, teacher_map)


def conv_block(in_channels: int, out_channels: int, batch_norm: bool, transposed: bool = False) -> list[nn.Module]:
    """3x3 (transposed) conv, stride 1, padding 1 -> optional BN -> LeakyReLU(0.1) (RepDistiller models/util.py)."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = [conv(in_channels, out_channels, 3, 1, 1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return [*layers, nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """Autoencoder of the teacher's map (no BN, as RepDistiller's default): C -> C -> rC -> rC, then back to C."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            *conv_block(channels, channels, False),
            *conv_block(channels, factor_channels, False),
            *conv_block(factor_channels, factor_channels, False),
        )
        self.decoder = nn.Sequential(
            *conv_block(factor_channels, factor_channels, False, transposed=True),
            *conv_block(factor_channels, channels, False, transposed=True),
            *conv_block(channels, channels, False, transposed=True),
        )

    def forward(self, teacher_map: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(teacher_map)  # (B, rC_t, H, W)
        return factor, self.decoder(factor)  # factor, reconstruction (B, C_t, H, W)


def translator(student_channels: int, factor_channels: int) -> nn.Sequential:
    """The student's side (with BN, as RepDistiller): C_s -> C_s -> rC_t -> rC_t."""
    return nn.Sequential(
        *conv_block(student_channels, student_channels, True),
        *conv_block(student_channels, factor_channels, True),
        *conv_block(factor_channels, factor_channels, True),
    )


@dataclass
class FTConfig(InitPhaseConfig):
    """RepDistiller's scripts/run_cifar_distill.sh: ``--distill factor -a 0 -b 200`` with ``--init_epochs 30``:
    CE 1, KD 0, weight 200 on the final map (feat[-2]), paraphrase rate 0.5. KD is 0 here, not the SimKD-based 1 of
    sp/vid: SimKD's run_distill.sh has no FT run, and the published number (CRD Table 1) comes from ``-a 0``.

    The first ``init_epochs`` epochs are the paraphraser's initialisation: the step returns the reconstruction loss
    (weight 1, as RepDistiller) plus the CE (+ KD) terms, not the factor loss. RepDistiller runs this phase before its
    240 epochs, the student idle; here the student trains on labels meanwhile (nothing of the paraphraser's loss
    reaches it, and every step of a kdistill method trains the student). The configs add the 30 epochs in front."""

    kd_weight: float = 0.0
    weight: float = 200.0
    paraphrase_rate: float = 0.5
    p: float = 2.0

    RANGES = {**InitPhaseConfig.RANGES, "paraphrase_rate": (1e-6, None), "p": (1e-6, None)}


@register_method("ft")
class FT(InitPhaseMethod[FTConfig]):
    """Factor transfer: after ``init_epochs`` epochs of training a paraphraser to reconstruct the teacher's final map,
    a translator of the student's final map matches the paraphraser's (frozen) factors."""

    # the paraphraser trains during the initialisation phase, the translator only after it
    traits = MethodTraits(kind="feature", unused_parameters=True)

    def __init__(self, student, teachers, config: FTConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        student_shapes, teacher_shapes = self.stage_shapes()
        teacher_channels = teacher_shapes[-1][0]
        factor_channels = max(1, int(teacher_channels * config.paraphrase_rate))
        self.paraphraser = Paraphraser(teacher_channels, factor_channels)
        self.translator = translator(student_shapes[-1][0], factor_channels)

    def training_step(self, batch: Batch) -> StepOutput:
        student_features, teacher_features = self.student_and_teacher_features(batch.inputs)
        losses = self.logit_losses(student_features.logits, teacher_features.logits, batch)
        teacher_map = teacher_features.final_map.float()  # (B, C_t, H_t, W_t)
        if self.in_init_phase():
            _, reconstruction = self.paraphraser(teacher_map)
            losses["paraphraser"] = paraphraser_loss(reconstruction, teacher_map)
        else:
            with torch.no_grad():  # the paraphraser is fixed after its initialisation (RepDistiller)
                teacher_factor = self.paraphraser.encoder(teacher_map)
            student_factor = self.translator(student_features.final_map.float())
            losses["ft"] = self.config.weight * ft_loss(student_factor, teacher_factor, self.config.p)
        return StepOutput(logits=student_features.logits, losses=losses)
