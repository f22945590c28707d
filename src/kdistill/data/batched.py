"""The augmentation presets run on a whole batch at once, for datasets held in memory as one uint8 tensor.

Each random preset of :mod:`kdistill.data.transforms` (``crop_flip``, ``cifar``, ``imagenet``, ``inception``,
``resize_crop``) has a :class:`BatchTransform` here that draws its crops and flips from the same distribution as the
torchvision v2 transform it replaces, and gives the same output for the same crop and flip:

- pad + random crop + flip (``crop_flip``, ``cifar``, ``resize_crop``): one gather of uint8 pixels per batch; the
  output equals torchvision's ``RandomCrop`` + ``RandomHorizontalFlip`` + ``ToDtype`` + ``Normalize`` bit for bit;
- random resized crop + flip (``imagenet``, ``inception``): the boxes follow torchvision's ``RandomResizedCrop``
  (10 attempts of area ~ U(scale) and log-uniform aspect ratio, then the centre-crop fallback); each box is resized
  with the antialiased bilinear filter torchvision uses (PIL's triangle filter, widened when shrinking), written as
  two per-sample matrices so the whole batch is two matrix products, and rounded to uint8 as torchvision does.
  torchvision's CPU kernel rounds in fixed point, so a pixel may differ from it by one grey level.

The randomness of sample ``i`` in epoch ``e`` of a data stream is a function of (stream seed, e, i) only: SplitMix64
(Steele, Lea and Flood, OOPSLA 2014) started at :func:`~kdistill.data.splits.sample_seed`, the seed the per-sample
path gives torch's generator. Batches of any size, order, rank or loader worker therefore get the same pixels,
which is what the teacher cache, exact mid-epoch resume and DDP rely on. The draws are made with NumPy's wrapping
uint64 arithmetic on the CPU (a few numbers per sample) and copied to the images' device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from kdistill.registry import Registry

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MASK63 = np.uint64((1 << 63) - 1)
_TWO_POW_MINUS_53 = 2.0**-53
ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its centre-crop fallback


# ----------------------------------------------------------------------------- counter-based draws


def sample_seeds(stream_seed: int, epochs: Sequence[int] | np.ndarray, indices: np.ndarray) -> np.ndarray:
    """:func:`kdistill.data.splits.sample_seed` of every (epoch, index) pair, as uint64 (vectorised)."""
    epochs = np.asarray(epochs, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= 1 << 62):
        raise ValueError("sample indices must be in [0, 2**62)")
    prefix = np.empty(indices.shape, dtype=np.uint64)
    for epoch in np.unique(epochs).tolist():  # one epoch per batch in training: one Python big-int product
        prefix[epochs == epoch] = np.uint64(((stream_seed * 1_000_003 + epoch) * 4_294_967_311) % (1 << 63))
    return (prefix + indices.astype(np.uint64)) & _MASK63  # < 2**63 + 2**62: no wrap before the mask


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Stafford's Mix13): a bijection of uint64 with full avalanche."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_uniforms(
    stream_seed: int, epochs: Sequence[int] | np.ndarray, indices: np.ndarray, count: int
) -> np.ndarray:
    """(B, count) float64 draws in [0, 1): the first ``count`` outputs of SplitMix64 seeded with each sample's seed
    (53 random bits each)."""
    seeds = sample_seeds(stream_seed, epochs, indices)
    steps = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN  # state after k increments, k = 1..count
    with np.errstate(over="ignore"):
        bits = _mix64(seeds[:, None] + steps[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * _TWO_POW_MINUS_53


def uniform_integers(uniforms: Tensor, count: Tensor | int) -> Tensor:
    """Integers uniform in {0, ..., count - 1} from U[0, 1) draws (``torch.randint(0, count)``'s distribution)."""
    count = torch.as_tensor(count, device=uniforms.device, dtype=torch.float64)
    return torch.minimum(torch.floor(uniforms * count), count - 1).to(torch.int64)


# ----------------------------------------------------------------------------- batch transforms


class BatchTransform:
    """A train preset on a uint8 batch (B, C, H, W) on any device: ``draws`` uniforms per sample in (float64 on the
    CPU), a normalised float32 batch (B, C, size, size) on the images' device out."""

    draws: int = 0

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean = torch.tensor([float(m) for m in mean]).view(-1, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(-1, 1, 1)

    def __call__(self, images: Tensor, uniforms: Tensor) -> Tensor:
        raise NotImplementedError

    def finish(self, images: Tensor) -> Tensor:
        """uint8 -> float in [0, 1] -> normalised: the float32 operations of torchvision's ``ToDtype(scale=True)`` and
        ``Normalize`` in their order (so the same bits), without their per-call dispatch."""
        if self.mean.device != images.device:
            self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
        return images.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)


def _flip_columns(columns: Tensor, flip: Tensor) -> Tensor:
    """(B, S) source columns of each output column, mirrored where ``flip``: a flip after the crop."""
    return torch.where(flip[:, None], columns.flip(1), columns)


class CropFlip(BatchTransform):
    """Optional resize to ``resize_to``, zero padding, random ``size`` crop and horizontal flip (p = 0.5), as
    torchvision's ``Resize`` + ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip``. Draws: top, left, flip."""

    draws = 3

    def __init__(self, size: int, mean, std, padding: int = 0, resize_to: int | None = None) -> None:
        super().__init__(size, mean, std)
        self.padding = padding
        self.resize_to = resize_to

    def offsets(self, uniforms: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
        """(top, left, flip) per sample, offsets in the padded image: ``randint(0, padded - size + 1)`` each."""
        top = uniform_integers(uniforms[:, 0], height + 2 * self.padding - self.size + 1)
        left = uniform_integers(uniforms[:, 1], width + 2 * self.padding - self.size + 1)
        return top, left, uniforms[:, 2] < 0.5

    def __call__(self, images: Tensor, uniforms: Tensor) -> Tensor:
        if self.resize_to is not None:
            images = TF.resize(images, [self.resize_to, self.resize_to], antialias=True)
        top, left, flip = self.offsets(uniforms, images.shape[-2], images.shape[-1])
        return self.finish(self.crop(images, top, left, flip))

    def crop(self, images: Tensor, top: Tensor, left: Tensor, flip: Tensor) -> Tensor:
        """Each image's ``size`` crop at (top, left) of its zero-padded self, mirrored where ``flip``: one gather."""
        if self.padding:
            images = F.pad(images, [self.padding] * 4)  # zeros, torchvision's fill
        batch, channels, height, width = images.shape
        steps = torch.arange(self.size, device=images.device)
        rows = top.to(images.device)[:, None] + steps  # (B, S)
        columns = _flip_columns(left.to(images.device)[:, None] + steps, flip.to(images.device))
        flat = (rows[:, :, None] * width + columns[:, None, :]).reshape(batch, 1, -1)  # (B, 1, S*S)
        picked = images.reshape(batch, channels, height * width).gather(2, flat.expand(batch, channels, -1))
        return picked.reshape(batch, channels, self.size, self.size)


class ResizedCropFlip(BatchTransform):
    """torchvision's ``RandomResizedCrop(size, scale, ratio)`` (bilinear, antialiased) + ``RandomHorizontalFlip``.
    Draws: ``ATTEMPTS`` (area, log-ratio) pairs, the box's top and left, the flip."""

    draws = 2 * ATTEMPTS + 3

    def __init__(self, size: int, mean, std, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> None:
        super().__init__(size, mean, std)
        self.scale = (float(scale[0]), float(scale[1]))
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def boxes(self, uniforms: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(top, left, box height, box width) per sample, by ``RandomResizedCrop.make_params``'s rules: the first of
        ``ATTEMPTS`` boxes of area ``H*W*U(scale)`` and ratio ``exp(U(log ratio))`` (sides rounded half to even,
        as Python's ``round``) that fits, else the centre crop of the image's ratio clamped to ``ratio``."""
        u = uniforms.to(torch.float64)
        area = height * width * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0 : 2 * ATTEMPTS : 2])
        aspect = torch.exp(self.log_ratio[0] + (self.log_ratio[1] - self.log_ratio[0]) * u[:, 1 : 2 * ATTEMPTS : 2])
        box_w = torch.round(torch.sqrt(area * aspect))  # (B, ATTEMPTS)
        box_h = torch.round(torch.sqrt(area / aspect))
        fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
        found = fits.any(1)
        first = fits.to(torch.int8).argmax(1, keepdim=True)  # the first attempt that fits (0 when none does)
        box_h = box_h.gather(1, first).squeeze(1).to(torch.int64)
        box_w = box_w.gather(1, first).squeeze(1).to(torch.int64)
        fallback_h, fallback_w = self._centre_box(height, width)
        box_h = torch.where(found, box_h, fallback_h)
        box_w = torch.where(found, box_w, fallback_w)
        top = torch.where(found, uniform_integers(u[:, -3], height - box_h + 1), (height - box_h) // 2)
        left = torch.where(found, uniform_integers(u[:, -2], width - box_w + 1), (width - box_w) // 2)
        return top, left, box_h, box_w

    def _centre_box(self, height: int, width: int) -> tuple[int, int]:
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            return int(round(width / min(self.ratio))), width
        if in_ratio > max(self.ratio):
            return height, int(round(height * max(self.ratio)))
        return height, width

    def __call__(self, images: Tensor, uniforms: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        top, left, box_h, box_w = (t.to(images.device) for t in self.boxes(uniforms, height, width))
        flip = (uniforms[:, -1] < 0.5).to(images.device)
        return self.finish(self.resized_crop(images, top, left, box_h, box_w, flip))

    def resized_crop(
        self, images: Tensor, top: Tensor, left: Tensor, box_h: Tensor, box_w: Tensor, flip: Tensor | None = None
    ) -> Tensor:
        """Each image's box resized to ``size`` x ``size`` (mirrored where ``flip``), as uint8:
        ``round(rows @ image @ columns^T)`` with one filter matrix per sample and axis (:func:`resize_weights`)."""
        height, width = images.shape[-2:]
        rows = resize_weights(top, box_h, self.size, height)  # (B, S, H)
        columns = resize_weights(left, box_w, self.size, width)  # (B, S, W)
        if flip is not None:
            columns = torch.where(flip[:, None, None], columns.flip(1), columns)
        pixels = images.to(torch.float32)
        resized = rows[:, None] @ pixels @ columns[:, None].transpose(-1, -2)  # (B, C, S, S)
        return resized.round_().clamp_(0, 255).to(torch.uint8)


def resize_weights(start: Tensor, length: Tensor, output: int, full: int) -> Tensor:
    """(B, output, full) float32 weights (on ``length``'s device) of an antialiased bilinear resize of pixels
    ``[start, start + length)`` of an axis of ``full`` pixels to ``output`` pixels: PyTorch's
    ``interpolate(antialias=True)`` filter (PIL's).

    Output pixel ``i`` centres at ``c = (i + 0.5) * s`` in the crop (``s = length / output``); crop pixel ``j`` gets
    the triangle ``max(0, 1 - |j + 0.5 - c| / max(s, 1))`` (its support widened by ``s`` when shrinking, which is the
    antialiasing); weights outside the crop are zero and each row is normalised to sum to one.
    """
    length = length.to(torch.float32)[:, None, None]  # (B, 1, 1)
    scale = length / output
    centre = (torch.arange(output, dtype=torch.float32, device=length.device)[None, :, None] + 0.5) * scale
    pixel = torch.arange(full, dtype=torch.float32, device=length.device)[None, None, :] - start[:, None, None]
    weight = (1 - (pixel + 0.5 - centre).abs() / scale.clamp_min(1)).clamp_min(0)
    weight = torch.where((pixel >= 0) & (pixel < length), weight, 0.0)
    return weight / weight.sum(2, keepdim=True)


# ----------------------------------------------------------------------------- the presets

BatchPresetBuilder = Callable[[int, int, tuple[float, ...], tuple[float, ...]], BatchTransform]
BATCH_PRESETS: Registry[BatchPresetBuilder] = Registry("batched augmentation preset")


@BATCH_PRESETS.register("crop_flip")
def batch_crop_flip(size: int, native: int, mean, std) -> BatchTransform:
    return CropFlip(size, mean, std, padding=max(1, size // 8), resize_to=size if size != native else None)


@BATCH_PRESETS.register("cifar")
def batch_cifar(size: int, native: int, mean, std) -> BatchTransform:
    return CropFlip(32, mean, std, padding=4)


@BATCH_PRESETS.register("imagenet")
def batch_imagenet(size: int, native: int, mean, std) -> BatchTransform:
    return ResizedCropFlip(size, mean, std)


@BATCH_PRESETS.register("inception")
def batch_inception(size: int, native: int, mean, std) -> BatchTransform:
    return ResizedCropFlip(size, mean, std, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))


@BATCH_PRESETS.register("resize_crop")
def batch_resize_crop(size: int, native: int, mean, std) -> BatchTransform:
    return CropFlip(size, mean, std, resize_to=round(size * 1.25))


@dataclass(frozen=True)
class DrawKeys:
    """What a batch's random draws are a function of: the stream seed (None: the global torch generator, not
    replayable), and each sample's stream epoch and index."""

    stream_seed: int | None
    epochs: np.ndarray
    indices: np.ndarray

    def uniforms(self, count: int) -> Tensor:
        """(B, count) float64 draws on the CPU (the transforms turn them into offsets there: a few numbers a sample)."""
        if self.stream_seed is None:
            return torch.rand(len(self.indices), count, dtype=torch.float64)
        return torch.from_numpy(sample_uniforms(self.stream_seed, self.epochs, self.indices, count))
