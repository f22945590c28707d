"""The CIFAR zoo: reference parameter counts, forward passes, and consistent feature taps.

Expected counts are for 100 classes and 32x32x3 inputs. Each was computed by instantiating the layer
definitions (``__init__``) of the named reference file and summing ``p.numel()`` over its parameters;
the zoo's modules also carry the reference's parameter names, so the state-dict layouts match.
"""

from __future__ import annotations

import pytest
import torch

from kdistill.config import ModelConfig
from kdistill.models import MODEL_INFO, MODELS, build_model, count_parameters, feature_shapes
from kdistill.models.catalog import model_catalog
from kdistill.models.loading import load_weights

REPDISTILLER = "HobbitLong/RepDistiller"
SIMKD = "DefangChen/SimKD"

# name -> (reference parameter count at 100 classes / 32x32x3, reference repo + file (+ builder))
REFERENCE = {
    "resnet8": (83_892, f"{REPDISTILLER} models/resnet.py resnet8"),
    "resnet14": (181_108, f"{REPDISTILLER} models/resnet.py resnet14"),
    "resnet20": (278_324, f"{REPDISTILLER} models/resnet.py resnet20"),
    "resnet32": (472_756, f"{REPDISTILLER} models/resnet.py resnet32"),
    "resnet44": (667_188, f"{REPDISTILLER} models/resnet.py resnet44"),
    "resnet56": (861_620, f"{REPDISTILLER} models/resnet.py resnet56"),
    "resnet110": (1_736_564, f"{REPDISTILLER} models/resnet.py resnet110"),
    "resnet116": (1_833_780, f"{SIMKD} models/resnet.py resnet116 (SimKD's 'ResNet-116')"),
    "resnet8x4": (1_233_540, f"{REPDISTILLER} models/resnet.py resnet8x4"),
    "resnet32x4": (7_433_860, f"{REPDISTILLER} models/resnet.py resnet32x4"),
    "resnet110x2": (6_911_220, f"{SIMKD} models/resnet.py resnet110x2"),
    "resnet38": (569_972, f"{SIMKD} models/resnet.py resnet38 (depth 38, [16, 16, 32, 64]; SimKD's 'WRN-40-1')"),
    "resnet38x2": (2_255_604, f"{SIMKD} models/resnet.py resnet38x2 (depth 38, [16, 32, 64, 128]; SimKD's 'WRN-40-2')"),
    "resnet14x2": (703_732, f"{SIMKD} models/resnet.py resnet14x2 (depth 14, [16, 32, 64, 128]; SimKD's 'WRN-16-2')"),
    "wrn_16_1": (180_916, f"{REPDISTILLER} models/wrn.py wrn_16_1"),
    "wrn_16_2": (703_284, f"{REPDISTILLER} models/wrn.py wrn_16_2"),
    "wrn_40_1": (569_780, f"{REPDISTILLER} models/wrn.py wrn_40_1"),
    "wrn_40_2": (2_255_156, f"{REPDISTILLER} models/wrn.py wrn_40_2"),
    "vgg8": (3_965_028, f"{REPDISTILLER} models/vgg.py vgg8_bn"),
    "vgg11": (9_277_284, f"{REPDISTILLER} models/vgg.py vgg11_bn"),
    "vgg13": (9_462_180, f"{REPDISTILLER} models/vgg.py vgg13_bn"),
    "vgg16": (14_774_436, f"{REPDISTILLER} models/vgg.py vgg16_bn"),
    "vgg19": (20_086_692, f"{REPDISTILLER} models/vgg.py vgg19_bn"),
    "mobilenetv2": (812_836, f"{REPDISTILLER} models/mobilenetv2.py mobile_half (T=6, W=0.5)"),
    "mobilenetv2_x2": (2_353_060, f"{SIMKD} models/mobilenetv2.py mobile_half_double (T=6, W=1.0)"),
    "shufflenetv1": (949_258, f"{REPDISTILLER} models/ShuffleNetv1.py ShuffleV1"),
    "shufflenetv2": (1_355_528, f"{REPDISTILLER} models/ShuffleNetv2.py ShuffleV2"),
    "shufflenetv2_x1_5": (2_580_548, f"{SIMKD} models/ShuffleNetv2.py ShuffleV2_1_5"),
    "resnet50_cifar": (23_705_252, f"{REPDISTILLER} models/resnetv2.py ResNet50"),
}
ZOO = sorted(REFERENCE)
GRAYSCALE = ["resnet8x4", "wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"]


def _check_taps(model, input_shape, num_classes):
    """forward_features / forward / classifier_head / feature_shapes agree; stages shrink spatially."""
    torch.manual_seed(0)
    x = torch.randn(2, *input_shape)
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        head_logits = model.classifier_head()(features.stages[-1])
    assert features.logits.shape == (2, num_classes)
    assert torch.equal(logits, features.logits)
    assert torch.equal(head_logits, features.logits)
    assert torch.isfinite(features.logits).all()
    # the embedding is what the head feeds its final linear: the pooled (head-transformed) final map
    head = model.classifier_head()
    torch.testing.assert_close(head.pool(features.stages[-1]), features.embedding, atol=0, rtol=0)
    assert head.fc.in_features == features.embedding.shape[1]
    assert all(s.dim() == 4 for s in features.stages)
    sizes = [s.shape[-2] * s.shape[-1] for s in features.stages]
    assert sizes == sorted(sizes, reverse=True), f"stage sizes not non-increasing: {sizes}"
    shapes = feature_shapes(model, input_shape)
    assert shapes.stages == [tuple(s.shape[1:]) for s in features.stages]
    assert shapes.embedding_dim == features.embedding.shape[1]
    assert shapes.num_classes == num_classes
    return features


def test_all_zoo_models_are_registered_with_their_source():
    registered = set(MODELS.names()) - {"mlp", "cnn", "resnet_cifar", "wrn", "vit"}  # vit: tests/test_vit.py
    assert registered == set(REFERENCE)
    for name, (count, source) in REFERENCE.items():
        info = MODEL_INFO[name]
        repo_file = " ".join(source.split()[:2])  # "<repo> <file>"
        assert repo_file in info["source"], (name, info["source"])
        assert f"{count:,}" in info["source"], (name, info["source"])
        assert info["family"]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_count_forward_and_taps(name):
    expected, source = REFERENCE[name]
    model = build_model(ModelConfig(name=name), num_classes=100, input_shape=(3, 32, 32))
    count = count_parameters(model)
    assert abs(count - expected) <= 0.005 * expected, f"{name}: {count:,} parameters, reference {expected:,} ({source})"
    _check_taps(model, (3, 32, 32), 100)


@pytest.mark.parametrize("name", GRAYSCALE)
def test_zoo_model_on_grayscale_28x28(name):
    model = build_model(ModelConfig(name=name), num_classes=10, input_shape=(1, 28, 28))
    _check_taps(model, (1, 28, 28), 10)


def test_known_feature_shapes_at_32x32():
    expected = {
        "resnet8x4": [(64, 32, 32), (128, 16, 16), (256, 8, 8)],
        "resnet32x4": [(64, 32, 32), (128, 16, 16), (256, 8, 8)],
        "wrn_40_2": [(32, 32, 32), (64, 16, 16), (128, 8, 8)],
        "vgg8": [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)],
        "resnet38x2": [(32, 32, 32), (64, 16, 16), (128, 8, 8)],
        # the reference's f1..f4 (blocks[1], [2], [4], [6]); the 1x1 conv to 1280 is in the head
        "mobilenetv2": [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)],
        "mobilenetv2_x2": [(24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2)],
        "shufflenetv1": [(240, 16, 16), (480, 8, 8), (960, 4, 4)],
        # the reference's f1..f3 (layer1..3); the 1x1 conv to 1024 is in the head
        "shufflenetv2": [(116, 16, 16), (232, 8, 8), (464, 4, 4)],
        "shufflenetv2_x1_5": [(176, 16, 16), (352, 8, 8), (704, 4, 4)],
    }
    embedding_dims = {
        "mobilenetv2": 1280,
        "mobilenetv2_x2": 1280,
        "shufflenetv2": 1024,
        "shufflenetv2_x1_5": 1024,
        "wrn_40_2": 128,
    }
    for name, stages in expected.items():
        model = MODELS.get(name)(100, (3, 32, 32))
        shapes = feature_shapes(model, (3, 32, 32))
        assert shapes.stages == stages, name
        if name in embedding_dims:
            assert shapes.embedding_dim == embedding_dims[name], name


def test_wrn_final_stage_is_the_raw_block3_output():
    """RepDistiller's wrn.py returns block3's raw sum as f3; the final BN + ReLU is the head's first step."""
    torch.manual_seed(0)
    model = MODELS.get("wrn_16_1")(10, (3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        raw = model.block3(model.block2(model.block1(model.conv1(x))))
    assert torch.equal(features.stages[-1], raw)
    assert (features.stages[-1] < 0).any(), "a pre-activation map has negative entries"
    assert set(model.classifier_head().parameters()) == {*model.bn1.parameters(), *model.fc.parameters()}


@pytest.mark.parametrize("name, head_module", [("mobilenetv2", "conv2"), ("shufflenetv2", "conv2")])
def test_head_conv_belongs_to_the_classifier_head(name, head_module):
    """MobileNetV2 / ShuffleNetV2: the 1x1 head conv (and its BN) is applied by ``classifier_head()``, not
    tapped as a stage, so the head's parameters are the conv's, its BN's and the linear layer's."""
    model = MODELS.get(name)(100, (3, 32, 32))
    head_parameters = set(model.classifier_head().parameters())
    assert set(getattr(model, head_module).parameters()) <= head_parameters
    linear = model.classifier[0] if name == "mobilenetv2" else model.linear
    assert set(linear.parameters()) <= head_parameters
    trunk = {p for n, p in model.named_parameters() if n.startswith(("conv1", "bn1", "blocks", "layer"))}
    assert not trunk & head_parameters


def test_training_step_updates_a_zoo_model():
    torch.manual_seed(0)
    model = MODELS.get("resnet8")(10, (3, 32, 32))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    before = model.fc.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.fc.weight)


def test_reference_style_checkpoint_loads(tmp_path):
    """RepDistiller saves teachers as {"model": state_dict} with the same parameter names."""
    source = MODELS.get("wrn_16_1")(100, (3, 32, 32))
    path = tmp_path / "wrn_16_1_best.pth"
    torch.save({"epoch": 240, "model": source.state_dict(), "accuracy": 0.0}, path)
    target = MODELS.get("wrn_16_1")(100, (3, 32, 32))
    load_weights(target, path)
    for (k, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), k


def test_zoo_builders_reject_unknown_options():
    from kdistill.contracts import ConfigError

    with pytest.raises(ConfigError, match="unknown option"):
        build_model(ModelConfig(name="resnet8", kwargs={"width": 2}), 10, (3, 32, 32))


def test_model_catalog_lists_every_zoo_model():
    rows = model_catalog()
    by_name = {row["name"]: row for row in rows}
    assert set(REFERENCE) <= set(by_name)
    for name, (count, _) in REFERENCE.items():
        assert by_name[name]["parameters"] == count
        assert by_name[name]["family"] and by_name[name]["source"]
    assert set(rows[0]) == {"name", "family", "parameters", "source"}
