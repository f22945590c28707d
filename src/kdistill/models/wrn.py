"""Wide ResNets of the distillation benchmarks: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2, and ``wrn``, the family
with its knobs (``depth``: any 6n+4; ``widen_factor``: k >= 1), of which each name is one point (same count).

Layers follow HobbitLong/RepDistiller models/wrn.py (also used by SimKD and mdistiller): a 3x3 stem
with 16 channels, three groups of pre-activation blocks (depth = 6n + 4) with 16k, 32k, 64k channels
at strides 1, 2, 2, then BN + ReLU, global average pooling and a linear classifier. Module names are
the reference's, so its teacher checkpoints load directly.

Taps: stages = outputs of block1, block2, block3 -- the blocks' raw (pre-activation) sums, the
reference's f1..f3 of ``forward(is_feat=True)`` (its f0 is the stem output, f4 the pooled vector). The
final BN + ReLU belongs to the classifier head: ``classifier_head()`` = bn1 -> ReLU -> global average
pooling -> fc, so it maps ``stages[-1]`` (the raw block3 output) to the logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models.initialization import reference_init
from kdistill.models.mobilenetv2 import MapPoolLinearHead
from kdistill.models.registry import register_model
from kdistill.models.taps import Features, TappedModel

WRN_SOURCE = "HobbitLong/RepDistiller models/wrn.py"
MAX_DEPTH = 1000  # n = 166 blocks a group: a guard against typos, far deeper than any benchmark WRN

# name -> (depth, widen_factor)
WIDE_RESNETS: dict[str, tuple[int, int]] = {
    "wrn_16_1": (16, 1),
    "wrn_16_2": (16, 2),
    "wrn_40_1": (40, 1),
    "wrn_40_2": (40, 2),
}

# Parameter counts at 100 classes, 32x32x3, computed from the reference code's layer definitions.
REFERENCE_PARAMETERS = {
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
}


def depth_problem(depth: Any) -> str | None:
    """What a WRN depth should have been (None when it fits): 6n+4 with 1 <= n <= 166."""
    fits = isinstance(depth, int) and not isinstance(depth, bool) and 10 <= depth <= MAX_DEPTH and (depth - 4) % 6 == 0
    return None if fits else f"a depth 6n+4 with n >= 1 (10, 16, 22, 28, 40, ..., at most {MAX_DEPTH})"


def widen_factor_problem(widen_factor: Any) -> str | None:
    """What a WRN widen factor should have been (None when it fits): an integer k >= 1 (groups of 16k, 32k, 64k)."""
    fits = isinstance(widen_factor, int) and not isinstance(widen_factor, bool) and widen_factor >= 1
    return None if fits else "an integer >= 1 (the groups have 16k, 32k, 64k channels)"


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, with a 1x1 conv shortcut when the width changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # as in the reference: the identity shortcut adds the raw input, the conv shortcut sees the activated one
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)  # None iff equal_in_out
        return torch.add(shortcut, out)


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(TappedModel):
    def __init__(
        self, depth: int, widen_factor: int, num_classes: int, input_shape: tuple[int, int, int], drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        for problem, value in ((depth_problem(depth), depth), (widen_factor_problem(widen_factor), widen_factor)):
            if problem:
                raise ValueError(f"WRN: expected {problem}, got {value!r}")
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(input_shape[0], channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        reference_init(self, zero_linear_bias=True)

    def forward_features(self, x: Tensor) -> Features:
        out = self.conv1(x)  # (B, 16, H, W)
        f1 = self.block1(out)  # (B, 16k, H, W)
        f2 = self.block2(f1)  # (B, 32k, H/2, W/2)
        f3 = self.block3(f2)  # (B, 64k, H/4, W/4), raw (before the final BN + ReLU): stages[-1]
        activated = F.relu(self.bn1(f3))  # (B, 64k, H/4, W/4), inside the classifier head
        embedding = torch.flatten(F.adaptive_avg_pool2d(activated, 1), 1)  # (B, 64k), as the head pools
        return Features(stages=[f1, f2, f3], embedding=embedding, logits=self.fc(embedding))

    def classifier_head(self) -> MapPoolLinearHead:
        """bn1 -> ReLU -> global average pool -> fc; maps ``stages[-1]`` to the logits."""
        return MapPoolLinearHead(nn.Sequential(self.bn1, nn.ReLU()), self.fc)


def _register(name: str, depth: int, widen_factor: int) -> None:
    def builder(num_classes: int, input_shape: tuple[int, int, int], drop_rate: float = 0.0) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes, input_shape, drop_rate)

    builder.__name__ = name
    builder.__doc__ = f"{name}: Wide ResNet depth {depth}, widen factor {widen_factor} ({WRN_SOURCE})."
    register_model(name, family="wrn", source=f"{WRN_SOURCE}: {REFERENCE_PARAMETERS[name]:,} parameters (100 classes)")(
        builder
    )


for _name, (_depth, _k) in WIDE_RESNETS.items():
    _register(_name, _depth, _k)


@register_model(
    "wrn",
    family="wrn",
    source=f"{WRN_SOURCE} with any depth 6n+4 and widen factor; default wrn_16_2: "
    f"{REFERENCE_PARAMETERS['wrn_16_2']:,} parameters (100 classes)",
    checks={"depth": depth_problem, "widen_factor": widen_factor_problem},
)
def wrn(
    num_classes: int,
    input_shape: tuple[int, int, int],
    depth: int = 16,
    widen_factor: int = 2,
    drop_rate: float = 0.0,
) -> WideResNet:
    """WRN-``depth``-``widen_factor``: any depth 6n+4 (n blocks a group, 10 <= depth <= 1000), widen factor k >= 1
    (groups of 16k, 32k, 64k channels) and dropout ``drop_rate`` inside the blocks. The defaults give wrn_16_2; each
    wrn_<d>_<k> name is one point, with its exact count (wrn_40_2 = ``depth=40, widen_factor=2``)."""
    return WideResNet(depth, widen_factor, num_classes, input_shape, drop_rate)
