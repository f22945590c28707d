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
import math
import typing
from collections.abc import Sequence
from typing import Any

from kdistill.config import ModelConfig
from kdistill.contracts import CheckpointError, ConfigError
from kdistill.models.input_adapter import InputSpec, expected_input, with_input_adapter
from kdistill.models.loading import architecture_from_checkpoint, load_weights, records_pretrained_inputs
from kdistill.models.registry import MODEL_SOURCES, MODELS, OPTION_CHECKS, ModelBuilder
from kdistill.models.taps import TappedModel

RESERVED = ("num_classes", "input_shape", "name", "pretrained")  # what the builder gets from the run, not kwargs


def _call_builder(builder: ModelBuilder, where: str, *args: Any, **kwargs: Any) -> TappedModel:
    """``builder(*args, **kwargs)``, its options checked first; every failure to build is a ConfigError naming
    ``<where>.kwargs`` and what the model takes. A zoo builder (no ``**kwargs``) gets its options checked against
    its signature (names, types, signs) and must not build a layer without units; an outside adapter passes its
    options on to its library, whose refusals are reported alike."""
    signature = inspect.signature(builder)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    if not accepts_any:
        problems = option_problems(builder, kwargs, where)
        if problems:
            raise ConfigError("; ".join(problems))
    catch: tuple[type[Exception], ...] = (
        (TypeError, ValueError, RuntimeError, OverflowError) if accepts_any else (Exception,)
    )
    try:
        model = builder(*args, **kwargs)
    except (ConfigError, CheckpointError):
        raise
    except catch as error:  # e.g. a size torch refuses, a combination the model cannot take
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise ConfigError(
            f"{where}.kwargs={kwargs}: the model cannot be built with these options ({first_line}); "
            f"{_takes(builder, where)}"
        ) from None
    if not accepts_any:
        empty = [(key, tuple(p.shape)) for key, p in model.named_parameters() if p.numel() == 0]
        if empty:
            raise ConfigError(
                f"{where}.kwargs={kwargs}: the model would have a layer without units ({empty[0][0]} has shape "
                f"{empty[0][1]}); every width must be >= 1. {_takes(builder, where)}"
            )
    return model


def option_problems(builder: ModelBuilder, kwargs: dict[str, Any], where: str) -> list[str]:
    """What is wrong with the options given to zoo ``builder`` (whose signature lists every option it takes):
    unknown names, values that do not fit the annotation (``bool``: true/false; ``int``: an integer >= 0;
    ``float``: a finite number >= 0, a ``drop...`` rate below 1; ``str``; ``Sequence[int]``: integers >= 1), and
    values its registered ``checks`` refuse instead, for the options they cover (e.g. a CIFAR ResNet depth that is
    not 6n+2)."""
    parameters = inspect.signature(builder).parameters
    checks = OPTION_CHECKS.get(builder, {})
    options = [name for name in parameters if name not in RESERVED]
    unknown = [key for key in kwargs if key not in options]
    problems = []
    if unknown:
        problems.append(f"{where}.kwargs: unknown option(s) {', '.join(unknown)}; {_takes(builder, where)}")
    try:
        hints = typing.get_type_hints(builder)
    except Exception:  # an annotation that does not resolve: the build itself checks the values
        hints = {}
    for key, value in kwargs.items():
        if key in checks:  # a registered check takes any value and says more than the annotation would
            expected = checks[key](value)
        else:
            expected = _value_problem(key, value, hints.get(key)) if key in options else None
        if expected:
            default = _shown_default(parameters[key])
            problems.append(f"{where}.kwargs.{key}={value!r}: expected {expected} (the default is {default})")
    return problems


def _value_problem(key: str, value: Any, hint: Any) -> str | None:
    """What ``value`` should have been for the annotation ``hint`` (None when it fits, or the hint is not checked)."""
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else "an integer >= 0"
    if hint is float:
        high = 1.0 if "drop" in key else math.inf
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = number and math.isfinite(value) and 0 <= value < high
        return None if fits else ("a rate in [0, 1)" if "drop" in key else "a finite number >= 0")
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if typing.get_origin(hint) in (list, tuple, Sequence) and typing.get_args(hint)[:1] == (int,):
        fits = isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
        )
        return None if fits else "a list of integers >= 1 (one width per layer), e.g. [64, 128]"
    return None


def _shown_default(parameter: inspect.Parameter) -> str:
    """A builder option's default as a config would write it (a tuple of widths as the YAML list [512])."""
    default = parameter.default
    return repr(list(default) if isinstance(default, tuple) else default)


def _takes(builder: ModelBuilder, where: str) -> str:
    """``<where>.kwargs takes: hidden (default [512]), dropout (default 0.0)``: the options and their defaults."""
    described = [
        f"{name} (default {_shown_default(p)})"
        for name, p in inspect.signature(builder).parameters.items()
        if name not in RESERVED and p.default is not inspect.Parameter.empty
    ]
    if not described:
        return f"{where} takes no options: drop {where}.kwargs"
    return f"{where}.kwargs takes: {', '.join(described)}"


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
