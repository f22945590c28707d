"""The fast-path switches change speed, not what is trained: torch.compile keeps checkpoint keys and results,
bf16 autocast runs on the CPU, and the teacher runs under inference_mode without breaking the student's backward."""

from __future__ import annotations

from pathlib import Path

import torch

from kdistill.api import fit
from kdistill.engine.checkpoint import read_checkpoint
from kdistill.methods.base import TeacherOutputs

from helpers import digits_config

QUIET = {"log": lambda _: None}


def test_compiled_run_keeps_checkpoint_keys_and_results(tmp_path):
    plain = fit(digits_config(tmp_path, "plain", "train.epochs=2"), **QUIET)
    compiled = fit(digits_config(tmp_path, "compiled", "train.epochs=2", "train.compile=true"), **QUIET)
    plain_state = read_checkpoint(Path(plain["run_dir"]) / "last.pt")["method_state"]
    compiled_state = read_checkpoint(Path(compiled["run_dir"]) / "last.pt")["method_state"]
    assert plain_state.keys() == compiled_state.keys()  # no "_orig_mod." prefixes: resume and export unchanged
    for key, value in plain_state.items():
        assert torch.allclose(value, compiled_state[key], atol=1e-4), key
    assert abs(plain["final_test_acc"] - compiled["final_test_acc"]) < 1.0


def test_bf16_autocast_on_the_cpu_trains(tmp_path):
    summary = fit(digits_config(tmp_path, "bf16", "train.amp=true", "train.device=cpu"), **QUIET)
    assert summary["final_test_acc"] > 80.0  # digits MLP: ~90% in fp32 after 3 epochs


def test_teacher_logits_from_inference_mode_can_enter_the_students_loss():
    teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    inputs = torch.randn(5, 4)
    logits = TeacherOutputs([teacher]).of(inputs)
    assert not logits.is_inference() and not logits.requires_grad
    assert torch.equal(logits, teacher(inputs).detach())
    loss = (student(inputs).log_softmax(1) * logits.softmax(1)).sum()  # saves the teacher's logits for backward
    loss.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None
