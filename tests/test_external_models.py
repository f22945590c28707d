"""timm and torchvision models behind the same tap interface; checkpoints; offline pretrained errors."""

from __future__ import annotations

import time

import pytest
import torch

from kdistill.config import ModelConfig
from kdistill.contracts import CheckpointError, ConfigError
from kdistill.models import build_model, feature_shapes
from kdistill.models.external import PretrainedWeightsError, TimmModel, TorchvisionModel
from kdistill.models.loading import load_weights, sha256_of

timm = pytest.importorskip("timm")

SHAPE = (3, 32, 32)


def _check_taps(model, input_shape, num_classes):
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        head = model.classifier_head()
        head_logits = head(features.stages[-1])
    assert features.logits.shape == (2, num_classes)
    assert torch.allclose(logits, features.logits, atol=1e-6)
    assert torch.equal(head_logits, features.logits)
    shapes = feature_shapes(model, input_shape)
    assert shapes.stages == [tuple(s.shape[1:]) for s in features.stages]
    assert shapes.embedding_dim == features.embedding.shape[1]
    assert shapes.num_classes == num_classes
    sizes = [s.shape[-2] * s.shape[-1] for s in features.stages]
    assert sizes == sorted(sizes, reverse=True)
    # the head holds the classifier only, not the whole network
    assert 0 < sum(p.numel() for p in head.parameters()) < sum(p.numel() for p in model.parameters()) // 4
    return features


@pytest.fixture(scope="module")
def timm_resnet18():
    return build_model(ModelConfig(name="timm:resnet18"), num_classes=10, input_shape=SHAPE)


@pytest.fixture(scope="module")
def tv_resnet18():
    return build_model(ModelConfig(name="torchvision:resnet18"), num_classes=10, input_shape=SHAPE)


def test_timm_model_taps(timm_resnet18):
    assert isinstance(timm_resnet18, TimmModel)
    features = _check_taps(timm_resnet18, SHAPE, 10)
    assert features.stages[-1].shape[1] == 512 and features.embedding.shape == (2, 512)


def test_torchvision_model_taps(tv_resnet18):
    assert isinstance(tv_resnet18, TorchvisionModel)
    features = _check_taps(tv_resnet18, SHAPE, 10)
    assert [s.shape[1] for s in features.stages] == [64, 128, 256, 512]  # layer1..layer4
    assert "model.fc.weight" in tv_resnet18.state_dict()
    assert not any(k.startswith("_extractor") for k in tv_resnet18.state_dict())


def test_bit_model_on_grayscale_input():
    for name in ("resnetv2_50x1_bit", "resnetv2_101x3_bit", "resnetv2_152x2_bit"):
        assert timm.is_model(name), name
    model = build_model(ModelConfig(name="timm:resnetv2_50x1_bit"), num_classes=26, input_shape=(1, 28, 28))
    features = _check_taps(model, (1, 28, 28), 26)
    assert features.stages[-1].shape[1] == 2048


def test_torchvision_grayscale_and_train_mode():
    model = build_model(ModelConfig(name="torchvision:resnet18"), num_classes=26, input_shape=(1, 28, 28))
    _check_taps(model, (1, 28, 28), 26)
    model.train()
    features = model.forward_features(torch.randn(4, 1, 28, 28))
    features.logits.sum().backward()
    assert model.model.fc.weight.grad is not None and model.model.conv1.weight.grad is not None


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_checkpoints_from_adapter_and_bare_model_load(source, tmp_path):
    name = f"{source}:resnet18"
    original = build_model(ModelConfig(name=name), num_classes=10, input_shape=SHAPE)
    torch.save(original.state_dict(), tmp_path / "adapter.pt")
    torch.save({"state_dict": original.model.state_dict()}, tmp_path / "bare.pth")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in original.model.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    for file in ("adapter.pt", "bare.pth", "bare.safetensors"):
        path = tmp_path / file
        loaded = build_model(
            ModelConfig(name=name, checkpoint=str(path), sha256=sha256_of(path)), num_classes=10, input_shape=SHAPE
        )
        for (key, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), (file, key)
    x = torch.randn(1, *SHAPE)
    original.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(original(x), loaded(x))


def test_sha256_mismatch_and_truncated_file_are_rejected(tv_resnet18, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tv_resnet18.state_dict(), path)
    with pytest.raises(CheckpointError, match="sha256"):
        load_weights(tv_resnet18, path, sha256="0" * 64)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(tv_resnet18, truncated)
    truncated_st = tmp_path / "truncated.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tv_resnet18.model.state_dict().items()}, str(tmp_path / "ok.safetensors"))
    truncated_st.write_bytes((tmp_path / "ok.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        load_weights(tv_resnet18, truncated_st)


def test_checkpoint_for_another_architecture_is_rejected(timm_resnet18, tmp_path):
    path = tmp_path / "other.pt"
    torch.save(build_model(ModelConfig(name="resnet8"), 10, SHAPE).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(timm_resnet18, path)
    # timm's resnet18 uses torchvision's parameter names, so torchvision weights fit it
    torch.save(build_model(ModelConfig(name="torchvision:resnet18"), 10, SHAPE).model.state_dict(), path)
    load_weights(timm_resnet18, path)


def _offline(monkeypatch, tmp_path):
    """No downloads: HF offline mode, empty caches, and a dead proxy for plain urllib downloads."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # read at import time by huggingface_hub
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # connection refused at once, network or not
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:resnetv2_50x1_bit.goog_in21k", "torchvision:resnet18"])
def test_pretrained_offline_fails_fast_with_a_clear_error(name, monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as info:
        build_model(ModelConfig(name=name, pretrained=True), num_classes=10, input_shape=SHAPE)
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "could not be downloaded" in message and "connection" in message
    assert "cache" in message and "checkpoint:" in message
    assert isinstance(info.value, CheckpointError)


def test_unknown_and_unsupported_names_give_config_errors():
    with pytest.raises(ConfigError, match="unknown timm model"):
        build_model(ModelConfig(name="timm:resnet18x"), 10, SHAPE)
    with pytest.raises(ConfigError, match="unknown torchvision"):
        build_model(ModelConfig(name="torchvision:resnet19"), 10, SHAPE)
    with pytest.raises(ConfigError, match="not one of them"):
        build_model(ModelConfig(name="torchvision:squeezenet1_0"), 10, SHAPE)
    with pytest.raises(ConfigError, match="unknown model source"):
        build_model(ModelConfig(name="keras:resnet50"), 10, SHAPE)
