"""The model registries: zoo builders (``@register_model``) and outside-model adapters (``@register_model_source``).

Every builder has the signature ``builder(num_classes, input_shape, **kwargs) -> TappedModel``; an adapter for
``prefix:<name>`` models is ``builder(name, num_classes, input_shape, pretrained, **kwargs)``.
"""

from __future__ import annotations

from collections.abc import Callable

from kdistill.models.taps import TappedModel
from kdistill.registry import Registry

ModelBuilder = Callable[..., TappedModel]
MODELS: Registry[ModelBuilder] = Registry("model")
MODEL_SOURCES: Registry[ModelBuilder] = Registry("model source")
MODEL_INFO: dict[str, dict[str, str]] = {}  # name -> {"family", "source"} for `kdistill models`


def register_model(name: str, family: str = "", source: str = "") -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a zoo builder ``builder(num_classes, input_shape, **kwargs) -> TappedModel``.

    ``source`` names the reference implementation whose parameter count the model matches.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        MODEL_INFO[name] = {"family": family, "source": source}
        return MODELS.register(name)(builder)

    return decorator


def register_model_source(prefix: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register an adapter for ``prefix:<name>`` models:
    ``builder(name, num_classes, input_shape, pretrained, **kwargs)``."""
    return MODEL_SOURCES.register(prefix)
