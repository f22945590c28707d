"""Online and self-distillation: deep mutual learning (peers trained together, every peer evaluated and exported)
and Be Your Own Teacher (shallow classifiers of one network learn from its deepest one)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kdistill.api import evaluate_checkpoint
from kdistill.config import ModelConfig
from kdistill.contracts import Batch, ConfigError, DataInfo
from kdistill.deploy.export import export_run
from kdistill.engine.export import load_student
from kdistill.engine.loop import fit
from kdistill.methods.byot import BeYourOwnTeacher, BYOTConfig, feature_hint_loss, self_distillation_loss
from kdistill.methods.dml import DeepMutualLearning, DMLConfig, mutual_learning_loss
from kdistill.models import build_model
from kdistill.track import read_metrics

from helpers import digits_config

QUIET = {"log": lambda _: None}
LOG3 = math.log(3.0)


# ----------------------------------------------------------------------------- deep mutual learning: the loss


def test_mutual_learning_loss_against_hand_computed_values():
    peer = torch.tensor([[0.0, LOG3]])  # p = (1/4, 3/4)
    uniform = torch.tensor([[0.0, 0.0]])  # p = (1/2, 1/2)
    flipped = torch.tensor([[LOG3, 0.0]])  # p = (3/4, 1/4)
    # KL(uniform || peer) = 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4) = 1/2 ln(4/3)
    assert mutual_learning_loss(peer, [uniform]).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # KL(flipped || peer) = 3/4 ln 3 + 1/4 ln(1/3) = 1/2 ln 3; the paper's 1/(K-1) averages the two peers' terms
    expected = (0.5 * math.log(4 / 3) + 0.5 * LOG3) / 2
    assert mutual_learning_loss(peer, [uniform, flipped]).item() == pytest.approx(expected, rel=1e-6)
    # temperature 2 on doubled logits gives the same distributions, scaled by T^2 = 4
    assert mutual_learning_loss(2 * peer, [uniform], temperature=2.0).item() == pytest.approx(
        4 * 0.5 * math.log(4 / 3), rel=1e-6
    )


def test_mutual_learning_loss_is_zero_when_peers_agree_and_trains_only_its_own_peer():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator)
    assert mutual_learning_loss(logits, [logits.clone(), logits + 3.0]).item() == pytest.approx(0.0, abs=1e-6)
    own = torch.randn(6, 5, generator=generator, requires_grad=True)
    other = torch.randn(6, 5, generator=generator, requires_grad=True)
    mutual_learning_loss(own, [other]).backward()
    assert own.grad is not None and own.grad.abs().sum() > 0
    assert other.grad is None, "the other peer's prediction is a target: no gradient flows into it"


def test_every_peer_gets_its_own_terms_and_a_fresh_init():
    info = DataInfo(num_classes=4, input_shape=(1, 8, 8), num_train=32, batch_size=8)
    torch.manual_seed(0)
    student = build_model(ModelConfig(name="mlp", kwargs={"hidden": [16]}), 4, (1, 8, 8))
    method = DeepMutualLearning(student, [], DMLConfig(peers=3), info)
    assert len(method.peers) == 3 and method.peers[0] is student
    assert list(method.deployables()) == ["peer1", "peer2", "peer3"]
    first, second = (list(peer.parameters())[0] for peer in method.peers[:2])
    assert first.shape == second.shape and not torch.equal(first, second), "peers must start from different weights"
    batch = Batch(inputs=torch.randn(8, 1, 8, 8), targets=torch.arange(8) % 4, indices=torch.arange(8))
    output = method.training_step(batch)
    assert set(output.losses) == {f"{term}_peer{i}" for term in ("ce", "kl") for i in (1, 2, 3)}
    logits = [peer(batch.inputs) for peer in method.peers]
    expected = mutual_learning_loss(logits[1], [logits[0], logits[2]])
    assert output.losses["kl_peer2"].item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------- deep mutual learning: a real run


def test_mutual_learning_trains_two_students_on_digits_and_both_rise_well_above_chance(tmp_path):
    summary = fit(digits_config(tmp_path, "dml", "method.name=dml"), **QUIET)
    run = tmp_path / "dml"
    # chance is 10%; each peer is evaluated on its own
    assert summary["final_test_acc_peer1"] > 80.0 and summary["final_test_acc_peer2"] > 80.0
    assert summary["final_test_acc"] == summary["final_test_acc_peer1"]  # student.pt is the first peer
    metrics = read_metrics(run)
    assert {"train_ce_peer1", "train_kl_peer1", "train_ce_peer2", "train_kl_peer2", "val_acc_peer2"} <= set(metrics[-1])
    # every peer is exported and loads back alone, giving the accuracy the run reported for it
    for name in ("student", "peer1", "peer2"):
        assert (run / f"{name}.pt").is_file(), name
    for name in ("peer1", "peer2"):
        result = evaluate_checkpoint(run / f"{name}.pt")
        assert result["acc"] == pytest.approx(summary[f"final_test_acc_{name}"]), name
    peer1, _, _ = load_student(run / "peer1.pt")
    peer2, _, _ = load_student(run / "peer2.pt")
    student, _, _ = load_student(run / "student.pt")
    inputs = torch.randn(4, 1, 8, 8)
    assert torch.equal(student(inputs), peer1(inputs))
    assert not torch.equal(peer1(inputs), peer2(inputs)), "the two peers are two different networks"
    # a peer's export file deploys like student.pt (kdistill export <run>/peer2.pt)
    parity = export_run(run / "peer2.pt", "safetensors")
    assert Path(parity["file"]) == run / "export" / "peer2.safetensors" and parity["top1_agreement"] == 100.0
    assert (run / "export" / "parity_peer2_safetensors.json").is_file()


# ----------------------------------------------------------------------------- be your own teacher


def test_self_distillation_loss_against_hand_computed_values_and_its_zero():
    shallow = torch.tensor([[0.0, LOG3]])  # q = (1/4, 3/4) at T = 1
    deepest = torch.tensor([[0.0, 0.0]])  # q = (1/2, 1/2)
    assert self_distillation_loss(shallow, deepest, 1.0).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # T = 3 on tripled logits: the same distributions, times T^2 = 9
    assert self_distillation_loss(3 * shallow, deepest, 3.0).item() == pytest.approx(4.5 * math.log(4 / 3), rel=1e-6)
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert self_distillation_loss(logits, logits + 1.0, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_hint_loss_against_hand_computed_values_and_the_deepest_gets_no_gradient():
    shallow = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    deepest = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], requires_grad=True)
    # per sample: 1 + 4 + 0 = 5 and 1 + 1 + 1 = 3; mean 4
    loss = feature_hint_loss(shallow, deepest)
    assert loss.item() == pytest.approx(4.0)
    loss.backward()
    assert deepest.grad is None and shallow.grad is not None
    assert feature_hint_loss(deepest.detach(), deepest.detach()).item() == 0.0


def test_byot_wires_one_branch_per_shallow_stage_with_the_papers_weights():
    info = DataInfo(num_classes=5, input_shape=(1, 16, 16), num_train=32, batch_size=8)
    kwargs = {"channels": [4, 8, 16], "padding": 1, "batch_norm": True, "head": "avg"}
    student = build_model(ModelConfig(name="cnn", kwargs=kwargs), 5, (1, 16, 16))
    config = BYOTConfig(temperature=2.0, alpha=0.3, feature_weight=0.5)
    method = BeYourOwnTeacher(student, [], config, info)
    assert len(method.branches) == 2 and len(method.shallow_classifiers) == 2
    batch = Batch(inputs=torch.randn(8, 1, 16, 16), targets=torch.arange(8) % 5, indices=torch.arange(8))
    method.eval()  # BatchNorm in eval mode: the step and the hand computation see the same statistics
    output = method.training_step(batch)
    features = student.forward_features(batch.inputs)
    ce = torch.nn.functional.cross_entropy(features.logits, batch.targets)
    kd = hint = torch.zeros(())
    for stage, branch, classifier in zip(features.stages, method.branches, method.shallow_classifiers):
        shallow_features = branch(stage)
        shallow_logits = classifier(shallow_features)
        ce = ce + torch.nn.functional.cross_entropy(shallow_logits, batch.targets)
        kd = kd + self_distillation_loss(shallow_logits, features.logits, 2.0)
        hint = hint + feature_hint_loss(shallow_features, features.embedding)
    assert output.losses["ce"].item() == pytest.approx(0.7 * ce.item(), rel=1e-5)
    assert output.losses["kd"].item() == pytest.approx(0.3 * kd.item(), rel=1e-5)
    assert output.losses["feature"].item() == pytest.approx(0.5 * hint.item(), rel=1e-5)
    assert list(method.deployables()) == ["student"] and method.deployables()["student"] is student


def test_byot_needs_a_student_with_shallow_stages():
    info = DataInfo(num_classes=4, input_shape=(1, 8, 8), num_train=32, batch_size=8)
    student = build_model(ModelConfig(name="mlp", kwargs={"hidden": [16]}), 4, (1, 8, 8))
    with pytest.raises(ConfigError, match="at least two stages"):
        BeYourOwnTeacher(student, [], BYOTConfig(), info)


def test_byot_student_learns_on_digits_and_deploys_without_its_branches(tmp_path):
    config = digits_config(tmp_path, "byot", "method.name=byot", "student.kwargs={hidden: [64, 32]}")
    summary = fit(config, **QUIET)
    assert summary["final_test_acc"] > 80.0  # chance is 10%
    metrics = read_metrics(tmp_path / "byot")
    assert {"train_ce", "train_kd", "train_feature"} <= set(metrics[-1])
    student, _, _ = load_student(tmp_path / "byot" / "student.pt")
    assert summary["params_deployed"] == sum(p.numel() for p in student.parameters())
    assert summary["params_method_modules"] > 0  # the branches and shallow classifiers: trained, not deployed
