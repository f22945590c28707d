"""The loop on real data (scikit-learn digits): learning, resume equivalence, run directories,
export, and the errors for bad input (class-count mismatch, corrupt checkpoint, NaN loss)."""

from __future__ import annotations

import json

import pytest
import torch

from kdistill.api import evaluate_checkpoint
from kdistill.contracts import CheckpointError, ConfigError, TrainingDivergedError
from kdistill.engine.export import load_student
from kdistill.engine.loop import fit
from kdistill.models.loading import read_checkpoint
from kdistill.track import read_metrics

from helpers import digits_config

QUIET = {"log": lambda _: None}


def test_student_learns_on_real_digits_and_writes_its_run_directory(tmp_path):
    summary = fit(digits_config(tmp_path, "mlp"), **QUIET)
    assert summary["final_test_acc"] > 80.0  # chance is 10%
    run = tmp_path / "mlp"
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "student.pt", "summary.json"):
        assert (run / name).is_file(), name
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert {"train_ce", "train_loss", "lr", "train_acc", "val_acc", "test_acc", "test_top5", "epoch_time_s"} <= set(
        metrics[-1]
    )
    assert metrics[-1]["val_acc"] > metrics[0]["val_acc"] - 5
    assert json.loads((run / "summary.json").read_text())["best_epoch"] in (1, 2, 3)
    assert not list(run.glob(".*.tmp")), "temporary checkpoint files left behind"


def test_kd_student_learns_from_a_real_teacher_and_reports_fidelity(tmp_path, digits_teacher):
    config = digits_config(
        tmp_path, "kd", "method.name=kd", f"teacher.checkpoint={digits_teacher}", "method.temperature=4"
    )
    summary = fit(config, **QUIET)
    assert summary["final_test_acc"] > 80.0
    assert summary["teacher_test_acc"] > 85.0
    assert 50.0 < summary["final_test_agreement"] <= 100.0 and summary["final_test_kl"] >= 0.0
    metrics = read_metrics(tmp_path / "kd")
    assert {"train_kd", "train_ce"} <= set(metrics[0])
    assert metrics[0]["train_loss"] == pytest.approx(metrics[0]["train_kd"] + metrics[0]["train_ce"], rel=1e-5)


def test_teacher_cache_gives_the_same_training_as_running_the_teacher(tmp_path, digits_teacher):
    base = ["method.name=kd", f"teacher.checkpoint={digits_teacher}", "train.epochs=1"]
    cached = fit(digits_config(tmp_path, "cached", *base), **QUIET)
    live = fit(digits_config(tmp_path, "live", *base, "train.cache_teacher_outputs=false"), **QUIET)
    a = read_checkpoint(tmp_path / "cached" / "last.pt")["method_state"]
    b = read_checkpoint(tmp_path / "live" / "last.pt")["method_state"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert cached["final_test_acc"] == pytest.approx(live["final_test_acc"], abs=0.3)
    # the cache was really used: every training step was served from it and the teacher never ran in a step
    trained_samples = read_metrics(tmp_path / "cached")[-1]["step"] * 64  # optimisation steps x batch size
    assert cached["teacher_train_logits_cached"] is True and live["teacher_train_logits_cached"] is False
    assert cached["teacher_cache_hits"] == trained_samples and cached["teacher_live_samples"] == 0
    assert live["teacher_cache_hits"] == 0 and live["teacher_live_samples"] == trained_samples


def test_resume_is_exact(tmp_path):
    """2 epochs straight == 1 epoch, stop, resume, 1 more: same final weights (with dropout and
    random crops/flips, so RNG state must be restored too)."""
    extra = ["student.kwargs={hidden: [32], dropout: 0.2}", "data.augment=crop_flip", "train.epochs=2"]
    fit(digits_config(tmp_path, "straight", *extra), **QUIET)
    interrupted = digits_config(tmp_path, "resumed", *extra)
    partial = fit(interrupted, stop_after_epochs=1, **QUIET)
    assert partial["finished"] is False and not (tmp_path / "resumed" / "student.pt").exists()
    fit(interrupted, resume=True, **QUIET)
    straight = read_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = read_checkpoint(tmp_path / "resumed" / "last.pt")
    assert straight["epoch"] == resumed["epoch"] == 2
    for key, value in straight["method_state"].items():
        assert torch.equal(value, resumed["method_state"][key]), key
    assert [m["epoch"] for m in read_metrics(tmp_path / "resumed")] == [1, 2]


def test_epoch_checkpoints_rotate(tmp_path):
    fit(digits_config(tmp_path, "run", "train.keep_checkpoints=2", "train.epochs=3"), **QUIET)
    assert sorted(p.name for p in (tmp_path / "run").glob("epoch_*.pt")) == ["epoch_00002.pt", "epoch_00003.pt"]
    assert read_checkpoint(tmp_path / "run" / "epoch_00003.pt")["epoch"] == 3


def test_resume_refuses_a_changed_recipe(tmp_path):
    fit(digits_config(tmp_path, "run", "train.epochs=1"), **QUIET)
    with pytest.raises(ConfigError, match="optim.lr"):
        fit(digits_config(tmp_path, "run", "train.epochs=1", "optim.lr=0.5"), resume=True, **QUIET)


def test_existing_run_directory_is_not_silently_overwritten(tmp_path):
    fit(digits_config(tmp_path, "run", "train.epochs=1"), **QUIET)
    with pytest.raises(ConfigError, match="already exists"):
        fit(digits_config(tmp_path, "run", "train.epochs=1"), **QUIET)


def test_exported_student_reproduces_the_run_and_evaluates(tmp_path):
    summary = fit(digits_config(tmp_path, "run"), **QUIET)
    module, config, info = load_student(tmp_path / "run" / "student.pt")
    assert info.num_classes == 10 and config.name == "run"
    result = evaluate_checkpoint(tmp_path / "run")
    assert result["acc"] == pytest.approx(summary["final_test_acc"])
    assert result["samples"] == 359


def test_teacher_with_another_class_count_is_rejected(digits_teacher):
    from kdistill.config import ModelConfig
    from kdistill.models import build_model

    # The digits teacher has 10 outputs; a 26-class dataset must not load it silently.
    with pytest.raises(CheckpointError, match="another shape.*number of classes"):
        build_model(ModelConfig(checkpoint=digits_teacher), num_classes=26, input_shape=(1, 8, 8), where="teacher")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, digits_teacher):
    from pathlib import Path

    data = (Path(digits_teacher) / "student.pt").read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(broken)
    with pytest.raises(CheckpointError, match="does not exist.*kdistill train"):
        read_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_digest_is_verified(tmp_path, digits_teacher):
    from kdistill.config import ModelConfig
    from kdistill.models import build_model
    from kdistill.models.loading import sha256_of

    path = f"{digits_teacher}/student.pt"
    good = build_model(ModelConfig(checkpoint=path, sha256=sha256_of(path)), 10, (1, 8, 8))
    assert good is not None
    with pytest.raises(CheckpointError, match="sha256"):
        build_model(ModelConfig(checkpoint=path, sha256="0" * 64), 10, (1, 8, 8))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from kdistill.methods.ce import CrossEntropy

    config = digits_config(tmp_path, "run", "train.epochs=2")
    fit(config, stop_after_epochs=1, **QUIET)
    good = read_checkpoint(tmp_path / "run" / "last.pt")
    original_step = CrossEntropy.training_step

    def diverging_step(self, batch):
        output = original_step(self, batch)
        output.losses["ce"] = output.losses["ce"] * float("nan")
        return output

    monkeypatch.setattr(CrossEntropy, "training_step", diverging_step)
    with pytest.raises(TrainingDivergedError, match="NaN or infinite at step 1 of epoch 2"):
        fit(config, resume=True, **QUIET)
    after = read_checkpoint(tmp_path / "run" / "last.pt")
    assert after["epoch"] == 1
    assert all(torch.equal(good["method_state"][k], after["method_state"][k]) for k in good["method_state"])


def test_distill_without_a_teacher_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="needs trained weights|distils from a teacher"):
        fit(digits_config(tmp_path, "run", "method.name=kd"), **QUIET)
