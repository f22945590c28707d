"""SimKD: projector layout, losses, the exported student, variants, label filtering, parameter accounting."""

from __future__ import annotations

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

RNG = np.random.default_rng(1)
NUM_CLASSES = 5
INPUT_SHAPE = (1, 16, 16)
TEACHER = ModelConfig(
    name="cnn", kwargs={"channels": [16, 32], "padding": 1, "batch_norm": True, "head": "avg"}
)  # 16x8x8, 32x4x4
STUDENT = ModelConfig(
    name="cnn", kwargs={"channels": [8, 12], "padding": 1, "batch_norm": True, "head": "avg"}
)  # 8x8x8, 12x4x4
STUDENT_SMALL_MAP = ModelConfig(
    name="cnn", kwargs={"channels": [8, 12], "padding": 0, "batch_norm": True, "head": "avg"}
)  # 12x2x2
TEACHER_3 = ModelConfig(
    name="cnn", kwargs={"channels": [8, 16, 24], "padding": 1, "batch_norm": True, "head": "avg"}
)  # 8, 4, 2


def build(student=STUDENT, teachers=(TEACHER,), seed=0, **overrides):
    torch.manual_seed(seed)
    info = DataInfo(num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, num_train=32)
    method_cls = METHODS.get("simkd")
    teacher_models = [build_model(t, NUM_CLASSES, INPUT_SHAPE) for t in teachers]
    return method_cls(
        build_model(student, NUM_CLASSES, INPUT_SHAPE), teacher_models, method_cls.config_class(**overrides), info
    )


def batch(size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return Batch(
        inputs=torch.randn(size, *INPUT_SHAPE, generator=generator),
        targets=torch.randint(0, NUM_CLASSES, (size,), generator=generator),
        indices=torch.arange(size),
    )


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
