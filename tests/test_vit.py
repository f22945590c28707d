"""The zoo's small ViT (``vit``): taps, the two heads of a distillation token, knob checks, ONNX parity, feature
methods on its maps, and distilled timm DeiTs through the timm adapter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kdistill.config import ModelConfig
from kdistill.contracts import Batch, ConfigError, DataInfo
from kdistill.deploy.runtime import write_onnx
from kdistill.methods import METHODS
from kdistill.methods.accounting import parameter_report
from kdistill.models import MODEL_INFO, build_model, count_parameters, feature_shapes
from kdistill.models.external import TimmModel
from kdistill.models.vit import VisionTransformer

TINY = {"patch_size": 4, "depth": 2, "width": 16, "heads": 2, "mlp_ratio": 2.0}


def tiny_vit(input_shape=(1, 28, 28), num_classes=10, **kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vit", kwargs={**TINY, **kwargs}), num_classes, input_shape)
    assert isinstance(model, VisionTransformer)
    return model


# ----------------------------------------------------------------------------- taps and heads


@pytest.mark.parametrize(
    "input_shape, patch_size, grid", [((1, 28, 28), 4, (7, 7)), ((1, 28, 28), 7, (4, 4)), ((3, 32, 32), 8, (4, 4))]
)
@pytest.mark.parametrize("distillation_token", [False, True])
def test_taps_are_patch_maps_and_the_class_token(input_shape, patch_size, grid, distillation_token):
    model = tiny_vit(input_shape, patch_size=patch_size, distillation_token=distillation_token).eval()
    x = torch.randn(3, *input_shape)
    with torch.no_grad():
        features = model.forward_features(x)
        tokens = model.encode(x)  # (B, P + N, D) after the final norm
        logits = model(x)
    assert [tuple(stage.shape) for stage in features.stages] == [(3, 16, *grid)] * TINY["depth"]
    # the last stage is the final-normalised patch tokens; the embedding is the class token (token 0)
    prefix = 2 if distillation_token else 1
    assert tokens.shape == (3, prefix + grid[0] * grid[1], 16)
    torch.testing.assert_close(features.stages[-1].flatten(2).transpose(1, 2), tokens[:, prefix:])
    torch.testing.assert_close(features.embedding, tokens[:, 0])
    torch.testing.assert_close(features.logits, logits)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    shapes = feature_shapes(model, input_shape)
    assert shapes.stages == [(16, *grid)] * TINY["depth"] and shapes.embedding_dim == 16 and shapes.num_classes == 10


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_forward_of_a_distillation_token_vit_is_the_mean_of_its_two_heads(mode):
    model = tiny_vit(distillation_token=True).train(mode == "train")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        class_logits, distillation_logits = model.forward_heads(x)
        logits = model(x)
    assert not torch.allclose(class_logits, distillation_logits)  # two heads, not one read twice
    torch.testing.assert_close(logits, (class_logits + distillation_logits) / 2)
    torch.testing.assert_close(class_logits, model.head(model.encode(x)[:, 0]))
    torch.testing.assert_close(distillation_logits, model.head_distillation(model.encode(x)[:, 1]))


def test_without_a_distillation_token_there_is_one_head():
    model = tiny_vit().eval()
    x = torch.randn(2, 1, 28, 28)
    assert not model.has_distillation_token and model.head_distillation is None
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.encode(x)[:, 0]))
    with pytest.raises(RuntimeError, match="distillation_token=true"):
        model.forward_heads(x)
    distilled = tiny_vit(distillation_token=True)
    assert distilled.has_distillation_token
    # the distillation token, its position embedding and its head: 16 + 16 + (16 * 10 + 10)
    assert count_parameters(distilled) - count_parameters(model) == 16 + 16 + 170


def test_the_vit_is_registered_and_its_classifier_head_says_why_there_is_none():
    assert MODEL_INFO["vit"]["family"] == "vit" and "2012.12877" in MODEL_INFO["vit"]["source"]
    model = tiny_vit()
    with pytest.raises(NotImplementedError, match="class .*token"):
        model.classifier_head()
    # default size: DeiT-Tiny's width and heads at depth 6, MLP ratio 2
    default = build_model(ModelConfig(name="vit"), 10, (1, 28, 28))
    assert isinstance(default, VisionTransformer) and len(default.blocks) == 6
    assert default.blocks[0].self_attn.embed_dim == 192 and default.blocks[0].self_attn.num_heads == 3
    assert default.blocks[0].norm_first and default.blocks[0].linear1.out_features == 384


def test_flop_counts_see_every_block_in_eval_mode():
    """``kdistill compare`` counts FLOPs with FlopCounterMode in eval mode without gradient: the blocks must compute
    there what they compute in training (batch-first layers with an even number of heads would switch to fused
    kernels it does not count)."""
    model = tiny_vit(patch_size=7, distillation_token=True)  # 2 heads; 16 patches + 2 tokens
    x = torch.randn(1, 1, 28, 28)

    def flops(training: bool) -> int:
        model.train(training)
        with torch.set_grad_enabled(training), FlopCounterMode(display=False) as counter:
            model(x)
        return counter.get_total_flops()

    tokens, width, hidden = 18, 16, 32
    projections = 2 * tokens * (4 * width * width + 2 * width * hidden) * TINY["depth"]  # qkv, out, MLP: 2 per MAC
    assert flops(False) == flops(True) > projections


# ----------------------------------------------------------------------------- knob checks


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"patch_size": 5},
            r"patch_size=5 must divide the image sides 28x28; patch sizes that fit: 1, 2, 4, 7, 14, 28",
        ),
        ({"patch_size": 0}, r"patch_size=0: expected an integer >= 1 that divides the image sides"),
        ({"width": 10, "heads": 4}, r"width=10 must be divisible by heads=4 .*heads that fit width 10: 1, 2, 5, 10"),
        ({"heads": 0}, r"heads=0: expected an integer >= 1 that divides width"),
        ({"depth": 0}, r"depth=0: expected an integer from 1 to 64 \(the number of transformer blocks\)"),
        ({"depth": 2**31}, r"depth=2147483648: expected an integer from 1 to 64"),
        ({"width": 2.5}, r"width=2.5: expected an integer >= 1"),
        ({"mlp_ratio": -1.0}, r"mlp_ratio=-1.0: expected a finite number > 0"),
        ({"mlp_ratio": 0.01}, r"mlp_ratio gives each block's MLP 0 hidden units at width 16"),
        ({"distillation_token": "yes"}, r"distillation_token='yes': expected true or false"),
        ({"patches": 4}, r"unknown option\(s\) patches; student.kwargs takes: patch_size \(default 4\)"),
    ],
)
def test_bad_knobs_are_refused_with_what_is_allowed(kwargs, message):
    with pytest.raises(ConfigError, match=message) as error:
        build_model(ModelConfig(name="vit", kwargs={**TINY, **kwargs}), 10, (1, 28, 28), where="student")
    assert "student.kwargs" in str(error.value)


def test_patch_sizes_that_divide_one_input_may_not_divide_another():
    assert tiny_vit((3, 32, 32), patch_size=8).grid == (4, 4)
    with pytest.raises(ConfigError, match="patch sizes that fit: 1, 2, 4, 8, 16, 32"):
        tiny_vit((3, 32, 32), patch_size=7)


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_a_distillation_token_vit_exports_to_onnx_with_parity(tmp_path, exporter):
    onnxruntime = pytest.importorskip("onnxruntime")  # the [export] extra, installed in the project's venv
    model = tiny_vit(patch_size=7, distillation_token=True)
    export = write_onnx(model, (1, 28, 28), tmp_path / "vit.onnx", exporter=exporter)
    assert export.exporter == exporter and export.max_abs_diff < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "vit.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 28, 28)  # another batch size than the export's 2
    (onnx_logits,) = session.run(["logits"], {"input": x.numpy()})
    model.eval()
    with torch.no_grad():
        class_logits, distillation_logits = model.forward_heads(x)
    torch.testing.assert_close(
        torch.from_numpy(onnx_logits), (class_logits + distillation_logits) / 2, atol=1e-4, rtol=1e-4
    )


# ----------------------------------------------------------------------------- feature methods on its maps

INPUT_SHAPE = (1, 16, 16)
TEACHER = ModelConfig(name="cnn", kwargs={"channels": [8, 16], "padding": 1, "batch_norm": True, "head": "avg"})


@pytest.mark.parametrize("name", ["fitnet", "at", "simkd"])
def test_feature_methods_train_a_vit_student_from_its_patch_maps(name):
    torch.manual_seed(0)
    info = DataInfo(num_classes=5, input_shape=INPUT_SHAPE, num_train=16, batch_size=6)
    teacher = build_model(TEACHER, 5, INPUT_SHAPE)
    student = build_model(ModelConfig(name="vit", kwargs=TINY), 5, INPUT_SHAPE)  # 4x4 maps of 16 channels
    method_cls = METHODS.get(name)
    method = method_cls(student, [teacher], method_cls.config_class(), info).train()
    generator = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(6, *INPUT_SHAPE, generator=generator), torch.randint(0, 5, (6,)), torch.arange(6))
    output = method.training_step(batch)
    feature_term = {"fitnet": "hint", "at": "at", "simkd": "simkd"}[name]  # the method's own loss on the maps
    assert output.losses[feature_term] > 0 and all(torch.isfinite(v) for v in output.losses.values())
    output.loss.backward()
    block_grads = [p.grad for p in student.blocks.parameters()]
    assert all(g is not None for g in block_grads) and any(g.abs().sum() > 0 for g in block_grads)
    assert all(p.grad is None for p in teacher.parameters())
    report = parameter_report(method)  # a ViT has no classifier head mapping stages[-1]: counted as None
    assert report["params_student"] == count_parameters(student) and report["params_student_classifier"] is None


# ----------------------------------------------------------------------------- timm's ViT / DeiT by name

TIMM_KWARGS = {"img_size": 32, "patch_size": 8, "depth": 2}  # timm.create_model options: a small DeiT on 32x32


def timm_model(name: str) -> TimmModel:
    pytest.importorskip("timm")  # the [timm] extra, installed in the project's venv
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=f"timm:{name}", kwargs=TIMM_KWARGS), 10, (3, 32, 32))
    assert isinstance(model, TimmModel)
    return model


def test_a_timm_vit_has_map_stages_and_one_head():
    model = timm_model("vit_tiny_patch16_224").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(features.logits, model(x))
    assert [tuple(s.shape) for s in features.stages[:-1]] == [(2, 192, 4, 4)] * 2
    assert not model.has_distillation_token


def test_a_distilled_timm_deit_averages_its_heads_even_when_timm_returns_both():
    model = timm_model("deit_tiny_distilled_patch16_224")
    assert model.has_distillation_token
    x = torch.randn(2, 3, 32, 32)
    model.model.set_distilled_training(True)  # timm then returns (class, distillation) logits in training mode
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            class_logits, distillation_logits = model.forward_heads(x)
            logits = model(x)
            features = model.forward_features(x)
            head_logits = model.classifier_head()(features.stages[-1])
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
        torch.testing.assert_close(logits, (class_logits + distillation_logits) / 2)
        torch.testing.assert_close(features.logits, logits)
        torch.testing.assert_close(head_logits, logits)
    head_parameters = {id(p) for p in model.classifier_head().parameters()}
    assert {id(p) for p in model.model.head_dist.parameters()} <= head_parameters
