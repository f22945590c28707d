"""Experiment reports from run directories: finding runs (sweep layout, incomplete trials), grouping by config keys,
mean ± sample std, differences to a baseline with Welch's standard error, the CSV, the CLI."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from kdistill.cli import main
from kdistill.config import dump_config, load_config
from kdistill.contracts import ConfigError
from kdistill.report.experiments import (
    Difference,
    Stat,
    difference,
    find_runs,
    read_record,
    runs_table,
    write_report,
)

# (method.loss, optim.lr) -> final test accuracies of the finished trials
ACCURACIES = {
    ("l2", 0.05): [70.0, 72.0, 74.0],  # the baseline: mean 72, sample std 2
    ("cosine", 0.05): [75.0, 77.0],  # mean 76, std sqrt(2): +4 ± sqrt(4/3 + 2/2) = 1.53, beyond noise
    ("l2", 0.5): [71.0, 75.0],  # mean 73, std sqrt(8): +1 ± sqrt(4/3 + 8/2) = 2.31, within noise
    ("cosine", 0.5): [60.0],  # a single trial: no standard error
}
BASELINE = "method.loss=l2,optim.lr=0.05"


def make_run(root: Path, name: str, overrides: list[str], summary: dict | None, metrics: list[dict] = ()) -> Path:
    """A run directory as fit writes it: config.yaml from the real schema, metrics.jsonl, summary.json if finished."""
    path = root / name
    path.mkdir(parents=True)
    config = load_config(overrides=[f"name={name}", *overrides])
    dump_config(config, path / "config.yaml")
    (path / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in metrics))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps({"name": name, "method": config.method.name, **summary}))
    return path


def sweep_summary(accuracy: float, trial: int) -> dict:
    return {
        "final_test_acc": accuracy,
        "test_acc_at_best_val": None if trial == 1 else accuracy - 1.0,  # one trial without a validation split
        "final_test_top5": accuracy + 20.0,
        "final_test_loss": 1.0 - accuracy / 100.0,
        "final_test_agreement": accuracy + 5.0,
        "final_test_kl": 0.1 * (trial + 1),
        "student_parameters": 1210,
        "pruning_ratio": 0.5,
        "wall_time_s": 10.0 + trial,
    }


def build_sweep(root: Path) -> Path:
    """``<root>/sweep/runs/<point>-seed<N>`` with known accuracies, plus one pruned trial (no summary.json)."""
    sweep = root / "sweep"
    runs = sweep / "runs"
    for (loss, lr), accuracies in ACCURACIES.items():
        overrides = ["method.name=simkd", f"method.loss={loss}", f"optim.lr={lr}", "student.kwargs={hidden: [32]}"]
        for trial, accuracy in enumerate(accuracies):
            curve = [{"epoch": 1, "test_acc": accuracy - 10, "test_loss": 2.0}, {"epoch": 2, "test_acc": accuracy}]
            make_run(
                runs, f"{loss}-{lr}-seed{trial}", [*overrides, f"seed={trial}"], sweep_summary(accuracy, trial), curve
            )
    make_run(runs, "l2-0.5-seed2", ["method.name=simkd", "method.loss=l2", "optim.lr=0.5", "seed=2"], None)
    (sweep / "sweep.yaml").write_text("params: []\n")
    return sweep


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    return build_sweep(tmp_path)


def test_find_runs_searches_any_depth_and_keeps_incomplete_runs_apart(sweep_dir, tmp_path):
    found = find_runs([sweep_dir])
    assert len(found.finished) == 8 and [p.name for p in found.incomplete] == ["l2-0.5-seed2"]
    one_run = sweep_dir / "runs" / "l2-0.05-seed0"
    again = find_runs([one_run, sweep_dir / "runs"])  # a run given twice is read once
    assert len(again.finished) == 8 and again.finished[0] == one_run
    record = read_record(one_run)
    assert record.config["optim.lr"] == 0.05 and record.config["student.kwargs.hidden"] == [32]
    assert record.summary["final_test_acc"] == 70.0 and [m["epoch"] for m in record.metrics] == [1, 2]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no run directory"):
        find_runs([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="is not a directory"):
        find_runs([tmp_path / "missing"])


def test_groups_by_config_keys_with_mean_sample_std_and_counts(sweep_dir, tmp_path):
    report = write_report([sweep_dir], by=["method.loss", "optim.lr"], out_dir=tmp_path / "out", plots=False)
    labels = [group.label for group in report.groups]
    assert labels == [
        "method.loss=cosine,optim.lr=0.05",
        "method.loss=cosine,optim.lr=0.5",
        "method.loss=l2,optim.lr=0.05",
        "method.loss=l2,optim.lr=0.5",
    ]
    for group in report.groups:
        accuracies = ACCURACIES[(group.values["method.loss"], group.values["optim.lr"])]
        stat = group.stats["final_test_acc"]
        assert stat.n == group.trials == len(accuracies)
        assert stat.mean == pytest.approx(statistics.fmean(accuracies))
        assert stat.std == pytest.approx(statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0)
        assert group.stats["student_parameters"].mean == 1210 and group.stats["pruning_ratio"].mean == 0.5
    baseline = report.groups[2].stats
    assert baseline["final_test_acc"].std == pytest.approx(2.0)  # n - 1: the population std would be 1.63
    assert baseline["test_acc_at_best_val"].n == 2  # the trial without it is left out, not counted as 0
    assert baseline["final_test_kl"].mean == pytest.approx(0.2)
    assert [len(group.incomplete) for group in report.groups] == [0, 0, 0, 1]
    assert "1 incomplete run(s)" in report.markdown
    row = next(line for line in report.markdown.splitlines() if line.startswith(f"| {BASELINE} "))
    assert "| 72.00 ± 2.00 " in row and "| 71.00 ± 2.83 (n=2) " in row and "| 1,210 " in row


def test_baseline_differences_carry_welch_standard_errors(sweep_dir, tmp_path):
    report = write_report([sweep_dir], ["method.loss", "optim.lr"], baseline=BASELINE, out_dir=tmp_path, plots=False)
    groups = {group.label: group for group in report.groups}
    beyond = groups["method.loss=cosine,optim.lr=0.05"].differences["final_test_acc"]
    assert beyond.value == pytest.approx(4.0)
    assert beyond.standard_error == pytest.approx(math.sqrt(2.0**2 / 3 + 2.0 / 2))
    assert beyond.within_noise is False and beyond.text() == "+4.00 ± 1.53"
    within = groups["method.loss=l2,optim.lr=0.5"].differences["final_test_acc"]
    assert within.standard_error == pytest.approx(math.sqrt(4.0 / 3 + 8.0 / 2))
    assert within.within_noise is True and within.text() == "+1.00 ± 2.31 (within noise)"
    single = groups["method.loss=cosine,optim.lr=0.5"].differences["final_test_acc"]
    assert single.standard_error is None and single.within_noise is None and single.text() == "-12.00 ± n/a"
    assert groups[BASELINE].is_baseline and not groups[BASELINE].differences
    lines = report.markdown.splitlines()
    assert "Δ test acc % (last) vs baseline" in lines[0]
    assert any(line.startswith(f"| {BASELINE} ") and "| baseline " in line for line in lines)
    assert "+1.00 ± 2.31 (within noise)" in report.markdown and "-12.00 ± n/a" in report.markdown
    assert "sqrt(s1²/n1 + s2²/n2)" in report.markdown


def test_csv_holds_the_same_numbers_with_mean_std_and_n_columns(sweep_dir, tmp_path):
    report = write_report([sweep_dir], ["method.loss", "optim.lr"], baseline=BASELINE, out_dir=tmp_path, plots=False)
    assert report.files["md"].read_text().strip() == report.markdown
    with open(report.files["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["group"] for row in rows] == [group.label for group in report.groups]
    for row, group in zip(rows, report.groups):
        assert float(row["optim.lr"]) == group.values["optim.lr"] and row["method.loss"] == group.values["method.loss"]
        assert int(row["trials"]) == group.trials and int(row["incomplete"]) == len(group.incomplete)
        for key, stat in group.stats.items():
            assert float(row[f"{key}_mean"]) == stat.mean  # full precision: the table's numbers exactly
            assert float(row[f"{key}_std"]) == stat.std and int(row[f"{key}_n"]) == stat.n
    cosine = rows[0]
    assert float(cosine["final_test_acc_diff"]) == pytest.approx(4.0)
    assert float(cosine["final_test_acc_diff_se"]) == pytest.approx(1.5275, abs=1e-4)
    assert cosine["final_test_acc_within_noise"] == "False"
    assert rows[1]["final_test_acc_diff_se"] == "" and rows[2]["final_test_acc_diff"] == ""  # n/a; the baseline


def test_default_grouping_is_the_run_name_without_its_seed(tmp_path):
    for seed, accuracy in ((0, 80.0), (1, 82.0)):
        make_run(tmp_path, f"kd-seed{seed}", ["method.name=kd"], {"final_test_acc": accuracy})
    make_run(tmp_path, "ce", [], {"final_test_acc": 78.0, "test_acc_at_best_val": 77.0})
    table = runs_table([tmp_path])
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert set(rows) == {"kd", "ce"}
    assert "| 81.00 ± 1.41 " in rows["kd"] and "| 2 " in rows["kd"] and "| 78.00 " in rows["ce"]
    report = write_report([tmp_path], baseline="ce", out_dir=tmp_path / "out", plots=False)
    kd = next(group for group in report.groups if group.label == "kd")
    assert kd.differences["final_test_acc"].text() == "+3.00 ± n/a"  # the baseline has a single trial


def test_unknown_keys_and_baselines_name_what_exists(sweep_dir, tmp_path):
    with pytest.raises(ConfigError) as error:
        write_report([sweep_dir], by=["optim.learning_rate"], out_dir=tmp_path, plots=False)
    message = str(error.value)
    assert "optim.learning_rate" in message and "Keys that differ between the runs: " in message
    assert "method.loss, name, optim.lr, seed" in message and "every key:" in message and "train.epochs" in message
    with pytest.raises(ConfigError, match=r"the groups are: method.loss=cosine,optim.lr=0.05; .*l2,optim.lr=0.5"):
        write_report([sweep_dir], by=["method.loss", "optim.lr"], baseline="method.loss=l1", out_dir=tmp_path)
    report = write_report([sweep_dir], ["method.loss", "optim.lr"], "method.loss=l2, optim.lr=0.05", tmp_path, False)
    assert report.groups[2].is_baseline  # spaces in the label do not matter


def test_out_dir_defaults_to_the_sweep_directory_else_report(sweep_dir, tmp_path, monkeypatch):
    report = write_report([sweep_dir], by=["optim.lr"], plots=False)
    assert report.files["md"] == sweep_dir / "report.md" and (sweep_dir / "report.csv").is_file()
    monkeypatch.chdir(tmp_path)
    report = write_report([sweep_dir / "runs" / "l2-0.05-seed0", sweep_dir / "runs" / "l2-0.05-seed1"], plots=False)
    assert report.files["md"] == Path("report") / "report.md" and (tmp_path / "report" / "report.md").is_file()


def test_difference_standard_error_by_hand():
    assert difference(Stat(5.0, 1.0, 4), Stat(3.0, 2.0, 9)).standard_error == pytest.approx(math.sqrt(1 / 4 + 4 / 9))
    assert Difference(0.5, 0.3).within_noise is True and Difference(0.7, 0.3).within_noise is False
    assert Stat.of([1.0, None, float("nan"), 3.0]) == Stat(2.0, math.sqrt(2.0), 2)
    assert Stat.of([None]) is None


def test_cli_report_prints_the_table_and_the_files(sweep_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["report", str(sweep_dir), "--by", "method.loss,optim.lr", "--baseline", BASELINE, "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"| {BASELINE} " in printed and "+4.00 ± 1.53" in printed and "written: " in printed
    assert {"report.md", "report.csv", "test_acc.png", "test_loss.png", "swept_optim.lr.png", "pruning.png"} <= {
        path.name for path in out.iterdir()
    }
    assert str(out / "report.csv") in printed
    assert main(["report", str(sweep_dir), "--by", "optim.lrr", "--out", str(out), "--no-plots"]) == 2
    assert "optim.lrr: not a config key" in capsys.readouterr().err
    assert main(["report", str(sweep_dir), "--tsne", "50", "--out", str(out)]) == 2
    assert "pass the distillation run directory itself" in capsys.readouterr().err


def test_a_whole_config_section_groups_too(tmp_path):
    for width, accuracy in ((8, 60.0), (16, 70.0)):
        make_run(tmp_path, f"w{width}", [f"student.kwargs={{hidden: [{width}]}}"], {"final_test_acc": accuracy})
    report = write_report([tmp_path], by=["student.kwargs"], out_dir=tmp_path / "out", plots=False)
    assert [group.label for group in report.groups] == ["student.kwargs={hidden: [16]}", "student.kwargs={hidden: [8]}"]
    assert [group.stats["final_test_acc"].mean for group in report.groups] == [70.0, 60.0]
    with open(report.files["csv"]) as handle:
        assert [json.loads(row["student.kwargs"]) for row in csv.DictReader(handle)] == [
            {"hidden": [16]},
            {"hidden": [8]},
        ]


def test_mean_difference_is_the_gain_with_the_standard_error_of_two_independent_means():
    from kdistill.report.tables import mean_difference

    before, after = [80.0, 81.0, 82.0], [83.0, 85.0]  # means 81 and 84, sample stds 1 and sqrt(2)
    delta, error = mean_difference(before, after)
    assert delta == pytest.approx(3.0) and error == pytest.approx(math.sqrt(1 / 3 + 2 / 2))
    assert mean_difference(after, before)[0] == pytest.approx(-3.0)  # antisymmetric, the same error
    assert mean_difference([80.0], [81.0]) == (1.0, 0.0)  # a single value has no spread
