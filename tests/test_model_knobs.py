"""The zoo's width and depth knobs (issue 28, for `kdistill compress`): the generic builders reproduce every reference
name's exact parameter count, each knob moves the count the way it should, wrong values are refused by name before
anything is built, and every family gives (B, K) logits on CIFAR-sized and MNIST-sized inputs.

Counts are taken on the ``meta`` device (shapes only), so even resnet32x4 costs nothing to count.
"""

from __future__ import annotations

import re

import pytest
import torch

from kdistill.config import ModelConfig, load_config
from kdistill.contracts import ConfigError
from kdistill.engine.builders import preflight
from kdistill.models import MODEL_INFO, MODELS, build_model, count_parameters
from kdistill.models.builder import option_problems
from kdistill.models.cifar_resnet import CIFAR_RESNETS, CifarResNet
from kdistill.models.cifar_resnet import REFERENCE_PARAMETERS as RESNET_PARAMETERS
from kdistill.models.mobilenetv2 import REFERENCE_PARAMETERS as MOBILENET_PARAMETERS
from kdistill.models.mobilenetv2 import MobileNetV2
from kdistill.models.shufflenet import REFERENCE_PARAMETERS as SHUFFLENET_PARAMETERS
from kdistill.models.shufflenet import ShuffleNetV2
from kdistill.models.wrn import REFERENCE_PARAMETERS as WRN_PARAMETERS
from kdistill.models.wrn import WIDE_RESNETS, WideResNet

CIFAR = (3, 32, 32)


def count(name: str, **kwargs) -> int:
    """Parameters of zoo model ``name`` built through ``build_model`` with ``kwargs``, 100 classes, 3x32x32."""
    with torch.device("meta"):
        return count_parameters(build_model(ModelConfig(name=name, kwargs=kwargs), 100, CIFAR))


# ----------------------------------------------------------------------------- every reference name is a point


@pytest.mark.parametrize("name", sorted(CIFAR_RESNETS))
def test_resnet_cifar_reproduces_each_reference_resnet(name):
    depth, widths, _ = CIFAR_RESNETS[name]
    generic = count("resnet_cifar", depth=depth, widths=widths)
    assert generic == RESNET_PARAMETERS[name] == count(name), (name, generic)


def test_every_wrn_name_is_in_the_table_the_generic_builder_is_checked_against():
    assert {name for name in MODELS.names() if name.startswith("wrn_")} == set(WIDE_RESNETS) == set(WRN_PARAMETERS)


@pytest.mark.parametrize("name", sorted(WIDE_RESNETS))
def test_wrn_reproduces_each_reference_wrn(name):
    depth, widen_factor = WIDE_RESNETS[name]
    generic = count("wrn", depth=depth, widen_factor=widen_factor)
    assert generic == WRN_PARAMETERS[name] == count(name), (name, generic)


def test_defaults_keep_the_reference_counts():
    assert count("resnet_cifar") == RESNET_PARAMETERS["resnet20"] == 278_324
    assert count("wrn") == WRN_PARAMETERS["wrn_16_2"] == 703_284
    assert count("mobilenetv2") == MOBILENET_PARAMETERS["mobilenetv2"] == 812_836
    assert count("shufflenetv2") == SHUFFLENET_PARAMETERS["shufflenetv2"] == 1_355_528


def test_width_knobs_reach_the_wider_reference_names():
    assert count("mobilenetv2", width_mult=1.0) == MOBILENET_PARAMETERS["mobilenetv2_x2"] == count("mobilenetv2_x2")
    assert count("shufflenetv2", net_size=1.5) == SHUFFLENET_PARAMETERS["shufflenetv2_x1_5"]
    assert count("shufflenetv2", net_size=1.5) == count("shufflenetv2_x1_5")
    assert count("mobilenetv2", width_mult=0.5, expand_ratio=6) == count("mobilenetv2")  # the defaults, spelled out


# ----------------------------------------------------------------------------- knobs move the count the right way


def increasing(counts: list[int]) -> bool:
    return all(a < b for a, b in zip(counts, counts[1:]))


def test_depth_knobs_add_parameters():
    assert increasing([count("resnet_cifar", depth=d) for d in (8, 14, 20, 26)])
    assert increasing([count("wrn", depth=d) for d in (10, 16, 22, 40)])


def test_width_knobs_add_parameters():
    assert increasing([count("resnet_cifar", widths=[w, w, 2 * w, 4 * w]) for w in (8, 16, 24, 32)])
    assert count("resnet_cifar", widths=[16, 16, 32, 64]) < count("resnet_cifar", widths=[16, 16, 32, 128])
    assert increasing([count("wrn", widen_factor=k) for k in (1, 2, 3, 4)])
    assert increasing([count("mobilenetv2", width_mult=w) for w in (0.25, 0.5, 0.75, 1.0, 1.5)])
    assert increasing([count("mobilenetv2", expand_ratio=t) for t in (1, 2, 4, 6)])
    assert increasing([count("shufflenetv2", net_size=s) for s in (0.2, 0.3, 0.5, 1.0, 1.5, 2.0)])
    assert increasing([count("mlp", hidden=[w]) for w in (1, 16, 64, 512)])
    assert increasing([count("mlp", hidden=[64] * layers) for layers in (1, 2, 3)])
    assert increasing([count("cnn", channels=[c, 2 * c], head="avg") for c in (1, 8, 16)])
    assert increasing([count("cnn", channels=[8, 16, 32][:layers], head="avg") for layers in (1, 2, 3)])


# ----------------------------------------------------------------------------- wrong knobs are refused by name

REFUSED = [
    ("resnet_cifar", {"depth": 9}, "depth=9: expected a depth 6n+2 with n >= 1 (8, 14, 20"),
    ("resnet_cifar", {"depth": 2}, "depth=2: expected a depth 6n+2 with n >= 1"),
    ("resnet_cifar", {"depth": 1208}, "depth=1208: expected a depth 6n+2 with n >= 1 (8, 14, 20, 26, 32, ..., at most"),
    ("resnet_cifar", {"depth": 20.0}, "depth=20.0: expected a depth 6n+2"),
    ("resnet_cifar", {"widths": [16, 32, 64]}, "widths=[16, 32, 64]: expected 4 filter counts >= 1, [stem, stage1"),
    ("resnet_cifar", {"widths": [16, 0, 32, 64]}, "widths=[16, 0, 32, 64]: expected 4 filter counts >= 1"),
    ("wrn", {"depth": 15}, "depth=15: expected a depth 6n+4 with n >= 1 (10, 16, 22"),
    ("wrn", {"widen_factor": 0}, "widen_factor=0: expected an integer >= 1 (the groups have 16k, 32k, 64k channels)"),
    ("wrn", {"widen_factor": 1.5}, "widen_factor=1.5: expected an integer >= 1"),
    ("wrn", {"drop_rate": 1.0}, "drop_rate=1.0: expected a rate in [0, 1)"),
    ("mobilenetv2", {"width_mult": -1}, "width_mult=-1: expected a finite number >= 0.0625"),
    ("mobilenetv2", {"width_mult": 0.05}, "width_mult=0.05: expected a finite number >= 0.0625"),
    ("mobilenetv2", {"width_mult": float("nan")}, "width_mult=nan: expected a finite number >= 0.0625"),
    ("mobilenetv2", {"expand_ratio": 0}, "expand_ratio=0: expected an integer >= 1"),
    ("shufflenetv2", {"net_size": 0.75}, "net_size=0.75: expected one of the reference's net sizes 0.2, 0.3, 0.5, 1.0"),
    ("shufflenetv2", {"net_size": True}, "net_size=True: expected one of the reference's net sizes"),
    ("mlp", {"hidden": [64, 0]}, "hidden=[64, 0]: expected a list of integers >= 1"),
    ("cnn", {"channels": [8, -1]}, "channels=[8, -1]: expected a list of integers >= 1"),
    ("cnn", {"patch": -2}, "patch=-2: expected an integer >= 0"),
]


@pytest.mark.parametrize("name, kwargs, message", REFUSED)
def test_a_wrong_knob_is_refused_by_name_before_anything_is_built(name, kwargs, message, monkeypatch):
    problems = option_problems(MODELS.get(name), kwargs, "student")
    assert len(problems) == 1 and problems[0].startswith(f"student.kwargs.{message}"), problems
    assert "(the default is " in problems[0]
    for layer in ("Conv2d", "Linear", "BatchNorm2d"):  # building a layer now fails with another message
        monkeypatch.setattr(torch.nn, layer, None)
    with pytest.raises(ConfigError) as error:
        build_model(ModelConfig(name=name, kwargs=kwargs), 10, CIFAR, "student")
    assert str(error.value) == problems[0]


def test_preflight_reports_a_wrong_knob_with_the_other_problems():
    overrides = ["student.name=resnet_cifar", "student.kwargs={depth: 9, widths: [8, 8, 16, 32]}", "train.epochs=0"]
    config = load_config(base={"data": {"name": "digits"}, "train": {"progress": False}}, overrides=overrides)
    with pytest.raises(ConfigError) as error:
        preflight(config, output=False)
    text = str(error.value)
    assert "student.kwargs.depth=9: expected a depth 6n+2" in text and "epochs=0" in text
    assert "widths=" not in text  # the valid knob is not reported


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: CifarResNet(9, [16, 16, 32, 64], 10, CIFAR), "depth 6n+2"),
        (lambda: CifarResNet(2, [16, 16, 32, 64], 10, CIFAR), "depth 6n+2"),
        (lambda: CifarResNet(8, [16, 32, 64], 10, CIFAR), "4 filter counts"),
        (lambda: WideResNet(15, 1, 10, CIFAR), "depth 6n+4"),
        (lambda: WideResNet(16, 0, 10, CIFAR), "an integer >= 1"),
        (lambda: MobileNetV2(10, CIFAR, width_mult=0.0), ">= 0.0625"),
        (lambda: MobileNetV2(10, CIFAR, expand_ratio=0), "an integer >= 1"),
        (lambda: ShuffleNetV2(10, CIFAR, net_size=0.75), "0.2, 0.3, 0.5, 1.0, 1.5, 2.0"),
    ],
)
def test_the_model_classes_refuse_what_the_builders_refuse(make, message):
    with pytest.raises(ValueError, match="expected .*" + re.escape(message)):
        make()


# ----------------------------------------------------------------------------- every family runs with its knobs

FAMILIES = [
    ("resnet_cifar", {"depth": 8, "widths": [8, 8, 16, 32]}),
    ("wrn", {"depth": 10, "widen_factor": 1, "drop_rate": 0.1}),
    ("mobilenetv2", {"width_mult": 0.25, "expand_ratio": 2}),
    ("shufflenetv2", {"net_size": 0.2}),
    ("mlp", {"hidden": [32, 16]}),
    ("cnn", {"channels": [8, 16], "hidden": 32}),
    ("cnn", {"channels": [8, 16], "hidden": 32, "patch": 4}),
]


@pytest.mark.parametrize("input_shape, num_classes", [((3, 32, 32), 100), ((1, 28, 28), 10)])
@pytest.mark.parametrize("name, kwargs", FAMILIES)
def test_each_family_gives_logits_with_its_knobs(name, kwargs, input_shape, num_classes):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, kwargs=kwargs), num_classes, input_shape).eval()
    x = torch.randn(2, *input_shape)  # (B, C, H, W)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    assert torch.equal(features.logits, logits)


@pytest.mark.parametrize("input_shape", [(3, 32, 32), (1, 28, 28)])
@pytest.mark.parametrize("widths", [[1], [7, 3], [5, 1, 9], [300, 200, 100]])
def test_mlp_and_cnn_take_one_to_three_layers_of_any_width(widths, input_shape):
    x = torch.randn(2, *input_shape)
    for name, kwargs in (("mlp", {"hidden": widths}), ("cnn", {"channels": widths, "hidden": widths[-1]})):
        model = build_model(ModelConfig(name=name, kwargs=kwargs), 10, input_shape).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 10), (name, widths)
        assert len(model.forward_features(x).stages) == len(widths)


def test_the_catalog_lists_the_generic_builders_at_their_defaults():
    assert {"resnet_cifar", "wrn"} <= set(MODELS.names())
    assert MODEL_INFO["resnet_cifar"]["family"] == "cifar_resnet" and "278,324" in MODEL_INFO["resnet_cifar"]["source"]
    assert MODEL_INFO["wrn"]["family"] == "wrn" and "703,284" in MODEL_INFO["wrn"]["source"]


def test_a_patchify_stem_replaces_the_first_conv_and_pool_with_one_strided_conv():
    model = build_model(ModelConfig(name="cnn", kwargs={"channels": [16, 8], "hidden": 0, "batch_norm": True,
                                                         "padding": 1, "patch": 4}), 10, (1, 28, 28))  # fmt: skip
    first, second = model.stage_modules()
    assert [type(layer).__name__ for layer in first] == ["Conv2d", "BatchNorm2d", "ReLU"]  # no pool after the patches
    assert first[0].kernel_size == first[0].stride == (4, 4) and "MaxPool2d" in str(second)
    maps = model.forward_features(torch.randn(2, 1, 28, 28)).stages
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 7, 7), (8, 3, 3)]  # 28 // 4, then (7 + 2 - 2) // 2
    patches, batch_norm = 16 * 4 * 4, 2 * 16  # no conv bias under BN
    second_stage, head = 8 * 16 * 9 + 2 * 8, 8 * 3 * 3 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == patches + batch_norm + second_stage + head
