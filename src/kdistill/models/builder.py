"""``build_model(config, num_classes, input_shape)``: one builder for zoo names, outside models and checkpoints.

- zoo names (``mlp``, ``cnn``, ``resnet8x4``, ...): builders registered with ``@register_model``;
- ``<prefix>:<name>`` (``timm:resnetv2_50x1_bit``, ``torchvision:resnet18``): adapters registered
  with ``@register_model_source(prefix)``;
- ``checkpoint``: weights loaded after building (a kdistill run directory or checkpoint, a plain
  state dict, or a ``.safetensors`` file), verified against ``sha256`` when given; ``checkpoint_key``
  picks one model's keys from a composite checkpoint. A kdistill checkpoint also records the
  architecture, so ``name`` may be left empty.

Pretrained outside models see their own input normalisation: with ``input_normalization`` (the data's
mean/std) and weights that come from the library's pretraining (``pretrained: true``, or a kdistill
checkpoint whose model was, recorded as ``pretrained_inputs`` in its spec), the model is wrapped in a
:class:`kdistill.models.input_adapter.InputAdapter` where its expected mean/std/size differ.
"""

from __future__ import annotations

import inspect
from typing import Any

from kdistill.config import ModelConfig
from kdistill.contracts import ConfigError
from kdistill.models.input_adapter import InputSpec, expected_input, with_input_adapter
from kdistill.models.loading import architecture_from_checkpoint, load_weights, records_pretrained_inputs
from kdistill.models.registry import MODEL_SOURCES, MODELS, ModelBuilder
from kdistill.models.taps import TappedModel


def _call_builder(builder: ModelBuilder, where: str, *args: Any, **kwargs: Any) -> TappedModel:
    signature = inspect.signature(builder)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    if not accepts_any:
        unknown = [k for k in kwargs if k not in signature.parameters]
        if unknown:
            valid = [n for n in signature.parameters if n not in ("num_classes", "input_shape", "name", "pretrained")]
            raise ConfigError(
                f"{where}.kwargs: unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid) or 'none'}"
            )
    try:
        return builder(*args, **kwargs)
    except (TypeError, ValueError) as error:  # e.g. a kwarg of the wrong type: {hidden: "big"}
        raise ConfigError(f"{where}: could not build the model with kwargs {kwargs}: {error}") from None


def build_model(
    config: ModelConfig,
    num_classes: int,
    input_shape: tuple[int, int, int],
    where: str = "model",
    input_normalization: InputSpec | None = None,
    pretrained_inputs: bool | None = None,
) -> TappedModel:
    """Build (and optionally load) the model described by ``config``.

    ``input_normalization``: the mean/std the data was normalised with (None: unknown, no adapter).
    ``pretrained_inputs``: whether the weights expect the library's pretrained normalisation; default:
    ``config.pretrained`` or what ``config.checkpoint`` records (pass it when rebuilding without weights).
    """
    name, kwargs = config.name, dict(config.kwargs)
    if config.checkpoint_key is not None and config.checkpoint is None:
        raise ConfigError(
            f"{where}.checkpoint_key is set without {where}.checkpoint; give the checkpoint to take it from"
        )
    if not name:
        if config.checkpoint is None:
            raise ConfigError(
                f"{where}.name is empty: give a model name (see `kdistill models`) or a kdistill checkpoint"
            )
        name, kwargs = architecture_from_checkpoint(config.checkpoint, where)
    if ":" in name:
        prefix, remote_name = name.split(":", 1)
        try:
            builder = MODEL_SOURCES.get(prefix)
        except KeyError as error:
            raise ConfigError(f"{where}.name: {error.args[0]}") from None
        model = _call_builder(builder, where, remote_name, num_classes, input_shape, config.pretrained, **kwargs)
    else:
        try:
            builder = MODELS.get(name)
        except KeyError as error:
            raise ConfigError(f"{where}.name: {error.args[0]}") from None
        if config.pretrained:
            raise ConfigError(f"{where}: zoo model {name!r} has no pretrained weights; use `checkpoint:` instead")
        model = _call_builder(builder, where, num_classes, input_shape, **kwargs)
    spec: dict[str, Any] = {"name": name, "kwargs": kwargs}  # recorded in exported checkpoints
    if expected_input(model) is not None:
        if pretrained_inputs is None:
            pretrained_inputs = config.pretrained or (
                config.checkpoint is not None and records_pretrained_inputs(config.checkpoint)
            )
        if pretrained_inputs:
            spec["pretrained_inputs"] = True
            model = with_input_adapter(model, input_normalization, input_shape)
    model.kdistill_spec = spec
    if config.checkpoint is not None:
        load_weights(model, config.checkpoint, sha256=config.sha256, where=where, checkpoint_key=config.checkpoint_key)
    return model
