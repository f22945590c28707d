"""Feed a pretrained model the input normalisation (and resolution) it was trained with.

Datasets normalise with their preset's statistics (``Data.mean`` / ``Data.std``); a pretrained timm or
torchvision model expects its own (timm: ``pretrained_cfg`` mean/std, BiT: mean = std = 0.5;
torchvision: the weights' transforms), and a model with a fixed input size (ViTs) its own resolution.
:class:`InputAdapter` sits in front of such a model and maps a dataset-normalised input ``x`` to the
model's::

    x_raw = x * std_d + mean_d            # back to [0, 1] pixels
    x_m   = (x_raw - mean_m) / std_m      # = x * (std_d / std_m) + (mean_d - mean_m) / std_m

then resizes (bilinear, antialiased) when the model declares a fixed input size that differs. It keeps
the feature-tap interface by delegating ``forward_features`` and ``classifier_head`` to the wrapped
model, and its state dict is the wrapped model's (no prefix, no entries of its own), so weights saved
with or without the adapter load into either. :func:`with_input_adapter` inserts it only where the
statistics or the size differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.models.taps import Features, TappedModel

WRAPPED = "wrapped"  # the attribute holding the wrapped model; hidden from state dicts


@dataclass(frozen=True)
class InputSpec:
    """Per-channel input normalisation ``x = (pixel / 255 - mean) / std`` and an optional fixed size."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] | None = None  # (H, W) the model requires; None: any size

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"input mean {self.mean} and std {self.std} need the same, non-zero number of channels")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"input std {self.std} must be positive")


def _per_channel(values: tuple[float, ...], channels: int, what: str) -> tuple[float, ...]:
    """``values`` for ``channels`` channels: one value repeats; RGB statistics average for a grey input
    (timm and torchvision give a 1-channel model the RGB first convolution summed over channels)."""
    if len(values) == channels:
        return tuple(values)
    if len(values) == 1:
        return tuple(values) * channels
    if channels == 1:
        return (sum(values) / len(values),)
    raise ValueError(f"{what} has {len(values)} channels but the input has {channels}")


def _same(first: tuple[float, ...], second: tuple[float, ...]) -> bool:
    return all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(first, second))


class InputAdapter(TappedModel):
    """``model`` applied to dataset-normalised inputs: renormalised (and resized) to what ``model`` expects."""

    scale: Tensor  # (1, C, 1, 1) std_d / std_m
    shift: Tensor  # (1, C, 1, 1) (mean_d - mean_m) / std_m

    def __init__(self, model: TappedModel, data: InputSpec, expected: InputSpec, channels: int) -> None:
        super().__init__()
        self.wrapped = model
        data_mean = torch.tensor(_per_channel(data.mean, channels, "the data's mean"))
        data_std = torch.tensor(_per_channel(data.std, channels, "the data's std"))
        model_mean = torch.tensor(_per_channel(expected.mean, channels, "the model's mean"))
        model_std = torch.tensor(_per_channel(expected.std, channels, "the model's std"))
        # x_m = x * scale + shift; not persistent: they follow from the data and the model, not from training
        self.register_buffer("scale", (data_std / model_std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((data_mean - model_mean) / model_std).view(1, -1, 1, 1), persistent=False)
        self.data_spec, self.model_spec = data, expected
        self.register_state_dict_post_hook(_strip_wrapped_prefix)
        self.register_load_state_dict_pre_hook(_add_wrapped_prefix)

    def adapt(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised with the data's statistics -> (B, C, H', W') as the model expects."""
        x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        size = self.model_spec.size
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.wrapped(self.adapt(x))

    def forward_features(self, x: Tensor) -> Features:
        return self.wrapped.forward_features(self.adapt(x))

    def classifier_head(self) -> nn.Module:
        return self.wrapped.classifier_head()

    def extra_repr(self) -> str:
        return f"data={self.data_spec}, model={self.model_spec}"


def _strip_wrapped_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    inner = f"{prefix}{WRAPPED}."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_wrapped_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, *unused: Any) -> None:
    inner = f"{prefix}{WRAPPED}."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)


def needs_adapter(data: InputSpec, expected: InputSpec, input_shape: tuple[int, int, int]) -> bool:
    """Whether inputs normalised as ``data`` at ``input_shape`` (C, H, W) differ from what ``expected`` wants."""
    channels = input_shape[0]
    same_stats = _same(
        _per_channel(data.mean, channels, "the data's mean"), _per_channel(expected.mean, channels, "the model's mean")
    )
    same_stats = same_stats and _same(
        _per_channel(data.std, channels, "the data's std"), _per_channel(expected.std, channels, "the model's std")
    )
    same_size = expected.size is None or tuple(expected.size) == tuple(input_shape[1:])
    return not (same_stats and same_size)


def expected_input(model: nn.Module) -> InputSpec | None:
    """The input a model declares it expects (outside models do, through ``expected_input()``), else None."""
    declare = getattr(model, "expected_input", None)
    return declare() if callable(declare) else None


def with_input_adapter(model: TappedModel, data: InputSpec | None, input_shape: tuple[int, int, int]) -> TappedModel:
    """``model`` behind an :class:`InputAdapter` when it declares an input that ``data`` does not give, else
    ``model`` itself."""
    expected = expected_input(model)
    if data is None or expected is None or not needs_adapter(data, expected, input_shape):
        return model
    return InputAdapter(model, data, expected, channels=input_shape[0])
