"""Function matching (methods/funmatch.py), ce with mixup, and the teacher fine-tuning helpers (tune.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.config import load_config
from kdistill.contracts import Batch, DataInfo
from kdistill.methods.ce import CEConfig, CrossEntropy
from kdistill.methods.funmatch import FunctionMatching, FunMatchConfig, funmatch_loss
from kdistill.track import read_metrics, read_summary
from kdistill.tune import as_overrides, bit_hyperrule, lr_search

from helpers import digits_config

INFO = DataInfo(num_classes=4, input_shape=(1, 12, 12), num_train=64)


class Recorder(nn.Module):
    """A linear classifier that remembers the last inputs it saw."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(144, INFO.num_classes)
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        return self.linear(x.flatten(1))


def make_method(**options) -> FunctionMatching:
    return FunctionMatching(Recorder(1), [Recorder(2)], FunMatchConfig(**options), INFO)


def make_batch(size: int = 8, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        inputs=torch.randn(size, *INFO.input_shape, generator=g),
        targets=torch.randint(0, INFO.num_classes, (size,), generator=g),
        indices=torch.arange(size),
    )


def run_step(method: FunctionMatching, batch: Batch, seed: int = 5):
    augmented = method.augment_batch(batch, torch.Generator().manual_seed(seed))
    output = method.training_step(augmented)
    return augmented, output


# ----------------------------------------------------------------------------- loss


def test_kl_loss_against_hand_computed_value():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    for temperature in (1.0, 2.0, 10.0):
        total = 0.0
        for s_row, t_row in zip(student.tolist(), teacher.tolist()):
            zs = sum(math.exp(v / temperature) for v in s_row)
            zt = sum(math.exp(v / temperature) for v in t_row)
            p_s = [math.exp(v / temperature) / zs for v in s_row]
            p_t = [math.exp(v / temperature) / zt for v in t_row]
            total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
        expected = temperature**2 * total / 2
        assert funmatch_loss(student, teacher, "kl", temperature).item() == pytest.approx(expected, rel=1e-5)


def test_euclidean_distances_against_hand_computed_values():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    # logits: rows differ by (-1, 2, -0.5) and (-1, -2, 2): norms sqrt(5.25) and 3
    assert funmatch_loss(student, teacher, "euclidean_logits").item() == pytest.approx(
        (math.sqrt(5.25) + 3) / 2, rel=1e-5
    )
    assert funmatch_loss(student, teacher, "squared_logits").item() == pytest.approx((5.25 + 9) / 2, rel=1e-5)

    def log_softmax(row):
        z = math.log(sum(math.exp(v) for v in row))
        return [v - z for v in row]

    norms = [
        math.sqrt(sum((a - b) ** 2 for a, b in zip(log_softmax(s), log_softmax(t))))
        for s, t in zip(student.tolist(), teacher.tolist())
    ]
    assert funmatch_loss(student, teacher, "euclidean_log_probs").item() == pytest.approx(sum(norms) / 2, rel=1e-5)
    # the log-prob distance ignores a per-row shift of the logits, the logit distance does not
    shifted = student + torch.tensor([[5.0], [-3.0]])
    assert funmatch_loss(shifted, teacher, "euclidean_log_probs").item() == pytest.approx(sum(norms) / 2, rel=1e-4)
    assert funmatch_loss(shifted, teacher, "euclidean_logits").item() > 3
    # hard: cross-entropy against the teacher's argmax (classes 0 and 0: first of the tied row)
    assert funmatch_loss(student, teacher, "hard").item() == pytest.approx(
        F.cross_entropy(student, torch.tensor([0, 0])).item(), rel=1e-6
    )


@pytest.mark.parametrize("distance", ["kl", "euclidean_logits", "euclidean_log_probs", "squared_logits"])
def test_identical_logits_have_zero_distance_and_finite_gradient(distance):
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = funmatch_loss(logits, logits.detach(), distance, temperature=3.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_unknown_mode_or_distance_is_a_config_error():
    from kdistill.contracts import ConfigError

    with pytest.raises(ConfigError, match="valid: function_matching"):
        make_method(mode="mixup_everything")
    with pytest.raises(ConfigError, match="valid: kl"):
        make_method(distance="cosine")


# ----------------------------------------------------------------------------- what teacher and student see


@pytest.mark.parametrize("mode", ["function_matching", "consistent"])
def test_consistent_modes_feed_the_same_pixels_to_teacher_and_student(mode):
    method = make_method(mode=mode)
    batch = make_batch()
    augmented, _ = run_step(method, batch)
    student_seen, teacher_seen = method.student.seen, method.teacher.seen
    assert "teacher_inputs" not in augmented.extras
    assert torch.equal(student_seen, teacher_seen)
    assert not torch.equal(student_seen, batch.inputs), "the batch should have been augmented"
    assert method.use_mixup == (mode == "function_matching")


def test_function_matching_mixes_and_consistent_does_not():
    """Without crop and flip the views are exactly the mixup (function matching) or the input (consistent)."""
    batch = make_batch()
    fm = make_method(crop=False, flip=False)
    augmented, _ = run_step(fm, batch, seed=3)
    ratio = torch.rand((), generator=torch.Generator().manual_seed(3))  # the first draw of the generator
    expected = ratio * batch.inputs + (1 - ratio) * torch.roll(batch.inputs, 1, 0)
    torch.testing.assert_close(augmented.inputs, expected)
    consistent = make_method(mode="consistent", crop=False, flip=False)
    assert not consistent.traits.augments_batches
    assert consistent.augment_batch(batch, torch.Generator()) is batch


def test_independent_noise_feeds_different_pixels():
    method = make_method(mode="independent_noise")
    batch = make_batch()
    augmented, _ = run_step(method, batch)
    assert torch.equal(method.teacher.seen, augmented.extras["teacher_inputs"])
    assert torch.equal(method.student.seen, augmented.inputs)
    assert not torch.equal(method.student.seen, method.teacher.seen)
    assert method.student.seen.shape == method.teacher.seen.shape


def test_fixed_teacher_sees_the_original_and_the_student_an_augmented_view():
    method = make_method(mode="fixed_teacher")
    batch = make_batch()
    run_step(method, batch)
    assert torch.equal(method.teacher.seen, batch.inputs)
    assert not torch.equal(method.student.seen, batch.inputs)


def test_fixed_teacher_input_is_resized_to_the_crop_size():
    method = make_method(mode="fixed_teacher", crop_size=8)
    batch = make_batch()
    augmented = method.augment_batch(batch, torch.Generator().manual_seed(0))
    assert augmented.inputs.shape == (8, 1, 8, 8)
    assert augmented.extras["teacher_inputs"].shape == (8, 1, 8, 8)
    torch.testing.assert_close(
        augmented.extras["teacher_inputs"], F.interpolate(batch.inputs, size=(8, 8), mode="bilinear", antialias=True)
    )


def test_augmentation_replays_from_the_generator_seed():
    method = make_method()
    batch = make_batch()
    first = method.augment_batch(batch, torch.Generator().manual_seed(11)).inputs
    again = method.augment_batch(batch, torch.Generator().manual_seed(11)).inputs
    assert torch.equal(first, again)


@pytest.mark.parametrize("mode", ["function_matching", "consistent", "independent_noise", "fixed_teacher"])
def test_no_label_is_read_by_the_loss(mode):
    method = make_method(mode=mode)
    assert method.traits.uses_labels is False
    batch = make_batch()
    scrambled = Batch(inputs=batch.inputs, targets=torch.full((8,), 3), indices=batch.indices)
    _, output = run_step(method, batch, seed=7)
    _, output_scrambled = run_step(method, scrambled, seed=7)
    assert output.loss.item() == output_scrambled.loss.item()
    no_labels = Batch(inputs=batch.inputs, targets=torch.full((8,), -100), indices=batch.indices)
    assert run_step(method, no_labels, seed=7)[1].loss.item() == output.loss.item()


@pytest.mark.parametrize("mode", ["function_matching", "independent_noise", "fixed_teacher"])
def test_one_step_updates_the_student_and_not_the_teacher(mode):
    method = make_method(mode=mode, temperature=2.0)
    method.train()
    teacher_before = [p.detach().clone() for p in method.teacher.parameters()]
    student_before = [p.detach().clone() for p in method.student.parameters()]
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.5)
    _, output = run_step(method, make_batch())
    output.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, method.teacher.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(student_before, method.student.parameters()))
    assert not method.teacher.training


# ----------------------------------------------------------------------------- ce with mixup


def make_ce(alpha: float) -> CrossEntropy:
    return CrossEntropy(Recorder(1), [], CEConfig(mixup_alpha=alpha), INFO)


def test_ce_without_mixup_is_unchanged():
    method = make_ce(0.0)
    assert not method.traits.augments_batches
    batch = make_batch()
    assert method.augment_batch(batch, torch.Generator()) is batch
    output = method.training_step(batch)
    expected = F.cross_entropy(method.student(batch.inputs), batch.targets)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_ce_mixup_mixes_inputs_and_the_loss_is_the_mixed_cross_entropy():
    method = make_ce(0.4)
    assert method.traits.augments_batches
    batch = make_batch()
    augmented = method.augment_batch(batch, torch.Generator().manual_seed(2))
    ratio = augmented.extras["mixup_ratio"]
    partner = augmented.extras["mixup_partner"]
    assert ratio.shape == (8,) and (ratio == ratio[0]).all(), "one ratio per batch"
    assert (partner != torch.arange(8)).all()
    torch.testing.assert_close(augmented.inputs, ratio[0] * batch.inputs + (1 - ratio[0]) * batch.inputs[partner])
    output = method.training_step(augmented)
    logits = method.student(augmented.inputs)
    log_probs = logits.log_softmax(1).tolist()
    lam = ratio[0].item()
    expected = (
        sum(
            -(lam * row[batch.targets[i]] + (1 - lam) * row[batch.targets[partner[i]]])
            for i, row in enumerate(log_probs)
        )
        / 8
    )
    assert output.loss.item() == pytest.approx(expected, rel=1e-5)


def test_ce_mixup_alpha_is_read_from_yaml_overrides():
    config = load_config(overrides=["method.name=ce", "method.mixup_alpha=0.1"])
    assert config.method.mixup_alpha == 0.1


# ----------------------------------------------------------------------------- tune.py


def test_bit_hyperrule_small_dataset():
    """Flowers102: 1,020 images, batch 64 -> 15 steps/epoch; 500 steps, warmup 100, decays at 200/300/400."""
    rule = bit_hyperrule(num_train=1020, image_size=224, batch_size=64)
    assert rule["optim.name"] == "sgd" and rule["optim.momentum"] == 0.9 and rule["optim.weight_decay"] == 0.0
    assert rule["optim.lr"] == pytest.approx(0.003 * 64 / 512)
    assert rule["schedule.name"] == "step" and rule["schedule.gamma"] == 0.1
    assert rule["schedule.warmup_steps"] == 100
    assert rule["train.epochs"] == math.ceil(500 / 15) == 34
    assert rule["schedule.milestone_steps"] == [200, 300, 400] and rule["schedule.milestones"] == []
    assert rule["method.mixup_alpha"] == 0.0
    assert rule["data.image_size"] == 480  # 224x224 >= 96x96: 512 -> 480


def test_bit_hyperrule_medium_and_large_datasets():
    medium = bit_hyperrule(num_train=68_175, image_size=(32, 32), batch_size=512)  # steps/epoch 133
    assert medium["optim.lr"] == pytest.approx(0.003)
    assert medium["schedule.warmup_steps"] == 500
    assert medium["train.epochs"] == math.ceil(10_000 / 133) == 76
    assert medium["schedule.milestone_steps"] == [3000, 6000, 9000]
    assert medium["method.mixup_alpha"] == 0.1
    assert medium["data.image_size"] == 128  # 32x32 < 96x96: 160 -> 128
    large = bit_hyperrule(num_train=1_281_167, image_size=224, batch_size=1024)  # steps/epoch 1251
    assert large["optim.lr"] == pytest.approx(0.006)
    assert large["train.epochs"] == math.ceil(20_000 / 1251) == 16
    assert large["schedule.milestone_steps"] == [6000, 12000, 18000]
    assert bit_hyperrule(num_train=19_999, image_size=64)["method.mixup_alpha"] == 0.0
    assert bit_hyperrule(num_train=20_000, image_size=64)["method.mixup_alpha"] == 0.1


def test_bit_hyperrule_overrides_apply_to_a_config():
    base = load_config(overrides=["method.name=ce"])
    from kdistill.config import replace

    config = replace(base, as_overrides(bit_hyperrule(num_train=3680, image_size=224, batch_size=32)))
    assert config.optim.lr == pytest.approx(0.003 / 16)
    # 115 steps/epoch: 500 steps -> 5 epochs; decays exactly at steps 200/300/400
    assert config.schedule.milestone_steps == [200, 300, 400] and config.train.epochs == 5
    assert config.method.mixup_alpha == 0.0 and config.data.augment == "resize_crop"


def test_lr_search_is_the_tune_sweep_ranked_by_best_validation_accuracy(tmp_path):
    base = digits_config(tmp_path, "teacher", "train.epochs=2")
    result = lr_search(base, [0.001, 0.2], [2], log=lambda _: None)
    assert [row["optim.lr"] for row in result.points] == [0.2, 0.001]  # digits learn nothing in 2 epochs at 1e-3
    assert [row["objective"] for row in result.points] == [
        read_summary(tmp_path / "sweeps" / "teacher-tune" / "runs" / f"{row['point']}-seed0")["best_val_acc"]
        for row in result.points
    ]


# ----------------------------------------------------------------------------- a real run


def test_funmatch_student_learns_the_teachers_function_on_real_digits(tmp_path, digits_teacher):
    from kdistill.engine.loop import fit

    config = digits_config(
        tmp_path,
        "funmatch",
        "method.name=funmatch",
        f"teacher.checkpoint={digits_teacher}",
        "method.temperature=2.0",
        "method.crop_area_min=0.5",
        "train.epochs=6",
        "optim.lr=0.2",
    )
    summary = fit(config, log=lambda _: None)
    assert summary["final_test_agreement"] > 70.0, summary
    assert summary["final_test_acc"] > 60.0, summary
    metrics = read_metrics(summary["run_dir"])
    assert "train_acc" not in metrics[-1], "funmatch reads no labels, so no train accuracy is logged"
