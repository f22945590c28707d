"""The weight initialisation of the CIFAR reference implementations (RepDistiller / SimKD)."""

from __future__ import annotations

import math

from torch import nn


def reference_init(model: nn.Module, linear_std: float | None = None, zero_linear_bias: bool = False) -> None:
    """Conv: N(0, 2 / fan_out) (He, fan-out) and zero bias; BatchNorm: weight 1, bias 0; Linear: N(0, linear_std)
    weights if given and a zero bias if asked (ResNets keep PyTorch's Linear init, WRN zeroes the bias,
    VGG / MobileNetV2 use N(0, 0.01) with a zero bias)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            if zero_linear_bias:
                nn.init.zeros_(module.bias)
