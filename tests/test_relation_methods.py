"""RepDistiller's remaining baselines (RKD, PKT, CC, NST, FT, AB, FSP, KDSVD): each loss on fixed inputs against the
paper's formula written out with loops, and one property it has; the initialisation phases of AB, FSP and FT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdistill.config import ModelConfig
from kdistill.contracts import Batch, DataInfo
from kdistill.methods import METHODS
from kdistill.methods.ab import ab_loss
from kdistill.methods.cc import cc_loss
from kdistill.methods.fsp import fsp_loss
from kdistill.methods.ft import ft_loss
from kdistill.methods.kdsvd import kdsvd_loss
from kdistill.methods.nst import nst_loss
from kdistill.methods.pkt import pkt_loss
from kdistill.methods.rkd import rkd_angle_loss, rkd_distance_loss
from kdistill.models import build_model

RNG = np.random.default_rng(17)


def t(array) -> torch.Tensor:
    return torch.tensor(np.asarray(array), dtype=torch.float64)


def random_rotation(dim: int) -> np.ndarray:
    q, r = np.linalg.qr(RNG.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def huber(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 1.0, 0.5 * x**2, np.abs(x) - 0.5)


def avg_pool(x: np.ndarray, factor: int) -> np.ndarray:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // factor, factor, w // factor, factor).mean(axis=(3, 5))


# ----------------------------------------------------------------------------- RKD


def rkd_distance_numpy(student: np.ndarray, teacher: np.ndarray) -> float:
    def psi(x: np.ndarray) -> np.ndarray:
        n = len(x)
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                if i != j:
                    d[i, j] = np.sqrt(((x[i] - x[j]) ** 2).sum())
        mu = d.sum() / (n * (n - 1))  # mean over the pairs
        return d / mu

    return float(huber(psi(student) - psi(teacher)).mean())


def rkd_angle_numpy(student: np.ndarray, teacher: np.ndarray) -> float:
    def psi(x: np.ndarray) -> np.ndarray:
        n = len(x)
        a = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if j != i and k != i:
                        e_ij = (x[j] - x[i]) / np.linalg.norm(x[j] - x[i])
                        e_ik = (x[k] - x[i]) / np.linalg.norm(x[k] - x[i])
                        a[i, j, k] = e_ij @ e_ik
        return a

    return float(huber(psi(student) - psi(teacher)).mean())


def test_rkd_losses_match_the_papers_formulas():
    student, teacher = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 4)) * 2
    assert rkd_distance_loss(t(student), t(teacher)).item() == pytest.approx(rkd_distance_numpy(student, teacher))
    assert rkd_angle_loss(t(student), t(teacher)).item() == pytest.approx(rkd_angle_numpy(student, teacher))
    assert rkd_distance_loss(t(student), t(teacher)).item() > 0.01 and rkd_angle_loss(t(student), t(teacher)) > 0.01


def test_rkd_is_zero_for_a_scaled_rotated_shifted_teacher():
    """Distances normalised by their mean and angles ignore scale, rotation and translation."""
    teacher = RNG.normal(size=(6, 4))
    student = 3.0 * teacher @ random_rotation(4) + RNG.normal(size=(1, 4))
    assert rkd_distance_loss(t(student), t(teacher)).item() == pytest.approx(0.0, abs=1e-12)
    assert rkd_angle_loss(t(student), t(teacher)).item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- PKT


def pkt_numpy(student: np.ndarray, teacher: np.ndarray) -> float:
    def conditional(x: np.ndarray) -> np.ndarray:
        n = len(x)
        unit = [x[i] / np.linalg.norm(x[i]) for i in range(n)]
        k = np.array([[(unit[i] @ unit[j] + 1) / 2 for j in range(n)] for i in range(n)])
        return k / k.sum(axis=1, keepdims=True)

    p_s, p_t = conditional(student), conditional(teacher)
    n = len(student)
    return sum(p_t[i, j] * np.log(p_t[i, j] / p_s[i, j]) for i in range(n) for j in range(n)) / n**2


def test_pkt_loss_matches_the_kl_of_cosine_conditionals():
    student, teacher = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 6))
    assert pkt_loss(t(student), t(teacher)).item() == pytest.approx(pkt_numpy(student, teacher), abs=1e-6)
    assert pkt_numpy(student, teacher) > 1e-3


def test_pkt_ignores_each_samples_scale():
    teacher = RNG.normal(size=(6, 4))
    student = teacher * RNG.uniform(0.5, 5.0, size=(6, 1))
    assert pkt_loss(t(student), t(teacher)).item() == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------- CC


def test_cc_loss_multiplies_neighbouring_samples_differences():
    student, teacher = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 4))
    delta = np.abs(student - teacher)
    expected = sum(delta[i, d] * delta[i + 1, d] for i in range(4) for d in range(4)) / 4
    assert cc_loss(t(student), t(teacher)).item() == pytest.approx(expected)


def test_cc_loss_vanishes_when_every_other_sample_agrees():
    """RepDistiller's CC only pairs consecutive samples: it is zero as soon as one of each neighbouring pair matches."""
    teacher = RNG.normal(size=(6, 4))
    student = teacher.copy()
    student[::2] += RNG.normal(size=(3, 4))
    assert cc_loss(t(student), t(teacher)).item() == 0.0
    assert cc_loss(t(student + 0.1), t(teacher)).item() > 0.0


# ----------------------------------------------------------------------------- NST


def nst_numpy(student: np.ndarray, teacher: np.ndarray) -> float:
    def mmd(f: list[np.ndarray], g: list[np.ndarray]) -> float:
        def kernel_mean(a: list[np.ndarray], b: list[np.ndarray]) -> float:
            return sum((x @ y) ** 2 for x in a for y in b) / (len(a) * len(b))

        return kernel_mean(g, g) + kernel_mean(f, f) - 2 * kernel_mean(f, g)

    total = 0.0
    for b in range(len(student)):
        f = [c.ravel() / np.linalg.norm(c) for c in student[b]]
        g = [c.ravel() / np.linalg.norm(c) for c in teacher[b]]
        total += mmd(f, g)
    return total / len(student)


def test_nst_loss_is_the_polynomial_kernel_mmd_of_channel_patterns():
    student, teacher = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 5, 2, 2))
    expected = nst_numpy(avg_pool(student, 2), teacher)  # the larger map is pooled to the smaller size
    assert nst_loss(t(student), t(teacher)).item() == pytest.approx(expected)


def test_nst_ignores_channel_order_and_channel_scale():
    teacher = RNG.normal(size=(2, 4, 3, 3))
    student = teacher[:, [2, 0, 3, 1]] * RNG.uniform(0.5, 3.0, size=(1, 4, 1, 1))
    assert nst_loss(t(student), t(teacher)).item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- FT


def test_ft_loss_is_the_l1_distance_of_normalised_factor_vectors():
    student, teacher = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(2, 5, 2, 2))
    expected = 0.0
    for b in range(2):
        v_s = np.array([(student[b, :, h, w] ** 2).mean() for h in range(2) for w in range(2)])
        v_t = np.array([(teacher[b, :, h, w] ** 2).mean() for h in range(2) for w in range(2)])
        expected += np.abs(v_s / np.linalg.norm(v_s) - v_t / np.linalg.norm(v_t)).sum()
    assert ft_loss(t(student), t(teacher)).item() == pytest.approx(expected / 8)


def test_ft_loss_ignores_the_factors_scale():
    teacher = RNG.normal(size=(2, 3, 4, 4))
    assert ft_loss(t(teacher * 7.0), t(teacher)).item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- AB


def test_ab_loss_matches_the_margin_loss_with_halving_stage_weights():
    margin = 1.0
    students = [RNG.normal(size=(2, 2, 3, 3)) * 2, RNG.normal(size=(2, 3, 2, 2)) * 2]
    teachers = [RNG.normal(size=(2, 2, 3, 3)), RNG.normal(size=(2, 3, 2, 2))]
    expected = 0.0
    for stage, weight in zip(range(2), (0.5, 1.0)):  # 2^(i - n + 1): the deepest stage weighs 1
        for s, t_ in zip(students[stage].ravel(), teachers[stage].ravel()):
            if t_ <= 0 and s > -margin:
                expected += weight * (s + margin) ** 2
            elif t_ > 0 and s <= margin:
                expected += weight * (s - margin) ** 2
    expected = expected / 2 * 3 / 1000
    assert ab_loss([t(s) for s in students], [t(x) for x in teachers], margin).item() == pytest.approx(expected)
    assert expected > 0


def test_ab_loss_is_zero_beyond_the_margin_on_the_teachers_side():
    teacher = RNG.normal(size=(2, 3, 4, 4))
    student = np.sign(teacher) * (1.0 + RNG.uniform(0.0, 1.0, size=teacher.shape))  # |s| > m, sign of t
    assert ab_loss([t(student)], [t(teacher)], 1.0).item() == 0.0


# ----------------------------------------------------------------------------- FSP


def fsp_numpy(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    batch, c_low, _, _ = lower.shape
    c_up = upper.shape[1]
    g = np.zeros((batch, c_low, c_up))
    for b in range(batch):
        for i in range(c_low):
            for j in range(c_up):
                g[b, i, j] = (lower[b, i] * upper[b, j]).mean()
    return g


def test_fsp_loss_matches_gram_matrices_between_consecutive_stages():
    shapes = [(2, 2, 4, 4), (2, 3, 2, 2), (2, 4, 2, 2)]
    student = [RNG.normal(size=s) for s in shapes]
    teacher = [RNG.normal(size=s) for s in shapes]
    expected = 0.0
    for k in range(2):
        lower_s, lower_t = (avg_pool(student[k], 2), avg_pool(teacher[k], 2)) if k == 0 else (student[k], teacher[k])
        g_s, g_t = fsp_numpy(lower_s, student[k + 1]), fsp_numpy(lower_t, teacher[k + 1])
        expected += ((g_s - g_t) ** 2).mean()
    assert fsp_loss([t(s) for s in student], [t(x) for x in teacher]).item() == pytest.approx(expected)


def test_fsp_loss_ignores_a_shared_permutation_of_positions():
    """The FSP matrix averages over positions: moving every stage's pixels the same way changes nothing."""
    stages = [RNG.normal(size=(2, 3, 3, 3)), RNG.normal(size=(2, 3, 3, 3))]
    order = RNG.permutation(9)
    moved = [s.reshape(2, 3, 9)[:, :, order].reshape(2, 3, 3, 3) for s in stages]
    assert fsp_loss([t(s) for s in moved], [t(s) for s in stages]).item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- KDSVD


def kdsvd_numpy(student: list[np.ndarray], teacher: list[np.ndarray]) -> float:
    """k = 1: the teacher's leading right singular vector (largest entry positive), the student's best-aligned of
    its 4 leading ones (sign matched); RBF relations between consecutive stages; squared differences summed / B."""
    total = 0.0
    for b in range(len(student[0])):
        previous = None
        for s_map, t_map in zip(student, teacher):
            _, _, t_vh = np.linalg.svd(t_map[b].reshape(t_map.shape[1], -1).T, full_matrices=False)
            _, _, s_vh = np.linalg.svd(s_map[b].reshape(s_map.shape[1], -1).T, full_matrices=False)
            v_t = t_vh[0] * np.sign(t_vh[0][np.argmax(np.abs(t_vh[0]))])
            cosines = [v @ v_t for v in s_vh[:4]]
            best = int(np.argmax(np.abs(cosines)))
            v_s = s_vh[best] * np.sign(cosines[best])
            if previous is not None:
                for c in range(len(v_t)):
                    for c_prev in range(len(previous[1])):
                        r_s = np.exp(-((v_s[c] - previous[0][c_prev]) ** 2) / 8)
                        r_t = np.exp(-((v_t[c] - previous[1][c_prev]) ** 2) / 8)
                        total += (r_s - r_t) ** 2
            previous = (v_s, v_t)
    return total / len(student[0])


def kdsvd_maps(shapes) -> list[np.ndarray]:
    return [RNG.normal(size=shape) for shape in shapes]


def test_kdsvd_loss_matches_the_singular_vector_relations():
    shapes = [(2, 5, 4, 4), (2, 6, 2, 2), (2, 7, 2, 2)]
    student, teacher = kdsvd_maps(shapes), kdsvd_maps(shapes)
    expected = kdsvd_numpy(student, teacher)
    assert kdsvd_loss([t(s) for s in student], [t(x) for x in teacher]).item() == pytest.approx(expected)
    assert expected > 1e-4


def test_kdsvd_ignores_the_students_scale_and_sign_and_is_zero_at_the_teacher():
    shapes = [(2, 4, 3, 3), (2, 5, 3, 3)]
    student, teacher = kdsvd_maps(shapes), kdsvd_maps(shapes)
    loss = kdsvd_loss([t(s) for s in student], [t(x) for x in teacher]).item()
    assert kdsvd_loss([t(-3.0 * s) for s in student], [t(x) for x in teacher]).item() == pytest.approx(loss)
    assert kdsvd_loss([t(x) for x in teacher], [t(x) for x in teacher]).item() == pytest.approx(0.0, abs=1e-12)


def test_kdsvd_gradient_stays_finite_with_dead_channels():
    """Repeated (zero) singular values make the SVD's gradient infinite: those entries are dropped, not spread."""
    shapes = [(2, 4, 3, 3), (2, 5, 3, 3)]
    student = [t(s) for s in kdsvd_maps(shapes)]
    student[0][:, :2] = 0.0  # two all-zero channels: two zero singular values
    student = [s.requires_grad_() for s in student]
    kdsvd_loss(student, [t(x) for x in kdsvd_maps(shapes)]).backward()
    assert all(torch.isfinite(s.grad).all() for s in student)
    assert student[1].grad.abs().sum() > 0, "the other stage still learns"


# ----------------------------------------------------------------------------- methods and their phases

INPUT_SHAPE = (1, 8, 8)
INFO = DataInfo(num_classes=4, input_shape=INPUT_SHAPE, num_train=16, batch_size=6)


def cnn(channels: list[int]) -> torch.nn.Module:
    kwargs = {"channels": channels, "padding": 1, "batch_norm": True, "head": "avg"}
    return build_model(ModelConfig(name="cnn", kwargs=kwargs), INFO.num_classes, INPUT_SHAPE)


def make_method(name: str, student_channels=(4, 8), teacher_channels=(6, 12), **overrides):
    torch.manual_seed(0)
    method_cls = METHODS.get(name)
    config = method_cls.config_class(**overrides)
    method = method_cls(cnn(list(student_channels)), [cnn(list(teacher_channels))], config, INFO)
    method.train()
    return method


def step_gradients(method, module) -> bool:
    """Run one step's backward; whether any parameter of ``module`` got a non-zero gradient."""
    method.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(0)
    batch = Batch(
        inputs=torch.randn(6, *INPUT_SHAPE, generator=generator),
        targets=torch.randint(0, INFO.num_classes, (6,), generator=generator),
        indices=torch.arange(6),
    )
    output = method.training_step(batch)
    output.loss.backward()
    method.last_losses = set(output.losses)
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("name, init_term", [("ab", "ab"), ("fsp", "fsp")])
def test_ab_and_fsp_train_the_student_features_first_then_on_labels(name, init_term):
    method = make_method(name)
    method.on_epoch_start(0, 40)
    assert step_gradients(method, method.student.stages) and method.last_losses == {init_term}
    assert not step_gradients(method, method.student.head), "only the stages learn in the init phase"
    method.on_epoch_start(method.config.init_epochs, 40)
    assert step_gradients(method, method.student.head) and method.last_losses == {"ce"}


def test_ab_connectors_are_trained_only_in_the_init_phase():
    method = make_method("ab", init_epochs=2)
    method.on_epoch_start(1, 10)
    assert step_gradients(method, method.connectors)
    method.on_epoch_start(2, 10)
    assert not step_gradients(method, method.connectors)


def test_ft_fits_the_paraphraser_first_then_transfers_frozen_factors():
    method = make_method("ft", init_epochs=3)
    method.on_epoch_start(2, 10)
    assert step_gradients(method, method.paraphraser) and method.last_losses == {"ce", "paraphraser"}
    assert not step_gradients(method, method.translator)
    assert step_gradients(method, method.student), "the student trains on labels during the init phase"
    method.on_epoch_start(3, 10)
    assert step_gradients(method, method.translator) and method.last_losses == {"ce", "ft"}
    assert not step_gradients(method, method.paraphraser), "the paraphraser is fixed after its initialisation"


def test_fsp_uses_the_stages_as_they_are_when_channels_match():
    same = make_method("fsp", student_channels=(4, 8), teacher_channels=(4, 8))
    assert all(isinstance(p, torch.nn.Identity) for p in same.projections)
    other = make_method("fsp")
    assert all(isinstance(p, torch.nn.Conv2d) for p in other.projections)


@pytest.mark.parametrize("name", ["ab", "fsp", "ft"])
def test_init_epochs_must_be_positive(name):
    problems = METHODS.get(name).config_class(init_epochs=0).problems()
    assert any(problem.startswith("init_epochs=0") for problem in problems), problems


@pytest.mark.parametrize(
    "name, expected",
    [
        ("rkd", {"weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}),
        ("pkt", {"weight": 30000.0}),
        ("cc", {"weight": 0.02, "embedding_dim": 128}),
        ("nst", {"weight": 50.0}),
        ("ft", {"weight": 200.0, "init_epochs": 30, "paraphrase_rate": 0.5}),
        ("ab", {"weight": 1.0, "init_epochs": 30, "margin": 1.0}),
        ("fsp", {"weight": 1.0, "init_epochs": 30}),
        ("kdsvd", {"weight": 1.0, "k": 1}),
    ],
)
def test_defaults_are_repdistillers_scripts(name, expected):
    config = METHODS.get(name).config_class()
    assert (config.ce_weight, config.kd_weight) == (1.0, 0.0)  # -r 1 -a 0
    assert {key: getattr(config, key) for key in expected} == expected
