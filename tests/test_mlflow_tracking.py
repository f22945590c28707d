"""MLflow tracking read back by MLflow's own client: a trial is a run nested under its sweep's parent run, with the
flattened config as params, every epoch's numbers as metrics, the summary, the run directory's files as artifacts
and a status that says how it ended; a resumed run continues its MLflow run without repeating an epoch; several
processes can start on one new SQLite store."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from kdistill.api import fit
from kdistill.contracts import ConfigError, TrainingDivergedError
from kdistill.track import MLflowSink, default_tracking_uri, finish_parent_run, read_metrics, start_parent_run

from helpers import digits_config

QUIET = {"log": lambda _: None}
EXPERIMENT = "digits-sweep"


def tracked(tmp_path, name: str, *overrides: str):
    return digits_config(
        tmp_path, name, "train.epochs=2", "track.mlflow=true", f"track.mlflow_experiment={EXPERIMENT}", *overrides
    )


def artifact_names(client: MlflowClient, run_id: str) -> set[str]:
    return {Path(info.path).name for info in client.list_artifacts(run_id)}


def test_a_trial_is_a_child_run_with_params_metrics_summary_and_artifacts(tmp_path):
    uri = default_tracking_uri(tmp_path)
    parent = start_parent_run(uri, EXPERIMENT, "sweep-digits", {"sweep.trials": 1}, tags={"kdistill.sweep": "digits"})
    config = tracked(tmp_path, "lr0.1-seed0", f"track.mlflow_parent_run_id={parent}")
    summary = fit(config, **QUIET)

    client = MlflowClient(tracking_uri=uri)
    run_id = (tmp_path / "lr0.1-seed0" / "mlflow_run_id").read_text()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "lr0.1-seed0"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["kdistill.outcome"] == "finished"
    params = run.data.params
    assert params["distill"] == "ce" and params["learning_rate"] == "0.1"  # the runs table's short columns
    assert params["optim.lr"] == "0.1" and params["student.kwargs.hidden"] == "[32]" and params["train.epochs"] == "2"
    assert params["track.mlflow_parent_run_id"] == parent

    records = read_metrics(tmp_path / "lr0.1-seed0")
    for key in ("epoch", "step", "train_loss", "val_acc", "test_acc", "test_loss", "lr"):
        history = client.get_metric_history(run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["epoch"], r[key]) for r in records], key
    assert run.data.metrics["test_acc"] == summary["final_test_acc"] > 50  # the latest value is the final one
    assert run.data.metrics["summary.best_val_acc"] == summary["best_val_acc"]
    assert run.data.metrics["summary.wall_time_s"] == summary["wall_time_s"]
    assert {"config.yaml", "summary.json", "metrics.jsonl"} <= artifact_names(client, run_id)
    downloaded = client.download_artifacts(run_id, "summary.json", str(tmp_path / "download"))
    assert json.loads(Path(downloaded).read_text())["best_val_acc"] == summary["best_val_acc"]

    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training-runs table
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert [child.info.run_id for child in children] == [run_id]  # what the UI nests under the sweep
    (tmp_path / "points.md").write_text("| point | val_acc |\n")
    finish_parent_run(
        uri, parent, {"best_objective": summary["best_val_acc"], "nan": float("nan")}, [tmp_path / "points.md"]
    )
    sweep = client.get_run(parent)
    assert sweep.info.status == "FINISHED" and sweep.data.params == {"sweep.trials": "1"}
    assert (
        sweep.data.metrics == {"best_objective": summary["best_val_acc"]}
        and sweep.data.tags["kdistill.kind"] == "sweep"
    )
    assert artifact_names(client, parent) == {"points.md"}
    assert (tmp_path / "mlartifacts").is_dir() and not Path("mlruns").exists()  # next to the database, not in the cwd


def test_a_parent_run_is_reopened_by_its_id_and_an_unknown_id_gets_a_new_run(tmp_path):
    uri = default_tracking_uri(tmp_path)
    parent = start_parent_run(uri, EXPERIMENT, "sweep", {"sweep.seeds": 2})
    finish_parent_run(uri, parent, {}, [], status="KILLED")
    assert start_parent_run(uri, EXPERIMENT, "sweep", {"sweep.seeds": 2, "sweep.extra": "x"}, run_id=parent) == parent
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(parent).info.status == "RUNNING"
    assert client.get_run(parent).data.params == {"sweep.seeds": "2", "sweep.extra": "x"}
    other = start_parent_run(uri, EXPERIMENT, "sweep", {}, run_id="0" * 32)
    assert other != parent and len(client.search_runs([client.get_run(parent).info.experiment_id])) == 2
    with pytest.raises(ValueError, match="status='DONE'"):
        finish_parent_run(uri, parent, {}, [], status="DONE")


def test_a_stopped_run_is_killed_and_its_resume_continues_the_same_mlflow_run(tmp_path):
    config = tracked(tmp_path, "paused")
    fit(config, stop_after_epochs=1, **QUIET)
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    run_id = (tmp_path / "paused" / "mlflow_run_id").read_text()
    stopped = client.get_run(run_id)
    assert stopped.info.status == "KILLED" and "resume" in stopped.data.tags["kdistill.outcome"]
    assert "summary.best_val_acc" not in stopped.data.metrics
    assert artifact_names(client, run_id) == {"config.yaml", "metrics.jsonl"}

    fit(config, resume=True, **QUIET)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "summary.best_val_acc" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run_id, "epoch")] == [1, 2]
    assert len(client.search_runs([run.info.experiment_id])) == 1
    fit(config, resume=True, **QUIET)  # already finished: the summary is written again, MLflow gets no copies
    assert len(client.get_metric_history(run_id, "summary.best_val_acc")) == 1


def test_a_diverged_run_is_failed_with_the_reason(tmp_path):
    config = tracked(tmp_path, "diverged", "optim.lr=1e12", "optim.momentum=0.0")
    with pytest.raises(TrainingDivergedError):
        fit(config, **QUIET)
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    run = client.get_run((tmp_path / "diverged" / "mlflow_run_id").read_text())
    assert run.info.status == "FAILED" and run.data.tags["kdistill.outcome"].startswith("TrainingDivergedError: ")


def test_an_epoch_redone_after_a_resume_is_not_logged_twice_and_plots_are_artifacts(tmp_path):
    config = tracked(tmp_path, "redone")
    run_dir = tmp_path / "redone"
    run_dir.mkdir()
    first = MLflowSink(run_dir, config)
    first.start(config)
    for epoch in (1, 2):
        first.log({"epoch": epoch, "step": 10 * epoch, "val_acc": 50.0 + epoch, "diverged": float("nan")})
    first.finish({})  # a kill after epoch 2, whose checkpoint was not written
    (run_dir / "val_acc.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    second = MLflowSink(run_dir, config)
    second.start(config)
    assert second.run_id == first.run_id
    for epoch in (2, 3):  # resumed from the checkpoint of epoch 1
        second.log({"epoch": epoch, "step": 10 * epoch, "val_acc": 60.0 + epoch})
    second.finish({"best_val_acc": 63.0})

    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    history = client.get_metric_history(first.run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(1, 51.0), (2, 52.0), (3, 63.0)]
    assert client.get_metric_history(first.run_id, "diverged") == []  # non-finite values are left out
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert "val_acc.png" in artifact_names(client, first.run_id)


def test_an_unknown_parent_run_is_a_config_error_before_training(tmp_path):
    config = tracked(tmp_path, "orphan", "track.mlflow_parent_run_id=0123456789abcdef0123456789abcdef")
    (tmp_path / "orphan").mkdir()
    with pytest.raises(ConfigError, match="mlflow_parent_run_id='0123456789abcdef0123456789abcdef'.*no such run"):
        MLflowSink(tmp_path / "orphan", config).start(config)


def _write_runs(tmp_path: Path, index: int, start_at: float, errors) -> None:
    """One of the processes below: from the same moment, a parent run and a child run of five epochs."""
    try:
        while time.time() < start_at:
            time.sleep(0.001)
        uri = default_tracking_uri(tmp_path)
        parent = start_parent_run(uri, EXPERIMENT, f"sweep-{index}", {"index": index})
        config = tracked(tmp_path, f"trial-{index}", f"track.mlflow_parent_run_id={parent}")
        (tmp_path / config.name).mkdir()
        sink = MLflowSink(tmp_path / config.name, config)
        sink.start(config)
        for epoch in range(1, 6):
            sink.log({"epoch": epoch, "val_acc": float(epoch)})
        sink.finish({"best_val_acc": 5.0})
        finish_parent_run(uri, parent, {"best_objective": 5.0}, [])
    except Exception as error:  # reported to the test process
        errors.put(f"{type(error).__name__}: {error}")


def test_processes_start_together_on_one_new_sqlite_store(tmp_path):
    """MLflow creates a new SQLite store's tables unlocked (two processes at once fail with 'duplicate column'):
    kdistill creates them under a lock file; writes then wait for SQLite's lock."""
    context = multiprocessing.get_context("fork")  # the test process has torch and MLflow imported already
    errors = context.Queue()
    start_at = time.time() + 1.0
    processes = [context.Process(target=_write_runs, args=(tmp_path, i, start_at, errors)) for i in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == []
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * 6
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(children) == 3
    assert all(len(client.get_metric_history(run.info.run_id, "val_acc")) == 5 for run in children)


def test_mlflow_is_imported_only_when_enabled(tmp_path):
    code = (
        "import sys\n"
        "from kdistill import api\n"
        "from kdistill.config import load_config\n"
        "from kdistill.track import build_sinks\n"
        f"config = load_config(overrides=['output_dir={tmp_path}'])\n"
        f"assert build_sinks(__import__('pathlib').Path('{tmp_path}'), config) == []\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'tensorboard', 'sqlalchemy'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
