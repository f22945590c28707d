"""Experiment reports from run directories only (DESIGN rule 7): tables of mean ± std per group of trials,
differences to a baseline with their standard error, ``report.md`` / ``report.csv`` and the plots.

- :func:`find_runs`: run directories (a directory with ``config.yaml``) given directly or found at any depth below
  the given directories (a sweep directory holds ``<sweep>/runs/<run>``). Runs without ``summary.json`` (pruned,
  failed, interrupted or still running trials) are kept apart as incomplete: counted, never averaged.
- :func:`group_records`: groups by any config keys (dotted, as ``--set`` spells them: ``method.loss``,
  ``optim.lr``, ``student.kwargs.hidden``); without keys, by run name without its ``-seedN`` suffix.
- Per group: trials and the mean ± sample std (n - 1) of each number of :data:`METRICS` the summaries hold.
- Against a baseline group: the difference of means with its standard error sqrt(s1²/n1 + s2²/n2) (Welch),
  marked "within noise" when |difference| < 2 standard errors; with a single trial on either side the error is
  unknown ("n/a").
- :func:`write_report` writes ``report.md``, ``report.csv`` (the same numbers, mean / std / n columns) and the
  PNG plots of :mod:`kdistill.report.plots`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdistill.contracts import ConfigError
from kdistill.report.plots import Plot, Point, finite, plot_curves, plot_pruning, plot_swept
from kdistill.report.tables import experiment_name, markdown_table, mean_std
from kdistill.runtime.io import atomic_write_text
from kdistill.track import read_metrics, read_summary
from kdistill.track.sinks import flatten

LOG = logging.getLogger(__name__)
RUN_CONFIG, SUMMARY, METRICS_FILE = "config.yaml", "summary.json", "metrics.jsonl"
DEFAULT_OUT_DIR = Path("report")


@dataclass(frozen=True)
class Metric:
    """A number of ``summary.json`` the report averages."""

    key: str
    header: str
    digits: int  # decimals in the Markdown table (0: an integer with thousands separators)
    always: bool = False  # a column even when no run has the number


METRICS = (
    Metric("final_test_acc", "test acc % (last)", 2, always=True),
    Metric("test_acc_at_best_val", "test acc % (best val)", 2, always=True),
    Metric("final_test_top5", "top-5 %", 2),
    Metric("final_test_loss", "test loss", 4),
    Metric("final_test_agreement", "agreement %", 2),
    Metric("final_test_kl", "KL", 4),
    Metric("student_parameters", "params", 0),
    Metric("pruning_ratio", "pruning ratio", 3),
    Metric("wall_time_s", "wall time s", 1),
)
METRIC_BY_KEY = {metric.key: metric for metric in METRICS}
DIFFERENCE_METRICS = ("final_test_acc", "test_acc_at_best_val")  # compared with the baseline
CURVES = ("test_acc", "test_loss")  # metrics.jsonl columns plotted per epoch


# ----------------------------------------------------------------------------- finding and reading runs


@dataclass(frozen=True)
class FoundRuns:
    """Run directories, finished (with ``summary.json``) and incomplete (without)."""

    finished: list[Path]
    incomplete: list[Path]


TRACKER_FOLDERS = ("mlartifacts", "mlruns", "tensorboard")


def _run_directories(path: Path) -> list[Path]:
    """``path`` if it is a run directory, else the run directories below it (sorted; hidden and linked folders,
    and the insides of run directories, are not searched)."""
    if (path / RUN_CONFIG).is_file():
        return [path]
    found = []
    for child in sorted(path.iterdir()):
        tracker_store = child.name in TRACKER_FOLDERS  # MLflow's copies of run files are not runs
        if child.is_dir() and not child.is_symlink() and not child.name.startswith(".") and not tracker_store:
            found.extend(_run_directories(child))
    return found


def find_runs(paths: Sequence[str | Path]) -> FoundRuns:
    """The run directories given in ``paths`` or found below them, each once, split into finished and incomplete."""
    if not paths:
        raise ConfigError("no paths given: pass run directories or a directory holding them (e.g. a sweep directory)")
    runs: dict[Path, Path] = {}  # resolved -> as given
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ConfigError(
                f"{path} is not a directory: pass run directories (config.yaml, summary.json) or directories "
                "holding them at any depth (a sweep directory holds runs/<run>)"
            )
        found = _run_directories(path)
        if not found:
            raise ConfigError(f"{path} holds no run directory (a directory with {RUN_CONFIG}) at any depth")
        for run in found:
            runs.setdefault(run.resolve(), run)
    ordered = list(runs.values())
    finished = [run for run in ordered if (run / SUMMARY).is_file()]
    return FoundRuns(finished, [run for run in ordered if not (run / SUMMARY).is_file()])


@dataclass
class RunRecord:
    """What the report reads of one run directory."""

    path: Path
    config: dict[str, Any]  # config.yaml flattened to dotted keys (``optim.lr``, ``student.kwargs.hidden``)
    summary: dict[str, Any]  # summary.json; {} for an incomplete run
    metrics: list[dict[str, Any]]  # metrics.jsonl, one record per epoch
    nested: dict[str, Any] = field(default_factory=dict)  # config.yaml as written (for section keys)

    def value(self, key: str) -> Any:
        """The config value at a dotted key: a leaf (``optim.lr``) or a whole section (``student.kwargs``)."""
        if key in self.config:
            return self.config[key]
        node: Any = self.nested
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.config.get("name") or self.path.name)

    @property
    def finished(self) -> bool:
        return bool(self.summary)


def read_record(path: str | Path) -> RunRecord:
    """The flattened config, summary (if finished) and per-epoch metrics of one run directory."""
    path = Path(path)
    try:
        config = yaml.safe_load((path / RUN_CONFIG).read_text())
        summary = read_summary(path) if (path / SUMMARY).is_file() else {}
    except (OSError, yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the run's {RUN_CONFIG} / {SUMMARY}: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path / RUN_CONFIG} is not a kdistill config (a YAML mapping)")
    metrics = read_metrics(path) if (path / METRICS_FILE).is_file() else []
    return RunRecord(path, flatten(config), summary, metrics, config)


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1; 0 for one value) of ``n`` values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[Any]) -> Stat | None:
        """Over the finite numbers among ``values`` (None, NaN and missing values are left out); None if none."""
        numbers = [float(value) for value in values if finite(value)]
        if not numbers:
            return None
        mean, std = mean_std(numbers)
        return cls(mean, std, len(numbers))


@dataclass(frozen=True)
class Difference:
    """A group's mean minus the baseline's, with the standard error of that difference."""

    value: float
    standard_error: float | None  # sqrt(s1²/n1 + s2²/n2); None when either side has a single trial

    @property
    def within_noise(self) -> bool | None:
        """|difference| < 2 standard errors (None when the error is unknown)."""
        if self.standard_error is None:
            return None
        return self.value == 0 or abs(self.value) < 2 * self.standard_error

    def text(self, digits: int = 2) -> str:
        if self.standard_error is None:
            return f"{self.value:+.{digits}f} ± n/a"
        mark = " (within noise)" if self.within_noise else ""
        return f"{self.value:+.{digits}f} ± {self.standard_error:.{digits}f}{mark}"


def difference(stat: Stat, baseline: Stat) -> Difference:
    """``stat.mean - baseline.mean`` with Welch's standard error (n/a with a single trial on either side)."""
    if stat.n < 2 or baseline.n < 2:
        return Difference(stat.mean - baseline.mean, None)
    error = math.sqrt(stat.std**2 / stat.n + baseline.std**2 / baseline.n)
    return Difference(stat.mean - baseline.mean, error)


# ----------------------------------------------------------------------------- groups


@dataclass
class Group:
    """The trials of one experiment: the runs sharing the values of the grouping keys."""

    label: str  # "method.loss=l2,optim.lr=0.05", or the run name without -seedN
    values: dict[str, Any]  # grouping key -> value ({"name": ...} for the default grouping)
    runs: list[RunRecord]  # finished trials
    incomplete: list[RunRecord] = field(default_factory=list)
    stats: dict[str, Stat] = field(default_factory=dict)  # summary key -> mean ± std over the finished trials
    differences: dict[str, Difference] = field(default_factory=dict)  # against the baseline
    is_baseline: bool = False

    @property
    def trials(self) -> int:
        return len(self.runs)

    @property
    def methods(self) -> list[str]:
        names = {str(r.summary.get("method") or r.config.get("method.name")) for r in [*self.runs, *self.incomplete]}
        return sorted(names)


def format_value(value: Any) -> str:
    """A config value as in a group label: YAML-like literals (null, true, 0.05, [64, 32])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def group_label(values: dict[str, Any]) -> str:
    return ",".join(f"{key}={format_value(value)}" for key, value in values.items())


def check_keys(keys: Sequence[str], records: Sequence[RunRecord], option: str = "--by") -> None:
    """Every key must be a config key of these runs (a leaf or a section such as ``student.kwargs``); else a
    ConfigError listing the keys that exist."""
    present = sorted({key for record in records for key in record.config})
    sections = {".".join(key.split(".")[:end]) for key in present for end in range(1, key.count(".") + 1)}
    unknown = [key for key in keys if key not in present and key not in sections]
    if not unknown:
        return
    varying = [k for k in present if len({json.dumps(r.config.get(k), default=str) for r in records}) > 1]
    raise ConfigError(
        f"{option} {', '.join(unknown)}: not a config key of these runs. Keys that differ between the runs: "
        f"{', '.join(varying) or '(none)'}; every key: {', '.join(present)}"
    )


def _sort_key(value: Any) -> tuple[int, float, str]:
    if finite(value):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


def group_records(
    records: Sequence[RunRecord], by: Sequence[str] | None = None, incomplete: Sequence[RunRecord] = ()
) -> list[Group]:
    """Groups of trials by the config keys ``by`` (ordered by their values), or by run name without ``-seedN``
    (in order of first appearance); incomplete runs are counted in their group, not averaged."""
    keys = list(by or [])
    check_keys(keys, [*records, *incomplete])
    groups: dict[tuple[str, ...], Group] = {}
    for record in [*records, *incomplete]:
        if keys:
            values = {key: record.value(key) for key in keys}
        else:
            values = {"name": experiment_name(record.name)}
        identity = tuple(json.dumps(value, sort_keys=True, default=str) for value in values.values())
        label = group_label(values) if keys else str(values["name"])
        group = groups.setdefault(identity, Group(label, values, []))
        (group.runs if record.finished else group.incomplete).append(record)
    ordered = list(groups.values())
    if keys:
        ordered.sort(key=lambda group: tuple(_sort_key(group.values[key]) for key in keys))
    for group in ordered:
        stats = {metric.key: Stat.of([run.summary.get(metric.key) for run in group.runs]) for metric in METRICS}
        group.stats = {key: stat for key, stat in stats.items() if stat is not None}
    return ordered


def _normalised(label: str) -> str:
    return re.sub(r"\s+", "", label)


def apply_baseline(groups: Sequence[Group], baseline: str) -> Group:
    """Mark the group labelled ``baseline`` (spaces ignored) and give every other group its differences."""
    chosen = [group for group in groups if _normalised(group.label) == _normalised(baseline)]
    if not chosen:
        labels = "; ".join(group.label for group in groups)
        raise ConfigError(f"--baseline {baseline!r} is not a group of this report; the groups are: {labels}")
    base = chosen[0]
    base.is_baseline = True
    for group in groups:
        if group is base:
            continue
        for key in DIFFERENCE_METRICS:
            if key in group.stats and key in base.stats:
                group.differences[key] = difference(group.stats[key], base.stats[key])
    return base


# ----------------------------------------------------------------------------- tables


def format_stat(stat: Stat | None, metric: Metric, trials: int) -> str:
    """``mean ± std`` (just the mean for one value; integers without a zero spread), ``(n=k)`` when fewer than
    all trials have the number."""
    if stat is None:
        return "-"
    if metric.digits == 0:
        spread = f" ± {stat.std:,.0f}" if stat.n > 1 and stat.std > 0 else ""
        text = f"{stat.mean:,.0f}{spread}"
    else:
        spread = f" ± {stat.std:.{metric.digits}f}" if stat.n > 1 else ""
        text = f"{stat.mean:.{metric.digits}f}{spread}"
    return text + (f" (n={stat.n})" if stat.n < trials else "")


def report_table(groups: Sequence[Group]) -> str:
    """The Markdown table: one row per group; differences when a baseline was applied."""
    metrics = [m for m in METRICS if m.always or any(m.key in group.stats for group in groups)]
    with_incomplete = any(group.incomplete for group in groups)
    compared = [key for key in DIFFERENCE_METRICS if any(key in group.differences for group in groups)]
    headers = ["group", "method", "trials", *(["incomplete"] if with_incomplete else [])]
    headers += [m.header for m in metrics] + [f"Δ {METRIC_BY_KEY[key].header} vs baseline" for key in compared]
    rows = []
    for group in groups:
        row: list[Any] = [group.label, ", ".join(group.methods), group.trials]
        row += [len(group.incomplete)] if with_incomplete else []
        row += [format_stat(group.stats.get(m.key), m, group.trials) for m in metrics]
        for key in compared:
            found = group.differences.get(key)
            row.append("baseline" if group.is_baseline else found.text() if found else "-")
        rows.append(row)
    return markdown_table(headers, rows)


def group_row(group: Group) -> dict[str, Any]:
    """One CSV row: the grouping values, counts, mean / std / n of every metric, the differences."""
    row: dict[str, Any] = {"group": group.label, **group.values, "method": ",".join(group.methods)}
    row.update({"trials": group.trials, "incomplete": len(group.incomplete)})
    for metric in METRICS:
        stat = group.stats.get(metric.key)
        row[f"{metric.key}_mean"] = stat.mean if stat else None
        row[f"{metric.key}_std"] = stat.std if stat else None
        row[f"{metric.key}_n"] = stat.n if stat else 0
    for key in DIFFERENCE_METRICS:
        found = group.differences.get(key)
        row[f"{key}_diff"] = found.value if found else None
        row[f"{key}_diff_se"] = found.standard_error if found else None
        row[f"{key}_within_noise"] = found.within_noise if found else None
    return row


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV (numbers at full precision, empty cells for missing values; lists as JSON)."""
    buffer = io.StringIO()
    fields = list(rows[0]) if rows else ["group"]
    writer = csv.DictWriter(buffer, fields)
    writer.writeheader()
    for row in rows:
        cells = {k: "" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()}
        writer.writerow(cells)
    return buffer.getvalue()


def runs_table(run_dirs: Sequence[str | Path], baseline: str | None = None) -> str:
    """The Markdown table of :func:`write_report` for ``run_dirs`` grouped by run name without ``-seedN``
    (what ``--trials`` prints), writing nothing."""
    found = find_runs(run_dirs)
    groups = group_records([read_record(p) for p in found.finished], None, [read_record(p) for p in found.incomplete])
    if baseline is not None:
        apply_baseline(groups, baseline)
    return report_table(groups)


# ----------------------------------------------------------------------------- plots


def numeric_keys(groups: Sequence[Group], keys: Sequence[str]) -> list[str]:
    """The grouping keys whose values are numbers with more than one distinct value (plotted against accuracy)."""
    chosen = []
    for key in keys:
        values = [group.values.get(key) for group in groups if group.runs]
        if values and all(finite(v) for v in values) and len(set(values)) > 1:
            chosen.append(key)
    return chosen


def _group_value(group: Group, key: str) -> float | None:
    """The one numeric value of ``key`` shared by a group's runs (None if they differ or it is not a number)."""
    values = {json.dumps(run.value(key), default=str) for run in group.runs}
    value = group.runs[0].value(key) if len(values) == 1 and group.runs else None
    return float(value) if value is not None and finite(value) else None


def swept_plot(groups: Sequence[Group], by: Sequence[str], key: str, path: Path) -> Plot | str:
    """Top-1 / top-5 test accuracy against ``key``, one series per value of the other grouping keys; a reason
    string instead when there is nothing to draw."""
    others = [other for other in by if other != key]
    top1: dict[str, list[Point]] = {}
    top5: dict[str, list[Point]] = {}
    for group in groups:
        x = _group_value(group, key)
        if x is None:
            continue
        series = group_label({other: group.values.get(other) for other in others})
        for target, metric in ((top1, "final_test_acc"), (top5, "final_test_top5")):
            stat = group.stats.get(metric)
            if stat is not None:
                target.setdefault(series, []).append(Point(x, stat.mean, stat.std, group.label))
    if not top1:
        return f"no {path.name}: no finished group has one numeric value of {key} and a final_test_acc"
    return plot_swept(top1, top5, key, path)


def pruning_plot(groups: Sequence[Group], path: Path) -> Plot | str:
    """Test accuracy against pruning ratio, one point per group; a reason string when no run has a ratio."""
    points = []
    for group in groups:
        ratio, accuracy = group.stats.get("pruning_ratio"), group.stats.get("final_test_acc")
        if ratio is not None and accuracy is not None:
            points.append(Point(ratio.mean, accuracy.mean, accuracy.std, group.label, ratio.std))
    if not points:
        return f"no {path.name}: no finished run has a pruning_ratio in summary.json (it needs a teacher)"
    return plot_pruning(points, path)


def write_plots(
    groups: Sequence[Group],
    by: Sequence[str],
    swept: Sequence[str],
    out_dir: Path,
    curves: Sequence[str] = CURVES,
) -> tuple[dict[str, Plot], list[str]]:
    """Per-epoch curves of the ``curves`` metrics, one swept-parameter plot per key of ``swept`` and accuracy vs
    pruning ratio; returns the plots by name and the reasons for any plot left out (also logged)."""
    finished = [group for group in groups if group.runs]
    plots: dict[str, Plot | str] = {}
    trials = {group.label: [run.metrics for run in group.runs] for group in finished}
    for metric in dict.fromkeys(curves):
        if any(record.get(metric) is not None for runs in trials.values() for run in runs for record in run):
            plots[metric] = plot_curves(trials, metric, out_dir / f"{metric}.png")
        else:
            plots[metric] = f"no {metric}.png: no finished run logged {metric} in metrics.jsonl"
    for key in swept:
        name = "swept_" + re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        plots[name] = swept_plot(finished, by, key, out_dir / f"{name}.png")
    plots["pruning"] = pruning_plot(finished, out_dir / "pruning.png")
    notes = [reason for reason in plots.values() if isinstance(reason, str)]
    for note in notes:
        LOG.info("report: %s", note)
    return {name: plot for name, plot in plots.items() if isinstance(plot, Plot)}, notes


# ----------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What :func:`write_report` wrote: the Markdown (as in report.md), the CSV rows, the files by kind."""

    markdown: str
    rows: list[dict[str, Any]]
    files: dict[str, Path]
    groups: list[Group] = field(default_factory=list)
    plots: dict[str, Plot] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # why a plot was left out
    incomplete: list[Path] = field(default_factory=list)


def is_sweep_directory(path: Path) -> bool:
    """A directory that holds a sweep (sweep.yaml or a runs/ folder) rather than being a run itself."""
    return not (path / RUN_CONFIG).is_file() and ((path / "sweep.yaml").is_file() or (path / "runs").is_dir())


def default_out_dir(paths: Sequence[str | Path]) -> Path:
    """The sweep directory when it is the only path given, else ./report."""
    if len(paths) == 1 and is_sweep_directory(Path(paths[0])):
        return Path(paths[0])
    return DEFAULT_OUT_DIR


def report_markdown(
    groups: Sequence[Group], baseline: Group | None, incomplete: int, notes: Sequence[str], plots: dict[str, Plot]
) -> str:
    """The table, what its numbers are, the incomplete runs, and the plots (links relative to report.md)."""
    lines = [
        report_table(groups),
        "",
        "Mean ± sample std (n - 1) over each group's finished trials; test acc (best val) = test accuracy at the "
        "epoch of best validation accuracy (chosen on validation, never on test).",
    ]
    if baseline is not None:
        lines.append(
            f"Δ vs baseline `{baseline.label}`: difference of means ± its standard error sqrt(s1²/n1 + s2²/n2) "
            "(Welch); within noise when |Δ| < 2 standard errors; n/a with a single trial."
        )
    if incomplete:
        lines.append(
            f"{incomplete} incomplete run(s) without summary.json (pruned, failed, interrupted or still running) "
            "are counted per group and left out of the numbers."
        )
    lines += [f"- {note}" for note in notes]
    if plots:
        lines += ["", *(f"![{name}]({plot.path.name})" for name, plot in plots.items())]
    return "\n".join(lines)


def write_report(
    paths: Sequence[str | Path],
    by: Sequence[str] | None = None,
    baseline: str | None = None,
    out_dir: str | Path | None = None,
    plots: bool = True,
    swept: Sequence[str] | None = None,
    curves: Sequence[str] = CURVES,
) -> Report:
    """Read the runs under ``paths``, group them ``by`` config keys (default: run name without ``-seedN``),
    compare with ``baseline`` (a group label) and write report.md, report.csv and the plots into ``out_dir``
    (default: the sweep directory when it is the only path, else ./report). ``swept``: numeric keys to draw
    against accuracy (default: the ``by`` keys with more than one numeric value); ``curves``: metrics.jsonl
    columns drawn per epoch (``<metric>.png``)."""
    found = find_runs(paths)
    records = [read_record(path) for path in found.finished]
    unfinished = [read_record(path) for path in found.incomplete]
    groups = group_records(records, by, unfinished)
    base = apply_baseline(groups, baseline) if baseline is not None else None
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(by or [])
    swept_keys = list(swept) if swept is not None else numeric_keys(groups, keys)
    check_keys(swept_keys, [*records, *unfinished], "swept")
    figures, notes = write_plots(groups, keys, swept_keys, out, curves) if plots else ({}, [])
    markdown = report_markdown(groups, base, len(found.incomplete), notes, figures)
    rows = [group_row(group) for group in groups]
    files = {"md": out / "report.md", "csv": out / "report.csv"}
    atomic_write_text(markdown + "\n", files["md"])
    atomic_write_text(csv_text(rows), files["csv"])
    files.update({name: plot.path for name, plot in figures.items()})
    return Report(markdown, rows, files, groups, figures, notes, found.incomplete)
