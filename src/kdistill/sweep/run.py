"""``run_sweep``: check everything, set up the study, run the workers, write the points table and the report.

The sweep directory holds ``sweep.yaml`` (what was swept), ``study.db`` (the Optuna study, unless ``--storage``
names a server), ``runs/<point>-seed<N>/`` (ordinary run directories), ``points.md`` / ``points.csv`` (every point
ranked by the objective, mean validation accuracy over its seeds) and the report (``report.md``, ``report.csv``,
plots) grouped by the swept keys.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdistill.choices import SWEEP_OBJECTIVES
from kdistill.config import replace
from kdistill.contracts import ConfigError
from kdistill.engine.builders import preflight
from kdistill.report.experiments import Report, write_report
from kdistill.report.tables import markdown_table, mean_std
from kdistill.runtime.io import atomic_write_text
from kdistill.runtime.storage import redacted
from kdistill.sweep.queue import enqueue_missing, not_counted, recover_abandoned
from kdistill.sweep.space import check_space, config_value, grid_points, point_name, point_overrides
from kdistill.sweep.study import (
    MESSAGE_ATTR,
    OBJECTIVE_STD_ATTR,
    POINT_ATTR,
    RUNS_ATTR,
    VALUES_ATTR,
    SweepSpec,
    load_study,
)
from kdistill.sweep.worker import Log, run_workers, work
from kdistill.track import default_tracking_uri, finish_parent_run, read_summary, start_parent_run

if TYPE_CHECKING:
    import optuna

OBJECTIVES = SWEEP_OBJECTIVES  # in kdistill.choices: `kdistill sweep --help` lists them


@dataclass
class SweepResult:
    """The points (best first), their table, the report and the sweep's worker exit codes."""

    points: list[dict[str, Any]]
    table: str
    report: Report | None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The first failing worker's exit code, 0 when every worker ended cleanly (the CLI's exit status)."""
        return next((code for code in self.exit_codes if code != 0), 0)


def _spec_problems(spec: SweepSpec) -> list[str]:
    problems = []
    if spec.trials < 1:
        problems.append(f"--trials {spec.trials}: at least one seed per point")
    if spec.workers < 1:
        problems.append(f"--workers {spec.workers}: at least one worker")
    if spec.search and spec.n_trials < 1:
        problems.append(f"--n-trials {spec.n_trials}: at least one point")
    if spec.objective not in OBJECTIVES:
        problems.append(f"objective {spec.objective!r}: one of {', '.join(OBJECTIVES)}")
    if spec.config.data.val_size == 0:
        problems.append(
            "data.val_size=0: the sweep chooses on validation accuracy, never test; keep a validation split"
        )
    return problems


def grid(spec: SweepSpec) -> list[tuple[str, dict[str, Any]]]:
    """Every grid point as (run-name stem, typed values), each point's config checked in full."""
    points = []
    for values in grid_points(spec.params):
        config = preflight(replace(spec.config, point_overrides(spec.config, values)))
        points.append({key: config_value(config, key) for key in values})
    names = [point_name(spec.config.name, values) for values in points]
    if len(set(names)) < len(names):  # two values that print alike: name the points by a hash of their values
        names = [point_name(spec.config.name, values, readable=False) for values in points]
    return list(zip(names, points))


def check_sweep(spec: SweepSpec) -> list[tuple[str, dict[str, Any]]]:
    """Everything that can be checked before a trial runs; returns the grid points (none for a search)."""
    problems = _spec_problems(spec)
    if problems:
        raise ConfigError("; ".join(problems))
    preflight(spec.config)
    check_space(spec.config, spec.params, spec.search)
    return [] if spec.search else grid(spec)


def _write_spec(spec: SweepSpec) -> None:
    record = {"study": spec.study_name, "storage": redacted(spec.storage_url), **spec.identity()}
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump(json.loads(json.dumps(record)), sort_keys=False), spec.out_dir / "sweep.yaml")


def _parent_run(spec: SweepSpec) -> str | None:
    """The sweep's MLflow parent run (its id kept in the sweep directory), when the config tracks with MLflow."""
    track = spec.config.track
    if not track.mlflow:
        return None
    id_file = spec.out_dir / "mlflow_parent_run_id"
    known = id_file.read_text().strip() if id_file.exists() else None
    params = {"sweep." + key: value for key, value in spec.identity().items() if key != "config"}
    run_id = start_parent_run(
        tracking_uri(spec), track.mlflow_experiment, f"sweep-{spec.study_name}", params, run_id=known
    )
    atomic_write_text(run_id, id_file)
    return run_id


def tracking_uri(spec: SweepSpec) -> str:
    """The trials' MLflow store: the config's, else SQLite next to their run directories (as for any run)."""
    return spec.config.track.mlflow_tracking_uri or default_tracking_uri(spec.runs_dir)


def points_table(spec: SweepSpec, study: optuna.Study) -> list[dict[str, Any]]:
    """One row per point that counts, best objective first; test accuracy is shown, never used to choose."""
    rows: dict[str, dict[str, Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        name = trial.user_attrs.get(POINT_ATTR)
        if name is None or not_counted(trial):
            continue
        runs = trial.user_attrs.get(RUNS_ATTR, [])
        tests = [read_summary(run).get("final_test_acc") for run in runs if (Path(run) / "summary.json").exists()]
        rows[name] = {
            "trial": trial.number,
            "state": trial.state.name,
            "point": name,
            **json.loads(trial.user_attrs.get(VALUES_ATTR, "{}")),
            "objective": trial.value,
            "objective_std": trial.user_attrs.get(OBJECTIVE_STD_ATTR),
            "test_acc": mean_std([t for t in tests if t is not None])[0] if tests else None,
            "message": trial.user_attrs.get(MESSAGE_ATTR, ""),
        }
    return sorted(rows.values(), key=lambda row: -1e9 if row["objective"] is None else row["objective"], reverse=True)


def _format(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else ("-" if value is None else str(value))


def write_points(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """``points.md`` (objective mean ± std over seeds) and ``points.csv`` in the sweep directory."""
    keys = spec.swept_keys
    headers = ["trial", "state", *keys, f"{spec.objective} (mean ± std)", "test acc (mean)", "message"]
    table_rows = [
        [
            row["trial"],
            row["state"],
            *(json.dumps(row.get(key)) for key in keys),
            "-" if row["objective"] is None else f"{row['objective']:.2f} ± {row['objective_std'] or 0:.2f}",
            _format(row["test_acc"]),
            row["message"][:80],
        ]
        for row in rows
    ]
    table = markdown_table(headers, table_rows)
    atomic_write_text(table + "\n", spec.out_dir / "points.md")
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, ["trial", "state", "point", *keys, "objective", "objective_std", "test_acc", "message"]
    )
    writer.writeheader()
    writer.writerows([{key: row.get(key) for key in writer.fieldnames} for row in rows])
    atomic_write_text(buffer.getvalue(), spec.out_dir / "points.csv")
    return table


def _finish(spec: SweepSpec, parent_run_id: str | None, log: Log, codes: list[int]) -> SweepResult:
    study, _ = load_study(spec)
    rows = points_table(spec, study)
    table = write_points(spec, rows)
    plotted = [param.keys[0] for param in spec.params]  # keys swept jointly move together: one plot draws them
    report = (
        write_report([spec.runs_dir], by=spec.swept_keys, out_dir=spec.out_dir, swept=plotted)
        if any(spec.runs_dir.glob("*/config.yaml"))
        else None
    )
    best = rows[0] if rows and rows[0]["objective"] is not None else None
    if parent_run_id is not None:
        metrics = {"best_objective": best["objective"]} if best else {}
        artifacts = [path for path in (report.files.values() if report else []) if path.exists()]
        finish_parent_run(tracking_uri(spec), parent_run_id, metrics, [spec.out_dir / "points.md", *artifacts])
    log(
        f"\nsweep {spec.study_name}: points ranked by {spec.objective} "
        f"(validation; mean ± std over {spec.trials} seed(s))"
    )
    log(table)
    if report is not None:
        log("\n" + report.markdown)
    log(f"\nsweep directory: {spec.out_dir}")
    return SweepResult(rows, table, report, codes)


def run_sweep(spec: SweepSpec, log: Log = print) -> SweepResult:
    """Run (or continue) the sweep ``spec``: nothing runs unless every point's config is valid and the storage is
    reachable; finished points are never run again and an interrupted point continues from its checkpoints."""
    points = check_sweep(spec)
    study, storage = load_study(spec)
    _write_spec(spec)
    recover_abandoned(study, storage, spec.stale_minutes, log)
    if points:
        queued = enqueue_missing(study, points)
        log(f"sweep {spec.study_name}: {len(points)} grid points x {spec.trials} seed(s), {queued} newly queued")
    parent_run_id = _parent_run(spec)
    if spec.workers == 1:
        work(spec, 0, log, parent_run_id)
        codes = [0]
    else:
        codes = run_workers(spec, log, parent_run_id)
    return _finish(spec, parent_run_id, log, codes)
