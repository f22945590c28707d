"""CMI: data-free distillation from images synthesised by contrastive model inversion, with KD or SimKD on top.

Fang et al., "Contrastive Model Inversion for Data-Free Knowledge Distillation" (IJCAI 2021, arXiv:2105.08584);
reference code zju-vipa/CMI (``datafree/synthesis/contrastive.py`` ``CMISynthesizer``, ``datafree/hooks.py``
``DeepInversionHook``, ``datafree/models/generator.py`` ``Generator``, ``datafree_kd.py``, ``scripts/cmi/``).
SimKD paper Table 7 (arXiv:2203.14001): CMI 64.80 / 65.11, CMI+SimKD 66.78 / 67.31 on CIFAR-100
(WRN-40-2 -> WRN-40-1 / WRN-16-2).

The real training images are never read: every ``synthesis_every`` steps a synthesis round re-initialises a
generator G, draws z ~ N(0, I) and target classes y, and for ``generator_steps`` Adam steps on (G, z) minimises

    L_syn = bn * sum_l (||mu_l(x) - mu_l^run||_2 + ||var_l(x) - var_l^run||_2)     (DeepInversion's BN prior)
          + oh * CE(t(x_g), y)                                                       (the teacher's class)
          + adv * -mean_i [argmax s(x_g)_i = argmax t(x_g)_i] KL(p_t(x_g)_i || p_s(x_g)_i)   (adversarial)
          + cr * L_cr,    L_cr = CE(h(f(x_l)) . h(f(x_g))^T / tau, diagonal)         (contrastive),

with x = G(z), x_g a global view (pad-4 random crop + flip) and x_l a local view (random resized crop, area
0.25-1, + flip); f(.) the teacher's instance features, h a 2-layer MLP head (normalised output) trained along with
G; the rows of the contrastive logits are the current batch and negatives drawn from a memory bank of earlier
rounds' features, the two parts averaged separately as the reference does. The round's lowest-loss batch joins an
image pool (8-bit, as the reference's PNG pool) and its features the bank. Between rounds the student trains on
batches drawn from the pool (with a pad-4 crop + flip, the CIFAR train transform the reference applies to its
pool): ``distill: kd`` = T^2 KL(p_t || p_s) at ``temperature`` (CMI's recipe: T 20); ``distill: simkd`` =
SimKD's l2 between the projected student map and the teacher's final map, the student predicting through the
projector and the teacher's classifier (CMI+SimKD).

Departures: the instance features f are the spatial means of the teacher's stage outputs (the feature taps)
rather than of every BN layer's input; the BN statistics are read with forward hooks on the teacher's BatchNorm
layers during synthesis only (no BN layer: no BN term); the views are made with our own differentiable crops
instead of kornia; the pool is a fixed-size ring buffer (``pool_size``, the reference keeps every image); the
head's Adam state is not part of checkpoints (the generator is re-initialised every round anyway).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.config import MethodConfig
from kdistill.contracts import Batch, ConfigError, DataInfo, StepOutput
from kdistill.data.augment import crop_resize, sample_ratio
from kdistill.methods.accounting import classifier_count
from kdistill.methods.base import Method, MethodTraits, register_method
from kdistill.methods.feature_utils import align_spatial, require_maps
from kdistill.methods.kd import kd_loss
from kdistill.methods.simkd import PROJECTOR_LAYOUTS, SimKDProjector, SimKDStudent, simkd_loss
from kdistill.models.taps import as_tapped, count_parameters, feature_shapes

DISTILL = ("kd", "simkd")

# ----------------------------------------------------------------------------- losses


def bn_statistics_loss(means: list[Tensor], variances: list[Tensor], bn_layers: list[nn.BatchNorm2d]) -> Tensor:
    """DeepInversion's prior: sum over BN layers of ||mu - running_mean||_2 + ||var - running_var||_2, with mu and
    var (biased) the batch statistics of each layer's input (reference ``DeepInversionHook``)."""
    terms = [
        torch.norm(layer.running_var - var, 2) + torch.norm(layer.running_mean - mean, 2)
        for mean, var, layer in zip(means, variances, bn_layers)
        if layer.running_var is not None and layer.running_mean is not None
    ]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def adversarial_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """-mean_i m_i KL(p_t,i || p_s,i) (T = 1), m_i = 1 where student and teacher agree on the class: the generator
    seeks images the two still agree on but disagree in distribution (reference ``loss_adv``)."""
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()  # (B,)
    log_p_student = F.log_softmax(student_logits, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1)  # (B,)
    return -(kl * agree).mean()


def contrastive_loss(local_projected: Tensor, global_projected: Tensor, temperature: float, current: int) -> Tensor:
    """(N, D) x2 -> scalar: CE(local @ global^T / tau, i -> i), global side detached; the first ``current`` rows
    (this batch) and the rest (memory-bank negatives) averaged separately and summed (reference ``loss_cr``)."""
    logits = local_projected @ global_projected.detach().T / temperature  # (N, N)
    per_row = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")  # (N,)
    if len(per_row) > current:
        return per_row[:current].mean() + per_row[current:].mean()
    return per_row.mean()


# ----------------------------------------------------------------------------- modules


class Generator(nn.Module):
    """z (B, nz) -> images (B, C, H, W) in [0, 1]: linear to (2 ngf, H/4, W/4), BN, [upsample x2, conv 3x3, BN,
    LeakyReLU 0.2] x2, conv 3x3 to C, sigmoid (reference ``datafree/models/generator.py`` ``Generator``; sizes
    not divisible by 4 are resized to (H, W) at the end)."""

    def __init__(self, latent_dim: int, width: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, self.height, self.width = image_shape
        self.init_size = (max(1, -(-self.height // 4)), max(1, -(-self.width // 4)))
        self.linear = nn.Linear(latent_dim, 2 * width * self.init_size[0] * self.init_size[1])
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        x = self.linear(z).view(z.shape[0], -1, *self.init_size)  # (B, 2 ngf, H/4, W/4)
        x = self.blocks(x)  # (B, C, ~H, ~W)
        if x.shape[-2:] != (self.height, self.width):
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return x

    def reinitialise(self, generator: torch.Generator) -> None:
        """The reference's ``reset_model``: conv / linear weights ~ N(0, 0.02), biases 0, BN weights ~ N(1, 0.02)."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                    mean = 1.0 if isinstance(module, nn.BatchNorm2d) else 0.0
                    noise = torch.randn(module.weight.shape, generator=generator, device=generator.device)
                    module.weight.copy_(mean + 0.02 * noise.to(module.weight.device))
                    if module.bias is not None:
                        module.bias.zero_()


class ProjectionHead(nn.Module):
    """Linear -> ReLU -> linear, L2-normalised output (reference ``MLPHead``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(x), dim=1)


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    flip = sample_ratio(generator, "uniform", (images.shape[0],)).to(images.device) < 0.5  # (B,)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def padded_random_crop(images: Tensor, generator: torch.Generator, padding: int | None = None) -> Tensor:
    """Zero-pad by ``padding`` (default H / 8: CIFAR's 4 at 32 px) and crop back to (H, W) at a random offset per
    image, then flip half (the CIFAR train transform, differentiable)."""
    batch_size, _, height, width = images.shape
    padding = max(1, round(height / 8)) if padding is None else padding
    offsets = (sample_ratio(generator, "uniform", (2, batch_size)) * (2 * padding + 1)).long().clamp(max=2 * padding)
    padded = F.pad(images, [padding] * 4)
    rows = torch.arange(height, device=images.device)[None, :] + offsets[0].to(images.device)[:, None]  # (B, H)
    cols = torch.arange(width, device=images.device)[None, :] + offsets[1].to(images.device)[:, None]  # (B, W)
    index = torch.arange(batch_size, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return random_flip(cropped, generator)


def local_view(images: Tensor, generator: torch.Generator, area: tuple[float, float] = (0.25, 1.0)) -> Tensor:
    """Random resized crop (area ``area`` of the image, aspect 3/4-4/3, square-root-uniform side) + flip."""
    batch_size, _, height, width = images.shape
    draws = sample_ratio(generator, "uniform", (4, batch_size)).to(images.device)
    scale = (area[0] + (area[1] - area[0]) * draws[0]).sqrt()  # side fraction (B,)
    aspect = (0.75 + (4 / 3 - 0.75) * draws[1]).sqrt()
    box_w = (scale * aspect * width).clamp(1, width)
    box_h = (scale / aspect * height).clamp(1, height)
    boxes = torch.stack([draws[2] * (width - box_w), draws[3] * (height - box_h), box_w, box_h], dim=1)  # (B, 4)
    return random_flip(crop_resize(images, boxes, (height, width)), generator)


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[tuple[list[Tensor], list[Tensor], list[nn.BatchNorm2d]]]:
    """While active, every forward through ``model`` appends each BatchNorm2d input's batch mean and (biased)
    variance per channel (forward hooks, removed on exit)."""
    means: list[Tensor] = []
    variances: list[Tensor] = []
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        means.append(inputs[0].mean((0, 2, 3)))
        variances.append(inputs[0].permute(1, 0, 2, 3).flatten(1).var(1, unbiased=False))

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        yield means, variances, layers
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------- method


@dataclass
class CMIConfig(MethodConfig):
    """zju-vipa/CMI ``scripts/cmi/cmi_cifar10.sh``: --g_steps 200 --lr_g 1e-3 --adv 0.5 --bn 1 --oh 1 --cr 0.8
    --cr_T 0.2 --T 20 --kd_steps 400; ``datafree_kd.py``: nz 256, ngf 64, head_dim 256, bank 40960, 4096 negatives."""

    distill: str = "simkd"  # kd | simkd: what the student learns from the synthesised batches
    temperature: float = 20.0  # distill=kd (CMI's --T 20)
    kd_weight: float = 1.0
    weight: float = 1.0  # distill=simkd: the l2 feature loss
    factor: int = 2  # distill=simkd: projector reduction r
    projector: str = "1x1-3x3-1x1"  # distill=simkd: projector layout (see simkd)
    synthesis_every: int = 400  # training steps per synthesis round (--kd_steps)
    generator_steps: int = 20  # Adam steps of one synthesis round (--g_steps; the CIFAR script: 200)
    generator_lr: float = 1e-3  # (--lr_g), also the projection head's
    latent_dim: int = 256  # nz
    generator_width: int = 64  # ngf
    synthesis_batch_size: int = 0  # images per round; 0 = the data batch size
    bn_weight: float = 1.0
    class_weight: float = 1.0  # --oh
    adversarial_weight: float = 0.5  # --adv
    contrastive_weight: float = 0.8  # --cr
    contrastive_temperature: float = 0.2  # --cr_T
    head_dim: int = 256
    bank_size: int = 40960  # instance features kept for negatives
    negatives: int = 4096
    pool_size: int = 51200  # synthesised images kept (ring buffer)

    CHOICES = {"distill": DISTILL, "projector": PROJECTOR_LAYOUTS}
    RANGES = {
        "factor": (1, None),
        "synthesis_every": (1, None),
        "generator_steps": (1, None),
        "generator_lr": (0.0, None),
        "latent_dim": (1, None),
        "generator_width": (1, None),
        "synthesis_batch_size": (0, None),
        "head_dim": (1, None),
        "bank_size": (1, None),
        "negatives": (0, None),
        "pool_size": (1, None),
    }


@register_method("cmi")
class CMI(Method[CMIConfig]):
    """Data-free: the student learns (KD or SimKD) from images a generator synthesises by contrastive model
    inversion of the teacher; the real training images are replaced batch by batch (``augment_batch``)."""

    traits = MethodTraits(kind="response", uses_labels=False, augments_batches=True)
    pool: Tensor  # (pool_size, C, H, W) uint8: the synthesised images
    bank: Tensor  # (bank_size, 2 D): (local, global) instance features of pooled images
    counters: Tensor  # (6,) long: pool count / next slot, bank count / next slot, steps seen, rounds done

    def __init__(self, student, teachers, config: CMIConfig, info: DataInfo) -> None:
        super().__init__(student, teachers, config, info)
        problems = config.problems()
        if problems:
            raise ConfigError(f"cmi: method.{problems[0]}")
        teacher_shapes = feature_shapes(self.teacher, info.input_shape).stages
        maps: list[tuple[int, ...]] = [shape for shape in teacher_shapes if len(shape) == 3]
        require_maps(maps[-1:] or teacher_shapes[-1:], "cmi", "teacher")
        feature_dim = sum(shape[0] for shape in maps)  # instance features: each stage map's spatial mean
        self.synthesizer = Generator(config.latent_dim, config.generator_width, info.input_shape)
        self.head = ProjectionHead(feature_dim, config.head_dim)
        self.projectors = nn.ModuleList()
        if config.distill == "simkd":
            student_shapes = feature_shapes(student, info.input_shape).stages
            require_maps(student_shapes[-1:], "cmi", "student")
            self.projectors.append(
                SimKDProjector(student_shapes[-1], teacher_shapes[-1], config.factor, config.projector)
            )
        self.register_buffer("pool", torch.zeros(config.pool_size, *info.input_shape, dtype=torch.uint8))
        self.register_buffer("bank", torch.zeros(config.bank_size, 2 * feature_dim))
        self.register_buffer("counters", torch.zeros(6, dtype=torch.long))
        self.head_optimizer: torch.optim.Optimizer | None = None

    def resolve_traits(self) -> MethodTraits:
        return self.refined_traits(kind="feature" if self.config.distill == "simkd" else "response")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student (and SimKD projector); the generator and the projection head train inside synthesis."""
        own = {id(p) for p in [*self.synthesizer.parameters(), *self.head.parameters()]}
        return [p for p in super().trainable_parameters() if id(p) not in own]

    def augmentation_spec(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    # ------------------------------------------------------------------ deployment
    def teacher_head(self) -> nn.Module:
        return as_tapped(self.teacher).classifier_head()

    def student_for_export(self) -> nn.Module:
        """distill=kd: the student; distill=simkd: encoder + projector + the teacher's classifier."""
        if self.config.distill == "simkd":
            return SimKDStudent(as_tapped(self.student), self.projectors, [self.teacher_head()])
        return self.student

    def forward(self, inputs: Tensor) -> Tensor:
        return self.student_for_export()(inputs)

    def deployed_parameters(self) -> dict[str, Any]:
        """As SimKD's (student + projector + classifier delta) for distill=simkd; the generator, head, pool and
        bank serve training only."""
        projector = count_parameters(self.projectors)
        delta = (classifier_count(self.teacher) or 0) - (classifier_count(self.student) or 0) if projector else 0
        return {
            "params_deployed": count_parameters(self.student) + projector + delta,
            "params_projector": projector,
            "params_generator": count_parameters(self.synthesizer),
        }

    # ------------------------------------------------------------------ synthesis
    def normalise(self, images: Tensor) -> Tensor:
        """[0, 1] images -> the inputs the models take (the data's per-channel mean / std, where it has them)."""
        if self.info.input_mean is None or self.info.input_std is None:
            return images
        mean = torch.tensor(self.info.input_mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.info.input_std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std

    def instance_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(teacher logits (B, K), instance features (B, D): the spatial means of the teacher's stage maps)."""
        features = as_tapped(self.teacher).forward_features(self.normalise(images))
        means = [stage.mean((2, 3)) for stage in features.stages if stage.dim() == 4]
        return features.logits, torch.cat(means, dim=1)

    def bank_negatives(self, count: int, generator: torch.Generator) -> Tensor:
        """Up to ``count`` stored (local, global) feature rows (n, 2D), drawn without replacement."""
        stored = int(self.counters[2])
        if not stored or not count:
            return self.bank[:0]
        order = torch.randperm(stored, generator=generator, device=generator.device)[:count]
        return self.bank[order.to(self.bank.device)]

    def synthesis_loss(self, images: Tensor, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """L_syn of one generator step (module docstring) and the (local, global) instance features (B, 2D)."""
        config = self.config
        global_view, local = padded_random_crop(images, generator), local_view(images, generator)
        with batch_statistics(self.teacher) as (means, variances, layers):
            teacher_logits, global_features = self.instance_features(global_view)
        loss = config.bn_weight * bn_statistics_loss(means, variances, layers).to(images.device)
        loss = loss + config.class_weight * F.cross_entropy(teacher_logits, targets)
        if config.adversarial_weight:
            loss = loss + config.adversarial_weight * adversarial_loss(
                self(self.normalise(global_view)), teacher_logits
            )
        _, local_features = self.instance_features(local)
        cached_local, cached_global = self.bank_negatives(config.negatives, generator).chunk(2, dim=1)
        projected = self.head(torch.cat([local_features, cached_local, global_features, cached_global]))
        projected_local, projected_global = projected.chunk(2, dim=0)
        contrast = contrastive_loss(projected_local, projected_global, config.contrastive_temperature, len(images))
        loss = loss + config.contrastive_weight * contrast
        return loss, torch.cat([local_features, global_features], dim=1).detach()

    def synthesize(self, generator: torch.Generator) -> Tensor:
        """One synthesis round: re-initialise the generator, optimise it and z for ``generator_steps``, keep the
        lowest-loss batch in the pool and its features in the bank; returns those images (B, C, H, W) in [0, 1]."""
        config, device = self.config, generator.device
        size = config.synthesis_batch_size or self.info.batch_size or 64
        self.synthesizer.reinitialise(generator)
        z = torch.randn(size, config.latent_dim, generator=generator, device=device).requires_grad_()
        targets = torch.randint(0, self.info.num_classes, (size,), generator=generator, device=device)
        optimizer = torch.optim.Adam([*self.synthesizer.parameters(), z], config.generator_lr, betas=(0.5, 0.999))
        if self.head_optimizer is None:
            self.head_optimizer = torch.optim.Adam(self.head.parameters(), config.generator_lr)
        student_training = self.student.training
        self.student.eval()
        self.synthesizer.train()
        best: tuple[float, Tensor, Tensor] | None = None
        learned = [*self.synthesizer.parameters(), z, *self.head.parameters()]
        for _ in range(config.generator_steps):
            images = self.synthesizer(z)  # (B, C, H, W) in [0, 1]
            loss, features = self.synthesis_loss(images, targets, generator)
            if best is None or loss.item() < best[0]:
                best = (loss.item(), images.detach(), features)
            for parameter, gradient in zip(learned, torch.autograd.grad(loss, learned, allow_unused=True)):
                parameter.grad = gradient
            optimizer.step()
            self.head_optimizer.step()
        self.student.train(student_training)
        assert best is not None  # generator_steps >= 1
        self.store(best[1], best[2])
        self.counters[5] += 1
        return best[1]

    def store(self, images: Tensor, features: Tensor) -> None:
        """Add images (8-bit, as PNG files) to the pool ring and their features to the bank ring."""
        with torch.no_grad():
            quantised = (images.clamp(0, 1) * 255).round().to(torch.uint8)
            for rows, buffer, count_at in ((quantised, self.pool, 0), (features, self.bank, 2)):
                capacity = len(buffer)
                slots = (int(self.counters[count_at + 1]) + torch.arange(len(rows))) % capacity
                buffer[slots.to(buffer.device)] = rows[-capacity:].to(buffer.device, buffer.dtype)
                self.counters[count_at + 1] = (int(self.counters[count_at + 1]) + len(rows)) % capacity
                self.counters[count_at] = min(int(self.counters[count_at]) + len(rows), capacity)

    def augment_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Replace the batch by pool images (after a synthesis round every ``synthesis_every`` steps); the labels
        become -1 (unknown). The round's randomness comes from a stream seeded by the step's generator's seed and
        the round count, so the batch drawn from ``generator`` is the same whether or not a round ran."""
        if int(self.counters[4]) % self.config.synthesis_every == 0 or not int(self.counters[0]):
            stream = torch.Generator(device=generator.device)
            stream.manual_seed((generator.initial_seed() * 1_000_003 + int(self.counters[5])) % (2**63))
            self.synthesize(stream)
        self.counters[4] += 1
        index = torch.randint(0, int(self.counters[0]), (len(batch),), generator=generator, device=generator.device)
        images = self.pool[index.to(self.pool.device)].float() / 255  # (B, C, H, W)
        images = padded_random_crop(images.to(batch.inputs.device), generator)
        unknown = torch.full_like(batch.targets, -1)
        inputs = self.normalise(images).to(batch.inputs.dtype)
        return Batch(inputs=inputs, targets=unknown, indices=batch.indices, extras=batch.extras)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Batch) -> StepOutput:
        config = self.config
        if config.distill == "simkd":
            student_map = as_tapped(self.student).forward_features(batch.inputs).final_map
            projected = self.projectors[0](student_map)  # (B, C_t, H, W)
            with torch.no_grad():
                teacher_map = as_tapped(self.teacher).forward_features(batch.inputs).final_map
            logits = self.teacher_head()(projected)  # (B, K) through the teacher's classifier
            loss = simkd_loss(*align_spatial(projected.float(), teacher_map.float()))
            return StepOutput(logits=logits, losses={"simkd": config.weight * loss})
        teacher_logits = self.teacher_logits(batch)  # (B, K), the teacher first (see kd)
        logits = self.student(batch.inputs)  # (B, K)
        loss = kd_loss(logits.float(), teacher_logits, config.temperature)
        return StepOutput(logits=logits, losses={"kd": config.kd_weight * loss})
