"""The strongest logit methods (DIST, logit standardization, MLKD) and ReviewKD: each loss against the paper's
formula written out with explicit simple operations on fixed inputs, and one defining property."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdistill.config import ModelConfig
from kdistill.contracts import Batch, DataInfo
from kdistill.methods import METHODS
from kdistill.methods.dist import dist_terms, pearson_correlation
from kdistill.methods.dkd import dkd_loss
from kdistill.methods.kd import kd_loss, standardize_logits
from kdistill.methods.mlkd import (
    OPERATIONS,
    batch_correlation_loss,
    class_correlation_loss,
    confidence_fractions,
    mlkd_terms,
    rand_augment,
)
from kdistill.methods.reviewkd import AttentionFusion, hcl_loss
from kdistill.models import build_model

RNG = np.random.default_rng(17)


def t(array) -> torch.Tensor:
    return torch.tensor(np.asarray(array), dtype=torch.float64)


def softmax_rows(logits: np.ndarray, temperature: float) -> np.ndarray:
    rows = []
    for row in logits:
        exps = [math.exp(v / temperature) for v in row]
        rows.append([e / sum(exps) for e in exps])
    return np.array(rows)


def kd_by_hand(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """T^2 * mean over samples of sum_k p_t log(p_t / p_s)."""
    p_s, p_t = softmax_rows(student, temperature), softmax_rows(teacher, temperature)
    per_sample = [sum(pt * math.log(pt / ps) for ps, pt in zip(rs, rt)) for rs, rt in zip(p_s, p_t)]
    return temperature**2 * sum(per_sample) / len(per_sample)


# ----------------------------------------------------------------------------- logit standardization


def test_standardize_logits_hand_value():
    # mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3)
    std = math.sqrt(14 / 3)
    expected = [(v - 3) / (1e-7 + std) for v in (1.0, 2.0, 3.0, 6.0)]
    assert standardize_logits(t([[1.0, 2.0, 3.0, 6.0]]))[0].tolist() == pytest.approx(expected, rel=1e-12)


def test_kd_with_logit_standardization_hand_value():
    student, teacher = RNG.normal(size=(3, 5)) * 3, RNG.normal(size=(3, 5)) * 5
    z_s = np.array([(row - row.mean()) / (1e-7 + row.std(ddof=1)) for row in student])
    z_t = np.array([(row - row.mean()) / (1e-7 + row.std(ddof=1)) for row in teacher])
    expected = kd_by_hand(z_s, z_t, 2.0)  # base temperature 2 divides the z-scores
    value = kd_loss(standardize_logits(t(student)), standardize_logits(t(teacher)), 2.0)
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_logit_standardization_is_invariant_to_shifting_and_scaling_each_sample():
    student, teacher = t(RNG.normal(size=(4, 6))), t(RNG.normal(size=(4, 6)))
    scale, shift = t(RNG.uniform(0.2, 5.0, size=(4, 1))), t(RNG.normal(size=(4, 1)) * 10)
    plain = kd_loss(standardize_logits(student), standardize_logits(teacher), 2.0)
    moved = kd_loss(standardize_logits(scale * student + shift), standardize_logits(teacher - shift), 2.0)
    assert moved.item() == pytest.approx(plain.item(), rel=1e-6)
    assert kd_loss(scale * student + shift, teacher, 2.0).item() != pytest.approx(plain.item(), rel=1e-3)


def _logit_method(name: str, **options) -> tuple[torch.nn.Module, Batch]:
    torch.manual_seed(0)
    info = DataInfo(num_classes=5, input_shape=(1, 8, 8), num_train=16, batch_size=6)
    cnn = {"channels": [4, 8], "padding": 1, "batch_norm": True, "head": "avg"}
    teacher, student = (build_model(ModelConfig(name="cnn", kwargs=cnn), 5, (1, 8, 8)) for _ in range(2))
    method_cls = METHODS.get(name)
    method = method_cls(student, [teacher], method_cls.config_class(**options), info)
    batch = Batch(torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0]), torch.arange(6))
    return method, batch


@pytest.mark.parametrize("name", ["kd", "dkd", "dist"])
def test_logit_standardization_option_ignores_the_students_logit_scale(name):
    """With the option on, scaling the student's last layer (its logits, per sample affine) leaves the distillation
    terms unchanged; without it they change."""
    for standardize in (True, False):
        method, batch = _logit_method(name, logit_standardization=standardize, ce_weight=0.0)
        method.eval()  # BN in eval mode: the same logits for the same weights
        before = {k: v.item() for k, v in method.training_step(batch).losses.items()}
        with torch.no_grad():
            method.student.head.fc.weight.mul_(3.0)
            method.student.head.fc.bias.mul_(3.0)
        after = {k: v.item() for k, v in method.training_step(batch).losses.items()}
        same = all(after[k] == pytest.approx(before[k], rel=1e-4, abs=1e-6) for k in before)
        assert same is standardize, (name, standardize, before, after)


def test_dkd_with_logit_standardization_is_dkd_of_the_z_scores():
    method, batch = _logit_method("dkd", logit_standardization=True, alpha=9.0, beta=72.0, temperature=2.0)
    method.eval()
    method.on_epoch_start(100, 240)
    student, teacher = method.student(batch.inputs), method.teacher(batch.inputs)
    expected = dkd_loss(standardize_logits(student), standardize_logits(teacher), batch.targets, 9.0, 72.0, 2.0)
    assert method.training_step(batch).losses["dkd"].item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------- DIST


def pearson_by_hand(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    norm_x, norm_y = math.sqrt(sum((a - mx) ** 2 for a in x)), math.sqrt(sum((b - my) ** 2 for b in y))
    return cov / (norm_x * norm_y + 1e-8)


def test_dist_terms_hand_value():
    student, teacher, temperature = RNG.normal(size=(3, 4)) * 2, RNG.normal(size=(3, 4)) * 2, 4.0
    p_s, p_t = softmax_rows(student, temperature), softmax_rows(teacher, temperature)
    inter = 1 - sum(pearson_by_hand(list(p_s[i]), list(p_t[i])) for i in range(3)) / 3
    intra = 1 - sum(pearson_by_hand(list(p_s[:, j]), list(p_t[:, j])) for j in range(4)) / 4
    got_inter, got_intra = dist_terms(t(student), t(teacher), temperature)
    assert got_inter.item() == pytest.approx(temperature**2 * inter, rel=1e-10)
    assert got_intra.item() == pytest.approx(temperature**2 * intra, rel=1e-10)


def test_dist_is_zero_for_affinely_related_probabilities_where_kd_is_not():
    """DIST's relaxed match: student probabilities a * p_t + (1 - a) / K (a positive affine change of every row and
    every column) give zero inter- and intra-class loss, although the KL divergence is positive."""
    teacher, temperature = RNG.normal(size=(5, 6)) * 3, 4.0
    p_teacher = softmax_rows(teacher, temperature)
    p_student = 0.3 * p_teacher + 0.7 / 6
    student = temperature * np.log(p_student)  # logits whose softmax at T is p_student
    inter, intra = dist_terms(t(student), t(teacher), temperature)
    # zero up to the reference's epsilon 1e-8 added to the product of the (small) norms
    assert inter.item() == pytest.approx(0.0, abs=1e-4) and intra.item() == pytest.approx(0.0, abs=1e-4)
    assert kd_loss(t(student), t(teacher), temperature).item() > 0.1
    assert pearson_correlation(t(p_student), t(p_teacher)).tolist() == pytest.approx([1.0] * 5, rel=1e-5)


def test_dist_has_the_t_squared_factor_and_is_zero_at_identity():
    student, teacher = t(RNG.normal(size=(4, 5))), t(RNG.normal(size=(4, 5)))
    for temperature in (2.0, 4.0):
        scaled = dist_terms(student * temperature, teacher * temperature, temperature)
        plain = dist_terms(student, teacher, 1.0)
        assert [v.item() for v in scaled] == pytest.approx([temperature**2 * v.item() for v in plain], rel=1e-8)
    # zero up to the epsilon: rho = n^2 / (n^2 + 1e-8) for rows of norm n
    assert [v.item() for v in dist_terms(teacher, teacher.clone(), 4.0)] == pytest.approx([0.0, 0.0], abs=1e-4)
    assert [v.item() for v in dist_terms(teacher, teacher.clone(), 1.0)] == pytest.approx([0.0, 0.0], abs=1e-6)


def test_dist_defaults_are_the_cifar_recipe():
    config = METHODS.get("dist").config_class()
    assert (config.temperature, config.ce_weight, config.dist_weight, config.beta, config.gamma) == (4, 1, 2, 1, 1)


# ----------------------------------------------------------------------------- MLKD


def test_class_and_batch_correlation_hand_values():
    student, teacher, temperature = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4)), 3.0
    p_s, p_t = softmax_rows(student, temperature), softmax_rows(teacher, temperature)
    batch, classes = range(3), range(4)
    class_sum = sum(
        (sum(p_t[i, a] * p_t[i, b] for i in batch) - sum(p_s[i, a] * p_s[i, b] for i in batch)) ** 2
        for a in classes
        for b in classes
    )
    batch_sum = sum(
        (sum(p_t[i, k] * p_t[j, k] for k in classes) - sum(p_s[i, k] * p_s[j, k] for k in classes)) ** 2
        for i in batch
        for j in batch
    )
    assert class_correlation_loss(t(student), t(teacher), temperature).item() == pytest.approx(class_sum / 4)
    assert batch_correlation_loss(t(student), t(teacher), temperature).item() == pytest.approx(batch_sum / 3)


def test_confidence_fractions_keep_the_less_confident_half():
    # teacher confidences (max softmax) rise with the row's peak; classes' summed probability likewise
    teacher = t([[4.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    samples, classes = confidence_fractions(teacher)
    p = softmax_rows(teacher.numpy(), 1.0)
    confidence, class_confidence = p.max(1), p.sum(0)
    expected_samples = (confidence <= np.percentile(confidence, 50)).mean()
    expected_classes = (class_confidence <= np.percentile(class_confidence, 50)).mean()
    assert (samples.item(), classes.item()) == pytest.approx((expected_samples, expected_classes))
    assert samples.item() == 0.5


def mlkd_by_hand(sw, tw, ss, ts, temperatures, strong_on_strong=False):
    """The reference's sums (KD_ours.forward_train), written out."""
    p = softmax_rows(tw, 1.0)
    confidence, class_confidence = p.max(1), p.sum(0)
    f_s = (confidence <= np.percentile(confidence, 50)).mean()
    f_c = (class_confidence <= np.percentile(class_confidence, 50)).mean()
    instance = class_level = batch_level = 0.0
    for position, temperature in enumerate(temperatures):
        instance += f_s * kd_by_hand(sw, tw, temperature)
        view = (ss, ts) if strong_on_strong or position < 3 else (sw, tw)
        instance += kd_by_hand(*view, temperature)
        class_level += f_c * class_correlation_loss(t(sw), t(tw), temperature).item()
        batch_level += f_s * batch_correlation_loss(t(sw), t(tw), temperature).item()
    return instance, class_level, batch_level


@pytest.mark.parametrize("strong_on_strong", [False, True])
def test_mlkd_terms_match_the_reference_sums(strong_on_strong):
    sw, tw, ss, ts = (RNG.normal(size=(6, 5)) * 2 for _ in range(4))
    temperatures = [4.0, 3.0, 5.0, 2.0, 6.0]
    got = mlkd_terms(t(sw), t(tw), t(ss), t(ts), temperatures, strong_terms_on_strong_view=strong_on_strong)
    expected = mlkd_by_hand(sw, tw, ss, ts, temperatures, strong_on_strong)
    assert [v.item() for v in got] == pytest.approx(list(expected), rel=1e-8)


def test_mlkd_terms_are_zero_at_identity_and_standardization_touches_the_instance_terms_only():
    weak, strong = t(RNG.normal(size=(6, 5))), t(RNG.normal(size=(6, 5)))
    zero = mlkd_terms(weak, weak.clone(), strong, strong.clone(), [4.0, 2.0])
    assert [v.item() for v in zero] == pytest.approx([0.0, 0.0, 0.0], abs=1e-10)
    student_weak, student_strong = t(RNG.normal(size=(6, 5))), t(RNG.normal(size=(6, 5)))
    plain = mlkd_terms(student_weak, weak, student_strong, strong, [4.0, 2.0], logit_standardization=False)
    scaled = mlkd_terms(3 * student_weak + 1, weak, 3 * student_strong - 2, strong, [4.0, 2.0], True)
    standardized = mlkd_terms(student_weak, weak, student_strong, strong, [4.0, 2.0], True)
    assert scaled[0].item() == pytest.approx(standardized[0].item(), rel=1e-6)  # invariant to the logit scale
    assert standardized[1:] == plain[1:]


def test_mlkd_strong_view_is_reproducible_and_leaves_the_weak_view():
    method, batch = _logit_method("mlkd")
    first = method.augment_batch(batch, torch.Generator().manual_seed(3))
    again = method.augment_batch(batch, torch.Generator().manual_seed(3))
    assert torch.equal(first.inputs, batch.inputs)
    assert torch.equal(first.extras["strong_inputs"], again.extras["strong_inputs"])
    assert first.extras["strong_inputs"].shape == batch.inputs.shape
    assert not torch.equal(first.extras["strong_inputs"], batch.inputs.clamp(0, 1))


def test_rand_augment_without_operations_or_cutout_is_the_identity():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(rand_augment(images, torch.Generator().manual_seed(0), num_ops=0, cutout=0.0), images)
    cut = rand_augment(images, torch.Generator().manual_seed(0), num_ops=0, cutout=0.5)
    assert cut.shape == images.shape and cut.dtype == torch.uint8


@pytest.mark.parametrize("threshold", [0.0, 128.0, 255.0, 255.9, 256.0])
def test_solarize_takes_every_threshold_of_its_range(threshold):
    """RandAugment draws the solarize threshold in [0, 256]: a uint8 pixel is inverted when it is >= the threshold, so
    above 255 none is (the identity; torchvision refuses such thresholds, which once crashed a run at 255.86)."""
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    expected = torch.where(images.int() >= threshold, 255 - images.int(), images.int()).to(torch.uint8)
    assert torch.equal(OPERATIONS["solarize"](images, threshold), expected)


# ----------------------------------------------------------------------------- ReviewKD


def test_hcl_loss_hand_value():
    # level 1: 2x2 maps -> full MSE + 1/2 * MSE of the 1x1 pooled maps, over 1.5; level 2: 1x1 maps -> MSE only
    a, b = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(2, 3, 2, 2))
    c, d = RNG.normal(size=(2, 4, 1, 1)), RNG.normal(size=(2, 4, 1, 1))
    full = ((a - b) ** 2).sum() / a.size
    pooled = ((a.mean(axis=(2, 3)) - b.mean(axis=(2, 3))) ** 2).sum() / (2 * 3)
    expected = (full + 0.5 * pooled) / 1.5 + ((c - d) ** 2).sum() / c.size
    assert hcl_loss([t(a), t(c)], [t(b), t(d)]).item() == pytest.approx(expected, rel=1e-10)


def test_hcl_loss_pools_to_4_2_1_on_an_8x8_map_and_is_zero_at_identity():
    a, b = RNG.normal(size=(1, 2, 8, 8)), RNG.normal(size=(1, 2, 8, 8))
    terms = [((a - b) ** 2).mean()]
    for level in (4, 2, 1):
        size = 8 // level
        pa = a.reshape(1, 2, level, size, level, size).mean(axis=(3, 5))
        pb = b.reshape(1, 2, level, size, level, size).mean(axis=(3, 5))
        terms.append(((pa - pb) ** 2).mean())
    weights = [1.0, 0.5, 0.25, 0.125]
    expected = sum(w * v for w, v in zip(weights, terms)) / sum(weights)
    assert hcl_loss([t(a)], [t(b)]).item() == pytest.approx(expected, rel=1e-10)
    assert hcl_loss([t(a)], [t(a)]).item() == 0.0


def test_attention_fusion_maps_to_the_teacher_shape():
    fusion = AttentionFusion(in_channels=4, mid_channels=6, out_channels=10, fuse=True)
    output, fused = fusion(torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4), (16, 16))
    assert output.shape == (2, 10, 16, 16) and fused.shape == (2, 6, 16, 16)


def test_reviewkd_levels_channels_and_warmup_on_the_cifar_pair():
    info = DataInfo(num_classes=100, input_shape=(3, 32, 32), num_train=8, batch_size=2)
    teacher = build_model(ModelConfig(name="resnet32x4"), 100, (3, 32, 32))
    student = build_model(ModelConfig(name="resnet8x4"), 100, (3, 32, 32))
    method_cls = METHODS.get("reviewkd")
    method = method_cls(student, [teacher], method_cls.config_class(), info)
    # mdistiller's CIFAR setting for this pair: in/out channels [64, 128, 256, 256], sizes [32, 16, 8, 1]
    channels = [(f.conv1[0].in_channels, f.conv2[0].out_channels) for f in reversed(method.fusions)]
    assert channels == [(64, 64), (128, 128), (256, 256), (256, 256)]
    assert method.out_sizes == [(32, 32), (16, 16), (8, 8), (1, 1)]
    assert method.fusions[0].conv1[0].out_channels == 256  # mid channels: min(512, 256)
    method.on_epoch_start(0, 240)
    assert method.warmup_factor == pytest.approx(1 / 20)
    method.on_epoch_start(19, 240)
    assert method.warmup_factor == 1.0


# (input shape, teacher cnn channels / padding, student cnn channels / padding): channels, sizes and stage counts differ
REVIEW_PAIRS = [
    ((1, 16, 16), ([16, 32], 1), ([8, 12], 0)),  # teacher 16x8x8, 32x4x4; student 8x7x7, 12x2x2
    ((1, 20, 20), ([12, 24, 32], 1), ([6, 10], 1)),  # teacher 10, 5, 2; student 10, 5: the deepest two are paired
]


@pytest.mark.parametrize("pair", REVIEW_PAIRS)
def test_reviewkd_step_trains_the_student_and_every_fusion_module(pair):
    input_shape, (teacher_channels, teacher_padding), (student_channels, student_padding) = pair
    torch.manual_seed(0)
    info = DataInfo(num_classes=5, input_shape=input_shape, num_train=16, batch_size=6)

    def cnn(channels, padding):
        kwargs = {"channels": channels, "padding": padding, "batch_norm": True, "head": "avg"}
        return build_model(ModelConfig(name="cnn", kwargs=kwargs), 5, input_shape)

    method_cls = METHODS.get("reviewkd")
    config = method_cls.config_class(warmup_epochs=0)
    method = method_cls(cnn(student_channels, student_padding), [cnn(teacher_channels, teacher_padding)], config, info)
    method.train()
    batch = Batch(torch.randn(6, *input_shape), torch.tensor([0, 1, 2, 3, 4, 0]), torch.arange(6))
    output = method.training_step(batch)
    assert set(output.losses) == {"ce", "review"} and output.losses["review"].item() > 0
    output.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.fusions.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())
    assert len(method.fusions) == min(len(student_channels), len(teacher_channels)) + 1
