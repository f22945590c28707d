"""Per-sample transform presets (``data.augment``), an in-memory image dataset and its splits builder.

Each preset maps (image size, native size, mean, std) to a (train, eval) pair of torchvision v2
transforms taking a uint8 image (tensor (C, H, W) or PIL) to a normalised float tensor (C, H, W).

- ``none``: resize if asked, normalise (train = eval).
- ``crop_flip``: random crop with padding size/8 + horizontal flip (the CIFAR recipe at any size).
- ``cifar``: RandomCrop(32, padding=4) + flip, as in the CRD / RepDistiller / SimKD recipe.
- ``imagenet``: RandomResizedCrop(size) + flip; eval: resize to size/0.875, centre crop.
- ``inception``: Inception-style crop (area 8%-100%, aspect 3/4-4/3) + flip; eval as imagenet.
- ``resize_crop``: resize to 1.25x then random crop + flip (seed 000's Keras recipe: 160 -> 128);
  eval: central crop of 0.875 then resize (seed 000).

Datasets held in memory (:func:`tensor_splits`) run the random presets on whole batches instead
(:mod:`kdistill.data.batched`: same distributions, same output for the same crop), unless
``data.pipeline=per_sample``. Batch-level augmentation of a method (mixup, function matching's crops) belongs to
the method (``Method.augment_batch``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from kdistill.choices import PIPELINES
from kdistill.config import DataConfig
from kdistill.contracts import ConfigError
from kdistill.data.batched import BATCH_PRESETS, BatchTransform, DrawKeys
from kdistill.data.registry import DatasetSplits
from kdistill.registry import Registry

Transform = Callable[..., Tensor]
PresetBuilder = Callable[[int, int, tuple[float, ...], tuple[float, ...]], tuple[Transform, Transform]]
PRESETS: Registry[PresetBuilder] = Registry("augmentation preset")


def _finish(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def _eval_transform(size: int, native: int, mean, std) -> Transform:
    resize = [v2.Resize(size, antialias=True)] if size != native else []
    return v2.Compose([v2.ToImage(), *resize, *_finish(mean, std)])


def _central_eval(size: int, mean, std) -> Transform:
    return v2.Compose(
        [v2.ToImage(), v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size), *_finish(mean, std)]
    )


@PRESETS.register("none")
def preset_none(size: int, native: int, mean, std):
    transform = _eval_transform(size, native, mean, std)
    return transform, transform


@PRESETS.register("crop_flip")
def preset_crop_flip(size: int, native: int, mean, std):
    resize = [v2.Resize(size, antialias=True)] if size != native else []
    train = v2.Compose(
        [
            v2.ToImage(),
            *resize,
            v2.RandomCrop(size, padding=max(1, size // 8)),
            v2.RandomHorizontalFlip(),
            *_finish(mean, std),
        ]
    )
    return train, _eval_transform(size, native, mean, std)


@PRESETS.register("cifar")
def preset_cifar(size: int, native: int, mean, std):
    if size != 32:
        raise ConfigError(f"augment 'cifar' is the 32x32 recipe; image_size is {size} (use 'crop_flip')")
    train = v2.Compose([v2.ToImage(), v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *_finish(mean, std)])
    return train, _eval_transform(32, native, mean, std)


@PRESETS.register("imagenet")
def preset_imagenet(size: int, native: int, mean, std):
    train = v2.Compose(
        [v2.ToImage(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *_finish(mean, std)]
    )
    return train, _central_eval(size, mean, std)


@PRESETS.register("inception")
def preset_inception(size: int, native: int, mean, std):
    crop = v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)
    train = v2.Compose([v2.ToImage(), crop, v2.RandomHorizontalFlip(), *_finish(mean, std)])
    return train, _central_eval(size, mean, std)


@PRESETS.register("resize_crop")
def preset_resize_crop(size: int, native: int, mean, std):
    bigger = round(size * 1.25)
    train = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((bigger, bigger), antialias=True),
            v2.RandomCrop(size),
            v2.RandomHorizontalFlip(),
            *_finish(mean, std),
        ]
    )
    evaluate = v2.Compose(
        [
            v2.ToImage(),
            v2.CenterCrop(round(native * 0.875)),
            v2.Resize((size, size), antialias=True),
            *_finish(mean, std),
        ]
    )
    return train, evaluate


def build_transforms(preset: str, image_size: int | None, native_size: int, mean, std) -> tuple[Transform, Transform]:
    try:
        builder = PRESETS.get(preset)
    except KeyError as error:
        raise ConfigError(f"data.augment: {error.args[0]}") from None
    return builder(image_size or native_size, native_size, tuple(mean), tuple(std))


def train_transform_is_random(config: DataConfig) -> bool:
    """Whether the train transform of ``config.augment`` draws random parameters (every preset but ``none``)."""
    return config.augment != "none"


PREPARE_LIMIT_BYTES = 1 << 30  # above this, deterministic splits are transformed per batch, not all at once


class TensorImageDataset(Dataset):
    """Images held in memory as uint8 (N, C, H, W) with int labels.

    With ``per_item=False`` (a deterministic transform) the whole set is converted once (fast path for small data);
    ``per_item=True`` keeps the uint8 images and transforms at every access: a random ``transform`` per sample, or,
    through :meth:`fetch`, the random ``batch_transform`` (:mod:`kdistill.data.batched`) or a deterministic
    ``transform`` on a whole batch at once (torchvision's v2 transforms take (B, C, H, W) batches).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        transform: Transform,
        per_item: bool,
        batch_transform: BatchTransform | None = None,
        random: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.labels = labels.to(torch.int64)
        self.transform = transform
        self.batch_transform = batch_transform
        self.random = random  # whether ``transform`` draws random parameters
        self.images = images
        self.prepared: Tensor | None = None
        if not per_item:
            self.prepared = _apply_batched(transform, images)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int):
        image = self.prepared[index] if self.prepared is not None else self.transform(self.images[index])
        return image, self.labels[index]

    @property
    def batched(self) -> bool:
        """Whether :meth:`fetch` can produce whole batches (else items go one by one through ``transform``)."""
        return self.prepared is not None or not self.random or self.batch_transform is not None

    @property
    def device(self) -> torch.device:
        return self.images.device

    def fetch(self, positions: Tensor, draws: DrawKeys) -> Tensor:
        """The transformed images at ``positions`` (int64, on :attr:`device`) as one batch; ``draws`` keys the random
        parameters of a random ``batch_transform``."""
        if self.prepared is not None:
            return self.prepared[positions]
        images = self.images[positions]
        if self.batch_transform is not None:
            return self.batch_transform(images, draws.uniforms(self.batch_transform.draws))
        if self.random:
            raise RuntimeError("this dataset's transform is random and per sample: read it item by item")
        return self.transform(images).as_subclass(Tensor)  # a plain tensor, not v2's Image (torch.compile needs it)

    def to(self, device: torch.device, moved: dict[int, Tensor] | None = None) -> None:
        """Hold the images (and the prepared set) on ``device``; ``moved`` maps tensors already moved (by id) to their
        copies, so splits sharing one tensor share its copy."""
        moved = {} if moved is None else moved
        for name in ("images", "prepared", "labels"):
            value = getattr(self, name)
            if value is not None:
                if id(value) not in moved:
                    moved[id(value)] = value.to(device)
                setattr(self, name, moved[id(value)])


def _apply_batched(transform: Transform, images: Tensor) -> Tensor:
    """Apply a deterministic v2 transform to a whole uint8 batch (v2 transforms accept (N, C, H, W))."""
    return torch.cat([transform(chunk) for chunk in images.split(8192)], 0)


def batch_transform_for(config: DataConfig, size: int, native: int, mean, std) -> BatchTransform | None:
    """The batched train transform of ``config.augment`` for an in-memory dataset, or None: the preset is not random,
    ``data.pipeline=per_sample`` asks for torchvision's per-sample transforms, or (``auto``) the preset has no
    batched form (a preset registered without one)."""
    if config.pipeline not in PIPELINES:
        raise ConfigError(f"data.pipeline={config.pipeline!r}; valid: {', '.join(PIPELINES)}")
    if config.pipeline == "per_sample" or not train_transform_is_random(config):
        return None
    if config.augment not in BATCH_PRESETS:
        if config.pipeline == "batched":
            raise ConfigError(
                f"data.pipeline=batched: augment preset {config.augment!r} has no batched form; use "
                "data.pipeline=auto (its per-sample transform) or a preset of `kdistill datasets`"
            )
        return None
    return BATCH_PRESETS.get(config.augment)(size, native, tuple(mean), tuple(std))


def tensor_splits(
    config: DataConfig,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int,
    mean,
    std,
    class_names: list[str] | None,
    default_val_size: int,
) -> DatasetSplits:
    """In-memory uint8 (N, C, H, W) splits; deterministic splits are prepared at once unless that is over 1 GiB,
    random training transforms run per batch (:mod:`kdistill.data.batched`) unless ``data.pipeline=per_sample``."""
    images = train[0]
    native = images.shape[-1]
    size = config.image_size or native
    train_tf, eval_tf = build_transforms(config.augment, config.image_size, native, mean, std)
    augmented = train_transform_is_random(config)
    batch_tf = batch_transform_for(config, size, native, mean, std)

    def dataset(pair: tuple[Tensor, Tensor], transform, per_item: bool, **random) -> TensorImageDataset:
        prepared_bytes = pair[0].shape[0] * pair[0].shape[1] * size * size * 4
        per_item = per_item or prepared_bytes > PREPARE_LIMIT_BYTES
        return TensorImageDataset(pair[0], pair[1], transform, per_item=per_item, **random)

    train_set = dataset(train, train_tf, augmented, batch_transform=batch_tf, random=augmented)
    return DatasetSplits(
        train=train_set,
        # lazy: only the carved validation samples of it are ever transformed
        train_eval=TensorImageDataset(train[0], train[1], eval_tf, per_item=True) if augmented else train_set,
        test=dataset(test, eval_tf, False),
        num_classes=num_classes,
        input_shape=(images.shape[1], size, size),
        class_names=class_names,
        train_augmented=augmented,
        default_val_size=default_val_size,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
