"""Model zoo, outside-model adapters and checkpoint loading, behind one builder (``builder.py``).

Registries in ``registry.py``, the feature-tap interface in ``taps.py``, checkpoints in ``loading.py``.
Importing this package registers every zoo family and outside source listed below.
"""

from kdistill.models import (  # registrations
    cifar_resnet,
    external,
    mobilenetv2,
    resnet_imagenet_style,
    shufflenet,
    simple,
    vgg,
    vit,
    wrn,
)
from kdistill.models.builder import build_model
from kdistill.models.input_adapter import InputAdapter, InputSpec
from kdistill.models.registry import MODEL_INFO, MODEL_SOURCES, MODELS, register_model, register_model_source
from kdistill.models.taps import Features, FeatureShapes, TappedModel, count_parameters, feature_shapes

__all__ = [
    "MODELS",
    "MODEL_INFO",
    "MODEL_SOURCES",
    "Features",
    "FeatureShapes",
    "InputAdapter",
    "InputSpec",
    "TappedModel",
    "build_model",
    "count_parameters",
    "feature_shapes",
    "register_model",
    "register_model_source",
    "cifar_resnet",
    "external",
    "mobilenetv2",
    "resnet_imagenet_style",
    "shufflenet",
    "simple",
    "vgg",
    "vit",
    "wrn",
]
