"""Seed 002's models: a multilayer perceptron (the student) and a small CNN (the teacher).

Seed 002 (EMNIST letters, 26 classes, 28x28): the teacher is conv 3x3 64 (no padding) -> 2x2 max-pool
-> conv 3x3 128 (no padding) -> 2x2 max-pool -> dense 1024 -> dense 26, 3,378,970 parameters; the
student is 784 -> 512 -> 26, 415,258 parameters. Both are sized by config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdistill.models.registry import register_model
from kdistill.models.taps import Features, PoolLinearHead, TappedModel


class MLP(TappedModel):
    """Flatten -> [Linear -> ReLU (-> Dropout)] * len(hidden) -> Linear."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], hidden: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = math.prod(input_shape)
        for size in hidden:
            block = [nn.Linear(width, size), nn.ReLU(inplace=True)]
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            layers.append(nn.Sequential(*block))
            width = size
        self.stages = nn.ModuleList(layers)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: Tensor) -> Features:
        h = torch.flatten(x, 1)  # (B, C*H*W)
        stages = []
        for stage in self.stages:
            h = stage(h)  # (B, hidden_i)
            stages.append(h)
        return Features(stages=stages or [h], embedding=h, logits=self.fc(h))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.flatten(x, 1)
        for stage in self.stages:
            h = stage(h)
        return self.fc(h)

    def classifier_head(self) -> nn.Module:
        return PoolLinearHead(self.fc)


class FlattenHead(nn.Module):
    """Flatten the final map -> optional hidden dense + ReLU -> linear (seed 002's teacher head)."""

    def __init__(self, in_features: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.hidden = (
            nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
            if hidden > 0
            else nn.Identity()
        )
        self.fc = nn.Linear(hidden if hidden > 0 else in_features, num_classes)

    def embed(self, feature_map: Tensor) -> Tensor:
        return self.hidden(torch.flatten(feature_map, 1))  # (B, hidden)

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.fc(self.embed(feature_map))


class SmallCNN(TappedModel):
    """[conv 3x3 -> (BN) -> ReLU -> max-pool 2] per entry of ``channels``, then a classifier head.

    ``patch > 0`` makes the first stage a patchify conv instead: ``patch`` x ``patch`` with stride ``patch``, no
    padding and no pool (one operator where conv + pool are two; the cheapest conv stem at batch 1).

    ``head="flatten"`` is seed 002's layout (flatten -> dense ``hidden`` -> dense classes);
    ``head="avg"`` pools globally and uses one linear layer (a feature map SimKD can reuse cheaply).
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        channels: list[int],
        hidden: int,
        padding: int,
        batch_norm: bool,
        head: str,
        dropout: float,
        patch: int = 0,
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        stages = []
        for index, out_channels in enumerate(channels):
            patchify = index == 0 and patch > 0
            if patchify:
                conv = nn.Conv2d(in_channels, out_channels, patch, stride=patch, bias=not batch_norm)
                height, width = height // patch, width // patch
            else:
                conv = nn.Conv2d(in_channels, out_channels, 3, padding=padding, bias=not batch_norm)
                height, width = (height + 2 * padding - 2) // 2, (width + 2 * padding - 2) // 2
            layers: list[nn.Module] = [conv, nn.BatchNorm2d(out_channels)] if batch_norm else [conv]
            layers += [nn.ReLU(inplace=True)] if patchify else [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            stages.append(nn.Sequential(*layers))
            in_channels = out_channels
            if height < 1 or width < 1:
                raise ValueError(f"cnn: input {input_shape} is too small for {len(channels)} conv/pool stages")
        self.stages = nn.ModuleList(stages)
        if head == "flatten":
            self.head: FlattenHead | PoolLinearHead = FlattenHead(
                in_channels * height * width, hidden, num_classes, dropout
            )
        elif head == "avg":
            self.head = PoolLinearHead(nn.Linear(in_channels, num_classes))
        else:
            raise ValueError(f"cnn: head must be 'flatten' or 'avg', got {head!r}")

    def forward_features(self, x: Tensor) -> Features:
        stages = []
        for stage in self.stages:
            x = stage(x)  # (B, C_i, H_i, W_i)
            stages.append(x)
        embedding = self.head.embed(x) if isinstance(self.head, FlattenHead) else self.head.pool(x)
        return Features(stages=stages, embedding=embedding, logits=self.head.fc(embedding))

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def classifier_head(self) -> nn.Module:
        return self.head

    def stage_modules(self) -> list[nn.Module]:
        return list(self.stages)


@register_model("mlp", family="simple", source="seed 002 student: 784-512-26 = 415,258 parameters")
def mlp(
    num_classes: int, input_shape: tuple[int, int, int], hidden: Sequence[int] = (512,), dropout: float = 0.0
) -> MLP:
    """Flatten -> one Linear + ReLU (+ dropout) per entry of ``hidden`` -> Linear to the classes.

    ``hidden`` takes any number of layers (a search uses 1 to 3; ``[]`` is a linear classifier) of any widths >= 1,
    e.g. ``[512]`` (seed 002's student) or ``[256, 128, 64]``; ``dropout`` in [0, 1) follows each hidden layer.
    """
    return MLP(num_classes, input_shape, list(hidden), dropout)


@register_model("cnn", family="simple", source="seed 002 teacher: 64/128 filters, dense 1024 = 3,378,970 parameters")
def cnn(
    num_classes: int,
    input_shape: tuple[int, int, int],
    channels: Sequence[int] = (64, 128),
    hidden: int = 1024,
    padding: int = 0,
    batch_norm: bool = False,
    head: str = "flatten",
    dropout: float = 0.0,
    patch: int = 0,
) -> SmallCNN:
    """One conv 3x3 (+ BN) + ReLU + 2x2 max-pool stage per entry of ``channels``, then the ``head``.

    ``channels`` takes any widths >= 1 and as many stages as the input allows: each stage maps a side s to
    (s + 2 * padding - 2) // 2, which must stay >= 1 (with ``padding=0``, 28x28 and 32x32 inputs take 1 to 3 stages;
    more is refused when the model is built). ``hidden``: the dense layer of the ``flatten`` head (0: none).
    ``patch`` (0: off): the first stage is a ``patch`` x ``patch`` conv of stride ``patch`` with no pool, mapping a side
    s to s // patch (4 on 28x28: 7x7 maps).
    """
    return SmallCNN(num_classes, input_shape, list(channels), hidden, padding, batch_norm, head, dropout, patch)
