"""The plain-PyTorch references of ``benchmarks/data_pipeline.py``: what a user would write by hand, no kdistill.

Fashion-MNIST from the IDX files, a seeded subset of the training images, the demo's MLP (784-128-10), SGD with
Nesterov momentum and a cosine schedule, cross-entropy, ``crop_flip`` augmentation (random 28x28 crop of the image
zero-padded by 3, horizontal flip with p = 0.5, normalisation), two ways:

- :func:`per_sample_loader`: torchvision's v2 transforms per image in a ``Dataset`` + ``DataLoader`` (the usual way);
- :func:`batched_epoch`: the batched limit: the whole set as one uint8 tensor, each batch cropped and flipped with
  tensor operations (one gather), no loader at all.

Run as a script it is the whole-process reference: it trains the given epochs with the per-sample loader and
evaluates the test set after each, as ``kdistill train`` does with ``data.val_size=0``.

    .venv/bin/python benchmarks/handwritten_fmnist.py --epochs 2 --train-subset 20000
"""

from __future__ import annotations

import argparse
import gzip
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

FASHION = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD, PADDING, SIZE = 0.2860, 0.3530, 3, 28


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as file:
        raw = file.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(split: str, subset: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 28, 28) and int64 labels of a split, a seeded ``subset`` of it if given."""
    prefix = "train" if split == "train" else "t10k"
    images = torch.from_numpy(read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz").copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
    if subset is not None:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:subset]
        images, labels = images[keep], labels[keep]
    return images, labels


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def optimiser(model: nn.Module, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))


class PerSample(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def per_sample_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> DataLoader:
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomCrop(SIZE, padding=PADDING),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([MEAN], [STD]),
        ]
    )
    return DataLoader(PerSample(images, labels, transform), batch_size=batch_size, shuffle=True, drop_last=True)


def step(model, sgd, schedule, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    loss = F.cross_entropy(model(inputs), targets)
    sgd.zero_grad(set_to_none=True)
    loss.backward()
    sgd.step()
    schedule.step()


def per_sample_epoch(model, sgd, schedule, loader: DataLoader) -> None:
    model.train()
    for inputs, targets in loader:
        step(model, sgd, schedule, inputs, targets)


def batched_epoch(model, sgd, schedule, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> None:
    """One epoch with the crop and flip of each batch done at once: pad, one gather of every sample's window (its
    own offsets, mirrored columns where flipped), normalise."""
    model.train()
    padded = F.pad(images, [PADDING] * 4)  # (N, 1, 34, 34)
    width = padded.shape[-1]
    flat = padded.reshape(len(images), -1)
    steps = torch.arange(SIZE)
    order = torch.randperm(len(labels))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        picked = order[start : start + batch_size]
        top, left = torch.randint(0, 2 * PADDING + 1, (2, batch_size))
        columns = left[:, None] + steps
        columns = torch.where(torch.rand(batch_size)[:, None] < 0.5, columns.flip(1), columns)
        window = (top[:, None, None] + steps[None, :, None]) * width + columns[:, None, :]  # (B, 28, 28)
        crops = flat[picked].gather(1, window.reshape(batch_size, -1)).reshape(batch_size, 1, SIZE, SIZE)
        inputs = (crops.float() / 255 - MEAN) / STD
        step(model, sgd, schedule, inputs, labels[picked])


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    inputs = (images.float() / 255 - MEAN) / STD
    return 100.0 * float((model(inputs).argmax(1) == labels).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=20000)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(0)
    train, test = load("train", args.train_subset), load("test")
    loader = per_sample_loader(*train)
    model = mlp()
    sgd, schedule = optimiser(model, args.epochs * len(loader))
    for epoch in range(args.epochs):
        per_sample_epoch(model, sgd, schedule, loader)
        print(f"epoch {epoch + 1}: test acc {accuracy(model, *test):.2f}%  ({time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
