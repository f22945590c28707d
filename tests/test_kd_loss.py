"""Hinton KD loss: hand-computed value and its properties."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.methods.kd import kd_loss


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
