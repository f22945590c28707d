"""AEKD / AEKD-F: the min-norm teacher weights (hand-solved, against the reference's one-class SVM), the KD
gradient's closed form, the weighted losses and the hint term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.svm import OneClassSVM

from kdistill.contracts import ConfigError
from kdistill.methods import METHODS
from kdistill.methods.aekd import aekd_loss, kd_logit_gradient, min_norm_weights
from kdistill.methods.fitnet import hint_loss
from kdistill.methods.kd import kd_loss

from helpers import TINY_CLASSES as NUM_CLASSES
from helpers import TINY_TEACHER as TEACHER
from helpers import build_tiny_method
from helpers import tiny_batch as batch


def build(num_teachers=2, seed=0, **overrides):
    return build_tiny_method("aekd", teachers=(TEACHER,) * num_teachers, seed=seed, **overrides)


# ----------------------------------------------------------------------------- the min-norm weights


def test_two_teachers_hand_solved():
    """g1 = (1, 0), g2 = (0, 2): ||a g1 + (1 - a) g2||^2 = a^2 + 4 (1 - a)^2 is least at a = 4/5."""
    gradients = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert min_norm_weights(gradients, max_weight=1.0).numpy() == pytest.approx([0.8, 0.2], abs=1e-6)
    # the cap C = 0.6 binds: a in [0.4, 0.6]
    assert min_norm_weights(gradients, max_weight=0.6).numpy() == pytest.approx([0.6, 0.4], abs=1e-6)
    # normalised: unit vectors give a = 1/2, then a_m / ||g_m|| renormalised: (1/2, 1/4) -> (2/3, 1/3)
    weights = min_norm_weights(gradients, max_weight=1.0, normalize=True).numpy()
    assert weights == pytest.approx([2 / 3, 1 / 3], abs=1e-6)


def test_two_teachers_general_closed_form():
    rng = np.random.default_rng(3)
    for _ in range(5):
        g1, g2 = rng.normal(size=7), rng.normal(size=7)
        a = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)
        found = min_norm_weights(torch.tensor(np.stack([g1, g2])), max_weight=1.0).numpy()
        assert found == pytest.approx([a, 1 - a], abs=1e-6)


def test_identical_teachers_get_equal_weights():
    g = torch.randn(10)
    for count in (2, 3, 5):
        gradients = g.expand(count, 10).clone()
        for normalize in (False, True):
            weights = min_norm_weights(gradients, max_weight=0.6, normalize=normalize)
            assert weights.numpy() == pytest.approx([1 / count] * count, abs=1e-6)


def test_weights_sum_to_one_respect_the_cap_and_are_optimal():
    rng = np.random.default_rng(0)
    gradients = rng.normal(size=(4, 6))
    weights = min_norm_weights(torch.tensor(gradients), max_weight=0.4).numpy()
    assert weights.sum() == pytest.approx(1.0) and (weights >= -1e-9).all() and (weights <= 0.4 + 1e-9).all()
    best = np.linalg.norm(weights @ gradients)
    for _ in range(200):  # no feasible point does better
        other = rng.dirichlet(np.ones(4))
        if (other <= 0.4).all():
            assert np.linalg.norm(other @ gradients) >= best - 1e-9


def reference_svm_weights(gradients: np.ndarray, tolerance: float) -> np.ndarray:
    """AnTuo1998/AE-KD helper/optimization.py find_optimal_svm (is_norm False), written out: a one-class SVM on the
    Gram matrix with nu = 1 / (C M) clipped to [1/M, 1], weights = dual_coef / (M nu) on the support vectors."""
    count = gradients.shape[0]
    nu = min(max(1.0 / (tolerance * count), 1.0 / count), 1.0)
    svm = OneClassSVM(kernel="precomputed", nu=nu, tol=1e-10).fit(gradients @ gradients.T)
    weights = np.zeros(count)
    weights[svm.support_] = svm.dual_coef_[0] / (count * nu)
    return weights


@pytest.mark.parametrize("tolerance", [0.6, 1.0])
def test_weights_match_the_reference_one_class_svm(tolerance):
    rng = np.random.default_rng(7)
    gradients = rng.normal(size=(3, 5)) + np.array([1.0, 0, 0, 0, 0])
    expected = reference_svm_weights(gradients, tolerance)
    found = min_norm_weights(torch.tensor(gradients), max_weight=tolerance).numpy()
    assert found == pytest.approx(expected, abs=1e-4)


# ----------------------------------------------------------------------------- losses


def test_kd_gradient_closed_form_matches_autograd():
    student = torch.randn(6, NUM_CLASSES, requires_grad=True)
    teacher = torch.randn(6, NUM_CLASSES)
    (autograd,) = torch.autograd.grad(kd_loss(student, teacher, 4.0), student)
    assert torch.allclose(kd_logit_gradient(student.detach(), teacher, 4.0), autograd, atol=1e-7)


def test_weighted_loss_and_zero_at_identity():
    losses = torch.tensor([2.0, 3.0], requires_grad=True)
    weights = torch.tensor([0.25, 0.75], requires_grad=True)
    total = aekd_loss(losses, weights)
    assert total.item() == pytest.approx(0.25 * 2 + 0.75 * 3)
    total.backward()
    assert weights.grad is None and torch.allclose(losses.grad, torch.tensor([0.25, 0.75]))
    logits = torch.randn(4, NUM_CLASSES)
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_training_step_weights_the_teachers_kd_losses():
    method = build(num_teachers=3).eval()
    b = batch()
    with torch.no_grad():
        output = method.training_step(b)
        student_logits = method.student(b.inputs)
        teacher_logits = [t(b.inputs) for t in method.teachers]
    gradients = torch.stack([kd_logit_gradient(student_logits, t, 4.0).mean(0) for t in teacher_logits])
    weights = min_norm_weights(gradients, 0.6)
    assert torch.allclose(method.last_weights, weights)
    kd = sum(w * kd_loss(student_logits, t, 4.0) for w, t in zip(weights, teacher_logits))
    assert output.losses["kd"].item() == pytest.approx(0.9 * kd.item(), rel=1e-5)
    ce = torch.nn.functional.cross_entropy(student_logits, b.targets)
    assert output.losses["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert set(output.losses) == {"ce", "kd"}
    assert method.epoch_metrics().keys() == {"teacher_weight_0", "teacher_weight_1", "teacher_weight_2"}


def test_identical_teachers_train_as_plain_kd():
    method = build(num_teachers=2)
    method.teachers[1].load_state_dict(method.teachers[0].state_dict())
    method.eval()
    b = batch()
    with torch.no_grad():
        output = method.training_step(b)
        expected = kd_loss(method.student(b.inputs), method.teachers[0](b.inputs), 4.0)
    assert method.last_weights.numpy() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert output.losses["kd"].item() == pytest.approx(0.9 * expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------- AEKD-F


def test_aekd_f_hint_term_after_the_warmup_epoch():
    method = build(num_teachers=2, feature_weight=100.0)
    assert method.traits.kind == "feature" and len(method.regressors) == 2
    method.train()
    b = batch()
    assert "hint" not in method.training_step(b).losses  # epoch 0: no hints, as the reference's first epoch
    method.on_epoch_start(1, 2)
    output = method.training_step(b)
    assert set(output.losses) == {"ce", "kd", "hint"}
    output.loss.backward()
    assert all(p.grad is not None for p in method.regressors.parameters())
    assert all(p.grad is None for p in method.teachers.parameters())
    # the value: 100 * sum_m beta_m MSE(r_m(f_s), f_t^m), beta from the hints' gradients w.r.t. f_s
    student_map = method.student.forward_features(b.inputs).stages[1]
    with torch.no_grad():
        targets = [t.forward_features(b.inputs).stages[1] for t in method.teachers]
    terms = [hint_loss(*r(student_map, t)) for r, t in zip(method.regressors, targets)]
    gradients = torch.stack(
        [torch.autograd.grad(h, student_map, retain_graph=True)[0].flatten(1).mean(0) for h in terms]
    )
    expected = sum(w * h for w, h in zip(min_norm_weights(gradients, 0.6), terms))
    assert method.training_step(b).losses["hint"].item() == pytest.approx(100 * expected.item(), rel=1e-4)


def test_aekd_config_errors():
    with pytest.raises(ConfigError, match="all 0"):
        build(ce_weight=0.0, kd_weight=0.0)
    with pytest.raises(ConfigError, match="hint_layer"):
        build(feature_weight=1.0, hint_layer=3)
    assert METHODS.get("aekd").traits.max_teachers is None
