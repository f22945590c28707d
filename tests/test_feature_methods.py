"""Feature-distillation baselines: each loss against an independent hand computation and its defining
property; one training step of every method on pairs of models with different channels / spatial sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdistill.config import ModelConfig
from kdistill.contracts import Batch, DataInfo
from kdistill.methods import METHODS
from kdistill.methods.at import at_loss
from kdistill.methods.crd import ContrastMemory, nce_loss
from kdistill.methods.dkd import dkd_terms
from kdistill.methods.feature_utils import match_stages
from kdistill.methods.fitnet import ConvRegressor, hint_loss
from kdistill.methods.semckd import semckd_loss
from kdistill.methods.sp import sp_loss
from kdistill.methods.srrl import srrl_loss
from kdistill.methods.vid import vid_loss
from kdistill.models import build_model

RNG = np.random.default_rng(0)


def t(array) -> torch.Tensor:
    return torch.tensor(np.asarray(array), dtype=torch.float64)


# ----------------------------------------------------------------------------- losses


def test_hint_loss_is_the_mean_squared_error():
    a, b = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 3, 4, 4))
    assert hint_loss(t(a), t(b)).item() == pytest.approx(((a - b) ** 2).sum() / a.size)


@pytest.mark.parametrize(
    "student_shape, teacher_shape",
    [((4, 8, 8), (6, 4, 4)), ((4, 4, 4), (6, 8, 8)), ((4, 7, 7), (6, 7, 7)), ((4, 7, 7), (6, 4, 4))],
)
def test_conv_regressor_output_matches_the_teacher_map(student_shape, teacher_shape):
    regressor = ConvRegressor(student_shape, teacher_shape)
    regressed, target = regressor(torch.randn(2, *student_shape), torch.randn(2, *teacher_shape))
    assert regressed.shape == target.shape and regressed.shape[1] == teacher_shape[0]


def _attention_numpy(f: np.ndarray) -> np.ndarray:
    batch, channels, height, width = f.shape
    out = np.zeros((batch, height * width))
    for b in range(batch):
        a = np.array(
            [[sum(f[b, c, h, w] ** 2 for c in range(channels)) / channels for w in range(width)] for h in range(height)]
        ).ravel()
        out[b] = a / max(np.sqrt((a**2).sum()), 1e-12)
    return out


def test_at_loss_hand_value_and_properties():
    fs, ft = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 5, 4, 4))
    expected = ((_attention_numpy(fs) - _attention_numpy(ft)) ** 2).mean()
    assert at_loss(t(fs), t(ft)).item() == pytest.approx(expected, rel=1e-10)
    assert at_loss(t(fs), t(fs)).item() == pytest.approx(0.0, abs=1e-15)  # identical attention maps
    assert at_loss(t(fs) * 7.5, t(ft)).item() == pytest.approx(expected, rel=1e-10)  # positive scaling
    # different spatial sizes: the larger map is average-pooled first (8x8 -> 4x4 by 2x2 blocks)
    big = RNG.normal(size=(2, 5, 8, 8))
    pooled = big.reshape(2, 5, 4, 2, 4, 2).mean(axis=(3, 5))
    assert at_loss(t(fs), t(big)).item() == pytest.approx(
        ((_attention_numpy(fs) - _attention_numpy(pooled)) ** 2).mean(), rel=1e-10
    )


def test_sp_loss_hand_value_and_properties():
    fs, ft = RNG.normal(size=(3, 2, 2, 2)), RNG.normal(size=(3, 4, 1, 1))

    def gram(f):
        flat = f.reshape(f.shape[0], -1)
        g = flat @ flat.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    expected = ((gram(ft) - gram(fs)) ** 2).sum() / 9
    assert sp_loss(t(fs), t(ft)).item() == pytest.approx(expected, rel=1e-10)
    # identical (normalised) similarity matrices: the teacher is the student scaled and zero-padded
    padded = np.concatenate([3.0 * fs.reshape(3, -1), np.zeros((3, 5))], axis=1)
    assert sp_loss(t(fs), t(padded)).item() == pytest.approx(0.0, abs=1e-14)


def test_vid_loss_hand_value():
    mean, target = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(2, 3, 2, 2))
    variance = np.array([0.5, 1.0, 2.0])
    expected = np.mean(
        [
            0.5 * ((mean[b, c, h, w] - target[b, c, h, w]) ** 2 / variance[c] + math.log(variance[c]))
            for b in range(2)
            for c in range(3)
            for h in range(2)
            for w in range(2)
        ]
    )
    assert vid_loss(t(mean), t(target), t(variance)).item() == pytest.approx(expected, rel=1e-10)


def test_vid_initial_variance_is_five():
    from kdistill.methods.vid import VIDRegressor

    assert VIDRegressor(2, 3, 3).variance().detach().numpy() == pytest.approx([5.0] * 3, rel=1e-6)


def test_nce_loss_hand_value():
    scores = RNG.uniform(0.001, 0.1, size=(2, 4))  # positive + 3 negatives
    n_data, eps = 50, 1e-7
    noise = 3 / n_data
    expected = 0.0
    for b in range(2):
        expected += math.log(scores[b, 0] / (scores[b, 0] + noise + eps))
        for k in range(1, 4):
            expected += math.log(noise / (scores[b, k] + noise + eps))
    assert nce_loss(t(scores), n_data).item() == pytest.approx(-expected / 2, rel=1e-10)


def test_contrast_memory_positives_normaliser_and_update():
    torch.manual_seed(0)
    memory = ContrastMemory(dim=4, num_data=10, num_negatives=5, temperature=0.07, momentum=0.5)
    student = F.normalize(torch.randn(3, 4), dim=1)
    teacher = F.normalize(torch.randn(3, 4), dim=1)
    indices, targets = torch.tensor([1, 4, 7]), torch.tensor([0, 1, 0])
    old_student_memory = memory.memory_student.clone()
    sample = memory.sample_indices(indices, targets, other_class=False)
    assert sample.shape == (3, 6) and torch.equal(sample[:, 0], indices)
    scores_student, scores_teacher = memory(student, teacher, indices, targets, other_class=True)
    assert scores_student.shape == (3, 6) and memory.z_student > 0 and memory.z_teacher > 0
    z = memory.z_student.item()
    memory(student, teacher, indices, targets, other_class=True)
    assert memory.z_student.item() == z  # set once, from the first batch
    expected = F.normalize(
        F.normalize(old_student_memory[indices] * 0.5 + student * 0.5, dim=1) * 0.5 + student * 0.5, dim=1
    )
    assert torch.allclose(memory.memory_student[indices], expected, atol=1e-6)
    assert torch.equal(memory.labels[indices], targets)
    untouched = torch.tensor([0, 2, 3, 5, 6, 8, 9])
    assert torch.equal(memory.memory_student[untouched], old_student_memory[untouched])


def test_contrast_memory_redraws_same_class_negatives():
    torch.manual_seed(0)
    memory = ContrastMemory(dim=4, num_data=6, num_negatives=200, temperature=0.07, momentum=0.5)
    memory.labels.copy_(torch.tensor([0, 0, 0, 1, 1, 1]))
    sample = memory.sample_indices(torch.tensor([0]), torch.tensor([0]), other_class=True, rounds=30)
    assert (memory.labels[sample[0, 1:]] == 1).all()


def test_dkd_hand_value_and_decomposition():
    zs, zt = RNG.normal(size=(1, 5)) * 2, RNG.normal(size=(1, 5)) * 2
    target, temperature = 2, 4.0
    ps, pt = (np.exp(z / temperature) / np.exp(z / temperature).sum() for z in (zs[0], zt[0]))
    bs, bt = np.array([ps[target], 1 - ps[target]]), np.array([pt[target], 1 - pt[target]])
    tckd_expected = temperature**2 * (bt * np.log(bt / bs)).sum()
    others = [k for k in range(5) if k != target]
    qs, qt = ps[others] / ps[others].sum(), pt[others] / pt[others].sum()
    nckd_expected = temperature**2 * (qt * np.log(qt / qs)).sum()
    tckd, nckd = dkd_terms(t(zs), t(zt), torch.tensor([target]), temperature)
    assert tckd.item() == pytest.approx(tckd_expected, rel=1e-8)
    assert nckd.item() == pytest.approx(nckd_expected, rel=1e-8)
    kd = temperature**2 * (pt * np.log(pt / ps)).sum()
    assert kd == pytest.approx(tckd.item() + (1 - pt[target]) * nckd.item(), rel=1e-8)  # KD = TCKD + (1 - p_t) NCKD


def test_dkd_stays_finite_when_the_student_is_certain_of_the_target():
    # p_target rounds to 1 in float32: 1 - p_target would be 0; the summed non-target mass is not.
    student, teacher = torch.tensor([[200.0, 0.0, 0.0]]), torch.zeros(1, 3)
    tckd, _ = dkd_terms(student, teacher, torch.tensor([0]), 4.0)
    other = 2 * math.exp(-50.0) / (1 + 2 * math.exp(-50.0))  # student non-target mass at T = 4, in float64
    expected = 16.0 * (1 / 3 * math.log((1 / 3) / (1 - other)) + 2 / 3 * math.log((2 / 3) / other))
    assert math.isfinite(tckd.item()) and tckd.item() == pytest.approx(expected, rel=1e-4)


def test_dkd_warmup_ramps_linearly():
    method = _build("dkd", PAIRS[0])
    method.on_epoch_start(0, 240)
    assert method.warmup_factor == pytest.approx(1 / 20)
    method.on_epoch_start(9, 240)
    assert method.warmup_factor == pytest.approx(0.5)
    method.on_epoch_start(30, 240)
    assert method.warmup_factor == 1.0


def test_srrl_loss_hand_value():
    a, b, c, d = (RNG.normal(size=(2, 3)) for _ in range(4))
    assert srrl_loss(t(a), t(b), t(c), t(d)).item() == pytest.approx(((a - b) ** 2).mean() + ((c - d) ** 2).mean())


def test_semckd_loss_hand_value():
    batch, num_s, num_t = 2, 2, 3
    projected = [[RNG.normal(size=(batch, 2, 2, 2)) for _ in range(num_t)] for _ in range(num_s)]
    targets = [[RNG.normal(size=(batch, 2, 2, 2)) for _ in range(num_t)] for _ in range(num_s)]
    attention = RNG.dirichlet(np.ones(num_t), size=(batch, num_s))
    expected = sum(
        attention[b, i, j] * ((projected[i][j][b] - targets[i][j][b]) ** 2).mean()
        for b in range(batch)
        for i in range(num_s)
        for j in range(num_t)
    ) / (batch * num_s)
    value = semckd_loss(
        [[t(p) for p in row] for row in projected], [[t(p) for p in row] for row in targets], t(attention)
    )
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_match_stages_pairs_by_index_like_the_reference_zip():
    assert match_stages(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert match_stages(2, 3) == [(0, 0), (1, 1)]
    assert match_stages(4, 3) == [(0, 0), (1, 1), (2, 2)]


# ----------------------------------------------------------------------------- one step on model pairs

# (input shape, teacher, student): channels, spatial sizes and stage counts differ.
PAIRS = [
    (
        (1, 16, 16),
        ModelConfig(
            name="cnn", kwargs={"channels": [16, 32], "padding": 1, "batch_norm": True, "head": "avg"}
        ),  # 16x8x8, 32x4x4
        ModelConfig(
            name="cnn", kwargs={"channels": [8, 12], "padding": 0, "batch_norm": True, "head": "avg"}
        ),  # 8x7x7, 12x2x2
    ),
    (
        (1, 20, 20),
        ModelConfig(
            name="cnn", kwargs={"channels": [12, 24, 32], "padding": 1, "batch_norm": True, "head": "avg"}
        ),  # 10, 5, 2
        ModelConfig(name="cnn", kwargs={"channels": [6, 10], "padding": 1, "batch_norm": True, "head": "avg"}),  # 10, 5
    ),
    (
        (3, 32, 32),
        ModelConfig(name="resnet8x4"),  # 64x32x32, 128x16x16, 256x8x8
        ModelConfig(name="wrn_16_1"),  # 16x32x32, 32x16x16, 64x8x8
    ),
]
NUM_CLASSES = 5
BATCH = 6

SMALL_CONFIGS = {"crd": {"num_negatives": 32}}
FEATURE_METHODS = ["fitnet", "at", "sp", "vid", "crd", "srrl", "semckd", "dkd", "kd", "simkd"]


def _build(name, pair, **overrides):
    input_shape, teacher_config, student_config = pair
    info = DataInfo(num_classes=NUM_CLASSES, input_shape=input_shape, num_train=40, batch_size=BATCH)
    method_cls = METHODS.get(name)
    teacher = build_model(teacher_config, NUM_CLASSES, input_shape)
    student = build_model(student_config, NUM_CLASSES, input_shape)
    config = method_cls.config_class(**{**SMALL_CONFIGS.get(name, {}), **overrides})
    return method_cls(student, [teacher], config, info)


def _batch(input_shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return Batch(
        inputs=torch.randn(BATCH, *input_shape, generator=generator),
        targets=torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator),
        indices=torch.randperm(40, generator=generator)[:BATCH],
    )


def _one_step(method, input_shape):
    method.train()
    teacher_state = {k: v.clone() for k, v in method.teachers.state_dict().items()}
    student_before = [p.detach().clone() for p in method.student.parameters()]
    teacher_ids = {id(p) for p in method.teachers.parameters()}
    own = [
        p
        for p in method.parameters()
        if id(p) not in teacher_ids and id(p) not in {id(q) for q in method.student.parameters()}
    ]
    own_before = [p.detach().clone() for p in own]
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.05)
    output = method.training_step(_batch(input_shape))
    assert output.logits.shape == (BATCH, NUM_CLASSES)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in output.losses.values())
    optimizer.zero_grad()
    output.loss.backward()
    assert all(p.grad is None for p in method.teachers.parameters()), "a teacher parameter received a gradient"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())
    if own:
        assert all(p.grad is not None for p in own), "a method module got no gradient"
        assert any(p.grad.abs().sum() > 0 for p in own)
    optimizer.step()
    after = method.teachers.state_dict()
    assert all(torch.equal(teacher_state[k], after[k]) for k in teacher_state), "the teacher changed"
    assert any(not torch.equal(a, p) for a, p in zip(student_before, method.student.parameters()))
    if own:
        assert any(not torch.equal(a, p) for a, p in zip(own_before, own))
    assert all(not teacher.training for teacher in method.teachers)
    return output


@pytest.mark.parametrize("pair_index", range(len(PAIRS)))
@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_one_step_on_model_pairs(name, pair_index):
    torch.manual_seed(pair_index)
    pair = PAIRS[pair_index]
    method = _build(name, pair)
    _one_step(method, pair[0])
    method.eval()
    with torch.no_grad():
        assert method(_batch(pair[0]).inputs).shape == (BATCH, NUM_CLASSES)


def test_feature_baselines_return_the_students_own_logits():
    pair = PAIRS[0]
    for name in ["fitnet", "at", "sp", "vid", "crd", "srrl", "semckd"]:
        method = _build(name, pair).eval()
        batch = _batch(pair[0])
        with torch.no_grad():
            assert torch.equal(method.training_step(batch).logits, method.student(batch.inputs))


def test_default_weights_follow_the_simkd_scripts():
    expected = {"fitnet": 100.0, "at": 1000.0, "sp": 3000.0, "vid": 1.0, "crd": 0.8, "srrl": 1.0, "semckd": 400.0}
    for name, weight in expected.items():
        config = METHODS.get(name).config_class()
        assert (config.weight, config.ce_weight, config.kd_weight, config.temperature) == (weight, 1.0, 1.0, 4.0)
    crd = METHODS.get("crd").config_class()
    assert (crd.embed_dim, crd.num_negatives, crd.nce_temperature, crd.momentum) == (128, 16384, 0.07, 0.5)
    dkd = METHODS.get("dkd").config_class()
    assert (dkd.ce_weight, dkd.alpha, dkd.beta, dkd.temperature, dkd.warmup_epochs) == (1.0, 1.0, 8.0, 4.0, 20)


def test_crd_memory_is_checkpointed():
    method = _build("crd", PAIRS[0])
    keys = method.state_dict().keys()
    assert {"memory.memory_student", "memory.memory_teacher", "memory.z_student", "memory.labels"} <= set(keys)
    assert method.memory.memory_student.shape == (40, 128)
