"""The CIFAR MobileNetV2 of the distillation benchmarks: ``mobilenetv2`` and ``mobilenetv2_x2``.

Layers follow HobbitLong/RepDistiller models/mobilenetv2.py (from "Knowledge Distillation via Route
Constrained Optimization"), also DefangChen/SimKD models/mobilenetv2.py. Note the benchmark naming:

- ``mobilenetv2`` is the reference's ``mobile_half`` = ``mobilenetv2_T_w(T=6, W=0.5)`` -- what CRD,
  RepDistiller and SimKD call "MobileNetV2";
- ``mobilenetv2_x2`` is SimKD's ``mobile_half_double`` = ``mobilenetv2_T_w(T=6, W=1.0)`` -- SimKD's
  "MobileNetV2x2" (twice the benchmark width, i.e. the standard width).

``mobilenetv2`` takes the reference's two knobs, ``width_mult`` (W, default 0.5: every layer has int(c * W) of the
standard c channels, the 1280-channel head conv only grows above 1.0) and ``expand_ratio`` (T, default 6), so
``mobilenetv2`` with ``width_mult=1.0`` is ``mobilenetv2_x2``, parameter for parameter.

The stem is a stride-2 3x3 conv, then seven groups of inverted residuals, a 1x1 conv to 1280 channels
(BN + ReLU), global average pooling and a linear classifier. Module names are the reference's.

Taps: stages = outputs of blocks[1], blocks[2], blocks[4], blocks[6] -- the reference's f1..f4 of
``forward(is_feat=True)`` (its f0 is the stem, f5 the pooled vector). So ``stages[-1]`` is the
blocks[6] map (the reference's ``feat[-2]``, which SimKD projects and SP compares), and the 1x1 conv to
1280 channels belongs to the classifier head: ``classifier_head()`` = conv2 (+ BN + ReLU) -> global
average pooling -> linear, and ``embedding`` is the pooled 1280-d vector (the reference's f5).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models.initialization import reference_init
from kdistill.models.registry import register_model
from kdistill.models.taps import Features, PoolLinearHead, TappedModel

MOBILENET_SOURCE = "HobbitLong/RepDistiller models/mobilenetv2.py (mobile_half)"
MOBILENET_X2_SOURCE = "DefangChen/SimKD models/mobilenetv2.py (mobile_half_double)"

# Parameter counts at 100 classes, 32x32x3, computed from the reference code's layer definitions.
REFERENCE_PARAMETERS = {"mobilenetv2": 812_836, "mobilenetv2_x2": 2_353_060}
NARROWEST = 16  # the fewest channels a layer has at width 1.0 (the first group): int(16 * W) must be >= 1


def width_mult_problem(width_mult: Any) -> str | None:
    """What a width multiplier should have been (None when it fits): a finite number giving every layer a channel."""
    number = isinstance(width_mult, (int, float)) and not isinstance(width_mult, bool) and math.isfinite(width_mult)
    fits = number and int(NARROWEST * width_mult) >= 1
    return None if fits else f"a finite number >= {1 / NARROWEST} (the narrowest layer gets int({NARROWEST} * W))"


def expand_ratio_problem(expand_ratio: Any) -> str | None:
    """What an expansion ratio should have been (None when it fits): an integer >= 1."""
    fits = isinstance(expand_ratio, int) and not isinstance(expand_ratio, bool) and expand_ratio >= 1
    return None if fits else "an integer >= 1 (each inverted residual expands its input this many times)"


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


class MapPoolLinearHead(PoolLinearHead):
    """final map -> ``pre`` (e.g. a 1x1 conv + BN + ReLU, or BN + ReLU) -> global average pool -> ``fc``.

    For models whose classifier transforms the last tapped stage before pooling. ``pool`` (and its alias
    ``embed``) return the classifier's input, as :class:`PoolLinearHead`'s ``pool`` does.
    """

    def __init__(self, pre: nn.Module, fc: nn.Linear) -> None:
        super().__init__(fc)
        self.pre = pre

    def pool(self, feature_map: Tensor) -> Tensor:
        return super().pool(self.pre(feature_map))  # (B, D)

    def embed(self, feature_map: Tensor) -> Tensor:
        return self.pool(feature_map)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),  # pointwise expansion
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # pointwise linear projection
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(TappedModel):
    def __init__(
        self, num_classes: int, input_shape: tuple[int, int, int], expand_ratio: int = 6, width_mult: float = 0.5
    ) -> None:
        super().__init__()
        checked = ((width_mult_problem(width_mult), width_mult), (expand_ratio_problem(expand_ratio), expand_ratio))
        for problem, value in checked:
            if problem:
                raise ValueError(f"MobileNetV2: expected {problem}, got {value!r}")
        t = expand_ratio
        setting = [  # expansion, channels, repeats, stride
            [1, 16, 1, 1],
            [t, 24, 2, 1],
            [t, 32, 3, 2],
            [t, 64, 4, 2],
            [t, 96, 3, 1],
            [t, 160, 3, 2],
            [t, 320, 1, 1],
        ]
        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn(input_shape[0], input_channel, 2)
        self.blocks = nn.ModuleList()
        for expansion, channels, repeats, stride in setting:
            output_channel = int(channels * width_mult)
            layers = []
            for s in [stride] + [1] * (repeats - 1):
                layers.append(InvertedResidual(input_channel, output_channel, s, expansion))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_1x1_bn(input_channel, self.last_channel)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        reference_init(self, linear_std=0.01, zero_linear_bias=True)

    def forward_features(self, x: Tensor) -> Features:
        out = self.conv1(x)  # (B, 32w, H/2, W/2)
        f1 = self.blocks[1](self.blocks[0](out))  # (B, 24w, H/2, W/2)
        f2 = self.blocks[2](f1)  # (B, 32w, H/4, W/4)
        f3 = self.blocks[4](self.blocks[3](f2))  # (B, 96w, H/8, W/8)
        f4 = self.blocks[6](self.blocks[5](f3))  # (B, 320w, H/16, W/16): stages[-1]
        head_map = self.conv2(f4)  # (B, 1280, H/16, W/16), inside the classifier head
        embedding = torch.flatten(F.adaptive_avg_pool2d(head_map, 1), 1)  # (B, 1280), as the head pools
        return Features(stages=[f1, f2, f3, f4], embedding=embedding, logits=self.classifier(embedding))

    def classifier_head(self) -> MapPoolLinearHead:
        """conv2 (1x1 conv + BN + ReLU) -> global average pool -> linear; maps ``stages[-1]`` to the logits."""
        # __init__ builds classifier as nn.Sequential(nn.Linear): its entry 0 is the linear layer
        return MapPoolLinearHead(self.conv2, cast(nn.Linear, self.classifier[0]))


@register_model(
    "mobilenetv2",
    family="mobilenetv2",
    source=f"{MOBILENET_SOURCE}: {REFERENCE_PARAMETERS['mobilenetv2']:,} parameters (100 classes)",
    checks={"width_mult": width_mult_problem, "expand_ratio": expand_ratio_problem},
)
def mobilenetv2(
    num_classes: int, input_shape: tuple[int, int, int], width_mult: float = 0.5, expand_ratio: int = 6
) -> MobileNetV2:
    """The benchmarks' "MobileNetV2" (the reference's ``mobilenetv2_T_w(T=6, W=0.5)``) by default; ``width_mult``
    (W >= 1/16) and ``expand_ratio`` (T >= 1) are the reference's knobs (W=1.0 gives ``mobilenetv2_x2``)."""
    return MobileNetV2(num_classes, input_shape, expand_ratio=expand_ratio, width_mult=width_mult)


@register_model(
    "mobilenetv2_x2",
    family="mobilenetv2",
    source=f"{MOBILENET_X2_SOURCE}: {REFERENCE_PARAMETERS['mobilenetv2_x2']:,} parameters (100 classes)",
)
def mobilenetv2_x2(num_classes: int, input_shape: tuple[int, int, int]) -> MobileNetV2:
    """SimKD's "MobileNetV2x2": expansion 6, width 1.0."""
    return MobileNetV2(num_classes, input_shape, expand_ratio=6, width_mult=1.0)
