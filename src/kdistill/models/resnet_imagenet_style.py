"""ImageNet-style ResNet50 adapted to 32x32 inputs: ``resnet50_cifar``.

Layers follow HobbitLong/RepDistiller models/resnetv2.py (``ResNet50``; also mdistiller's
models/cifar/resnetv2.py): the ImageNet bottleneck ResNet-50 (stages of 3, 4, 6, 3 blocks, widths
64..512, expansion 4) with a 3x3 stride-1 stem and no max-pool, so a 32x32 input ends on a 4x4x2048
map; stride sits in the 3x3 conv of each bottleneck. Module names are the reference's
(conv1, bn1, layer1..layer4, shortcut, linear).

Taps: stages = outputs of layer1 .. layer4 (after each block's final ReLU); stages[-1] is the final
2048-channel map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models.initialization import reference_init
from kdistill.models.registry import register_model
from kdistill.models.taps import Features, PoolLinearHead, TappedModel

RESNETV2_SOURCE = "HobbitLong/RepDistiller models/resnetv2.py (ResNet50)"

# Parameter count at 100 classes, 32x32x3, computed from the reference code's layer definitions.
REFERENCE_PARAMETERS = {"resnet50_cifar": 23_705_252}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(TappedModel):
    def __init__(
        self,
        num_blocks: list[int],
        num_classes: int,
        input_shape: tuple[int, int, int],
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)
        reference_init(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(Bottleneck(self.in_planes, planes, s))
            self.in_planes = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Features:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, 64, H, W)
        f1 = self.layer1(out)  # (B, 256, H, W)
        f2 = self.layer2(f1)  # (B, 512, H/2, W/2)
        f3 = self.layer3(f2)  # (B, 1024, H/4, W/4)
        f4 = self.layer4(f3)  # (B, 2048, H/8, W/8)
        embedding = torch.flatten(F.adaptive_avg_pool2d(f4, 1), 1)  # (B, 2048), as PoolLinearHead pools
        return Features(stages=[f1, f2, f3, f4], embedding=embedding, logits=self.linear(embedding))

    def classifier_head(self) -> PoolLinearHead:
        return PoolLinearHead(self.linear)


@register_model(
    "resnet50_cifar",
    family="resnet_imagenet_style",
    source=f"{RESNETV2_SOURCE}: {REFERENCE_PARAMETERS['resnet50_cifar']:,} parameters (100 classes)",
)
def resnet50_cifar(
    num_classes: int, input_shape: tuple[int, int, int], zero_init_residual: bool = False
) -> ResNetCifar:
    return ResNetCifar([3, 4, 6, 3], num_classes, input_shape, zero_init_residual)
