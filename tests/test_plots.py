"""The report's plots read back from their figures (axes, series, plotted data), the t-SNE of a real digits KD run,
and ``show-batch``: the pictured batch is the one the real training step receives, the schedule the real one."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection

from kdistill import api
from kdistill.cli import main
from kdistill.contracts import ConfigError
from kdistill.data import build_data
from kdistill.engine import loop
from kdistill.engine.export import load_student
from kdistill.methods.ce import CrossEntropy
from kdistill.methods.funmatch import FunctionMatching
from kdistill.report.batches import display_images, show_batch
from kdistill.report.experiments import write_report
from kdistill.report.features import write_tsne
from kdistill.report.plots import log_scale_wanted, plot_curve_panels, plot_metric
from kdistill.track import read_metrics
from test_report_experiments import ACCURACIES, BASELINE, build_sweep, make_run

from helpers import digits_config, digits_overrides

LABELS = [
    "method.loss=cosine,optim.lr=0.05",
    "method.loss=cosine,optim.lr=0.5",
    "method.loss=l2,optim.lr=0.05",
    "method.loss=l2,optim.lr=0.5",
]


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return write_report([build_sweep(root)], by=["method.loss", "optim.lr"], out_dir=root / "plots")


# ----------------------------------------------------------------------------- report plots


def test_curves_have_one_line_per_group_and_std_bands_where_there_are_trials(sweep_report):
    axis = sweep_report.plots["test_acc"].figure.axes[0]
    assert axis.get_xlabel() == "epoch" and axis.get_ylabel() == "test accuracy (%)"
    lines = axis.get_lines()
    assert [line.get_label() for line in lines] == LABELS
    assert [text.get_text() for text in axis.get_legend().get_texts()] == LABELS
    baseline = lines[LABELS.index(BASELINE)]
    assert list(baseline.get_xdata()) == [1, 2] and list(baseline.get_ydata()) == pytest.approx([62.0, 72.0])
    bands = [c for c in axis.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3  # the single-trial group has no band
    band = bands[LABELS.index(BASELINE) - 1]  # after cosine-0.05 (the cosine-0.5 group has one trial)
    heights = band.get_paths()[0].vertices[:, 1]
    assert heights.min() == pytest.approx(62.0 - 2.0) and heights.max() == pytest.approx(72.0 + 2.0)
    loss_axis = sweep_report.plots["test_loss"].figure.axes[0]
    assert loss_axis.get_ylabel() == "test loss" and all(list(line.get_xdata()) == [1] for line in loss_axis.lines)
    assert sweep_report.files["test_acc"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_swept_parameter_against_top1_and_top5_one_series_per_other_key(sweep_report):
    assert "swept_method.loss" not in sweep_report.plots  # not numeric: only optim.lr is drawn by default
    top1_axis, top5_axis = sweep_report.plots["swept_optim.lr"].figure.axes
    assert "top-1" in top1_axis.get_title() and "top-5" in top5_axis.get_title()
    assert top1_axis.get_xlabel() == "optim.lr" and top1_axis.get_xscale() == "log"  # 0.5 / 0.05 = 10
    for axis, offset in ((top1_axis, 0.0), (top5_axis, 20.0)):
        assert [c.get_label() for c in axis.containers] == ["method.loss=cosine", "method.loss=l2"]
        for container, loss in zip(axis.containers, ("cosine", "l2")):
            data_line, _, (bars,) = container.lines
            assert list(data_line.get_xdata()) == [0.05, 0.5]
            means = [statistics.fmean(ACCURACIES[(loss, lr)]) + offset for lr in (0.05, 0.5)]
            assert list(data_line.get_ydata()) == pytest.approx(means)
            spreads = [
                statistics.stdev(a) if len(a) > 1 else 0.0 for a in (ACCURACIES[(loss, lr)] for lr in (0.05, 0.5))
            ]
            for segment, mean, spread in zip(bars.get_segments(), means, spreads):
                assert segment[:, 1] == pytest.approx([mean - spread, mean + spread])
    assert not log_scale_wanted([0.1, 0.5]) and log_scale_wanted([1e-3, 0.1]) and not log_scale_wanted([0.0, 1.0])


def test_accuracy_vs_pruning_ratio_one_point_per_group_or_a_reason(tmp_path):
    for width, ratio, accuracies in ((8, 0.9, [60.0, 62.0]), (16, 0.6, [70.0, 71.0]), (32, 0.3, [75.0])):
        for seed, accuracy in enumerate(accuracies):
            summary = {"final_test_acc": accuracy, "pruning_ratio": ratio}
            make_run(tmp_path / "runs", f"w{width}-seed{seed}", [f"student.kwargs={{hidden: [{width}]}}"], summary)
    report = write_report([tmp_path / "runs"], by=["student.kwargs.hidden"], out_dir=tmp_path / "out")
    axis = report.plots["pruning"].figure.axes[0]
    assert axis.get_xlabel().startswith("pruning ratio") and axis.get_ylabel() == "test accuracy (%)"
    (container,) = axis.containers
    data_line = container.lines[0]
    points = sorted(zip(data_line.get_xdata(), data_line.get_ydata()))
    assert [x for x, _ in points] == pytest.approx([0.3, 0.6, 0.9])
    assert [y for _, y in points] == pytest.approx([75.0, 70.5, 61.0])
    labels = sorted(text.get_text() for text in axis.texts)
    assert labels == ["student.kwargs.hidden=[16]", "student.kwargs.hidden=[32]", "student.kwargs.hidden=[8]"]
    assert "swept_student.kwargs.hidden" not in report.plots  # a list is not a number to draw against

    make_run(tmp_path / "labels", "ce", [], {"final_test_acc": 70.0, "pruning_ratio": None})
    report = write_report([tmp_path / "labels"], out_dir=tmp_path / "out2")
    assert "pruning" not in report.plots and not (tmp_path / "out2" / "pruning.png").exists()
    reason = "no pruning.png: no finished run has a pruning_ratio"
    assert any(note.startswith(reason) for note in report.notes) and reason in report.markdown


def test_plot_metric_groups_trials_for_the_demo(tmp_path):
    for seed, accuracy in ((0, 50.0), (1, 54.0)):
        metrics = [{"epoch": 1, "test_acc": accuracy}]
        make_run(tmp_path, f"s-seed{seed}", [], {"final_test_acc": accuracy}, metrics)
    path = plot_metric([tmp_path / "s-seed0", tmp_path / "s-seed1"], "test_acc", tmp_path / "demo.png", "t", {"T": 60})
    assert path == tmp_path / "demo.png" and path.stat().st_size > 0


def test_curve_panels_draw_one_setting_each_against_its_own_steps(tmp_path):
    short = [[{"epoch": 1, "step": 10, "test_acc": 60.0}, {"epoch": 2, "step": 20, "test_acc": 70.0}]] * 2
    long = [
        [{"epoch": e, "step": 5 * e, "test_acc": 50.0 + e} for e in (10, 100)],
        [{"epoch": e, "step": 5 * e, "test_acc": 52.0 + e} for e in (10, 100)],
    ]
    panels = {"all labels": {"alone": short}, "few labels": {"alone": long, "kd": short}}
    plot = plot_curve_panels(panels, "test_acc", tmp_path / "p.png", {"teacher": 90.0}, x="step")
    first, second = plot.figure.axes
    assert [first.get_title(), second.get_title()] == ["all labels", "few labels"]
    assert second.get_xlabel() == "optimizer step"
    alone = second.lines[0]
    assert list(alone.get_xdata()) == [50, 500] and list(alone.get_ydata()) == [61.0, 151.0]  # mean of the trials
    assert [line.get_label() for line in first.lines] == ["alone", "teacher (90.00)"]
    assert first.get_xlim()[1] < 25  # the short setting is not squeezed by the long one's 500 steps


# ----------------------------------------------------------------------------- t-SNE of a real KD run


@pytest.fixture(scope="module")
def kd_runs(tmp_path_factory):
    """A digits MLP teacher and a smaller MLP distilled from it with KD (one epoch each)."""
    root = tmp_path_factory.mktemp("kd")
    teacher = api.train(digits_config(root, "teacher", "train.epochs=1"), log=quiet)
    student = api.distill(
        digits_config(
            root, "student", "train.epochs=1", "method.name=kd", f"teacher.checkpoint={teacher['run_dir']}",
            "student.kwargs={hidden: [16]}",
        ),
        log=quiet,
    )  # fmt: skip
    return Path(teacher["run_dir"]), Path(student["run_dir"])


def test_tsne_maps_teacher_and_student_features_of_the_trained_models(kd_runs, tmp_path):
    teacher_run, student_run = kd_runs
    plot, features = write_tsne(student_run, tmp_path / "tsne.png", samples=120, device="cpu")
    assert features.teacher.shape == (120, 32) and features.student.shape == (120, 16)
    data = build_data(digits_config(tmp_path, "x").data, 0)
    images = torch.stack([data.test[i][0] for i in range(120)])  # (120, 1, 8, 8)
    assert features.labels.tolist() == [data.test[i][1] for i in range(120)]
    for run, got in ((teacher_run, features.teacher), (student_run, features.student)):
        model = load_student(run / "student.pt")[0].eval()  # the weights each run ended with
        with torch.no_grad():
            assert np.allclose(model.forward_features(images).embedding.numpy(), got, atol=1e-5)
    teacher_axis, student_axis = plot.figure.axes
    assert teacher_axis.get_title() == "teacher (mlp)" and student_axis.get_title() == "student (mlp, kd)"
    for axis in (teacher_axis, student_axis):
        per_class = [len(collection.get_offsets()) for collection in axis.collections]
        assert len(per_class) == len(set(features.labels.tolist())) and sum(per_class) == 120
        assert per_class == [int((features.labels == c).sum()) for c in sorted(set(features.labels.tolist()))]
    assert [t.get_text() for t in student_axis.get_legend().get_texts()] == [str(c) for c in range(10)]
    assert plot.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="has no teacher"):
        write_tsne(teacher_run, tmp_path / "none.png", samples=20, device="cpu")


def test_cli_report_tsne_writes_the_picture(kd_runs, tmp_path, capsys):
    _, student_run = kd_runs
    assert main(["report", str(student_run), "--tsne", "40", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tsne_student.png").is_file() and "tsne_student.png" in capsys.readouterr().out


# ----------------------------------------------------------------------------- show-batch


def record_training_steps(monkeypatch, method_class) -> list:
    """Every batch the real training step receives, in order."""
    seen = []
    original = method_class.training_step

    def recording(self, batch):
        seen.append(batch)
        return original(self, batch)

    monkeypatch.setattr(method_class, "training_step", recording)
    return seen


def image_axes(figure) -> list:
    return [axis for axis in figure.axes if axis.images]


@pytest.mark.parametrize(("augment", "epoch"), [("crop_flip", 0), ("none", 1)])
def test_show_batch_draws_what_the_training_step_receives_with_mixup(tmp_path, monkeypatch, augment, epoch):
    overrides = ["method.mixup_alpha=0.4", f"data.augment={augment}", "train.epochs=2", "train.max_steps_per_epoch=1"]
    config = digits_config(tmp_path, "mix", *overrides, "train.device=cpu")
    seen = record_training_steps(monkeypatch, CrossEntropy)
    loop.fit(config, log=quiet)
    trained = seen[epoch]  # max_steps_per_epoch=1: one step per epoch
    result = show_batch(config, tmp_path / "batch.png", grid=5, epoch=epoch)
    shown = result.shown.batch
    assert torch.equal(shown.inputs, trained.inputs) and torch.equal(shown.targets, trained.targets)
    assert torch.equal(shown.extras["mixup_ratio"], trained.extras["mixup_ratio"])
    assert not torch.equal(shown.inputs, result.shown.loaded.inputs)  # mixup changed the pixels
    axes = image_axes(result.batch_plot.figure)
    assert len(axes) == len(result.batch_plot.figure.axes) == 25
    pixels = display_images(trained.inputs, (0.3059,), (0.3753,))  # digits' normalisation
    for index, axis in enumerate(axes):
        assert np.allclose(axis.images[0].get_array(), pixels[index, 0], atol=1e-6)
        ratio, partner = trained.extras["mixup_ratio"][index].item(), trained.extras["mixup_partner"][index].item()
        first, second = trained.targets[index].item(), trained.targets[partner].item()
        assert axis.get_title() == f"{first} ({ratio:.2f}) + {second} ({1 - ratio:.2f})"
    logged = [record["lr"] for record in read_metrics(tmp_path / "mix")]
    assert result.lrs == pytest.approx(logged)  # one step per epoch: the lr each epoch started with


def test_show_batch_of_function_matching_has_no_single_labels(tmp_path, kd_runs, monkeypatch):
    teacher_run, _ = kd_runs
    config = digits_config(
        tmp_path, "fm", "method.name=funmatch", f"teacher.checkpoint={teacher_run}", "train.epochs=1",
        "train.max_steps_per_epoch=1", "train.device=cpu",
    )  # fmt: skip
    seen = record_training_steps(monkeypatch, FunctionMatching)
    loop.fit(config, log=quiet)
    result = show_batch(config, tmp_path / "fm.png", grid=4)
    assert torch.equal(result.shown.batch.inputs, seen[0].inputs)
    axes = image_axes(result.batch_plot.figure)
    assert len(axes) == 16 and all(axis.get_title() == "" for axis in axes)
    pixels = display_images(seen[0].inputs, (0.3059,), (0.3753,))
    assert all(np.allclose(axis.images[0].get_array(), pixels[i, 0], atol=1e-6) for i, axis in enumerate(axes))


def test_lr_plot_has_one_point_per_step_with_warmup_then_cosine(tmp_path):
    config = digits_config(tmp_path, "lr", "schedule.warmup_epochs=1", "train.device=cpu")  # lr 0.1, 3 epochs
    result = show_batch(config, tmp_path / "b.png")
    steps = result.shown.steps_per_epoch
    assert steps == 1258 // 64  # digits' training split in full batches of 64
    total, warmup = 3 * steps, steps
    expected = [
        0.1 * (s + 1) / warmup if s < warmup else 0.1 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        for s in range(total)
    ]
    (line,) = result.lr_plot.figure.axes[0].get_lines()
    assert list(line.get_ydata()) == pytest.approx(expected)
    assert list(line.get_xdata()) == pytest.approx([s / steps for s in range(total)])
    assert result.lr_plot.figure.axes[0].get_xlabel() == "epoch"
    assert result.lr_plot.path == tmp_path / "b_lr.png" and result.lr_plot.path.is_file()


def test_cli_show_batch(tmp_path, capsys):
    sets = [item for value in digits_overrides(tmp_path, "cli", "method.mixup_alpha=0.2") for item in ("--set", value)]
    assert main(["show-batch", *sets, "--out", str(tmp_path / "grid.png"), "--grid", "3"]) == 0
    printed = capsys.readouterr().out
    assert (
        "9 images of epoch 0" in printed and (tmp_path / "grid.png").is_file() and (tmp_path / "grid_lr.png").is_file()
    )
    assert main(["show-batch", *sets, "--epoch", "7"]) == 2
    assert "--epoch 7: the run has epochs 0 to 2" in capsys.readouterr().err
