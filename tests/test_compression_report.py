"""`kdistill compare`: teacher vs distilled student on real digits runs (parameters, FLOPs, CPU speed, size,
accuracy)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from kdistill.cli import main
from kdistill.config import ModelConfig
from kdistill.engine.loop import fit
from kdistill.models import build_model
from kdistill.report.compression import SpeedSettings, compare_runs, count_flops, median_call_seconds

from helpers import digits_config

FAST = SpeedSettings(repeats=5, batch_repeats=2, warmup=1)


@pytest.fixture(scope="module")
def student_runs(digits_teacher, tmp_path_factory) -> list[str]:
    """Two KD students (MLPs of two widths) distilled from the one digits CNN teacher."""
    root = tmp_path_factory.mktemp("students")
    runs = []
    for name, hidden, epochs in (("kd_mlp32", 32, 3), ("kd_mlp16", 16, 1)):
        config = digits_config(
            root,
            name,
            "method.name=kd",
            f"teacher.checkpoint={digits_teacher}",
            f"student.kwargs={{hidden: [{hidden}]}}",
            f"train.epochs={epochs}",
        )
        runs.append(fit(config, log=lambda _: None)["run_dir"])
    return runs


@pytest.fixture(scope="module")
def report(student_runs, tmp_path_factory):
    return compare_runs(student_runs, tmp_path_factory.mktemp("report"), FAST)


def _summary(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def test_flop_counter_matches_hand_counts():
    # FlopCounterMode counts 2 FLOPs per multiply-add; biases and ReLU are not counted
    mlp = build_model(ModelConfig(name="mlp", kwargs={"hidden": [32]}), 10, (1, 8, 8))
    assert count_flops(mlp.eval(), (1, 8, 8)) == 2 * (64 * 32 + 32 * 10)
    conv = nn.Sequential(nn.Conv2d(1, 4, kernel_size=3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    assert count_flops(conv, (1, 8, 8)) == 2 * (6 * 6 * 4 * 3 * 3) + 2 * (4 * 6 * 6 * 10)


def test_timer_measures_the_call():
    class Sleeper(nn.Module):
        def forward(self, inputs):
            time.sleep(0.01)
            return inputs

    assert 0.01 <= median_call_seconds(Sleeper(), torch.zeros(1), repeats=3, warmup=0) < 0.5


def test_rows_list_the_shared_teacher_once_with_numbers_from_the_runs(report, student_runs, digits_teacher):
    teacher, *students = report.rows
    assert [row["role"] for row in report.rows] == ["teacher", "student (kd)", "student (kd)"]
    assert teacher["model"] == Path(digits_teacher).name and teacher["file_bytes"] == os.path.getsize(
        Path(digits_teacher) / "student.pt"
    )
    for row, run_dir in zip(students, student_runs):
        summary = _summary(run_dir)
        assert row["model"] == summary["name"] and row["teachers"] == [teacher["model"]]
        assert (
            row["parameters"] == summary["student_parameters"]
            and teacher["parameters"] == summary["teacher_parameters"][0]
        )
        assert teacher["parameters"] > row["parameters"] and teacher["flops_per_image"] > row["flops_per_image"] > 0
        assert row["file_bytes"] == os.path.getsize(Path(run_dir) / "student.pt")
        assert row["test_acc"] == summary["final_test_acc"] and row["test_agreement"] == summary["final_test_agreement"]
        assert teacher["test_acc"] == summary["teacher_test_acc"]
        assert row["compression"] == pytest.approx(teacher["parameters"] / row["parameters"])
        assert row["speedup"] == pytest.approx(teacher["latency_ms_batch1"] / row["latency_ms_batch1"])
    assert students[0]["flops_per_image"] == 2 * (64 * 32 + 32 * 10)  # the student measured is the exported MLP
    for row in report.rows:
        assert math.isfinite(row["latency_ms_batch1"]) and row["latency_ms_batch1"] > 0
        assert math.isfinite(row["throughput_batch64"]) and row["throughput_batch64"] > 0


def test_files_hold_the_same_table(report):
    assert report.files["md"].read_text().strip() == report.markdown
    assert f"{torch.get_num_threads()} thread(s)" in report.markdown
    with open(report.files["csv"]) as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["model"] for r in csv_rows] == [r["model"] for r in report.rows]
    assert [int(r["parameters"]) for r in csv_rows] == [r["parameters"] for r in report.rows]
    saved = json.loads(report.files["json"].read_text())
    assert saved["threads"] == torch.get_num_threads() and saved["rows"] == report.rows


def test_plot_has_one_labelled_point_per_model_and_a_distinct_teacher(report):
    axis = report.figure.axes[0]
    assert axis.get_xscale() == "log" and "latency" in axis.get_xlabel() and axis.get_ylabel() == "test accuracy (%)"
    points = {collection.get_label(): collection.get_offsets() for collection in axis.collections}
    assert len(points["teacher"]) == 1 and len(points["student"]) == 2
    teacher = report.rows[0]
    assert tuple(points["teacher"][0]) == pytest.approx((teacher["latency_ms_batch1"], teacher["test_acc"]))
    assert sorted(text.get_text() for text in axis.texts) == sorted(row["model"] for row in report.rows)
    assert report.files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_the_table_timed_with_the_requested_threads(student_runs, tmp_path, capsys):
    threads_before = torch.get_num_threads()
    command = ["compare", student_runs[0], "--out", str(tmp_path), "--repeats", "3", "--batch-repeats", "2"]
    assert main([*command, "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| model" in printed and "| teacher" in printed and "kd_mlp32" in printed and "speed-up x" in printed
    assert (
        printed.startswith("CPU, 1 thread(s)")
        and json.loads((tmp_path / "compression.json").read_text())["threads"] == 1
    )
    assert torch.get_num_threads() == threads_before  # the caller's setting is restored
    assert (tmp_path / "compression.png").is_file()


def _copy_without_student(run: str, tmp_path: Path) -> Path:
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    (copy / "student.pt").unlink()
    return copy


def _copy_with_missing_teacher(run: str, tmp_path: Path) -> Path:
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["teacher"]["checkpoint"] = str(tmp_path / "gone")
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    return copy


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda runs, teacher, tmp: tmp / "nowhere", "is not a directory"),
        (lambda runs, teacher, tmp: tmp, "is not a finished kdistill run: it has no config.yaml or summary.json"),
        (lambda runs, teacher, tmp: _copy_without_student(runs[0], tmp), "has no student.pt"),
        (lambda runs, teacher, tmp: teacher, "has no teacher in its config.yaml (method 'ce')"),
        (lambda runs, teacher, tmp: _copy_with_missing_teacher(runs[0], tmp), "teacher.checkpoint: checkpoint"),
    ],
    ids=["missing", "not-a-run", "no-student", "no-teacher", "teacher-file-gone"],
)
def test_bad_runs_give_a_clear_error(student_runs, digits_teacher, tmp_path, capsys, make_path, message):
    path = make_path(student_runs, digits_teacher, tmp_path)
    assert main(["compare", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("kdistill compare: error: ") and message in error


def test_zero_repeats_are_refused(student_runs, tmp_path, capsys):
    assert main(["compare", student_runs[0], "--out", str(tmp_path), "--repeats", "0"]) == 2
    assert "at least 1 repeat" in capsys.readouterr().err
