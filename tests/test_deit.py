"""DeiT (``deit``): its losses against hand computations and facebookresearch/deit's ``losses.py``; the method's
wiring (which head learns what, the teacher cache, unlabelled samples, students it refuses); a real digits run whose
ViT student learns and exports to ONNX with parity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdistill.config import ModelConfig, load_config
from kdistill.contracts import Batch, ConfigError, DataInfo
from kdistill.data import build_data
from kdistill.deploy import export_run
from kdistill.engine.builders import preflight
from kdistill.engine.export import load_student
from kdistill.engine.loop import fit
from kdistill.methods import METHODS
from kdistill.methods.deit import DeiT, DeiTConfig, deit_loss, has_distillation_token, student_heads
from kdistill.models import InputAdapter, InputSpec, build_model, count_parameters
from kdistill.models.vit import VisionTransformer

from helpers import digits_config

# two samples, three classes
CLASS_LOGITS = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
DISTILLATION_LOGITS = [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
TEACHER_LOGITS = [[0.1, 3.0, 0.2], [0.0, 0.0, 5.0]]  # argmax: 1, 2
TARGETS = [0, 2]


def tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(CLASS_LOGITS, dtype=torch.float64),
        torch.tensor(DISTILLATION_LOGITS, dtype=torch.float64),
        torch.tensor(TARGETS),
        torch.tensor(TEACHER_LOGITS, dtype=torch.float64),
    )


def cross_entropy(row: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[label]


def softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def kl(teacher_row: list[float], student_row: list[float], temperature: float) -> float:
    """KL(softmax(teacher / T) || softmax(student / T)) of one sample."""
    pairs = zip(softmax(teacher_row, temperature), softmax(student_row, temperature))
    return sum(p_t * math.log(p_t / p_s) for p_t, p_s in pairs)


def reference_distillation_loss(outputs, outputs_kd, labels, teacher_outputs, distillation_type, alpha, tau, base):
    """facebookresearch/deit ``losses.py`` ``DistillationLoss.forward`` (lines 34-70, commit 7e160fe), the teacher's
    outputs given instead of run, ``base`` the base criterion."""
    base_loss = base(outputs, labels)
    if distillation_type == "soft":
        T = tau
        distillation_loss = (
            F.kl_div(
                F.log_softmax(outputs_kd / T, dim=1),
                F.log_softmax(teacher_outputs / T, dim=1),
                reduction="sum",
                log_target=True,
            )
            * (T * T)
            / outputs_kd.numel()
        )
    else:
        distillation_loss = F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
    return base_loss * (1 - alpha) + distillation_loss * alpha


# ----------------------------------------------------------------------------- the losses


def test_hard_distillation_is_half_label_ce_and_half_teacher_argmax_ce():
    losses = deit_loss(*tensors())  # defaults: hard, lambda 1/2
    assert set(losses) == {"ce", "kd"}
    ce = (math.log(math.exp(2) + 2) - 2 + math.log(2 + math.e)) / 2  # labels 0 and 2
    teacher_ce = (cross_entropy(DISTILLATION_LOGITS[0], 1) + cross_entropy(DISTILLATION_LOGITS[1], 2)) / 2
    assert teacher_ce == pytest.approx(math.log(2 + math.e))  # both samples: log(e + 2) - 0
    assert losses["ce"].item() == pytest.approx(0.5 * ce)
    assert losses["kd"].item() == pytest.approx(0.5 * 1.5514447139320509)


@pytest.mark.parametrize("temperature, weight", [(1.0, 0.5), (2.0, 0.3), (4.0, 0.9)])
def test_soft_distillation_is_the_weighted_t2_kl_of_each_sample_averaged(temperature, weight):
    losses = deit_loss(*tensors(), "soft", weight, temperature)
    kl_mean = sum(kl(t, s, temperature) for t, s in zip(TEACHER_LOGITS, DISTILLATION_LOGITS)) / 2
    ce = sum(cross_entropy(row, label) for row, label in zip(CLASS_LOGITS, TARGETS)) / 2
    assert losses["kd"].item() == pytest.approx(weight * temperature**2 * kl_mean)
    assert losses["ce"].item() == pytest.approx((1 - weight) * ce)
    # the reference code's reduction: the summed KL over batch * classes, i.e. the batch mean over K = 3
    numel = deit_loss(*tensors(), "soft", weight, temperature, kl_reduction="numel")
    assert numel["kd"].item() == pytest.approx(weight * temperature**2 * kl_mean / 3)
    assert numel["ce"].item() == pytest.approx(losses["ce"].item())


@pytest.mark.parametrize("distillation_type", ["hard", "soft"])
@pytest.mark.parametrize("alpha, tau", [(0.5, 1.0), (0.2, 3.0)])
def test_the_losses_reproduce_the_reference_distillation_loss(distillation_type, alpha, tau):
    class_logits, distillation_logits, targets, teacher_logits = tensors()
    reference = reference_distillation_loss(
        class_logits, distillation_logits, targets, teacher_logits, distillation_type, alpha, tau, F.cross_entropy
    )
    ours = deit_loss(*tensors(), distillation_type, alpha, tau, kl_reduction="numel")
    assert sum(ours.values()).item() == pytest.approx(reference.item(), rel=1e-12)


def test_label_smoothing_is_the_references_label_smoothing_cross_entropy():
    timm_loss = pytest.importorskip("timm.loss")  # main.py line 363's base criterion
    class_logits, distillation_logits, targets, teacher_logits = tensors()
    base = timm_loss.LabelSmoothingCrossEntropy(smoothing=0.1)
    reference = reference_distillation_loss(
        class_logits, distillation_logits, targets, teacher_logits, "hard", 0.5, 1.0, base
    )
    ours = deit_loss(*tensors(), "hard", 0.5, label_smoothing=0.1)
    assert sum(ours.values()).item() == pytest.approx(reference.item(), rel=1e-12)
    assert ours["ce"].item() != pytest.approx(deit_loss(*tensors())["ce"].item())


def test_known_properties_of_the_soft_term():
    class_logits, _, targets, teacher_logits = tensors()
    same = deit_loss(class_logits, teacher_logits + 7.0, targets, teacher_logits, "soft", 0.5, 2.0)  # shift-invariant
    assert same["kd"].item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="valid: hard, soft"):
        deit_loss(*tensors(), "none")
    with pytest.raises(ValueError, match="valid: batchmean, numel"):
        deit_loss(*tensors(), "soft", kl_reduction="mean")


def test_unlabelled_samples_add_nothing_to_the_label_term_and_still_learn_the_teacher():
    class_logits, distillation_logits, _, teacher_logits = tensors()
    partial = deit_loss(class_logits, distillation_logits, torch.tensor([0, -1]), teacher_logits)
    full = deit_loss(*tensors())
    assert partial["ce"].item() == pytest.approx(0.5 * cross_entropy(CLASS_LOGITS[0], 0) / 2)  # over all B samples
    assert partial["kd"].item() == pytest.approx(full["kd"].item())


def test_config_defaults_are_the_references_and_bad_values_are_named():
    config = DeiTConfig()
    assert (config.distillation_type, config.distillation_weight, config.temperature) == ("hard", 0.5, 1.0)
    assert config.kl_reduction == "batchmean" and config.label_smoothing == 0.0 and config.name == "deit"
    problems = DeiTConfig(distillation_type="none", distillation_weight=1.5, kl_reduction="sum").problems()
    assert any("distillation_type='none'; valid: hard, soft" in p for p in problems)
    assert any("distillation_weight=1.5 must be in [0, 1]" in p for p in problems)
    assert any("kl_reduction='sum'; valid: batchmean, numel" in p for p in problems)


# ----------------------------------------------------------------------------- the method

INPUT_SHAPE = (1, 16, 16)
INFO = DataInfo(num_classes=5, input_shape=INPUT_SHAPE, num_train=12, batch_size=6)
TEACHER = ModelConfig(name="cnn", kwargs={"channels": [8, 16], "padding": 1, "batch_norm": True, "head": "avg"})
VIT = {"patch_size": 4, "depth": 2, "width": 16, "heads": 2}


def build_deit(student: ModelConfig | None = None, **overrides) -> DeiT:
    torch.manual_seed(0)
    student = student or ModelConfig(name="vit", kwargs={**VIT, "distillation_token": True})
    method = DeiT(
        build_model(student, 5, INPUT_SHAPE), [build_model(TEACHER, 5, INPUT_SHAPE)], DeiTConfig(**overrides), INFO
    )
    return method.train()


def batch(targets: list[int] | None = None) -> Batch:
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor(targets) if targets is not None else torch.randint(0, 5, (6,), generator=generator)
    return Batch(torch.randn(6, *INPUT_SHAPE, generator=generator), labels, torch.arange(6) * 2)


@pytest.mark.parametrize(
    "student",
    [
        ModelConfig(name="cnn", kwargs={"channels": [4], "head": "avg"}),
        ModelConfig(name="vit", kwargs=VIT),  # a ViT without the token
    ],
)
def test_a_student_without_a_distillation_token_is_refused_with_the_fix(student):
    with pytest.raises(ConfigError, match=r"no distillation token.*student.kwargs.distillation_token=true"):
        build_deit(student)


def test_deit_is_registered_as_a_response_method_the_teacher_cache_can_serve():
    assert METHODS.get("deit") is DeiT
    traits = DeiT.traits
    assert traits.kind == "response" and traits.teacher_logits_only and traits.partial_labels
    assert traits.needs_teacher and traits.max_teachers == 1


@pytest.mark.parametrize("distillation_type", ["hard", "soft"])
def test_a_step_reads_cached_teacher_logits_and_gives_the_mean_of_the_heads(distillation_type):
    method = build_deit(distillation_type=distillation_type, temperature=2.0)
    table = torch.randn(INFO.num_train, 5, generator=torch.Generator().manual_seed(3))  # (N_train, K)
    method.attach_teacher_cache(table)
    b = batch()
    output = method.training_step(b)
    assert method.teacher_outputs.live_samples == 0 and method.teacher_outputs.hits == 6  # the teacher did not run
    class_logits, distillation_logits = method.student.forward_heads(b.inputs)
    expected = deit_loss(class_logits, distillation_logits, b.targets, table[b.indices], distillation_type, 0.5, 2.0)
    assert output.losses.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(output.losses[key], expected[key])
    torch.testing.assert_close(output.logits, (class_logits + distillation_logits) / 2)


@pytest.mark.parametrize(
    "weight, taught, untaught", [(1.0, "head_distillation", "head"), (0.0, "head", "head_distillation")]
)
def test_the_class_head_learns_the_labels_and_the_distillation_head_the_teacher(weight, taught, untaught):
    """lambda = 1: only the teacher's term, which reaches the distillation head and not the class head; lambda = 0:
    only the labels' term, the other way round. Both reach the shared blocks; the teacher gets no gradient."""
    method = build_deit(distillation_weight=weight)
    method.training_step(batch()).loss.backward()
    student = method.student
    assert getattr(student, taught).weight.grad.abs().sum() > 0
    assert getattr(student, untaught).weight.grad.abs().sum() == 0
    assert student.blocks[0].linear1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())


def test_a_step_with_unlabelled_samples_trains_from_the_teacher_alone():
    method = build_deit()
    output = method.training_step(batch([-1] * 6))
    assert output.losses["ce"].item() == 0.0 and output.losses["kd"].item() > 0
    output.loss.backward()
    assert method.student.head_distillation.weight.grad.abs().sum() > 0
    config = load_config(
        overrides=["method.name=deit", "teacher.name=cnn", "student.name=vit", "data.name=digits", "data.labelled=100"]
    )
    preflight(config, output=False)  # data.labelled is accepted: the loss takes unlabelled samples


def test_the_deployed_student_is_the_student_whose_forward_averages_the_heads():
    method = build_deit()
    assert method.student_for_export() is method.student and list(method.deployables()) == ["student"]
    assert method.deployed_parameters()["params_deployed"] == count_parameters(method.student)
    method.eval()
    x = batch().inputs
    with torch.no_grad():
        class_logits, distillation_logits = method.student.forward_heads(x)
        torch.testing.assert_close(method(x), (class_logits + distillation_logits) / 2)


def test_a_student_behind_an_input_adapter_gives_its_heads_on_the_adapted_inputs():
    torch.manual_seed(0)
    vit = build_model(ModelConfig(name="vit", kwargs={**VIT, "distillation_token": True}), 5, INPUT_SHAPE).eval()
    adapter = InputAdapter(vit, InputSpec((0.2,), (0.5,)), InputSpec((0.5,), (0.25,)), channels=1)
    assert has_distillation_token(adapter) and not has_distillation_token(vit.head)
    x = batch().inputs
    with torch.no_grad():
        class_logits, distillation_logits = student_heads(adapter, x)
        torch.testing.assert_close(class_logits, vit.forward_heads(adapter.adapt(x))[0])
        torch.testing.assert_close((class_logits + distillation_logits) / 2, adapter(x))
        assert not torch.allclose(class_logits, vit.forward_heads(x)[0])  # the adaptation matters


def test_a_distilled_timm_deit_is_a_deit_student():
    pytest.importorskip("timm")  # the [timm] extra, installed in the project's venv
    kwargs = {"img_size": 16, "patch_size": 4, "depth": 1}  # a one-block DeiT-Tiny on 16x16
    method = build_deit(ModelConfig(name="timm:deit_tiny_distilled_patch16_224", kwargs=kwargs))
    output = method.training_step(batch())
    output.loss.backward()
    timm_model = method.student.model
    assert timm_model.head.weight.grad.abs().sum() > 0 and timm_model.head_dist.weight.grad.abs().sum() > 0
    assert timm_model.dist_token.grad.abs().sum() > 0
    class_logits, distillation_logits = method.student.forward_heads(batch().inputs)
    torch.testing.assert_close(output.logits, (class_logits + distillation_logits) / 2)


# ----------------------------------------------------------------------------- a real run


def test_a_digits_deit_student_learns_from_the_teacher_and_exports_with_parity(tmp_path, digits_teacher):
    config = digits_config(
        tmp_path,
        "deit",
        "method.name=deit",
        f"teacher.checkpoint={digits_teacher}",
        "student.name=vit",
        "student.kwargs={patch_size: 2, depth: 2, width: 32, heads: 4, distillation_token: true}",
        "optim.name=adamw",
        "optim.lr=0.003",
        "optim.weight_decay=0.05",
        "train.epochs=10",
    )
    summary = fit(config, log=lambda _: None)
    assert summary["final_test_acc"] > 70.0, summary  # chance: 10%
    assert summary["teacher_live_samples"] == 0 and summary["teacher_cache_hits"] > 0  # the cache served the teacher
    run = Path(summary["run_dir"])
    student, _, _ = load_student(run / "student.pt")
    teacher, _, _ = load_student(Path(digits_teacher) / "student.pt")
    assert isinstance(student, VisionTransformer) and student.has_distillation_token
    test = build_data(config.data, config.seed).test
    images = torch.stack([test[i][0] for i in range(len(test))])  # (N, 1, 8, 8)
    labels = torch.tensor([int(test[i][1]) for i in range(len(test))])
    with torch.no_grad():
        class_logits, distillation_logits = student.forward_heads(images)
        teacher_prediction = teacher(images).argmax(1)
    assert (class_logits.argmax(1) == labels).float().mean() > 0.6  # the class head learnt the labels
    assert (distillation_logits.argmax(1) == teacher_prediction).float().mean() > 0.6  # the other the teacher
    parity = export_run(run, "onnx")
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 100.0
    assert parity["accuracy_export"] == parity["accuracy_pytorch"] > 70.0
