"""Pretrained outside models see their own input normalisation (and size) through InputAdapter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdistill.config import ModelConfig
from kdistill.models import InputSpec, build_model
from kdistill.models.external import TimmModel, timm_model
from kdistill.models.input_adapter import InputAdapter, with_input_adapter
from kdistill.models.loading import STUDENT_KIND, load_weights

timm = pytest.importorskip("timm")

SHAPE = (3, 16, 16)
DATA = InputSpec(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))  # the CIFAR-10 preset
MODEL = InputSpec(mean=(0.1, 0.2, 0.3), std=(0.2, 0.3, 0.4))


def _normalise(pixels: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (pixels - mean) / std


def _pixels(shape=SHAPE, batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))  # (B, C, H, W) in [0, 1]


def _timm(name: str = "test_resnet", **kwargs) -> TimmModel:
    torch.manual_seed(0)
    return timm_model(name, 10, SHAPE, pretrained_cfg_overlay={"mean": MODEL.mean, "std": MODEL.std}, **kwargs).eval()


def test_adapter_equals_the_model_on_inputs_normalised_by_hand_with_its_statistics():
    model = _timm()
    adapted = with_input_adapter(model, DATA, SHAPE)
    assert isinstance(adapted, InputAdapter)
    pixels = _pixels()
    with torch.no_grad():
        expected = model(_normalise(pixels, MODEL))
        logits = adapted(_normalise(pixels, DATA))
        features = adapted.forward_features(_normalise(pixels, DATA))
        reference = model.forward_features(_normalise(pixels, MODEL))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.logits, expected, atol=1e-5, rtol=1e-5)
    for stage, reference_stage in zip(features.stages, reference.stages, strict=True):
        torch.testing.assert_close(stage, reference_stage, atol=1e-5, rtol=1e-5)
    assert adapted.classifier_head()(features.final_map).allclose(expected, atol=1e-5)


def test_adapter_resizes_to_the_fixed_input_size_of_the_model():
    model = _timm("test_vit", img_size=32, dynamic_img_size=False)
    assert model.expected_input().size == (32, 32)
    adapted = with_input_adapter(model, DATA, SHAPE)  # data is 16 x 16
    pixels = _pixels()
    resized = nn.functional.interpolate(_normalise(pixels, MODEL), size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(adapted(_normalise(pixels, DATA)), model(resized), atol=1e-5, rtol=1e-5)


def test_no_adapter_where_the_statistics_and_size_agree():
    model = _timm()
    assert with_input_adapter(model, MODEL, SHAPE) is model
    assert with_input_adapter(model, None, SHAPE) is model  # the data's statistics unknown
    built = build_model(
        ModelConfig(name="timm:test_resnet", kwargs={"pretrained_cfg_overlay": {"mean": DATA.mean, "std": DATA.std}}),
        10,
        SHAPE,
        input_normalization=DATA,
        pretrained_inputs=True,
    )
    assert isinstance(built, TimmModel)


def test_grey_input_uses_the_channel_mean_of_rgb_statistics():
    model = timm_model(
        "test_resnet", 10, (1, 16, 16), pretrained_cfg_overlay={"mean": MODEL.mean, "std": MODEL.std}
    ).eval()
    adapted = with_input_adapter(model, InputSpec((0.5,), (0.25,)), (1, 16, 16))
    pixels = _pixels((1, 16, 16))
    grey_model = InputSpec((sum(MODEL.mean) / 3,), (sum(MODEL.std) / 3,))
    with torch.no_grad():
        torch.testing.assert_close(
            adapted((pixels - 0.5) / 0.25), model(_normalise(pixels, grey_model)), atol=1e-5, rtol=1e-5
        )
    with pytest.raises(ValueError, match="2 channels but the input has 3"):
        with_input_adapter(_timm(), InputSpec((0.5, 0.5), (0.2, 0.2)), SHAPE)


def test_pretrained_timm_model_with_other_statistics_gets_the_adapter(tmp_path):
    """pretrained=true through timm's own loader (weights from a local file instead of the hub)."""
    source = timm.create_model("test_resnet", pretrained=False)
    weights = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), weights)
    overlay = {"file": str(weights), "mean": MODEL.mean, "std": MODEL.std}
    config = ModelConfig(name="timm:test_resnet", pretrained=True, kwargs={"pretrained_cfg_overlay": overlay})
    model = build_model(config, 10, SHAPE, input_normalization=DATA)
    assert isinstance(model, InputAdapter) and model.model_spec.mean == MODEL.mean
    assert torch.equal(model.wrapped.model.conv1[0].weight, source.conv1[0].weight)  # the pretrained weights
    assert model.kdistill_spec["pretrained_inputs"] is True
    # the same architecture without pretrained weights, or with the data's statistics unknown: no adapter
    assert isinstance(build_model(ModelConfig(name="timm:test_resnet"), 10, SHAPE, input_normalization=DATA), TimmModel)
    assert isinstance(build_model(config, 10, SHAPE), TimmModel)


def test_adapter_state_dict_is_the_wrapped_models():
    model = _timm()
    adapted = with_input_adapter(model, DATA, SHAPE)
    assert list(adapted.state_dict()) == list(model.state_dict())
    other = _timm()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(1.0)
    adapted.load_state_dict(other.state_dict())  # a bare model's weights load into the adapted one ...
    assert torch.equal(model.model.conv1[0].weight, other.model.conv1[0].weight)
    container = nn.ModuleDict({"student": adapted})  # ... also nested, as in a method's state dict
    assert all(k.startswith("student.model.") for k in container.state_dict())
    container.load_state_dict(container.state_dict())
    fresh = _timm()
    fresh.load_state_dict(adapted.state_dict())  # and the adapted model's weights into a bare one
    assert torch.equal(fresh.model.conv1[0].weight, other.model.conv1[0].weight)


def test_checkpoint_of_a_pretrained_model_keeps_the_adapter(tmp_path):
    """A kdistill export whose model descends from pretrained weights records it; reloading it adapts."""
    name = "timm:test_resnet"
    kwargs = {"pretrained_cfg_overlay": {"mean": MODEL.mean, "std": MODEL.std}}
    trained = build_model(
        ModelConfig(name=name, kwargs=kwargs), 10, SHAPE, input_normalization=DATA, pretrained_inputs=True
    )
    path = tmp_path / "student.pt"
    torch.save({"kind": STUDENT_KIND, "student_spec": trained.kdistill_spec, "state_dict": trained.state_dict()}, path)
    reloaded = build_model(
        ModelConfig(name=name, kwargs=kwargs, checkpoint=str(path)), 10, SHAPE, input_normalization=DATA
    )
    assert isinstance(reloaded, InputAdapter)
    pixels = _normalise(_pixels(), DATA)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(pixels), trained.eval()(pixels))
    load_weights(_timm(), path)  # the weights also fit the bare architecture
