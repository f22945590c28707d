"""One feature-tap interface for every model kdistill trains or distils from.

Every model built by :func:`kdistill.models.build_model` is a :class:`TappedModel`:

- ``forward(x) -> logits`` (nothing else: no tuples);
- ``forward_features(x) -> Features`` with the output of every stage (shallow to deep), the final
  feature map before pooling (``stages[-1]``), the pooled embedding fed to the classifier, and the
  logits;
- ``classifier_head()`` -> the module mapping ``stages[-1]`` to logits (pooling + flatten + fc),
  which SimKD reuses;
- :func:`feature_shapes` reports the shapes of all of the above for an input shape.

Our zoo implements ``forward_features`` directly; timm and torchvision models are wrapped by
adapters that use their libraries' own feature-extraction APIs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class Features:
    stages: list[Tensor]  # each (B, C_i, H_i, W_i) (or (B, D_i) for MLPs); stages[-1] = final map before pooling
    embedding: Tensor  # (B, D) the classifier's input
    logits: Tensor  # (B, K)

    @property
    def final_map(self) -> Tensor:
        return self.stages[-1]


@dataclass
class FeatureShapes:
    stages: list[tuple[int, ...]]  # per-sample shapes, e.g. (C, H, W)
    embedding_dim: int
    num_classes: int


class TappedModel(nn.Module):
    """Base for kdistill models. Subclasses implement ``forward_features`` and ``classifier_head``."""

    # {"name", "kwargs"} of the architecture: set by build_model only (absent otherwise: read it with getattr)
    kdistill_spec: dict[str, Any]

    def forward_features(self, x: Tensor) -> Features:
        raise NotImplementedError

    def classifier_head(self) -> nn.Module:
        raise NotImplementedError

    def stage_modules(self) -> list[nn.Module]:
        """Optional: one module per stage, module i mapping stage i-1's output (the input, for i = 0) to
        ``stages[i]``, so that running them in turn gives ``stages[-1]`` (SimKD+ reuses a teacher's last stages)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its stages as modules")

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).logits


class PoolLinearHead(nn.Module):
    """Global average pooling (for maps) + flatten + linear: the standard CNN classifier."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc

    def pool(self, feature_map: Tensor) -> Tensor:
        if feature_map.dim() == 4:
            feature_map = torch.flatten(nn.functional.adaptive_avg_pool2d(feature_map, 1), 1)  # (B, C)
        return feature_map

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.fc(self.pool(feature_map))


def as_tapped(model: nn.Module) -> TappedModel:
    """``model`` as a :class:`TappedModel`; a TypeError for a module without feature taps."""
    if not isinstance(model, TappedModel):
        raise TypeError(f"{type(model).__name__} has no feature taps; build it with kdistill.models.build_model")
    return model


def feature_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> FeatureShapes:
    """Shapes of a model's taps for one input of ``input_shape`` (C, H, W), found by one tiny forward.

    Runs a batch of two zeros in eval mode without gradient, so BatchNorm statistics are untouched.
    """
    model = as_tapped(model)
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    model.eval()
    try:
        with torch.no_grad():
            features = model.forward_features(torch.zeros(2, *input_shape, device=device))
    finally:
        model.train(was_training)
    return FeatureShapes(
        stages=[tuple(s.shape[1:]) for s in features.stages],
        embedding_dim=features.embedding.shape[1],
        num_classes=features.logits.shape[1],
    )


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def reinitialise(module: nn.Module) -> None:
    """Re-initialise every layer of ``module`` that can (``reset_parameters``: PyTorch's default init), in place."""
    for layer in module.modules():
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()
