"""CMI (contrastive model inversion): its losses on fixed inputs, the generator, the pool, and the acceptance check:
a batch synthesised from a digits teacher is classified by that teacher with high confidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdistill.config import ModelConfig
from kdistill.contracts import Batch, DataInfo
from kdistill.engine.export import load_student
from kdistill.methods import METHODS
from kdistill.methods.cmi import (
    Generator,
    adversarial_loss,
    batch_statistics,
    bn_statistics_loss,
    contrastive_loss,
    local_view,
    padded_random_crop,
)
from kdistill.models import build_model

RNG = np.random.default_rng(2)
SMALL = {
    "generator_steps": 3,
    "synthesis_batch_size": 8,
    "latent_dim": 16,
    "generator_width": 8,
    "head_dim": 8,
    "bank_size": 32,
    "negatives": 8,
    "pool_size": 24,
}


def test_contrastive_loss_hand_value():
    local, global_ = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4))
    logits = local @ global_.T / 0.2
    per_row = [np.log(np.exp(logits[i]).sum()) - logits[i, i] for i in range(3)]
    found = contrastive_loss(torch.tensor(local), torch.tensor(global_), 0.2, current=3).item()
    assert found == pytest.approx(np.mean(per_row))
    # rows beyond the current batch (memory-bank negatives) are averaged on their own and added
    split = contrastive_loss(torch.tensor(local), torch.tensor(global_), 0.2, current=2).item()
    assert split == pytest.approx(np.mean(per_row[:2]) + per_row[2])


def test_bn_statistics_loss_hand_value_and_zero_at_the_running_statistics():
    layer = nn.BatchNorm2d(2).eval()
    layer.running_mean.copy_(torch.tensor([0.5, -1.0]))
    layer.running_var.copy_(torch.tensor([2.0, 0.5]))
    x = torch.randn(4, 2, 3, 3)
    with batch_statistics(layer) as (means, variances, layers):
        layer(x)
    mean = x.mean((0, 2, 3))
    var = x.transpose(0, 1).flatten(1).var(1, unbiased=False)
    expected = torch.norm(torch.tensor([2.0, 0.5]) - var) + torch.norm(torch.tensor([0.5, -1.0]) - mean)
    assert bn_statistics_loss(means, variances, layers).item() == pytest.approx(expected.item(), rel=1e-6)
    layer.running_mean.copy_(mean)
    layer.running_var.copy_(var)
    assert bn_statistics_loss(means, variances, layers).item() == pytest.approx(0.0, abs=1e-6)
    assert not layer._forward_hooks, "the hooks are removed on exit"


def test_adversarial_loss_hand_value():
    student, teacher = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    p_s, p_t = student.softmax(1), teacher.softmax(1)
    kl_first = (p_t[0] * (p_t[0] / p_s[0]).log()).sum()  # only the first sample's classes agree
    assert adversarial_loss(student, teacher).item() == pytest.approx(-kl_first.item() / 2, rel=1e-6)
    assert adversarial_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_generator_and_views_keep_the_image_shape():
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 8, 8), (3, 32, 32), (1, 10, 6)]:
        net = Generator(16, 8, shape)
        net.reinitialise(generator)
        images = net(torch.randn(4, 16))
        assert images.shape == (4, *shape) and images.min() >= 0 and images.max() <= 1
        assert padded_random_crop(images, generator).shape == images.shape
        assert local_view(images, generator).shape == images.shape
    images = torch.rand(2, 1, 8, 8, requires_grad=True)
    local_view(images, generator).sum().backward()  # the views are differentiable
    assert images.grad is not None


def tiny_cmi(distill: str):
    torch.manual_seed(0)
    info = DataInfo(num_classes=5, input_shape=(1, 16, 16), num_train=32, batch_size=8)
    teacher = build_model(
        ModelConfig(name="cnn", kwargs={"channels": [8, 16], "padding": 1, "batch_norm": True, "head": "avg"}),
        5,
        (1, 16, 16),
    )
    student = build_model(
        ModelConfig(name="cnn", kwargs={"channels": [4, 8], "padding": 1, "batch_norm": True, "head": "avg"}),
        5,
        (1, 16, 16),
    )
    method_cls = METHODS.get("cmi")
    return method_cls(student, [teacher], method_cls.config_class(distill=distill, **SMALL), info)


@pytest.mark.parametrize("distill", ["kd", "simkd"])
def test_batches_are_replaced_by_pool_images_and_the_rounds_follow_the_schedule(distill):
    method = tiny_cmi(distill)
    method.config.synthesis_every = 2
    real = Batch(inputs=torch.randn(8, 1, 16, 16), targets=torch.arange(8) % 5, indices=torch.arange(8))
    teacher_before = [p.clone() for p in method.teacher.parameters()]
    out = method.augment_batch(real, torch.Generator().manual_seed(1))
    assert int(method.counters[5]) == 1 and int(method.counters[0]) == 8, "one round filled the pool with 8 images"
    assert out.inputs.shape == real.inputs.shape and not torch.equal(out.inputs, real.inputs)
    assert (out.targets == -1).all(), "no real label reaches a data-free method"
    again = method.augment_batch(real, torch.Generator().manual_seed(1))
    assert torch.equal(again.inputs, out.inputs), "a step without a round draws the same batch from the same stream"
    for seed in (2, 3):  # steps 2 (a round) and 3
        method.augment_batch(real, torch.Generator().manual_seed(seed))
    assert int(method.counters[5]) == 2 and int(method.counters[0]) == 16 and int(method.counters[2]) == 16
    for seed in (4, 5, 6, 7):  # rounds at steps 4 and 6
        method.augment_batch(real, torch.Generator().manual_seed(seed))
    assert int(method.counters[5]) == 4 and int(method.counters[2]) == 32
    assert int(method.counters[0]) == 24, "the pool is a ring of pool_size images"
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, method.teacher.parameters()))
    own = {id(p) for p in [*method.synthesizer.parameters(), *method.head.parameters()]}
    assert not own & {id(p) for p in method.trainable_parameters()}, "the generator and head train in synthesis"
    output = method.training_step(out)
    assert set(output.losses) == {distill}
    output.loss.backward()
    assert any(p.grad is not None for p in method.student.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())


def test_simkd_mode_exports_encoder_projector_and_teacher_head():
    method = tiny_cmi("simkd").eval()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        expected = method.teacher.classifier_head()(method.projectors[0](method.student.forward_features(x).final_map))
        assert torch.equal(method.student_for_export()(x), expected)
    counts = method.deployed_parameters()
    assert counts["params_projector"] == sum(p.numel() for p in method.projectors.parameters()) > 0
    assert tiny_cmi("kd").student_for_export() is not None and tiny_cmi("kd").deployed_parameters()[
        "params_deployed"
    ] == sum(p.numel() for p in method.student.parameters())


def test_cmi_synthesises_digits_the_teacher_classifies_with_high_confidence(digits_teacher):
    """The issue's acceptance: a synthesised batch from a digits teacher, classified confidently as its targets."""
    teacher, _, info = load_student(f"{digits_teacher}/student.pt")
    student = build_model(ModelConfig(name="mlp", kwargs={"hidden": [32]}), info.num_classes, info.input_shape)
    method_cls = METHODS.get("cmi")
    config = method_cls.config_class(
        distill="kd", generator_steps=80, generator_lr=0.01, synthesis_batch_size=64, bank_size=256, pool_size=256
    )
    method = method_cls(student, [teacher], config, info)
    torch.manual_seed(0)
    images = method.synthesize(torch.Generator().manual_seed(0))  # (64, 1, 8, 8) in [0, 1]
    with torch.no_grad():
        probabilities = method.teacher(method.normalise(images)).softmax(1)
    confidence = probabilities.max(1).values
    assert confidence.mean() > 0.85 and (confidence > 0.9).float().mean() > 0.6, confidence
    assert len(set(probabilities.argmax(1).tolist())) >= 8, "the batch covers the classes, not one mode"
    assert torch.equal(method.pool[:64], (images * 255).round().to(torch.uint8)), "the batch is the pool's first"
