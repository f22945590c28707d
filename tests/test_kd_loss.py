"""Hinton KD loss: hand-computed value and its properties."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.methods.kd import ensemble_kd_loss, hard_label_loss, kd_loss


def test_kd_loss_matches_a_hand_computed_value():
    student = torch.tensor([[1.0, 2.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0]])
    temperature = 2.0

    def softmax(values):
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]

    p_teacher, p_student = softmax([2.0, 0.0, 1.0]), softmax([1.0, 2.0, 0.0])
    expected = temperature**2 * sum(t * math.log(t / s) for t, s in zip(p_teacher, p_student))
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(8, 10)
    assert kd_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, torch.randn(8, 10), 4.0).item() > 0


def test_kd_loss_has_the_t_squared_factor():
    # Scaling both logits by T and using temperature T gives the same probabilities as T = 1,
    # so the loss differs exactly by the T^2 factor.
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    for temperature in (2.0, 4.0, 10.0):
        scaled = kd_loss(student * temperature, teacher * temperature, temperature)
        assert scaled.item() == pytest.approx(temperature**2 * kd_loss(student, teacher, 1.0).item(), rel=1e-5)


def test_kd_loss_averages_over_the_batch():
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    per_sample = [kd_loss(student[i : i + 1], teacher[i : i + 1], 3.0) for i in range(6)]
    assert kd_loss(student, teacher, 3.0).item() == pytest.approx(torch.stack(per_sample).mean().item(), rel=1e-5)


def test_ensemble_kd_averages_teacher_probabilities_at_the_temperature():
    student, first, second = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    temperature = 4.0
    target = (torch.softmax(first / temperature, 1) + torch.softmax(second / temperature, 1)) / 2
    log_student = torch.log_softmax(student / temperature, 1)
    expected = temperature**2 * (target * (target.log() - log_student)).sum(1).mean()
    assert ensemble_kd_loss(student, [first, second], temperature).item() == pytest.approx(expected.item(), rel=1e-5)
    assert ensemble_kd_loss(student, [first, first], temperature).item() == pytest.approx(
        kd_loss(student, first, temperature).item(), rel=1e-5
    )


def test_multi_teacher_kd_method_uses_the_ensemble_loss():
    from kdistill.config import ModelConfig
    from kdistill.contracts import Batch, DataInfo
    from kdistill.methods.kd import KD, KDConfig
    from kdistill.models import build_model

    torch.manual_seed(0)
    info = DataInfo(num_classes=4, input_shape=(1, 6, 6), num_train=8)
    spec = ModelConfig(name="mlp", kwargs={"hidden": [8]})
    teachers = [build_model(spec, 4, info.input_shape) for _ in range(2)]
    method = KD(build_model(spec, 4, info.input_shape), teachers, KDConfig(ce_weight=0.0, kd_weight=1.0), info)
    assert not method.traits.teacher_logits_only
    batch = Batch(inputs=torch.randn(5, 1, 6, 6), targets=torch.zeros(5, dtype=torch.long), indices=torch.arange(5))
    output = method.training_step(batch)
    expected = ensemble_kd_loss(method.student(batch.inputs), [t(batch.inputs) for t in teachers], 4.0)
    assert output.losses["kd"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_hard_label_loss_is_cross_entropy_with_the_teachers_argmax():
    student = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [0.1, 0.2, 0.0]])  # argmax 0 and 1
    by_hand = [-(1.0 - math.log(math.exp(1) + math.exp(2) + 1)), -(0.0 - math.log(2 + math.exp(3)))]
    assert hard_label_loss(student, teacher).item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    # only the teacher's ranking matters: any temperature or shift of its logits gives the same loss
    same = hard_label_loss(student, teacher).item()
    assert hard_label_loss(student, teacher / 7.0 + 3.0).item() == pytest.approx(same)


def test_kd_with_hard_labels_trains_on_the_teachers_argmax_where_labels_are_missing():
    from kdistill.config import ModelConfig
    from kdistill.contracts import Batch, DataInfo
    from kdistill.methods.ce import cross_entropy_loss
    from kdistill.methods.kd import KD, KDConfig
    from kdistill.models import build_model

    torch.manual_seed(0)
    info = DataInfo(num_classes=4, input_shape=(1, 6, 6), num_train=8)
    spec = ModelConfig(name="mlp", kwargs={"hidden": [8]})
    teacher = build_model(spec, 4, info.input_shape)
    config = KDConfig(hard_labels=True, ce_weight=0.3, kd_weight=0.7, temperature=9.0)
    method = KD(build_model(spec, 4, info.input_shape), [teacher], config, info)
    targets = torch.tensor([2, -1, -1, 0, -1])  # three unlabelled samples (data.labelled)
    batch = Batch(inputs=torch.randn(5, 1, 6, 6), targets=targets, indices=torch.arange(5))
    output = method.training_step(batch)
    logits, teacher_logits = method.student(batch.inputs), teacher(batch.inputs)
    pseudo = torch.nn.functional.cross_entropy(logits, teacher_logits.argmax(1))  # every sample, T unused
    assert output.losses["kd"].item() == pytest.approx(0.7 * pseudo.item(), rel=1e-5)
    assert output.losses["ce"].item() == pytest.approx(0.3 * cross_entropy_loss(logits, targets).item(), rel=1e-5)
    assert "hard_labels and logit_standardization" in " ".join(
        KDConfig(hard_labels=True, logit_standardization=True).problems()
    )
