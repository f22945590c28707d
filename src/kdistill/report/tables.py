"""Tables (mean ± std over trials) and plots built from run directories only."""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdistill.track import read_metrics, read_summary

TRIAL_SUFFIX = re.compile(r"-seed\d+$")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Sequence[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def group_runs(run_dirs: Sequence[str | Path]) -> dict[str, list[dict[str, Any]]]:
    """Summaries grouped by run name without its ``-seedN`` suffix (the trials of one experiment)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run_dir in run_dirs:
        summary = read_summary(run_dir)
        groups[TRIAL_SUFFIX.sub("", summary["name"])].append(summary)
    return dict(groups)


def runs_table(run_dirs: Sequence[str | Path], baseline: str | None = None) -> str:
    """One row per experiment: trials, parameters, last-epoch test accuracy, test accuracy at the
    best validation epoch (never best-by-test), teacher agreement, and the gain over ``baseline``."""
    groups = group_runs(run_dirs)
    base_mean = mean_std([s["final_test_acc"] for s in groups[baseline]])[0] if baseline in groups else None
    rows = []
    for name, summaries in groups.items():
        final = [s["final_test_acc"] for s in summaries]
        at_best = [s["test_acc_at_best_val"] for s in summaries if s.get("test_acc_at_best_val") is not None]
        agreement = [s["final_test_agreement"] for s in summaries if s.get("final_test_agreement") is not None]
        gain = f"{mean_std(final)[0] - base_mean:+.2f}" if base_mean is not None and name != baseline else ""
        rows.append(
            [
                name,
                summaries[0]["method"],
                len(summaries),
                f"{summaries[0]['student_parameters']:,}",
                format_mean_std(final),
                format_mean_std(at_best),
                format_mean_std(agreement) if agreement else "-",
                gain,
            ]
        )
    headers = ["run", "method", "trials", "params", "test acc (last)", "test acc (best val)", "agreement", "gain"]
    return markdown_table(headers, rows)


def plot_metric(
    run_dirs: Sequence[str | Path],
    metric: str,
    path: str | Path,
    title: str = "",
    references: dict[str, float] | None = None,
) -> Path:
    """Plot ``metric`` per epoch for each experiment (mean over its trials, band = ± std);
    ``references`` draws labelled horizontal lines (e.g. the teacher's accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for run_dir in run_dirs:
        name = TRIAL_SUFFIX.sub("", read_summary(run_dir)["name"])
        curves[name].append([r for r in read_metrics(run_dir) if metric in r])
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, trials in curves.items():
        epochs = sorted({r["epoch"] for trial in trials for r in trial})
        stats = [mean_std([r[metric] for trial in trials for r in trial if r["epoch"] == e]) for e in epochs]
        means = [m for m, _ in stats]
        axis.plot(epochs, means, marker="o", label=name)
        if len(trials) > 1:
            axis.fill_between(epochs, [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.2)
    for label, value in (references or {}).items():
        axis.axhline(value, linestyle="--", color="grey", label=f"{label} ({value:.2f})")
    axis.set_xlabel("epoch")
    axis.set_ylabel(metric)
    axis.set_title(title or metric)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
