"""Sweeps: the swept space is checked before anything runs, grids and searches complete on real digits runs,
a killed sweep continues without repeating a finished point, workers on one SQLite or PostgreSQL study never
run a point twice, pruning stops hopeless points, a diverging point fails alone."""

from __future__ import annotations

import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from kdistill.config import load_config
from kdistill.contracts import ConfigError
from kdistill.engine.run_dir import read_metrics, read_summary
from kdistill.sweep import SweepSpec, parse_param, run_sweep
from kdistill.sweep.queue import claim, enqueue_missing
from kdistill.sweep.run import check_sweep
from kdistill.sweep.space import grid_points, point_name, split_values
from kdistill.sweep.study import ABANDONED_ATTR, POINT_ATTR, load_study
from kdistill.sweep.worker import run_config
from kdistill.tune import tune_spec

from helpers import digits_config, digits_overrides
from postgres import postgres_server

QUIET = lambda _: None  # noqa: E731
GRID = ["optim.lr=0.05,0.2", "student.kwargs={hidden: [16]},{hidden: [32]}"]


def spec_for(tmp_path, *params: str, name: str = "grid", **options) -> SweepSpec:
    config = digits_config(tmp_path, name, "train.epochs=2")
    return SweepSpec(config, [parse_param(p) for p in params], tmp_path / "sweeps" / name, **options)


def counted_trials(spec: SweepSpec) -> list[optuna.trial.FrozenTrial]:
    study, _ = load_study(spec)
    return [t for t in study.get_trials() if not t.user_attrs.get(ABANDONED_ATTR)]


def assert_each_point_once(spec: SweepSpec, expected_points: int) -> None:
    trials = counted_trials(spec)
    points = [t.user_attrs[POINT_ATTR] for t in trials]
    assert len(points) == len(set(points)) == expected_points, points
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    for run in sorted((spec.out_dir / "runs").iterdir()):
        if run.is_dir():
            epochs = [record["epoch"] for record in read_metrics(run)]
            assert epochs == list(range(1, spec.config.train.epochs + 1)), (run, epochs)


# ----------------------------------------------------------------------------- the swept space


def test_values_split_on_commas_outside_brackets_and_ranges_parse():
    assert split_values("[30,60],[40,80]") == ["[30,60]", "[40,80]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert parse_param("schedule.milestones=[30,60],[40,80]").values == ([30, 60], [40, 80])
    lr = parse_param("optim.lr=loguniform:1e-3:1e-1")
    assert (lr.kind, lr.low, lr.high) == ("loguniform", 1e-3, 1e-1)
    assert parse_param("method.loss=choice:l2,cosine").values == ("l2", "cosine")
    points = grid_points([parse_param("a.b=1,2"), parse_param("c.d=x,y")])
    assert points == [{"a.b": 1, "c.d": "x"}, {"a.b": 1, "c.d": "y"}, {"a.b": 2, "c.d": "x"}, {"a.b": 2, "c.d": "y"}]
    assert point_name("kd", {"method.temperature": 4.0, "method.kd_weight": 0.5}) == "kd-temperature4-kd_weight0.5"
    together = parse_param("method.kd_weight, method.ce_weight=[0.1,0.9],[0.9,0.1]")
    assert grid_points([together]) == [
        {"method.kd_weight": 0.1, "method.ce_weight": 0.9},
        {"method.kd_weight": 0.9, "method.ce_weight": 0.1},
    ]


@pytest.mark.parametrize(
    ("params", "search", "message"),
    [
        (["optim.lrr=0.1,0.2"], False, "unknown key optim.lrr"),
        (["train.epochs=two,3"], False, "train.epochs"),
        (["optim.lr=loguniform:0.1:0.01"], True, "empty range"),
        (["optim.lr=loguniform:0:0.1"], True, "LOW > 0"),
        (["optim.lr=uniform:0.01:0.1"], False, "ranges need --search"),
        (["optim.lr=0.1,0.1"], False, "repeated"),
        (["optim.lr=-1,0.1"], False, "optim.lr=-1"),
        (["optim.lr,optim.momentum=[0.1,0.9],[0.2]"], False, "one value per key"),
    ],
)
def test_a_bad_space_fails_before_any_trial_runs(tmp_path, params, search, message):
    spec = spec_for(tmp_path, *params, search=search)
    with pytest.raises(ConfigError, match=message):
        run_sweep(spec, log=QUIET)
    assert not (spec.out_dir / "runs").exists()


def test_an_unreachable_storage_fails_before_any_trial_runs(tmp_path):
    spec = spec_for(tmp_path, *GRID, storage="postgresql://kdistill:secret@127.0.0.1:1/none")
    with pytest.raises(ConfigError, match="cannot be used") as error:
        run_sweep(spec, log=QUIET)
    assert "secret" not in str(error.value) and "***" in str(error.value)
    assert not (spec.out_dir / "runs").exists()


def test_the_config_is_given_as_argument_or_as_option_but_not_two_different_ones(tmp_path, capsys):
    import yaml

    from kdistill.cli import main
    from kdistill.config import to_dict

    file = tmp_path / "digits.yaml"
    file.write_text(yaml.safe_dump(to_dict(digits_config(tmp_path, "cfg", "train.epochs=1"))))
    other = tmp_path / "other.yaml"
    other.write_text("name: other\n")
    assert main(["sweep", str(file), f"--config={other}", "--param=optim.lr=0.1"]) == 2
    assert "two configs given" in capsys.readouterr().err
    assert main(["sweep", f"--config={file}", "--param=optim.lr=0.1", f"--out={tmp_path / 'opt'}"]) == 0
    assert (tmp_path / "opt" / "runs" / "cfg-lr0.1-seed0" / "summary.json").exists()


def test_the_seed_is_swept_with_trials_not_params(tmp_path):
    with pytest.raises(ConfigError, match="--trials"):
        parse_param("seed=1,2")


# ----------------------------------------------------------------------------- grids


def test_a_2x2_grid_on_digits_completes_and_ranks_points_by_validation_accuracy(tmp_path):
    spec = spec_for(tmp_path, *GRID, trials=2)
    result = run_sweep(spec, log=QUIET)
    assert_each_point_once(spec, 4)
    assert len(list((spec.out_dir / "runs").glob("grid-*-seed[01]"))) == 8
    objectives = [row["objective"] for row in result.points]
    assert objectives == sorted(objectives, reverse=True)
    best = result.points[0]
    summaries = [read_summary(spec.out_dir / "runs" / f"{best['point']}-seed{seed}") for seed in (0, 1)]
    assert best["objective"] == pytest.approx(sum(s["final_val_acc"] for s in summaries) / 2)
    assert {s["seed"] for s in summaries} == {0, 1}
    assert (spec.out_dir / "points.csv").read_text().count("\n") == 5
    assert "optim.lr" in (spec.out_dir / "sweep.yaml").read_text()
    assert (spec.out_dir / "swept_optim.lr.png").exists()  # the numeric swept key against top-1/top-5
    assert "optim.lr=" in (spec.out_dir / "report.md").read_text()  # grouped by the swept keys
    # the same command again runs nothing: every run is read back
    started = {run: (run / "summary.json").stat().st_mtime_ns for run in (spec.out_dir / "runs").glob("grid-*")}
    again = run_sweep(spec, log=QUIET)
    assert [row["objective"] for row in again.points] == objectives
    assert {run: (run / "summary.json").stat().st_mtime_ns for run in started} == started


def test_another_sweep_in_the_same_directory_is_refused(tmp_path):
    run_sweep(spec_for(tmp_path, "optim.lr=0.1"), log=QUIET)
    with pytest.raises(ConfigError, match="holds a different sweep.*params"):
        run_sweep(spec_for(tmp_path, "optim.lr=0.2"), log=QUIET)


def test_a_diverging_point_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path):
    spec = spec_for(tmp_path, "optim.lr=1e12,0.1", "optim.momentum=0.0")
    result = run_sweep(spec, log=QUIET)
    states = {row["optim.lr"]: row for row in result.points}
    assert states[1e12]["state"] == "FAIL" and "NaN or infinite" in states[1e12]["message"]
    assert states[0.1]["state"] == "COMPLETE" and states[0.1]["objective"] > 50


def test_tune_is_a_sweep_preset_with_rescaled_milestones(tmp_path):
    base = load_config(
        overrides=digits_overrides(tmp_path, "teacher", "schedule.name=step", "schedule.milestones=[4, 8]")
        + ["train.epochs=10"]
    )
    spec = tune_spec(base, [0.01, 0.1], [5, 20], trials=2)
    assert spec.objective == "best_val_acc" and spec.out_dir == tmp_path / "sweeps" / "teacher-tune"
    points = [dict(zip(("optim.lr", "train.epochs"), values)) for values in [(0.01, 5), (0.1, 20)]]
    from kdistill.sweep.queue import Claimed

    configs = [run_config(spec, Claimed(None, point, point_name("teacher", point)), 1) for point in points]  # type: ignore[arg-type]
    assert [c.schedule.milestones for c in configs] == [[2, 4], [8, 16]]
    assert [c.optim.lr for c in configs] == [0.01, 0.1] and {c.seed for c in configs} == {1}
    assert configs[0].name == "teacher-lr0.01-epochs5-seed1" and configs[0].output_dir == str(spec.out_dir / "runs")


# ----------------------------------------------------------------------------- kill and continue


def _sweep_command(tmp_path, out: Path, epochs: int, *extra: str) -> list[str]:
    sets = [f"--set={o}" for o in digits_overrides(tmp_path, "killed", f"train.epochs={epochs}")]
    params = ["--param=optim.lr=0.05,0.2", "--param=optim.momentum=0.0,0.9"]
    return [sys.executable, "-m", "kdistill.cli", "sweep", *sets, *params, f"--out={out}", *extra]


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_sweep_continues_without_repeating_a_finished_point(tmp_path):
    out = tmp_path / "sweep"
    command = _sweep_command(tmp_path, out, 12)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    runs = out / "runs"

    def second_point_has_a_checkpoint() -> bool:
        finished = list(runs.glob("*/summary.json")) if runs.exists() else []
        started = [p for p in runs.glob("*/last.pt") if not (p.parent / "summary.json").exists()] if finished else []
        return bool(started) or process.poll() is not None

    _wait_for(second_point_has_a_checkpoint)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.parent: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    interrupted = [p.parent.name for p in runs.glob("*/last.pt") if p.parent not in finished]
    assert finished and interrupted, "the kill should land inside the second point"
    again = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{interrupted[0]} (continued)" in again.stdout and "resumed" in again.stdout
    assert {p: (p / "summary.json").stat().st_mtime_ns for p in finished} == finished  # not run again
    study = load_study_of(out)
    abandoned = [t for t in study.get_trials() if t.user_attrs.get(ABANDONED_ATTR)]
    assert len(abandoned) == 1 and abandoned[0].user_attrs[POINT_ATTR] == interrupted[0].rsplit("-seed", 1)[0]
    counted = [t for t in study.get_trials() if not t.user_attrs.get(ABANDONED_ATTR)]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 4
    assert len({t.user_attrs[POINT_ATTR] for t in counted}) == 4
    for run in runs.iterdir():
        assert [r["epoch"] for r in read_metrics(run)] == list(range(1, 13)), run


def load_study_of(out: Path) -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    return optuna.load_study(study_name=out.name, storage=storage)


def _env() -> dict[str, str]:
    source = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": source + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ----------------------------------------------------------------------------- workers sharing one study


def test_two_workers_on_one_sqlite_study_run_every_point_once(tmp_path):
    spec = spec_for(tmp_path, *GRID, workers=2)
    result = run_sweep(spec, log=QUIET)
    assert result.exit_codes == [0, 0]
    assert_each_point_once(spec, 4)


def test_two_workers_on_one_postgresql_study_run_every_point_once(tmp_path):
    with postgres_server() as url:
        spec = spec_for(tmp_path, *GRID, workers=2, storage=url)
        result = run_sweep(spec, log=QUIET)
        assert result.exit_codes == [0, 0]
        assert_each_point_once(spec, 4)
        assert not (spec.out_dir / "study.db").exists()


def _claim_on_a_machine(spec: SweepSpec, started: Any, first_claimed: Any, claimed: Any) -> None:
    """One "machine" of the claim test: its own sweep directory (so its own claim lock), the shared study."""
    study, storage = load_study(spec)
    names = []
    started.wait()
    if (first := claim(spec, study, storage)) is not None:
        names.append(first.name)
    first_claimed.wait()  # every machine holds a point before any claims a second: all of them take part
    while (next_one := claim(spec, study, storage)) is not None:
        names.append(next_one.name)
    claimed.put((os.getpid(), names))


def test_machines_claiming_from_one_postgresql_study_at_once_never_take_a_point_twice(tmp_path):
    """No local lock between them: only PostgreSQL's row lock on the trial's state keeps the claims apart."""
    machines, params = 3, ["optim.lr=0.01,0.02,0.05,0.1,0.2,0.5", "optim.momentum=0.0,0.9"]
    with postgres_server() as url:
        specs = [spec_for(tmp_path / f"machine{index}", *params, storage=url) for index in range(machines)]
        assert len({spec.study_name for spec in specs}) == 1 and len({spec.out_dir for spec in specs}) == machines
        study, _ = load_study(specs[0])
        points = check_sweep(specs[0])
        assert enqueue_missing(study, points) == 12
        context = multiprocessing.get_context("spawn")
        started, first_claimed, claimed = context.Barrier(machines), context.Barrier(machines), context.Queue()
        processes = [
            context.Process(target=_claim_on_a_machine, args=(spec, started, first_claimed, claimed)) for spec in specs
        ]
        for process in processes:
            process.start()
        results = [claimed.get(timeout=300) for _ in processes]
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
        names = [name for _, taken in results for name in taken]
        assert sorted(names) == sorted(name for name, _ in points), "every point claimed exactly once"
        assert all(taken for _, taken in results), results
        owners = {t.user_attrs[POINT_ATTR]: t.user_attrs["kdistill.pid"] for t in load_study(specs[0])[0].get_trials()}
        assert owners == {name: pid for pid, taken in results for name in taken}


# ----------------------------------------------------------------------------- search and pruning


def test_a_tpe_search_with_pruning_prunes_a_hopeless_point(tmp_path):
    config = digits_config(tmp_path, "search", "train.epochs=4", "optim.momentum=0.0")
    spec = SweepSpec(
        config, [parse_param("optim.lr=loguniform:1e-5:0.5")], tmp_path / "search", search=True, n_trials=6,
        prune=True, prune_startup=1,
    )  # fmt: skip
    result = run_sweep(spec, log=QUIET)
    states = [row["state"] for row in result.points]
    assert len(states) == 6 and "PRUNED" in states and "COMPLETE" in states, result.table
    for row in result.points:
        run = spec.out_dir / "runs" / f"{row['point']}-seed0"
        epochs = len(read_metrics(run))
        if row["state"] == "PRUNED":
            assert epochs < 4 and not (run / "summary.json").exists()
        else:
            assert epochs == 4
    study, _ = load_study(spec)
    assert {t.params["optim.lr"] for t in study.get_trials()} == {row["optim.lr"] for row in result.points}
    # the median rule: a pruned trial's best epoch so far was below the median, at that epoch, of the trials that
    # had completed before it (one worker, so "before" is trial order)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    for trial in (t for t in trials if t.state.name == "PRUNED"):
        step = max(trial.intermediate_values)
        done = [t.intermediate_values[step] for t in trials[: trials.index(trial)] if t.state.name == "COMPLETE"]
        assert done and max(trial.intermediate_values.values()) < statistics.median(done)
