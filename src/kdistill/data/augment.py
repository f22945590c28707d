"""Batch-level augmentation on the device: mixup, Inception-style crop, horizontal flip.

Every function draws its randomness from an explicit ``torch.Generator`` (never the global RNG), so a
batch's augmentation is a function of (generator state, inputs) only: the trainer seeds one generator per
(run seed, epoch), which makes the augmented inputs reproducible, resumable and replayable (a teacher-output
cache can recompute exactly what the teacher saw). The generator must live on the inputs' device.

These follow the official code of Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent" (arXiv:2106.05237; google-research/big_vision ``trainers/proj/distill``,
``big_vision.utils.mixup`` and ``pp.ops_image.inception_crop``), with the differences noted per function.
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

RatioDistribution = str | tuple[str, float]


def _rand(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


def sample_ratio(
    generator: torch.Generator, ratio_dist: RatioDistribution = "uniform", shape: tuple[int, ...] = ()
) -> Tensor:
    """Mixing ratios of the given shape: ``"uniform"`` = U(0, 1) = Beta(1, 1); ``("beta", alpha)`` = Beta(alpha, alpha).

    Beta is drawn from uniforms only (Johnk's algorithm, see :func:`_beta_johnk`) because torch's Gamma/Beta
    samplers take no generator; 0 < alpha <= 2 is supported (mixup uses 0.1 to 1).
    """
    if ratio_dist == "uniform":
        return _rand(shape, generator)
    if isinstance(ratio_dist, (tuple, list)) and len(ratio_dist) == 2 and ratio_dist[0] == "beta":
        alpha = float(ratio_dist[1])
        if not 0 < alpha <= 2:
            raise ValueError(f"mixup Beta concentration must be in (0, 2], got {alpha}")
        if alpha == 1.0:
            return _rand(shape, generator)
        return _beta_johnk(alpha, shape, generator)
    raise ValueError(f"ratio_dist must be 'uniform' or ('beta', alpha), got {ratio_dist!r}")


def _beta_johnk(alpha: float, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Symmetric Beta(alpha, alpha) from uniforms only (Johnk 1964), so the explicit generator is honoured.

    X = U1^(1/alpha), Y = U2^(1/alpha), accepted when X + Y <= 1, gives X / (X + Y) ~ Beta(alpha, alpha).
    Works in log space so that tiny alpha (0.1, BiT's mixup) does not underflow U^(1/alpha) to 0.
    A round accepts with probability Gamma(1+alpha)^2 / Gamma(1+2*alpha): 0.99 at alpha 0.1, 1/2 at 1,
    1/6 at 2; after 256 rounds the leftovers (probability < 1e-20 at alpha 2) take the mean, 1/2.
    """
    count = math.prod(shape)
    result = torch.full((count,), 0.5, device=generator.device)
    pending = torch.arange(count, device=generator.device)
    for _ in range(256):
        if pending.numel() == 0:
            break
        uniforms = _rand((2, pending.numel()), generator).clamp_min(torch.finfo(torch.float32).tiny)
        log_x, log_y = uniforms.log() / alpha  # (2, n)
        log_sum = torch.logaddexp(log_x, log_y)
        accepted = log_sum <= 0
        result[pending[accepted]] = torch.exp(log_x[accepted] - log_sum[accepted])
        pending = pending[~accepted]
    return result.reshape(shape)


def mixup(
    inputs: Tensor,
    generator: torch.Generator,
    ratio_dist: RatioDistribution = "uniform",
    per_sample: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mix every input with its neighbour in the batch: ``mixed = ratio * x + (1 - ratio) * x[partner]``.

    Args:
        inputs: (B, ...) batch.
        generator: the randomness source (on ``inputs.device``).
        ratio_dist: ``"uniform"`` (function matching: U(0, 1) = Beta(1, 1)) or ``("beta", alpha)`` (classic
            mixup; BiT-HyperRule uses alpha = 0.1).
        per_sample: one ratio per sample instead of one per batch.

    Returns:
        ``(mixed (B, ...), ratio, partner_index (B,))``. ``ratio`` is a 0-dim tensor (one ratio for the whole
        batch, the default) or (B,) with ``per_sample``; ``partner_index[i]`` is the sample mixed into ``i``.

    One ratio per batch is what the paper's code does: big_vision's ``utils.mixup(rng, p=1.0, n=2)`` with
    ``fold_in=None`` draws a single Dirichlet([1, 1]) coefficient for the whole batch (its docstring calls one
    per example "usually a bad idea"). big_vision additionally sorts the coefficients so the image itself
    always gets the larger weight (ratio in [0.5, 1]); mixed images have the same distribution either way
    (a*x_i + (1-a)*x_j with a < 1/2 is the a' = 1-a mix of the same pair), so the ratio here is left unsorted
    and exactly uniform, as the paper's text and the Keras example state.

    The partner is the batch rolled by one (``torch.roll``), so for B >= 2 no sample is ever mixed with
    itself. The Keras example (seed 000) used ``tf.reverse``, which pairs the middle images with themselves
    for odd batches and, for even ones, mixes each pair in both directions; big_vision uses ``jnp.roll``.
    With B == 1 the only partner is the sample itself (mixup is then the identity).
    """
    batch_size = inputs.shape[0]
    partner = torch.roll(torch.arange(batch_size, device=inputs.device), shifts=1)  # (B,): i <- i-1
    ratio = sample_ratio(generator, ratio_dist, (batch_size,) if per_sample else ()).to(inputs.device, inputs.dtype)
    weight = ratio.reshape(-1, *([1] * (inputs.dim() - 1))) if per_sample else ratio  # (B, 1, 1, 1) or ()
    mixed = weight * inputs + (1 - weight) * inputs[partner]
    return mixed, ratio, partner


def _uniform_int(uniforms: Tensor, count: Tensor) -> Tensor:
    """Integers uniform in [0, count) from U[0, 1) draws (``count`` >= 1; TF's ``SimplePhilox::Uniform``)."""
    count = count.clamp_min(1)
    return torch.minimum(torch.floor(uniforms * count), count - 1)


def _candidate_boxes(
    aspect: Tensor, height_draws: Tensor, height: int, width: int, min_area: Tensor, max_area: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Widths, heights (B, A) and validity of the attempted boxes of :func:`sample_crop_boxes` (TF's rules)."""
    box_h = torch.round(torch.sqrt(min_area / aspect))  # (B, A) smallest height
    max_h = torch.round(torch.sqrt(max_area / aspect))  # (B, A) largest height before the caps
    too_wide = torch.round(max_h * aspect) > width
    capped = torch.floor((width + 0.5 - 1e-7) / aspect)  # largest h with round(h * ar) <= W (up to rounding)
    capped = torch.where(torch.round(capped * aspect) > width, capped - 1, capped)
    max_h = torch.where(too_wide, capped, max_h).clamp_max(height)
    box_h = torch.minimum(box_h, max_h)
    box_h = box_h + _uniform_int(height_draws, max_h - box_h + 1)  # (B, A) in [h_min, h_max]
    box_w = torch.round(box_h * aspect)
    # rounding repairs, as in TF: one pixel taller if too small, else one shorter if too large
    small = box_w * box_h < min_area
    box_h = torch.where(small, box_h + 1, box_h)
    box_w = torch.where(small, torch.round(box_h * aspect), box_w)
    large = box_w * box_h > max_area
    box_h = torch.where(large, box_h - 1, box_h)
    box_w = torch.where(large, torch.round(box_h * aspect), box_w)
    area = box_w * box_h
    valid = (area >= min_area) & (area <= max_area) & (box_w <= width) & (box_h <= height) & (box_w > 0) & (box_h > 0)
    return box_w, box_h, valid


def sample_crop_boxes(
    batch_size: int,
    height: int,
    width: int,
    generator: torch.Generator,
    area_range: tuple[float, float] = (0.05, 1.0),
    aspect_range: tuple[float, float] = (0.75, 1.33),
    attempts: int = 100,
) -> Tensor:
    """Inception-style boxes ``(B, 4) = (x0, y0, w, h)`` in whole pixels, inside the image.

    Follows TensorFlow's ``tf.image.sample_distorted_bounding_box`` (kernel
    ``sample_distorted_bounding_box_op.cc``: ``GenerateRandomCrop`` and its attempt loop), which big_vision's
    ``inception_crop`` calls with ``min_object_covered=0`` and no boxes (so every valid crop is accepted).
    Per attempt, with A = H * W pixels and ``round`` = round half to even (``lrintf``):

    - aspect ratio ``ar = w / h`` ~ U(aspect_range) (uniform, not log-uniform);
    - ``h_min = round(sqrt(area_min * A / ar))``, ``h_max = round(sqrt(area_max * A / ar))``, ``h_max`` lowered
      until ``round(h_max * ar) <= W`` and capped at H; ``h`` ~ uniform integer in [h_min, h_max] (``h_max`` if
      ``h_min >= h_max``), ``w = round(h * ar)``;
    - if ``w * h < area_min * A`` then h += 1, else if ``w * h > area_max * A`` then h -= 1 (w recomputed);
      the attempt fails if the area is still outside the range or the box does not fit;
    - offsets ``y0`` uniform in {0, ..., H - h - 1} (0 when h == H) and ``x0`` likewise, as TF draws them
      (so a box smaller than the image never touches its bottom / right edge).

    The first of ``attempts`` (TF's ``max_attempts``, default 100) that succeeds is taken; a sample with none
    gets the whole image. So the side, not the area, is uniform: small crops are more frequent than with an
    area-uniform sampler. Attempts are drawn all at once (B, attempts), which gives the same distribution as
    TF's sequential loop. Randomness comes only from ``generator``.
    """
    low, high = area_range
    if not 0 < low <= high <= 1:
        raise ValueError(f"crop area_range must satisfy 0 < min <= max <= 1, got {area_range}")
    if not 0 < aspect_range[0] <= aspect_range[1]:
        raise ValueError(f"crop aspect_range must satisfy 0 < min <= max, got {aspect_range}")
    if attempts < 1:
        raise ValueError(f"crop attempts must be >= 1, got {attempts}")
    device = generator.device
    uniforms = _rand((4, batch_size, attempts), generator)  # aspect, height, y, x draws: each (B, A)
    min_area = torch.tensor(low * height * width, dtype=torch.float32, device=device)
    max_area = torch.tensor(high * height * width, dtype=torch.float32, device=device)
    aspect = aspect_range[0] + (aspect_range[1] - aspect_range[0]) * uniforms[0]  # (B, A) = w / h

    box_w, box_h, valid = _candidate_boxes(aspect, uniforms[1], height, width, min_area, max_area)

    first = torch.where(valid.any(1), valid.float().argmax(1), torch.full((batch_size,), -1, device=device))
    pick = first.clamp_min(0)[:, None]  # (B, 1)
    box_w = box_w.gather(1, pick).squeeze(1)  # (B,)
    box_h = box_h.gather(1, pick).squeeze(1)
    y0 = torch.where(box_h < height, _uniform_int(uniforms[2].gather(1, pick).squeeze(1), height - box_h), 0.0)
    x0 = torch.where(box_w < width, _uniform_int(uniforms[3].gather(1, pick).squeeze(1), width - box_w), 0.0)
    full = torch.tensor([0.0, 0.0, float(width), float(height)], device=device)
    boxes = torch.stack([x0, y0, box_w, box_h], dim=1)  # (B, 4)
    return torch.where((first < 0)[:, None], full, boxes)


def crop_resize(inputs: Tensor, boxes: Tensor, output_size: tuple[int, int], flip: Tensor | None = None) -> Tensor:
    """Crop each image to its box ``(x0, y0, w, h)`` (pixels) and resize it to ``output_size`` (bilinear),
    optionally mirroring it, with one ``F.grid_sample`` over the batch (runs on any device)."""
    batch_size, _, height, width = inputs.shape
    x0, y0, box_w, box_h = boxes.to(device=inputs.device, dtype=inputs.dtype).unbind(1)  # (B,) each
    scale_x, scale_y = box_w / width, box_h / height
    if flip is not None:
        scale_x = torch.where(flip.to(inputs.device), -scale_x, scale_x)
    theta = torch.zeros(batch_size, 2, 3, device=inputs.device, dtype=inputs.dtype)
    # align_corners=False: normalised -1/+1 are the outer edges of the first/last pixel.
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = (2 * x0 + box_w) / width - 1  # box centre, x
    theta[:, 1, 1] = scale_y
    theta[:, 1, 2] = (2 * y0 + box_h) / height - 1  # box centre, y
    grid = F.affine_grid(theta, [batch_size, inputs.shape[1], *output_size], align_corners=False)  # (B, h, w, 2)
    return F.grid_sample(inputs, grid, mode="bilinear", padding_mode="border", align_corners=False)


@overload
def inception_crop(
    inputs: Tensor,
    generator: torch.Generator,
    output_size: int | tuple[int, int] | None = ...,
    area_range: tuple[float, float] = ...,
    aspect_range: tuple[float, float] = ...,
    return_boxes: Literal[False] = ...,
) -> Tensor: ...


@overload
def inception_crop(
    inputs: Tensor,
    generator: torch.Generator,
    output_size: int | tuple[int, int] | None = ...,
    area_range: tuple[float, float] = ...,
    aspect_range: tuple[float, float] = ...,
    *,
    return_boxes: Literal[True],
) -> tuple[Tensor, Tensor]: ...


@overload
def inception_crop(
    inputs: Tensor,
    generator: torch.Generator,
    output_size: int | tuple[int, int] | None = ...,
    area_range: tuple[float, float] = ...,
    aspect_range: tuple[float, float] = ...,
    return_boxes: bool = ...,
) -> Tensor | tuple[Tensor, Tensor]: ...


def inception_crop(
    inputs: Tensor,
    generator: torch.Generator,
    output_size: int | tuple[int, int] | None = None,
    area_range: tuple[float, float] = (0.05, 1.0),
    aspect_range: tuple[float, float] = (0.75, 1.33),
    return_boxes: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Random-resized ("Inception-style") crop of each image of a (B, C, H, W) batch, on its device.

    Each sample gets its own box (see :func:`sample_crop_boxes`), resized to ``output_size`` (default: the
    input size). The default area range 5%-100% is big_vision's ``inception_crop`` default (area_min=5),
    which the paper's configs use; torchvision's ``RandomResizedCrop`` uses 8%-100%. The default aspect range
    0.75-1.33 is TensorFlow's ``sample_distorted_bounding_box`` default, which big_vision's ``inception_crop``
    keeps (torchvision uses 3/4-4/3, log-uniform; TF draws the ratio uniformly).
    Returns the crops, and the boxes (B, 4) = (x0, y0, w, h) in input pixels with ``return_boxes``.
    """
    _, _, height, width = inputs.shape
    if output_size is None:
        output_size = (height, width)
    elif isinstance(output_size, int):
        output_size = (output_size, output_size)
    boxes = sample_crop_boxes(inputs.shape[0], height, width, generator, area_range, aspect_range)
    crops = crop_resize(inputs, boxes, output_size)
    return (crops, boxes) if return_boxes else crops


def random_flip(inputs: Tensor, generator: torch.Generator, probability: float = 0.5) -> Tensor:
    """Mirror each image of a (B, C, H, W) batch left-right with ``probability`` (big_vision's ``flip_lr``)."""
    flip = (_rand((inputs.shape[0],), generator) < probability).to(inputs.device)  # (B,)
    return torch.where(flip[:, None, None, None], inputs.flip(-1), inputs)


def resize(inputs: Tensor, output_size: int | tuple[int, int]) -> Tensor:
    """Bilinear resize of a (B, C, H, W) batch (identity when the size already matches)."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    if tuple(inputs.shape[-2:]) == tuple(output_size):
        return inputs
    return F.interpolate(inputs, size=tuple(output_size), mode="bilinear", align_corners=False, antialias=True)
