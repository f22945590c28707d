"""SimKD: projector layout, losses, the exported student, variants, label filtering, parameter accounting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdistill.config import ModelConfig
from kdistill.contracts import Batch, ConfigError, DataInfo
from kdistill.methods import METHODS
from kdistill.methods.accounting import parameter_report
from kdistill.methods.simkd import (
    SimKDProjector,
    SimKDStudent,
    simkd_cosine_per_sample,
    simkd_kl_per_sample,
    simkd_l2_per_sample,
    simkd_loss,
)
from kdistill.models import build_model

from helpers import TINY_CLASSES as NUM_CLASSES
from helpers import TINY_INPUT_SHAPE as INPUT_SHAPE
from helpers import TINY_STUDENT as STUDENT
from helpers import TINY_TEACHER as TEACHER
from helpers import build_tiny_method
from helpers import tiny_batch as batch

RNG = np.random.default_rng(1)
STUDENT_SMALL_MAP = ModelConfig(
    name="cnn", kwargs={"channels": [8, 12], "padding": 0, "batch_norm": True, "head": "avg"}
)  # 12x2x2
TEACHER_3 = ModelConfig(
    name="cnn", kwargs={"channels": [8, 16, 24], "padding": 1, "batch_norm": True, "head": "avg"}
)  # 8, 4, 2


def build(student=STUDENT, teachers=(TEACHER,), seed=0, **overrides):
    return build_tiny_method("simkd", student, teachers, seed, **overrides)


# ----------------------------------------------------------------------------- projector and losses


def test_projector_layout_matches_the_reference():
    projector = SimKDProjector((12, 4, 4), (32, 4, 4), factor=2)
    layers = list(projector.transfer)
    kinds = [type(layer) for layer in layers]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 3
    convs = [layers[0], layers[3], layers[6]]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding, c.groups) for c in convs] == [
        (12, 16, (1, 1), (0, 0), 1),
        (16, 16, (3, 3), (1, 1), 1),
        (16, 32, (1, 1), (0, 0), 1),
    ]
    assert all(c.bias is None for c in convs)
    assert projector(torch.randn(2, 12, 4, 4)).shape == (2, 32, 4, 4)
    # a larger student map is pooled to the teacher's size before projection
    assert SimKDProjector((12, 8, 8), (32, 4, 4))(torch.randn(2, 12, 8, 8)).shape == (2, 32, 4, 4)


def test_l2_loss_hand_value_and_zero_for_equal_maps():
    a, b = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(2, 3, 2, 2))
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert simkd_loss(ta, tb).item() == pytest.approx(((a - b) ** 2).mean())
    per_sample = simkd_l2_per_sample(ta, tb).numpy()
    assert per_sample == pytest.approx([((a[i] - b[i]) ** 2).mean() for i in range(2)])
    assert simkd_loss(ta, ta.clone()).item() == 0.0


def test_cosine_loss_hand_value_and_scale_invariance():
    a, b = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(2, 3, 2, 2))
    expected = [1 - (a[i].ravel() @ b[i].ravel()) / np.linalg.norm(a[i]) / np.linalg.norm(b[i]) for i in range(2)]
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert simkd_cosine_per_sample(ta, tb).numpy() == pytest.approx(expected)
    assert simkd_cosine_per_sample(ta * 4.0, tb * 0.25).numpy() == pytest.approx(expected)
    assert simkd_cosine_per_sample(ta, ta * 3.0).numpy() == pytest.approx([0.0, 0.0], abs=1e-12)


def test_kl_loss_hand_value():
    zs, zt, temperature = RNG.normal(size=(2, 4)), RNG.normal(size=(2, 4)), 4.0
    softmax = lambda z: np.exp(z / temperature) / np.exp(z / temperature).sum()  # noqa: E731
    expected = [temperature**2 * (softmax(zt[i]) * np.log(softmax(zt[i]) / softmax(zs[i]))).sum() for i in range(2)]
    assert simkd_kl_per_sample(torch.tensor(zs), torch.tensor(zt), temperature).numpy() == pytest.approx(expected)


def test_default_config_follows_the_simkd_script():
    config = METHODS.get("simkd").config_class()
    assert (config.factor, config.loss, config.projectors, config.ce_weight, config.kd_weight, config.weight) == (
        2,
        "l2",
        "final",
        0.0,
        0.0,
        1.0,
    )
    assert METHODS.get("simkd").traits.max_teachers is None


def test_training_loss_is_mse_between_projected_student_and_teacher_map():
    method = build().eval()
    b = batch()
    with torch.no_grad():
        output = method.training_step(b)
        projected = method.projectors[0](method.student.forward_features(b.inputs).final_map)
        target = method.teacher.forward_features(b.inputs).final_map
    assert set(output.losses) == {"simkd"}
    assert output.losses["simkd"].item() == pytest.approx(nn.MSELoss()(projected, target).item(), rel=1e-6)


def test_teacher_map_is_pooled_when_larger():
    method = build(student=STUDENT_SMALL_MAP).eval()  # student 2x2, teacher 4x4
    b = batch()
    with torch.no_grad():
        output = method.training_step(b)
        projected = method.projectors[0](method.student.forward_features(b.inputs).final_map)
        target = torch.nn.functional.adaptive_avg_pool2d(method.teacher.forward_features(b.inputs).final_map, (2, 2))
    assert output.losses["simkd"].item() == pytest.approx(nn.MSELoss()(projected, target).item(), rel=1e-6)


# ----------------------------------------------------------------------------- inference and export


def test_logits_go_through_the_projector_and_the_teachers_head():
    method = build().eval()
    b = batch()
    with torch.no_grad():
        expected = method.teacher.classifier_head()(
            method.projectors[0](method.student.forward_features(b.inputs).final_map)
        )
        assert torch.equal(method(b.inputs), expected)
        assert torch.equal(method.training_step(b).logits, expected)


@pytest.mark.parametrize("student", [STUDENT, STUDENT_SMALL_MAP])
def test_exported_student_reproduces_the_training_logits(student):
    method = build(student=student)
    # one training step so BN statistics and weights move away from their initial values
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
    method.train()
    output = method.training_step(batch(seed=3))
    output.loss.backward()
    optimizer.step()
    method.eval()
    b = batch(seed=4)
    with torch.no_grad():
        in_training = method.training_step(b).logits
        exported = method.student_for_export().eval()
        assert isinstance(exported, SimKDStudent)
        assert torch.equal(exported(b.inputs), in_training)
        assert torch.equal(method(b.inputs), in_training)
        features = exported.forward_features(b.inputs)
        assert torch.equal(features.logits, in_training)
        assert torch.equal(exported.classifier_head()(features.stages[-1]), in_training)
        # a freshly built export (different random weights) loaded with the state dict
        fresh = build(student=student, seed=123).student_for_export()
        assert not torch.equal(fresh.eval()(b.inputs), in_training)
        fresh.load_state_dict(exported.state_dict())
        assert torch.equal(fresh.eval()(b.inputs), in_training)
    assert any(k.startswith("heads.") for k in exported.state_dict()), "the reused head travels with the export"
    assert all(not p.requires_grad for p in exported.heads.parameters()), "the reused head stays frozen"


def test_student_classifier_is_unused():
    method = build()
    method.train()
    method.training_step(batch()).loss.backward()
    assert all(p.grad is None for p in method.student.classifier_head().parameters())
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.projectors.parameters())


# ----------------------------------------------------------------------------- variants


@pytest.mark.parametrize("loss", ["l2", "cosine", "kl"])
@pytest.mark.parametrize("projectors", ["final", "multi", "all"])
def test_variants_train(loss, projectors):
    method = build(student=STUDENT, teachers=(TEACHER_3,), loss=loss, projectors=projectors)
    method.train()
    output = method.training_step(batch())
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert all(p.grad is not None for p in method.projectors.parameters())
    assert all(p.grad is not None for p in method.extra_projectors.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())


def test_multi_and_all_projector_placement_and_weights():
    multi = build(student=TEACHER_3, teachers=(TEACHER_3,), projectors="multi")  # 3 student stages
    assert multi.extra_pairs == [(1, 1)] and multi.final_weight == pytest.approx(2 / 3)
    assert multi.extra_weights == [pytest.approx(1 / 3)]
    every = build(student=STUDENT, teachers=(TEACHER_3,), projectors="all")  # 2 student stages, 3 teacher stages
    assert every.extra_pairs == [(0, 1)] and every.final_weight == 0.5 and every.extra_weights == [0.5]
    # the extra projector maps student stage 0 (8x8x8) to teacher stage 1 (16x4x4)
    assert every.extra_projectors[0](torch.randn(2, 8, 8, 8)).shape == (2, 16, 4, 4)


def test_multi_projector_loss_is_the_weighted_sum():
    method = build(student=TEACHER_3, teachers=(TEACHER_3,), projectors="multi").eval()
    b = batch()
    with torch.no_grad():
        sf = method.student.forward_features(b.inputs)
        tf = method.teacher.forward_features(b.inputs)
        final = nn.MSELoss()(method.projectors[0](sf.final_map), tf.final_map)
        middle = nn.MSELoss()(method.extra_projectors[0](sf.stages[1]), tf.stages[1])
        assert method.training_step(b).losses["simkd"].item() == pytest.approx(
            (2 / 3 * final + 1 / 3 * middle).item(), rel=1e-6
        )


def test_invalid_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="loss"):
        build(loss="l1")
    with pytest.raises(ConfigError, match="projectors"):
        build(projectors="some")


# ----------------------------------------------------------------------------- label filtering


def test_label_filter_drops_exactly_the_misclassified_samples():
    method = build(label_filter=True).eval()
    b = batch(size=8)
    with torch.no_grad():
        predicted = method.teacher(b.inputs).argmax(1)
    wrong = torch.tensor([False, True, False, False, True, True, False, False])
    b.targets = torch.where(wrong, (predicted + 1) % NUM_CLASSES, predicted)
    with torch.no_grad():
        filtered = method.training_step(b).losses["simkd"]
    assert method.last_kept_fraction == 5 / 8
    assert (method.kept_samples, method.seen_samples) == (5, 8)
    kept = ~wrong
    unfiltered = build(label_filter=False).eval()
    unfiltered.load_state_dict(method.state_dict())
    subset = Batch(inputs=b.inputs[kept], targets=b.targets[kept], indices=b.indices[kept])
    with torch.no_grad():
        assert filtered.item() == pytest.approx(unfiltered.training_step(subset).losses["simkd"].item(), rel=1e-6)
    # the dropped samples get no gradient: perturbing them leaves the loss unchanged
    perturbed = Batch(inputs=b.inputs.clone(), targets=b.targets, indices=b.indices)
    perturbed.inputs[wrong] += 10.0
    # (their teacher predictions may change, so re-target them to stay wrong)
    with torch.no_grad():
        new_predicted = method.teacher(perturbed.inputs).argmax(1)
        perturbed.targets = torch.where(wrong, (new_predicted + 1) % NUM_CLASSES, b.targets)
        assert method.training_step(perturbed).losses["simkd"].item() == pytest.approx(filtered.item(), rel=1e-6)
    method.on_epoch_start(1, 2)
    assert (method.kept_samples, method.seen_samples) == (0, 0)


def test_label_filter_with_no_correct_sample_gives_zero_loss():
    method = build(label_filter=True).eval()
    b = batch()
    with torch.no_grad():
        b.targets = (method.teacher(b.inputs).argmax(1) + 1) % NUM_CLASSES
        assert method.training_step(b).losses["simkd"].item() == 0.0
    assert method.last_kept_fraction == 0.0


# ----------------------------------------------------------------------------- several teachers


def test_multi_teacher_per_teacher_projectors_average_the_heads():
    method = build(teachers=(TEACHER, TEACHER_3)).eval()  # final maps 32x4x4 and 24x2x2
    assert len(method.projectors) == 2
    b = batch()
    with torch.no_grad():
        f = method.student.forward_features(b.inputs).final_map
        expected = (
            method.teachers[0].classifier_head()(method.projectors[0](f))
            + method.teachers[1].classifier_head()(method.projectors[1](f))
        ) / 2
        assert torch.allclose(method(b.inputs), expected, atol=1e-6)
        assert torch.equal(method.student_for_export().eval()(b.inputs), method.training_step(b).logits)
    method.train()
    method.training_step(b).loss.backward()
    assert all(p.grad is not None for p in method.projectors.parameters())
    assert all(p.grad is None for p in method.teachers.parameters())


def test_multi_teacher_average_mode():
    method = build(teachers=(TEACHER, TEACHER), multi_teacher="average").eval()
    assert len(method.projectors) == 1
    b = batch()
    with torch.no_grad():
        f = method.projectors[0](method.student.forward_features(b.inputs).final_map)
        maps = [t.forward_features(b.inputs).final_map for t in method.teachers]
        heads = [t.classifier_head()(f) for t in method.teachers]
        output = method.training_step(b)
    assert torch.allclose(output.logits, (heads[0] + heads[1]) / 2, atol=1e-6)
    assert output.losses["simkd"].item() == pytest.approx(nn.MSELoss()(f, (maps[0] + maps[1]) / 2).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="equal teacher final maps"):
        build(teachers=(TEACHER, TEACHER_3), multi_teacher="average")


# ----------------------------------------------------------------------------- accounting


def _conv_bn(c_in, c_out, k):
    return c_in * c_out * k * k + 2 * c_out


def test_parameter_report_and_pruning_ratio_by_hand():
    method = build()
    teacher = _conv_bn(1, 16, 3) + _conv_bn(16, 32, 3) + 32 * NUM_CLASSES + NUM_CLASSES
    student = _conv_bn(1, 8, 3) + _conv_bn(8, 12, 3) + 12 * NUM_CLASSES + NUM_CLASSES
    projector = _conv_bn(12, 16, 1) + _conv_bn(16, 16, 3) + _conv_bn(16, 32, 1)
    teacher_classifier, student_classifier = 32 * NUM_CLASSES + NUM_CLASSES, 12 * NUM_CLASSES + NUM_CLASSES
    report = parameter_report(method)
    assert report["params_student"] == student
    assert report["params_teachers"] == [teacher]
    assert report["params_projector"] == projector == report["params_method_modules"]
    assert report["params_classifier_delta"] == teacher_classifier - student_classifier
    assert report["params_deployed"] == student + projector + teacher_classifier - student_classifier
    assert report["pruning_ratio"] == pytest.approx(
        1 - (student + projector + teacher_classifier - student_classifier) / teacher
    )
    # the deployed count is what the export really uses: everything but the student's own classifier
    exported = method.student_for_export()
    assert report["params_deployed"] == sum(p.numel() for p in exported.parameters()) - student_classifier


def test_parameter_report_for_a_plain_method_and_crd_buffers():
    torch.manual_seed(0)
    info = DataInfo(num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, num_train=32)
    teacher = build_model(TEACHER, NUM_CLASSES, INPUT_SHAPE)
    student = build_model(STUDENT, NUM_CLASSES, INPUT_SHAPE)
    crd_cls = METHODS.get("crd")
    report = parameter_report(crd_cls(student, [teacher], crd_cls.config_class(embed_dim=16, num_negatives=8), info))
    assert report["params_method_modules"] == (12 * 16 + 16) + (32 * 16 + 16)
    assert report["buffer_elements_method"] == 2 * 32 * 16 + 32 + 2
    assert report["pruning_ratio"] == pytest.approx(1 - report["params_student"] / report["params_teachers"][0])
    assert "params_projector" not in report


def test_pruning_ratio_resnet8x4_from_resnet32x4_matches_the_paper():
    """Paper Table S.10: student 83.40%, SimKD 80.52% (our projector count gives 80.54%)."""
    info = DataInfo(num_classes=100, input_shape=(3, 32, 32), num_train=50000)
    teacher = build_model(ModelConfig(name="resnet32x4"), 100, (3, 32, 32))
    student = build_model(ModelConfig(name="resnet8x4"), 100, (3, 32, 32))
    simkd_cls = METHODS.get("simkd")
    report = parameter_report(simkd_cls(student, [teacher], simkd_cls.config_class(), info))
    assert 1 - report["params_student"] / report["params_teachers"][0] == pytest.approx(0.8340, abs=5e-4)
    assert report["pruning_ratio"] == pytest.approx(0.8052, abs=5e-4)


def test_label_filter_kept_fraction_reaches_the_metrics(tmp_path, digits_teacher):
    """A real SimKD run with label filtering logs the fraction of samples the teacher got right."""
    from kdistill.engine.loop import fit
    from kdistill.track import read_metrics

    from helpers import digits_config

    config = digits_config(
        tmp_path,
        "simkd",
        "method.name=simkd",
        "method.label_filter=true",
        f"teacher.checkpoint={digits_teacher}",
        "student.name=cnn",
        "student.kwargs={channels: [8, 16], hidden: 32, padding: 1}",
        "train.epochs=1",
    )
    summary = fit(config, log=lambda _: None)
    kept = read_metrics(tmp_path / "simkd")[0]["train_kept_fraction"]
    assert 0.8 < kept <= 1.0  # the digits teacher is > 85% accurate on its own training data
    assert summary["params_deployed"] == summary["student_parameters"]
    assert 0.0 < summary["pruning_ratio"] < 1.0


# ----------------------------------------------------------------------------- projector layouts (paper Table 5)


@pytest.mark.parametrize(
    ("layout", "convs", "expected"),
    [
        # (12, 4, 4) -> (32, 4, 4), r = 2: mid width 16; each conv is followed by BN (2 parameters per channel)
        ("1x1", [(12, 32, 1, 1)], 12 * 32 + 2 * 32),
        ("1x1-1x1", [(12, 16, 1, 1), (16, 32, 1, 1)], (12 * 16 + 2 * 16) + (16 * 32 + 2 * 32)),
        (
            "1x1-dw3x3-1x1",
            [(12, 16, 1, 1), (16, 16, 3, 16), (16, 32, 1, 1)],
            (12 * 16 + 2 * 16) + (16 * 9 + 2 * 16) + (16 * 32 + 2 * 32),
        ),
        (
            "1x1-3x3-1x1",
            [(12, 16, 1, 1), (16, 16, 3, 1), (16, 32, 1, 1)],
            (12 * 16 + 2 * 16) + (16 * 16 * 9 + 2 * 16) + (16 * 32 + 2 * 32),
        ),
    ],
)
def test_projector_layouts_and_their_parameter_counts(layout, convs, expected):
    projector = SimKDProjector((12, 4, 4), (32, 4, 4), factor=2, layout=layout)
    layers = list(projector.transfer)
    assert [type(layer) for layer in layers] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * len(convs)
    found = [(c.in_channels, c.out_channels, c.kernel_size[0], c.groups) for c in layers[::3]]
    assert found == convs
    assert all(c.bias is None for c in layers[::3])
    assert sum(p.numel() for p in projector.parameters()) == expected
    assert projector(torch.randn(2, 12, 4, 4)).shape == (2, 32, 4, 4)
    method = build(projector=layout)
    assert parameter_report(method)["params_projector"] == expected
    method.train()
    method.training_step(batch()).loss.backward()
    assert all(p.grad is not None for p in method.projectors.parameters())


def test_table5_projector_counts_for_resnet32x4_to_resnet8x4():
    """C_s = C_t = 256, r = 2 (mid 128): the four projectors of Table 5, counted by hand."""
    hand = {
        "1x1": 256 * 256 + 2 * 256,
        "1x1-1x1": (256 * 128 + 2 * 128) + (128 * 256 + 2 * 256),
        "1x1-dw3x3-1x1": (256 * 128 + 2 * 128) + (128 * 9 + 2 * 128) + (128 * 256 + 2 * 256),
        "1x1-3x3-1x1": (256 * 128 + 2 * 128) + (128 * 128 * 9 + 2 * 128) + (128 * 256 + 2 * 256),
    }
    for layout, expected in hand.items():
        projector = SimKDProjector((256, 8, 8), (256, 8, 8), factor=2, layout=layout)
        assert sum(p.numel() for p in projector.parameters()) == expected, layout


def test_projector_layout_is_validated_in_problems():
    config_cls = METHODS.get("simkd").config_class
    assert config_cls().projector == "1x1-3x3-1x1"
    problems = config_cls(projector="3x3").problems()
    assert problems == ["projector='3x3'; valid: 1x1, 1x1-1x1, 1x1-dw3x3-1x1, 1x1-3x3-1x1"]
    with pytest.raises(ConfigError, match="projector='3x3'; valid: 1x1, 1x1-1x1"):
        build(projector="3x3")


# ----------------------------------------------------------------------------- reused teacher stages (Table S.10)


def test_reused_teacher_stage_chain_and_loss():
    # student stages 8x8x8, 16x4x4, 24x2x2 cut after stage 2; teacher stages 8x8x8, 16x4x4, 24x2x2: stage 3 reused
    method = build(student=TEACHER_3, teachers=(TEACHER_3,), seed=1, reuse_teacher_stages=1).eval()
    b = batch()
    with torch.no_grad():
        student_map = method.student.stages[1](method.student.stages[0](b.inputs))  # (B, 16, 4, 4)
        projected = method.projectors[0](student_map)  # (B, 16, 4, 4)
        expected_logits = method.teacher.head(method.teacher.stages[2](projected))
        target = method.teacher.forward_features(b.inputs).stages[1]
        output = method.training_step(b)
        assert torch.equal(output.logits, expected_logits)
        assert torch.equal(method(b.inputs), expected_logits)
        assert output.losses["simkd"].item() == pytest.approx(nn.MSELoss()(projected, target).item(), rel=1e-6)
        exported = method.student_for_export()
        assert torch.equal(exported(b.inputs), expected_logits)
        assert [tuple(s.shape[1:]) for s in exported.forward_features(b.inputs).stages] == [
            (8, 8, 8),
            (16, 4, 4),
            (16, 4, 4),
            (24, 2, 2),
        ]
    method.train()
    method.training_step(b).loss.backward()
    assert all(p.grad is not None for p in method.projectors.parameters())
    assert all(p.grad is not None for p in method.student.stages[:2].parameters())
    assert all(p.grad is None for p in method.student.stages[2].parameters()), "the dropped student stage is unused"
    assert all(p.grad is None for p in method.teacher.parameters())


def test_reused_teacher_stages_parameter_count_by_hand():
    method = build(student=TEACHER_3, teachers=(TEACHER_3,), reuse_teacher_stages=1)
    kept_student = _conv_bn(1, 8, 3) + _conv_bn(8, 16, 3)
    projector = _conv_bn(16, 8, 1) + _conv_bn(8, 8, 3) + _conv_bn(8, 16, 1)  # 16 -> 16, r = 2
    reused_teacher = _conv_bn(16, 24, 3)
    head = 24 * NUM_CLASSES + NUM_CLASSES
    teacher = _conv_bn(1, 8, 3) + _conv_bn(8, 16, 3) + _conv_bn(16, 24, 3) + head
    report = parameter_report(method)
    assert report["params_projector"] == projector
    assert report["params_reused_teacher_stages"] == reused_teacher
    assert report["params_deployed"] == kept_student + projector + reused_teacher + head
    assert report["params_deployed"] == sum(p.numel() for p in method.student_for_export().parameters())
    assert report["pruning_ratio"] == pytest.approx(1 - report["params_deployed"] / teacher)
    # the exported chain reloads from its own state dict
    fresh = build(student=TEACHER_3, teachers=(TEACHER_3,), seed=5, reuse_teacher_stages=1).student_for_export()
    fresh.load_state_dict(method.student_for_export().state_dict())
    b = batch()
    with torch.no_grad():
        assert torch.equal(fresh.eval()(b.inputs), method.eval()(b.inputs))


def test_simkd_plus_pruning_ratio_resnet32x4_to_resnet8x4():
    """Table S.10: SimKD+ 19.21%. Our reading (resnet8x4's stages 1-2 -> projector 128 -> 128 -> resnet32x4's
    stage 3 + classifier) counts 58,656 + 230,144 + 53,760 + 5,641,728 + 25,700 = 6,009,988 parameters: 19.15%."""
    info = DataInfo(num_classes=100, input_shape=(3, 32, 32), num_train=50000)
    teacher = build_model(ModelConfig(name="resnet32x4"), 100, (3, 32, 32))
    student = build_model(ModelConfig(name="resnet8x4"), 100, (3, 32, 32))
    simkd_cls = METHODS.get("simkd")
    report = parameter_report(simkd_cls(student, [teacher], simkd_cls.config_class(reuse_teacher_stages=1), info))
    assert report["params_deployed"] == 6_009_988
    assert report["params_reused_teacher_stages"] == 5_641_728
    assert report["pruning_ratio"] == pytest.approx(0.1921, abs=1e-3)


def test_reused_teacher_stages_are_checked():
    with pytest.raises(ConfigError, match="below the student's"):
        build(reuse_teacher_stages=2)  # the student has 2 stages
    with pytest.raises(ConfigError, match="single teacher"):
        build(teachers=(TEACHER, TEACHER), reuse_teacher_stages=1)
    with pytest.raises(ConfigError, match="projectors=final"):
        build(student=TEACHER_3, teachers=(TEACHER_3,), reuse_teacher_stages=1, projectors="multi")
    mlp = ModelConfig(name="mlp", kwargs={"hidden": [8, 8]})
    with pytest.raises(ConfigError):
        build(student=mlp, reuse_teacher_stages=1)


# ----------------------------------------------------------------------------- sequential (Table 4)


def test_sequential_trains_only_a_fresh_classifier_on_the_frozen_encoder():
    torch.manual_seed(0)
    info = DataInfo(num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, num_train=32)
    method_cls = METHODS.get("simkd_sequential")
    student = build_model(STUDENT, NUM_CLASSES, INPUT_SHAPE)
    encoder_before = {k: v.clone() for k, v in student.state_dict().items() if not k.startswith("head.")}
    classifier_before = student.head.fc.weight.detach().clone()
    method = method_cls(student, [], method_cls.config_class(), info)
    assert not torch.equal(student.head.fc.weight, classifier_before), "the classifier is re-initialised"
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in student.head.parameters()}
    method.train()
    assert not method.student.stages.training, "the frozen encoder keeps its BN statistics"
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.5)
    b = batch(size=16)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        output = method.training_step(b)
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        expected = nn.functional.cross_entropy(method.student.eval()(b.inputs), b.targets)
    assert set(output.losses) == {"ce"}
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in encoder_before.items()), "the encoder moved"
    assert method.student_for_export() is student
    method.eval()
    assert method.training_step(b).loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_sequential_on_a_digits_simkd_run(tmp_path, digits_teacher):
    """SimKD on digits, then Table 4's sequential step loads its student encoder (student.pt, key ``student.``),
    keeps it frozen and trains a new classifier well above chance (10%)."""
    from kdistill.engine.loop import fit
    from kdistill.models.loading import extract_state_dict, read_checkpoint

    from helpers import digits_config

    cnn = ["student.name=cnn", "student.kwargs={channels: [8, 16], hidden: 32, padding: 1}"]
    simkd = digits_config(tmp_path, "simkd", "method.name=simkd", f"teacher.checkpoint={digits_teacher}", *cnn)
    simkd_summary = fit(simkd, log=lambda _: None)
    export = Path(simkd_summary["run_dir"]) / "student.pt"
    sequential = digits_config(
        tmp_path,
        "sequential",
        "method.name=simkd_sequential",
        *cnn,
        f"student.checkpoint={export}",
        "student.checkpoint_key=student.",
        "train.epochs=4",
    )
    summary = fit(sequential, log=lambda _: None)
    assert summary["final_test_acc"] > 50.0, summary
    encoder = extract_state_dict(read_checkpoint(export), "student.")
    trained = extract_state_dict(read_checkpoint(Path(summary["run_dir"]) / "student.pt"))
    assert all(torch.equal(trained[k], v) for k, v in encoder.items() if not k.startswith("head."))
    assert not torch.equal(trained["head.fc.weight"], encoder["head.fc.weight"])
