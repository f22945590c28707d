"""CIFAR ShuffleNets of the distillation benchmarks: shufflenetv1, shufflenetv2, shufflenetv2_x1_5.

Layers follow HobbitLong/RepDistiller models/ShuffleNetv1.py (``ShuffleV1``: groups 3, widths 240,
480, 960, blocks 4, 8, 4) and models/ShuffleNetv2.py (``ShuffleV2``: net size 1, widths 116, 232,
464, 1024), and DefangChen/SimKD models/ShuffleNetv2.py (``ShuffleV2_1_5``: net size 1.5, widths 176,
352, 704, 1024). The CIFAR variants use a 1x1 stem with 24 channels and no max-pool; each stage
starts with a stride-2 block. Module names are the reference's.

``shufflenetv2`` takes the reference's width knob, ``net_size``: one of the sizes its ``configs`` define (0.2, 0.3,
0.5, 1, 1.5, 2; default 1, ShuffleV2), each a fixed channel list rather than a multiplier, so other sizes are refused.
``net_size=1.5`` is ``shufflenetv2_x1_5``, parameter for parameter.

Taps (the reference's f1..f3 of ``forward(is_feat=True)``; its f0 is the stem, f4 the pooled vector):
stages = outputs of layer1, layer2, layer3 for both. ShuffleNetV1's layer3 output is the map its linear
classifier pools. ShuffleNetV2's ``stages[-1]`` is the layer3 map (e.g. 464 channels for ShuffleV2: the
reference's ``feat[-2]``, which SimKD projects and SP compares); its 1x1 conv to 1024 channels belongs
to the classifier head: ``classifier_head()`` = conv2 -> bn2 -> ReLU -> global average pooling -> linear,
and ``embedding`` is the pooled 1024-d vector (the reference's f4).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models.mobilenetv2 import MapPoolLinearHead
from kdistill.models.registry import register_model
from kdistill.models.taps import Features, PoolLinearHead, TappedModel

V1_SOURCE = "HobbitLong/RepDistiller models/ShuffleNetv1.py (ShuffleV1)"
V2_SOURCE = "HobbitLong/RepDistiller models/ShuffleNetv2.py (ShuffleV2)"
V2_1_5_SOURCE = "DefangChen/SimKD models/ShuffleNetv2.py (ShuffleV2_1_5)"

# Parameter counts at 100 classes, 32x32x3, computed from the reference code's layer definitions.
REFERENCE_PARAMETERS = {"shufflenetv1": 949_258, "shufflenetv2": 1_355_528, "shufflenetv2_x1_5": 2_580_548}


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[N, C, H, W] -> [N, g, C/g, H, W] -> [N, C/g, g, H, W] -> [N, C, H, W]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def _global_pool(feature_map: Tensor) -> Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(feature_map, 1), 1)  # as PoolLinearHead pools


# ----------------------------------------------------------------------------- ShuffleNet V1


class ShuffleV1Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_group_conv: bool) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        self.g = groups if first_group_conv else 1  # the reference: g = 1 when in_planes == 24 (first block)
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=self.g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.g)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(TappedModel):
    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        out_planes: tuple[int, ...] = (240, 480, 960),
        num_blocks: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self.in_planes if i == 0 else 0  # the stride-2 block concatenates its input
            first_group_conv = self.in_planes != 24  # the reference tests in_planes == 24 (the stem width)
            layers.append(
                ShuffleV1Bottleneck(self.in_planes, out_planes - cat_planes, stride, groups, first_group_conv)
            )
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Features:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, 24, H, W)
        f1 = self.layer1(out)  # (B, 240, H/2, W/2)
        f2 = self.layer2(f1)  # (B, 480, H/4, W/4)
        f3 = self.layer3(f2)  # (B, 960, H/8, W/8)
        embedding = _global_pool(f3)
        return Features(stages=[f1, f2, f3], embedding=embedding, logits=self.linear(embedding))

    def classifier_head(self) -> PoolLinearHead:
        return PoolLinearHead(self.linear)


# ----------------------------------------------------------------------------- ShuffleNet V2


class ShuffleV2BasicBlock(nn.Module):
    def __init__(self, in_channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_ratio = split_ratio
        channels = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, groups=channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        c = int(x.size(1) * self.split_ratio)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


# net size -> channels (layer1, layer2, layer3, head conv) and basic blocks a stage: RepDistiller's ``configs``, as
# they are (0.2 has fewer blocks, 0.3 the same channels as 0.2, and 2 has 224 where torchvision's x2.0 has 244).
SHUFFLEV2_CONFIGS = {
    0.2: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 3, 3)},
    0.3: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 7, 3)},
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1.0: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2.0: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


def net_size_problem(net_size: Any) -> str | None:
    """What a ShuffleNetV2 net size should have been (None when it fits): one the reference defines."""
    fits = isinstance(net_size, (int, float)) and not isinstance(net_size, bool) and net_size in SHUFFLEV2_CONFIGS
    return None if fits else f"one of the reference's net sizes {', '.join(map(str, SHUFFLEV2_CONFIGS))}"


class ShuffleNetV2(TappedModel):
    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], net_size: float = 1.0) -> None:
        super().__init__()
        problem = net_size_problem(net_size)
        if problem:
            raise ValueError(f"ShuffleNetV2: expected {problem}, got {net_size!r}")
        out_channels = SHUFFLEV2_CONFIGS[net_size]["out_channels"]
        num_blocks = SHUFFLEV2_CONFIGS[net_size]["num_blocks"]
        self.conv1 = nn.Conv2d(input_shape[0], 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2DownBlock(self.in_channels, out_channels)]
        layers += [ShuffleV2BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Features:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, 24, H, W)
        f1 = self.layer1(out)  # (B, C1, H/2, W/2)
        f2 = self.layer2(f1)  # (B, C2, H/4, W/4)
        f3 = self.layer3(f2)  # (B, C3, H/8, W/8): stages[-1]
        head_map = F.relu(self.bn2(self.conv2(f3)))  # (B, 1024, H/8, W/8), inside the classifier head
        embedding = _global_pool(head_map)  # (B, 1024)
        return Features(stages=[f1, f2, f3], embedding=embedding, logits=self.linear(embedding))

    def classifier_head(self) -> MapPoolLinearHead:
        """conv2 -> bn2 -> ReLU -> global average pool -> linear; maps ``stages[-1]`` to the logits."""
        return MapPoolLinearHead(nn.Sequential(self.conv2, self.bn2, nn.ReLU()), self.linear)


@register_model(
    "shufflenetv1",
    family="shufflenet",
    source=f"{V1_SOURCE}: {REFERENCE_PARAMETERS['shufflenetv1']:,} parameters (100 classes)",
)
def shufflenetv1(num_classes: int, input_shape: tuple[int, int, int]) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, input_shape)


@register_model(
    "shufflenetv2",
    family="shufflenet",
    source=f"{V2_SOURCE}: {REFERENCE_PARAMETERS['shufflenetv2']:,} parameters (100 classes)",
    checks={"net_size": net_size_problem},
)
def shufflenetv2(num_classes: int, input_shape: tuple[int, int, int], net_size: float = 1.0) -> ShuffleNetV2:
    """The reference's ShuffleV2 (``net_size`` 1) by default; ``net_size`` is one of the reference's sizes 0.2, 0.3,
    0.5, 1, 1.5, 2 (1.5 gives ``shufflenetv2_x1_5``)."""
    return ShuffleNetV2(num_classes, input_shape, net_size=net_size)


@register_model(
    "shufflenetv2_x1_5",
    family="shufflenet",
    source=f"{V2_1_5_SOURCE}: {REFERENCE_PARAMETERS['shufflenetv2_x1_5']:,} parameters (100 classes)",
)
def shufflenetv2_x1_5(num_classes: int, input_shape: tuple[int, int, int]) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, input_shape, net_size=1.5)
