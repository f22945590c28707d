"""CIFAR ResNets of the distillation benchmarks (CRD / RepDistiller, SimKD, mdistiller).

Layers follow HobbitLong/RepDistiller models/resnet.py (resnet8 ... resnet110, resnet8x4, resnet32x4)
and DefangChen/SimKD models/resnet.py (resnet38, resnet38x2, resnet116, resnet110x2), which define the same
network: a 3x3 stem, three stages of BasicBlocks (depth = 6n + 2) at strides 1, 2, 2, global average pooling and a
linear classifier. Module names are the reference's, so the published teacher checkpoints (saved as
``{"model": state_dict}``) load directly with ``checkpoint:``.

The ``x4`` / ``x2`` names give the reference's channel lists, which do not scale the stem uniformly:
resnet8x4 / resnet32x4 use [32, 64, 128, 256] (stem doubled, stages x4), resnet110x2 uses
[16, 32, 64, 128] (stem unchanged, stages x2), as does resnet38x2. SimKD's tables label resnet38x2 /
resnet38 "WRN-40-2" / "WRN-40-1" (its models/resnet.py: "We use the wrn notation to be consistent with
the previous work"); they are not RepDistiller's pre-activation ``wrn_40_2`` / ``wrn_40_1``. Parameter counts
for 100 classes are recorded in tests/test_zoo.py.

``resnet_cifar`` is the family with its knobs (``depth``: any 6n+2; ``widths``: the filter list), for searches
over students; every name above is one of its points (resnet8x4 = ``depth=8, widths=[32, 64, 128, 256]``), with the
same parameter count.

Differences from the reference: the stem takes ``input_shape[0]`` channels and pooling is adaptive
(the reference's ``AvgPool2d(8)`` is global only for 32x32 inputs); neither changes the count at 32x32x3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models.initialization import reference_init
from kdistill.models.registry import register_model
from kdistill.models.taps import Features, PoolLinearHead, TappedModel

RESNET_SOURCE = "HobbitLong/RepDistiller models/resnet.py"
SIMKD_RESNET_SOURCE = "DefangChen/SimKD models/resnet.py"
MAX_DEPTH = 1202  # He et al. 2016's deepest CIFAR ResNet (n = 200): a deeper one is a typo, not a student


def depth_problem(depth: Any) -> str | None:
    """What a CIFAR ResNet depth should have been (None when it fits): 6n+2 with 1 <= n <= 200."""
    fits = isinstance(depth, int) and not isinstance(depth, bool) and 8 <= depth <= MAX_DEPTH and (depth - 2) % 6 == 0
    return None if fits else f"a depth 6n+2 with n >= 1 (8, 14, 20, 26, 32, ..., at most {MAX_DEPTH})"


def widths_problem(widths: Any) -> str | None:
    """What a CIFAR ResNet filter list should have been (None when it fits): four integers >= 1."""
    fits = (
        isinstance(widths, (list, tuple))
        and len(widths) == 4
        and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
    )
    return None if fits else "4 filter counts >= 1, [stem, stage1, stage2, stage3], e.g. [16, 16, 32, 64] (resnet20)"


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class StemAndStage(nn.Module):
    """The stem (conv, BN, ReLU) followed by the first stage: ``CifarResNet.stage_modules()[0]`` (it holds the
    model's own layers; the model's parameter names are unchanged)."""

    def __init__(self, conv: nn.Module, bn: nn.Module, stage: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.stage = conv, bn, stage

    def forward(self, x: Tensor) -> Tensor:
        return self.stage(F.relu(self.bn(self.conv(x))))


class CifarResNet(TappedModel):
    """ResNet with BasicBlocks for 32x32 inputs; ``num_filters`` = [stem, stage1, stage2, stage3].

    Taps: stages = outputs of layer1, layer2, layer3 (after each block's final ReLU); stages[-1] is
    the final map (C = num_filters[3], 8x8 at 32x32 input).
    """

    def __init__(self, depth: int, num_filters: list[int], num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        for problem, value in ((depth_problem(depth), depth), (widths_problem(num_filters), num_filters)):
            if problem:
                raise ValueError(f"CIFAR ResNet: expected {problem}, got {value!r}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(input_shape[0], num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)
        reference_init(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Features:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, C0, H, W)
        f1 = self.layer1(x)  # (B, C1, H, W)
        f2 = self.layer2(f1)  # (B, C2, H/2, W/2)
        f3 = self.layer3(f2)  # (B, C3, H/4, W/4)
        embedding = torch.flatten(F.adaptive_avg_pool2d(f3, 1), 1)  # (B, C3), as PoolLinearHead pools
        return Features(stages=[f1, f2, f3], embedding=embedding, logits=self.fc(embedding))

    def classifier_head(self) -> PoolLinearHead:
        return PoolLinearHead(self.fc)

    def stage_modules(self) -> list[nn.Module]:
        return [StemAndStage(self.conv1, self.bn1, self.layer1), self.layer2, self.layer3]


# name -> (depth, num_filters, source)
CIFAR_RESNETS: dict[str, tuple[int, list[int], str]] = {
    "resnet8": (8, [16, 16, 32, 64], RESNET_SOURCE),
    "resnet14": (14, [16, 16, 32, 64], RESNET_SOURCE),
    "resnet20": (20, [16, 16, 32, 64], RESNET_SOURCE),
    "resnet32": (32, [16, 16, 32, 64], RESNET_SOURCE),
    "resnet44": (44, [16, 16, 32, 64], RESNET_SOURCE),
    "resnet56": (56, [16, 16, 32, 64], RESNET_SOURCE),
    "resnet110": (110, [16, 16, 32, 64], RESNET_SOURCE),
    "resnet116": (116, [16, 16, 32, 64], SIMKD_RESNET_SOURCE),  # "ResNet-116" in SimKD's tables
    "resnet8x4": (8, [32, 64, 128, 256], RESNET_SOURCE),
    "resnet32x4": (32, [32, 64, 128, 256], RESNET_SOURCE),
    "resnet110x2": (110, [16, 32, 64, 128], SIMKD_RESNET_SOURCE),
    # SimKD's tables call these "WRN-40-1" / "WRN-40-2" / "WRN-16-2"; its code trains these post-activation ResNets.
    "resnet38": (38, [16, 16, 32, 64], SIMKD_RESNET_SOURCE),
    "resnet38x2": (38, [16, 32, 64, 128], SIMKD_RESNET_SOURCE),
    "resnet14x2": (14, [16, 32, 64, 128], SIMKD_RESNET_SOURCE),
}

# Parameter counts at 100 classes, 32x32x3, computed from the reference code's layer definitions.
REFERENCE_PARAMETERS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet116": 1_833_780,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet110x2": 6_911_220,
    "resnet38": 569_972,
    "resnet38x2": 2_255_604,
    "resnet14x2": 703_732,
}


def _register(name: str, depth: int, num_filters: list[int], source: str) -> None:
    def builder(num_classes: int, input_shape: tuple[int, int, int]) -> CifarResNet:
        return CifarResNet(depth, num_filters, num_classes, input_shape)

    builder.__name__ = name
    builder.__doc__ = f"{name}: CIFAR ResNet depth {depth}, filters {num_filters} ({source})."
    register_model(
        name, family="cifar_resnet", source=f"{source}: {REFERENCE_PARAMETERS[name]:,} parameters (100 classes)"
    )(builder)


for _name, (_depth, _filters, _source) in CIFAR_RESNETS.items():
    _register(_name, _depth, _filters, _source)


@register_model(
    "resnet_cifar",
    family="cifar_resnet",
    source=f"{RESNET_SOURCE} with any depth 6n+2 and widths; default resnet20: "
    f"{REFERENCE_PARAMETERS['resnet20']:,} parameters (100 classes)",
    checks={"depth": depth_problem, "widths": widths_problem},
)
def resnet_cifar(
    num_classes: int,
    input_shape: tuple[int, int, int],
    depth: int = 20,
    widths: Sequence[int] = (16, 16, 32, 64),
) -> CifarResNet:
    """A CIFAR ResNet of any ``depth`` 6n+2 (n BasicBlocks per stage, 8 <= depth <= 1202) and filter list ``widths``
    = [stem, stage1, stage2, stage3] (CIFAR_RESNETS' num_filters). The defaults give resnet20; each name in
    CIFAR_RESNETS is one point, with its exact count (resnet8x4 = ``depth=8, widths=[32, 64, 128, 256]``)."""
    return CifarResNet(depth, list(widths), num_classes, input_shape)
