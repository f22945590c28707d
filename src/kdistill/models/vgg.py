"""CIFAR VGGs with batch norm of the distillation benchmarks: vgg8, vgg11, vgg13, vgg16, vgg19.

Layers follow HobbitLong/RepDistiller models/vgg.py (``vgg*_bn``; SimKD and mdistiller use the same
file): five conv blocks (3x3 conv with bias + BN + ReLU), 2x2 max-pooling after the first three,
global average pooling and a single linear layer (the ImageNet VGG's three FC layers are removed, so
"vgg8" has 6 conv layers + 1 FC). Module names are the reference's (block0..block4, classifier).

As in the reference, the fourth max-pool is applied only to large inputs (the reference pools when
the input is 64 pixels high; here when it is at least 64), so a 32x32 input ends on a 4x4x512 map.

Taps: stages = outputs of block1 .. block4 after their ReLU (the reference's f1..f4; block0 is the
stem, like the ResNets' conv1); stages[-1] is the final 512-channel map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models.initialization import reference_init
from kdistill.models.registry import register_model
from kdistill.models.taps import Features, PoolLinearHead, TappedModel

VGG_SOURCE = "HobbitLong/RepDistiller models/vgg.py (vgg*_bn)"

CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],  # 'S'
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],  # 'A'
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],  # 'B'
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],  # 'D'
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],  # 'E'
}

# Parameter counts at 100 classes, 32x32x3, computed from the reference code's layer definitions.
REFERENCE_PARAMETERS = {
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
}


def _make_block(widths: list[int], in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        in_channels = width
    return nn.Sequential(*layers[:-1])  # the block's last ReLU is applied in forward (as in the reference)


class VGG(TappedModel):
    def __init__(
        self, cfg: list[list[int]], num_classes: int, input_shape: tuple[int, int, int], batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.block0 = _make_block(cfg[0], input_shape[0], batch_norm)
        self.block1 = _make_block(cfg[1], cfg[0][-1], batch_norm)
        self.block2 = _make_block(cfg[2], cfg[1][-1], batch_norm)
        self.block3 = _make_block(cfg[3], cfg[2][-1], batch_norm)
        self.block4 = _make_block(cfg[4], cfg[3][-1], batch_norm)
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        reference_init(self, linear_std=0.01, zero_linear_bias=True)

    def forward_features(self, x: Tensor) -> Features:
        height = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        f1 = F.relu(self.block1(x))  # (B, 128, H/2, W/2)
        f2 = F.relu(self.block2(self.pool1(f1)))  # (B, 256, H/4, W/4)
        f3 = F.relu(self.block3(self.pool2(f2)))  # (B, 512, H/8, W/8)
        f4 = F.relu(self.block4(self.pool3(f3) if height >= 64 else f3))  # (B, 512, H/8, W/8) for H < 64
        embedding = torch.flatten(F.adaptive_avg_pool2d(f4, 1), 1)  # (B, 512), as PoolLinearHead pools
        return Features(stages=[f1, f2, f3, f4], embedding=embedding, logits=self.classifier(embedding))

    def classifier_head(self) -> PoolLinearHead:
        return PoolLinearHead(self.classifier)


def _register(name: str) -> None:
    def builder(num_classes: int, input_shape: tuple[int, int, int]) -> VGG:
        return VGG(CONFIGS[name], num_classes, input_shape, batch_norm=True)

    builder.__name__ = name
    builder.__doc__ = f"{name}: CIFAR VGG with batch norm ({VGG_SOURCE})."
    register_model(name, family="vgg", source=f"{VGG_SOURCE}: {REFERENCE_PARAMETERS[name]:,} parameters (100 classes)")(
        builder
    )


for _name in CONFIGS:
    _register(_name)
