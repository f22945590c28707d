"""Fidelity metrics of big_vision's distill evaluator (evaluators/proj/distill/distance.py): top-k agreement and
the ``hard`` distance with label smoothing, on fixed logits against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.engine.evaluation import (
    AGREEMENT_TOP_K,
    HARD_LABEL_SMOOTHING,
    fidelity_sums,
    hard_distance,
    topk_agreement,
)
from kdistill.engine.loop import fit

from helpers import digits_config

# four samples, five classes; the teacher's top-1 is class 0 in every row
STUDENT = torch.tensor(
    [
        [5.0, 4.0, 3.0, 2.0, 1.0],  # teacher's class is the student's 1st
        [4.0, 5.0, 3.0, 2.0, 1.0],  # 2nd
        [3.0, 5.0, 4.0, 2.0, 1.0],  # 3rd
        [1.0, 5.0, 4.0, 3.0, 2.0],  # 5th
    ]
)
TEACHER = torch.tensor([[9.0, 0.0, 0.0, 0.0, 0.0]]).expand(4, 5)


def test_topk_agreement_counts_the_teachers_top1_among_the_students_top_k():
    assert topk_agreement(STUDENT, TEACHER, 1).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert topk_agreement(STUDENT, TEACHER, 3).tolist() == [1.0, 1.0, 1.0, 0.0]
    assert topk_agreement(STUDENT, TEACHER, 5).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert topk_agreement(STUDENT, TEACHER, 50).tolist() == [1.0] * 4  # k capped at the class count
    sums = fidelity_sums(STUDENT, TEACHER)
    assert (sums["agree"], sums["agree_top3"], sums["agree_top5"]) == (1, 3, 4)
    assert AGREEMENT_TOP_K == (3, 5)


def test_hard_distance_against_hand_computed_values():
    student = torch.tensor([[0.0, math.log(3.0)]])  # softmax = (1/4, 3/4)
    teacher = torch.tensor([[0.0, 1.0]])  # pseudo-label: class 1
    # no smoothing: cross-entropy against the teacher's class = -ln(3/4)
    assert hard_distance(student, teacher).item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    # ls = 0.1, K = 2: y = (0.1, 0.9); KL(y || p) = 0.1 ln(0.1 / 0.25) + 0.9 ln(0.9 / 0.75)
    expected = 0.1 * math.log(0.1 / 0.25) + 0.9 * math.log(0.9 / 0.75)
    assert hard_distance(student, teacher, 0.1).item() == pytest.approx(expected, rel=1e-6)
    # K = 3: big_vision spreads ls / (K - 1) over the other classes: y = (0.8, 0.1, 0.1) for ls = 0.2
    uniform = torch.zeros(1, 3)
    expected = 0.8 * math.log(0.8 * 3) + 2 * 0.1 * math.log(0.1 * 3)
    assert hard_distance(uniform, torch.tensor([[2.0, 0.0, 1.0]]), 0.2).item() == pytest.approx(expected, rel=1e-6)


def test_hard_distance_is_zero_when_the_student_predicts_the_smoothed_pseudo_label():
    smoothing = 0.2
    target = torch.tensor([[1 - smoothing, smoothing / 3, smoothing / 3, smoothing / 3]])  # teacher's class 0
    student = target.log() + 7.0  # softmax(student) == target
    teacher = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    assert hard_distance(student, teacher, smoothing).item() == pytest.approx(0.0, abs=1e-6)
    assert hard_distance(student, teacher, 0.0).item() > 0.0  # the unsmoothed distance still penalises it


def test_the_run_reports_every_fidelity_metric(tmp_path, digits_teacher):
    config = digits_config(tmp_path, "kd", "method.name=kd", f"teacher.checkpoint={digits_teacher}", "train.epochs=2")
    summary = fit(config, log=lambda _: None)
    top1, top3, top5 = (summary[f"final_test_agreement{s}"] for s in ("", "_top3", "_top5"))
    assert 50.0 < top1 <= top3 <= top5 <= 100.0
    assert summary["final_test_hard"] > 0.0 and summary["final_test_kl"] >= 0.0
    assert HARD_LABEL_SMOOTHING == 0.1
