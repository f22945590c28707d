"""Outside models behind the feature-tap interface: ``timm:<name>`` and ``torchvision:<name>``.

Both adapters hold the wrapped library model as ``self.model`` (so a checkpoint saved from the bare
library model loads through :func:`kdistill.models.loading.load_weights`, which adds the ``model.``
prefix) and use their library's own feature-extraction API:

- ``timm:<name>[.<pretrained tag>]`` -- ``timm.create_model(name, pretrained, num_classes, in_chans)``;
  stages come from ``forward_intermediates`` (the last one replaced by the final, normalised map that
  the head consumes), the embedding from ``forward_head(pre_logits=True)``, and the classifier head is
  the model's own ``forward_head``. BiT: ``timm:resnetv2_50x1_bit``, ``timm:resnetv2_101x3_bit``,
  ``timm:resnetv2_152x2_bit`` (pretrained tags such as ``.goog_in21k``, ``.goog_in21k_ft_in1k``).
- ``torchvision:<name>`` -- ``torchvision.models.get_model(name, weights=...)``; stages come from
  ``torchvision.models.feature_extraction.create_feature_extractor`` at nodes chosen per family and
  checked against ``get_graph_node_names``: ResNet / ResNeXt / Wide ResNet (layer1..layer4), RegNet
  (trunk_output.block1..block4), and the ``features`` + ``classifier`` families (VGG, MobileNetV2/V3,
  EfficientNet, ConvNeXt: the last block of each resolution). Other families raise a ConfigError.
  With ``pretrained`` and ``num_classes != 1000`` the final linear layer is replaced (freshly
  initialised); an input with other than 3 channels replaces the first convolution (pretrained
  weights summed / averaged over the RGB channels).

``pretrained=true`` downloads through the library (or uses its cache: ``~/.cache/torch`` /
``$TORCH_HOME`` for torchvision, the Hugging Face hub cache ``~/.cache/huggingface`` for timm). When
that fails, a :class:`PretrainedWeightsError` says so and what to do, instead of a stack trace.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from kdistill.contracts import CheckpointError, ConfigError
from kdistill.models.input_adapter import InputSpec
from kdistill.models.registry import register_model_source
from kdistill.models.taps import Features, TappedModel


class PretrainedWeightsError(CheckpointError):
    """Pretrained weights could not be downloaded (no connection) and are not in the local cache."""


def _pretrained_error(library: str, name: str, error: BaseException) -> PretrainedWeightsError:
    cache = (
        "the Hugging Face hub cache (~/.cache/huggingface/hub, or $HF_HOME / $HF_HUB_CACHE)"
        if library == "timm"
        else "the torch hub cache (~/.cache/torch/hub/checkpoints, or $TORCH_HOME/hub/checkpoints)"
    )
    return PretrainedWeightsError(
        f"{library}:{name}: the pretrained weights could not be downloaded or found in the local cache "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no details'}). "
        f"Pretrained weights need an internet connection the first time, or a copy already in {cache}. "
        f"Otherwise set `pretrained: false` and point `checkpoint:` at a local weights file "
        f"(.pt / .pth / .safetensors) for this architecture."
    )


def _is_download_failure(error: BaseException) -> bool:
    """Network / cache-miss errors (urllib, requests and huggingface_hub errors are all OSErrors)."""
    if isinstance(error, OSError):
        return True
    try:  # huggingface_hub errors that are not OSErrors in some versions
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        return isinstance(error, (HfHubHTTPError, LocalEntryNotFoundError))
    except ImportError:  # pragma: no cover - huggingface_hub absent or very old
        return False


def _global_pool(x: Tensor) -> Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


# ============================================================================ timm


class _TimmNetwork(Protocol):
    """The timm model API the adapter calls (nn.Module's ``__getattr__`` types it as ``Tensor | Module``)."""

    def forward_intermediates(self, x: Tensor) -> tuple[Tensor, list[Tensor]]: ...

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]: ...


def _timm_network(model: nn.Module) -> _TimmNetwork:
    # every timm model defines forward_head; TimmModel checks forward_intermediates before it is called
    return cast(_TimmNetwork, model)


TIMM_HEAD_MODULES = (
    "global_pool",
    "attn_pool",
    "fc_norm",
    "head_drop",
    "head",
    "head_dist",
    "fc",
    "classifier",
    "head_hidden",
)


def _averaged_heads(output: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    """Logits (B, K) of a timm model's output: a distilled model (DeiT's ``VisionTransformerDistilled`` after
    ``set_distilled_training(True)``) returns (class logits, distillation logits) in training mode, which become
    their mean, as DeiT predicts at inference (and as the model itself returns in eval mode)."""
    if isinstance(output, tuple):
        class_logits, distillation_logits = output
        return (class_logits + distillation_logits) / 2
    return output


class TimmHead(nn.Module):
    """The timm model's ``forward_head`` as a module: final map (``stages[-1]``) -> logits.

    It registers the model's head submodules (pooling, norm, fc / head), so ``parameters()`` are the
    classifier's only; the computation is the model's own ``forward_head``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # a plain attribute: not a submodule
        self._forward_head: Callable[..., Tensor | tuple[Tensor, Tensor]] = _timm_network(model).forward_head
        for name, child in model.named_children():
            if name in TIMM_HEAD_MODULES:
                self.add_module(name, child)

    def forward(self, feature_map: Tensor) -> Tensor:
        return _averaged_heads(self._forward_head(feature_map))


class TimmModel(TappedModel):
    """A timm model behind the tap interface.

    stages = ``forward_intermediates`` outputs (stem and each stage, in timm's order), with the last
    replaced by the final map ``forward_head`` consumes (after the final norm, e.g. BiT's pre-activation
    norm + ReLU); embedding = ``forward_head(pre_logits=True)``; logits = ``forward_head``. With
    head dropout in training mode, the embedding and logits use separate dropout draws.

    A distilled DeiT (``timm:deit_*_distilled_*``) has two heads: ``forward`` and the logits are their mean in every
    mode (even after timm's ``set_distilled_training(True)``, which makes the timm model return both in training),
    and ``forward_heads`` gives them apart for the ``deit`` method.
    """

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        if not hasattr(model, "forward_intermediates"):
            raise ConfigError(
                f"timm:{name}: this timm model has no forward_intermediates (needs a newer timm or another model)"
            )
        self.model = model
        self.timm_name = name

    def forward_features(self, x: Tensor) -> Features:
        network = _timm_network(self.model)
        final, intermediates = network.forward_intermediates(x)
        stages = list(intermediates)
        if stages and tuple(stages[-1].shape) == tuple(final.shape):
            stages[-1] = final  # the last stage's output after the final norm: what the head pools
        else:
            stages.append(final)
        embedding = _averaged_heads(network.forward_head(final, pre_logits=True))
        logits = _averaged_heads(network.forward_head(final))
        return Features(stages=stages, embedding=embedding, logits=logits)

    def forward(self, x: Tensor) -> Tensor:
        return _averaged_heads(self.model(x))

    @property
    def has_distillation_token(self) -> bool:
        """Whether the model is a distilled DeiT: a distillation token (``dist_token``) with its own head."""
        return isinstance(getattr(self.model, "dist_token", None), nn.Parameter) and hasattr(self.model, "head_dist")

    def forward_heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(class head logits, distillation head logits), each (B, K), of a distilled DeiT in any mode: the heads of
        timm's ``VisionTransformerDistilled.forward_head`` on tokens 0 and 1 of its normalised token sequence."""
        if not self.has_distillation_token:
            raise ConfigError(f"timm:{self.timm_name} has no distillation token; use a timm:deit_*_distilled_* model")
        tokens = _timm_network(self.model).forward_features(x)  # (B, T, D) after the final norm
        drop, head, head_dist = (self.model.get_submodule(name) for name in ("head_drop", "head", "head_dist"))
        return head(drop(tokens[:, 0])), head_dist(drop(tokens[:, 1]))

    def classifier_head(self) -> nn.Module:
        return TimmHead(self.model)

    def expected_input(self) -> InputSpec | None:
        """The normalisation of the pretrained weights (``pretrained_cfg``), and the input size if it is fixed."""
        config = getattr(self.model, "pretrained_cfg", None) or {}
        if "mean" not in config or "std" not in config:
            return None
        size: tuple[int, int] | None = None
        patch_embed = getattr(self.model, "patch_embed", None)
        accepts_any = patch_embed is not None and not getattr(patch_embed, "strict_img_size", True)  # dynamic_img_size
        if config.get("fixed_input_size") and not accepts_any:
            built = getattr(patch_embed, "img_size", None)  # the size it was built for (img_size=...)
            height, width = built if built is not None else config["input_size"][1:]  # (H, W)
            size = (int(height), int(width))
        return InputSpec(tuple(float(v) for v in config["mean"]), tuple(float(v) for v in config["std"]), size)


@register_model_source("timm")
def timm_model(
    name: str, num_classes: int, input_shape: tuple[int, int, int], pretrained: bool = False, **kwargs: Any
) -> TimmModel:
    """``timm:<name>``; extra kwargs go to ``timm.create_model`` (e.g. drop_rate, pretrained_cfg_overlay)."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"timm:{name} needs the timm package: pip install 'kdistill[timm]' (or pip install timm)"
        ) from None
    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5)
        hint = f" Did you mean {', '.join(close)}?" if close else " See timm.list_models()."
        raise ConfigError(f"timm:{name}: unknown timm model {architecture!r}.{hint}")
    try:
        model = timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=input_shape[0], **kwargs
        )
    except Exception as error:
        if pretrained and _is_download_failure(error):
            raise _pretrained_error("timm", name, error) from None
        raise
    return TimmModel(model, name)


# ============================================================================ torchvision


class TorchvisionHead(nn.Module):
    """final map -> ``pre`` (pooling, flatten, hidden classifier layers) -> ``fc`` (the final linear)."""

    def __init__(self, pre: list[nn.Module], fc: nn.Linear) -> None:
        super().__init__()
        self.pre = nn.Sequential(*pre)
        self.fc = fc

    def embed(self, feature_map: Tensor) -> Tensor:
        return self.pre(feature_map)

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.fc(self.pre(feature_map))


def _get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _get_linear(model: nn.Module, path: str) -> nn.Linear:
    """The final linear layer at ``path`` (``_torchvision_layout`` only picks paths that hold an nn.Linear)."""
    module = model.get_submodule(path)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{path} is a {type(module).__name__}, not the classifier's final nn.Linear")
    return module


def _classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of ``model.classifier`` (``_torchvision_layout`` only uses it when it is an nn.Sequential)."""
    return list(cast(nn.Sequential, model.get_submodule("classifier")))


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class _Layout:
    """Where a torchvision family keeps its stages, final linear and head."""

    def __init__(self, stage_nodes: list[str], fc_path: str, head_pre: Callable[[nn.Module], list[nn.Module]]) -> None:
        self.stage_nodes = stage_nodes
        self.fc_path = fc_path
        self.head_pre = head_pre


def _features_stage_nodes(model: nn.Module, features: nn.Sequential, input_shape: tuple[int, int, int]) -> list[str]:
    """The last child of ``model.features`` at each resolution (and the last child), found by a tiny probe."""
    was_training = model.training
    model.eval()
    nodes, sizes = [], []
    try:
        with torch.no_grad():
            x = torch.zeros(1, *input_shape)
            for index, child in enumerate(features):
                x = child(x)
                sizes.append(tuple(x.shape[-2:]))
                nodes.append(f"features.{index}")
    finally:
        model.train(was_training)
    chosen = [nodes[i] for i in range(len(nodes) - 1) if sizes[i + 1] != sizes[i]]
    return chosen + [nodes[-1]]


def _torchvision_layout(name: str, model: nn.Module, input_shape: tuple[int, int, int]) -> _Layout:
    children = dict(model.named_children())
    if all(f"layer{i}" in children for i in range(1, 5)) and isinstance(children.get("fc"), nn.Linear):
        # resnet*, resnext*, wide_resnet*: avgpool -> flatten -> fc
        return _Layout([f"layer{i}" for i in range(1, 5)], "fc", lambda m: [_get_module(m, "avgpool"), nn.Flatten(1)])
    if "trunk_output" in children and isinstance(children.get("fc"), nn.Linear):
        # regnet_*: trunk_output.block1..N -> avgpool -> flatten -> fc
        blocks = [n for n, _ in children["trunk_output"].named_children()]
        return _Layout(
            [f"trunk_output.{b}" for b in blocks], "fc", lambda m: [_get_module(m, "avgpool"), nn.Flatten(1)]
        )
    features, classifier = children.get("features"), children.get("classifier")
    if (
        isinstance(features, nn.Sequential)
        and isinstance(classifier, nn.Sequential)
        and isinstance(classifier[-1], nn.Linear)
    ):
        stages = _features_stage_nodes(model, features, input_shape)
        fc_path = f"classifier.{len(classifier) - 1}"
        if name.startswith("convnext"):  # avgpool -> classifier (LayerNorm2d, Flatten, Linear)
            return _Layout(stages, fc_path, lambda m: [_get_module(m, "avgpool"), *_classifier_layers(m)[:-1]])
        if name.startswith(("vgg", "efficientnet", "mobilenet_v3", "alexnet")):  # avgpool -> flatten -> classifier
            return _Layout(
                stages, fc_path, lambda m: [_get_module(m, "avgpool"), nn.Flatten(1), *_classifier_layers(m)[:-1]]
            )
        if name.startswith("mobilenet_v2"):  # functional global pool -> flatten -> classifier
            return _Layout(
                stages, fc_path, lambda m: [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), *_classifier_layers(m)[:-1]]
            )
    raise ConfigError(
        f"torchvision:{name}: feature taps are supported for the resnet / resnext / wide_resnet, regnet, vgg, "
        f"mobilenet_v2, mobilenet_v3, efficientnet and convnext families; {name!r} is not one of them. "
        f"Use its timm version (timm:<name>) or a zoo model."
    )


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    # an nn.Conv2d stores kernel_size, stride, dilation and (non-string) padding as 2-tuples (torch's _pair)
    return cast(tuple[int, int], value)


def _adapt_first_conv(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Replace the first 3-channel convolution by one taking ``in_channels`` (as timm's in_chans does)."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            padding = module.padding if isinstance(module.padding, str) else _pair(module.padding)
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                _pair(module.kernel_size),
                _pair(module.stride),
                padding,
                _pair(module.dilation),
                module.groups,
                module.bias is not None,
                module.padding_mode,
            )
            if pretrained:
                with torch.no_grad():
                    weight = module.weight.sum(dim=1, keepdim=True)  # (O, 1, k, k)
                    if in_channels != 1:
                        weight = weight.repeat(1, in_channels, 1, 1) / in_channels
                    new.weight.copy_(weight)
                    if module.bias is not None and new.bias is not None:  # new has a bias iff module has
                        new.bias.copy_(module.bias)
            _set_module(model, path, new)
            return
    raise ConfigError(f"input with {in_channels} channels: found no 3-channel input convolution to replace")


class TorchvisionModel(TappedModel):
    """A torchvision classifier behind the tap interface (stages via create_feature_extractor).

    The feature extractor is an FX graph module sharing ``self.model``'s submodules; it is kept out of
    the module tree (no duplicate parameters in ``state_dict``) and rebuilt after device/dtype moves.
    """

    _extractor: nn.Module | None  # set with object.__setattr__, so it is no submodule

    def __init__(self, model: nn.Module, name: str, layout: _Layout, input_spec: InputSpec | None = None) -> None:
        super().__init__()
        self.model = model
        self.torchvision_name = name
        self.input_spec = input_spec  # the normalisation of the weights (pretrained or not, from the weights enum)
        self.stage_nodes = list(layout.stage_nodes)
        self.fc_path = layout.fc_path
        self._head_pre = layout.head_pre
        self._validate_nodes()
        object.__setattr__(self, "_extractor", None)

    def _validate_nodes(self) -> None:
        from torchvision.models.feature_extraction import get_graph_node_names

        _, eval_nodes = get_graph_node_names(self.model)
        missing = [n for n in self.stage_nodes if not any(e == n or e.startswith(n + ".") for e in eval_nodes)]
        if missing:
            raise ConfigError(f"torchvision:{self.torchvision_name}: graph has no node(s) {', '.join(missing)}")

    def _feature_extractor(self) -> nn.Module:
        extractor = self._extractor
        if extractor is None:
            from torchvision.models.feature_extraction import create_feature_extractor

            extractor = create_feature_extractor(
                self.model, return_nodes={n: f"stage{i}" for i, n in enumerate(self.stage_nodes)}
            )
            object.__setattr__(self, "_extractor", extractor)
        if extractor.training != self.training:
            extractor.train(self.training)
        return extractor

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> TorchvisionModel:
        result = super()._apply(fn, *args, **kwargs)
        object.__setattr__(self, "_extractor", None)  # rebuilt from the moved modules on next use
        return result

    def forward_features(self, x: Tensor) -> Features:
        out = self._feature_extractor()(x)
        stages = [out[f"stage{i}"] for i in range(len(self.stage_nodes))]
        head = self.classifier_head()
        embedding = head.embed(stages[-1])
        return Features(stages=stages, embedding=embedding, logits=head.fc(embedding))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def classifier_head(self) -> TorchvisionHead:
        return TorchvisionHead(self._head_pre(self.model), _get_linear(self.model, self.fc_path))

    def expected_input(self) -> InputSpec | None:
        """The normalisation of the weights' transforms (the supported CNN families take any input size)."""
        return self.input_spec


def _torchvision_input_spec(name: str, weights: str) -> InputSpec | None:
    """mean/std of the ``weights`` entry's eval transforms (read from the enum: nothing is downloaded)."""
    import torchvision

    try:
        entry = torchvision.models.get_model_weights(name)[weights]
    except (KeyError, ValueError):
        return None
    transforms = entry.transforms()
    if not hasattr(transforms, "mean") or not hasattr(transforms, "std"):
        return None
    return InputSpec(tuple(float(v) for v in transforms.mean), tuple(float(v) for v in transforms.std))


@register_model_source("torchvision")
def torchvision_model(
    name: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    pretrained: bool = False,
    weights: str = "DEFAULT",
    **kwargs: Any,
) -> TorchvisionModel:
    """``torchvision:<name>``; ``weights`` picks a weights enum entry (e.g. IMAGENET1K_V2) when pretrained."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"torchvision:{name}: unknown torchvision classification model.{hint}")
    if pretrained:
        try:
            model = torchvision.models.get_model(name, weights=weights, **kwargs)
        except Exception as error:
            if _is_download_failure(error):
                raise _pretrained_error("torchvision", name, error) from None
            raise
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if input_shape[0] != 3:
        _adapt_first_conv(model, input_shape[0], pretrained)
    layout = _torchvision_layout(name, model, input_shape)
    fc = _get_linear(model, layout.fc_path)
    if fc.out_features != num_classes:  # pretrained 1000-class head -> a fresh one for this dataset
        _set_module(model, layout.fc_path, nn.Linear(fc.in_features, num_classes, bias=fc.bias is not None))
    return TorchvisionModel(model, name, layout, _torchvision_input_spec(name, weights))
