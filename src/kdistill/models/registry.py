"""The model registries: zoo builders (``@register_model``) and outside-model adapters (``@register_model_source``).

Every builder has the signature ``builder(num_classes, input_shape, **kwargs) -> TappedModel``; an adapter for
``prefix:<name>`` models is ``builder(name, num_classes, input_shape, pretrained, **kwargs)``. A zoo builder's
signature lists every option it takes (``build_model`` checks names and types against it); what an annotation cannot
say (a depth of the form 6n+2, a width multiplier above 0) a builder registers as ``checks``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kdistill.models.taps import TappedModel
from kdistill.registry import Registry

ModelBuilder = Callable[..., TappedModel]
MODELS: Registry[ModelBuilder] = Registry("model")
MODEL_SOURCES: Registry[ModelBuilder] = Registry("model source")
MODEL_INFO: dict[str, dict[str, str]] = {}  # name -> {"family", "source"} for `kdistill models`
OptionCheck = Callable[[Any], "str | None"]  # an option's value -> what it should have been, or None when it fits
OPTION_CHECKS: dict[ModelBuilder, dict[str, OptionCheck]] = {}  # zoo builder -> option name -> its value check


def register_model(
    name: str, family: str = "", source: str = "", checks: dict[str, OptionCheck] | None = None
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a zoo builder ``builder(num_classes, input_shape, **kwargs) -> TappedModel``.

    ``source`` names the reference implementation whose parameter count the model matches. ``checks`` maps an
    option to a function that takes any value and says what it should have been (None when it fits), for what the
    option's annotation cannot say; ``build_model`` runs it instead of the annotation's check, before building.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        MODEL_INFO[name] = {"family": family, "source": source}
        if checks:
            OPTION_CHECKS[builder] = dict(checks)
        return MODELS.register(name)(builder)

    return decorator


def register_model_source(prefix: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register an adapter for ``prefix:<name>`` models:
    ``builder(name, num_classes, input_shape, pretrained, **kwargs)``."""
    return MODEL_SOURCES.register(prefix)
